"""
Explicit state machines as transition tables, for the two parts of a stream
(``sending.py`` and ``receiving.py``).

A table maps every ``(state, event)`` pair to the next state and the outputs
to run, in order.  It is checked when the module that defines it is imported:
a pair missing or listed twice is a bug in the table, so it fails at import,
and a machine never meets an event it has no answer for (there is nothing
like Automat's ``NoTransition`` to reach a user at run time).  Late and
duplicate events are listed, with no outputs.

Why a table and not Automat: these machines step once or more for every
STREAM frame, on the hot path of a transfer, and a dict lookup is the
cheapest step there is; the table is also plain data, so the docs
(docs/streams.md) and the tests read the very same thing the code runs.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

#: ``(state, event) -> (next state, outputs)``
Table = dict


class Symbol(enum.Enum):
    """A state, event or output: an enum whose members hash by identity.

    Enum's own ``__hash__`` is Python code, and a step hashes its state and
    event for every STREAM frame; members are singletons, so identity is
    the same equality, found by C.
    """

    __hash__ = object.__hash__


def transition_table(
    states: type[enum.Enum], events: type[enum.Enum], outputs: type[enum.Enum], rows: Iterable
) -> Table:
    """Build a table from ``(state, event, next state, outputs)`` rows; every pair exactly once."""
    table: Table = {}
    for state, event, next_state, row_outputs in rows:
        row_outputs = tuple(row_outputs)
        if not (isinstance(state, states) and isinstance(event, events) and isinstance(next_state, states)):
            raise TypeError(f"a {states.__name__} row mixes up its kinds: {state!r} {event!r} {next_state!r}")
        if not all(isinstance(output, outputs) for output in row_outputs):
            raise TypeError(f"{state.name} x {event.name}: outputs must be {outputs.__name__}, not {row_outputs!r}")
        if (state, event) in table:
            raise ValueError(f"{state.name} x {event.name} is listed twice in the {states.__name__} table")
        table[state, event] = (next_state, row_outputs)
    missing = [f"{state.name} x {event.name}" for state in states for event in events if (state, event) not in table]
    if missing:
        raise ValueError(f"the {states.__name__} table has no entry for " + ", ".join(missing))
    return table


def markdown_rows(table: Table) -> list[str]:
    """The table as Markdown rows (state, event, next state, outputs), as docs/streams.md shows it."""
    lines = []
    for (state, event), (next_state, outputs) in table.items():
        goes = "—" if next_state is state else next_state.value
        does = ", ".join(output.name for output in outputs) or "—"
        lines.append(f"| {state.value} | {event.name} | {goes} | {does} |")
    return lines
