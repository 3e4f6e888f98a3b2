"""
One control connection's lifecycle, as an explicit state machine.

A connection carries JSON request lines until a command upgrades it
(``connect``, ``listen``, ``accept``: ``docs/control.md``); from the byte
after that command's ok line it belongs to a stream or a listener's event
feed.  While an upgrading command runs, nothing more is parsed: the bytes
are held for the pipe (dropped if the command fails).  A client that
half-closes still gets the answers it is owed before we close.

::

                       Upgrading                       Upgraded
        +---------+ ------------->  +---------+  ---------------------+
        | READING |                 | HOLDING |                       v
        +---------+ <-------------  +---------+                 +-------+
          |      UpgradeFailed          | ReadClosed            | PIPED |
          | ReadClosed                  v                       +-------+
          v                        +-------------+  Upgraded       ^
        +----------+ <------------ | HOLDING_EOF | ----------------+
        | DRAINING |  UpgradeFailed +-------------+
        +----------+
        (closes once no answer is owed)       any state --Lost--> CLOSED

The protocol (:class:`~pilotproto.control.server.ControlProtocol`) only
turns Twisted's callbacks into events; the dispatcher turns each request
into exactly one later event (``Answered``, or ``Upgraded`` /
``UpgradeFailed`` for an upgrading command).  Every (state, event) pair is
in :data:`TRANSITIONS`; events that can no longer matter (an answer after
the upgrade, bytes after EOF) are listed with no outputs.  Outputs never
raise: the dispatcher has already turned every failure into an error line.
"""

from __future__ import annotations

import enum

import attrs

from ..errors import InvalidArgument
from .codec import MAX_REQUEST_LINE, LineSplitter, encode_error

#: bytes held for a pending upgrade before the connection stops reading
MAX_HELD = 256 * 1024


class State(enum.Enum):
    READING = "reading requests"
    HOLDING = "holding bytes while an upgrading command runs"
    HOLDING_EOF = "holding, and the client has half-closed"
    DRAINING = "the client has half-closed: answering what runs, then closing"
    PIPED = "piped to a stream or an event feed"
    CLOSED = "closed"


# -- events ---------------------------------------------------------------------------


@attrs.frozen
class BytesReceived:
    data: bytes


@attrs.frozen
class Upgrading:
    """An upgrading command was dispatched; ``data`` is what followed its line in the buffer."""

    data: bytes


@attrs.frozen
class Answered:
    """A (non-upgrading) request's answer ``line`` is ready."""

    line: bytes


@attrs.frozen
class Upgraded:
    """The upgrading command succeeded: send ``line``, then ``upgrade.take_over`` the connection."""

    line: bytes
    upgrade: object


@attrs.frozen
class UpgradeFailed:
    """The upgrading command failed: ``line`` is its error."""

    line: bytes


@attrs.frozen
class ReadClosed:
    """The client half-closed (it will send nothing more)."""


@attrs.frozen
class Lost:
    reason: object = None


class ControlConnection:
    """
    The machine for one connection on ``transport``; ``dispatcher.dispatch(line)``
    returns ``(upgrading, Deferred)``, the Deferred firing with one of the
    answer events above and never failing.
    """

    def __init__(self, transport, dispatcher):
        self.state = State.READING
        self._transport = transport
        self._dispatcher = dispatcher
        self._lines = LineSplitter(MAX_REQUEST_LINE)
        self._held = bytearray()
        self._paused = False
        #: requests dispatched whose answer event has not come yet
        self._outstanding = 0
        #: the connection's owner after an upgrade: dataReceived / readConnectionLost / connectionLost
        self._pipe = None

    def feed(self, event) -> None:
        """The one entry point: look the transition up, move, run its outputs."""
        self.state, outputs = TRANSITIONS[(self.state, type(event))]
        for output in outputs:
            output(self, event)

    def _finished(self, event) -> None:
        self._outstanding -= 1
        self.feed(event)

    # -- outputs ------------------------------------------------------------------------

    def _read_requests(self, event: BytesReceived) -> None:
        self._lines.push(event.data)
        for line in self._lines.lines():
            if line is LineSplitter.TOO_LONG:
                self._transport.write(encode_error(None, InvalidArgument(
                    f"request line longer than {MAX_REQUEST_LINE} bytes",
                    hint="Keep each request on one line under 64 KiB.")))
            elif line.strip():
                self._dispatch(line)
            if self.state is not State.READING:
                return  # an upgrading command took the rest of the buffer

    def _dispatch(self, line: bytes) -> None:
        upgrading, answer = self._dispatcher.dispatch(line)
        self._outstanding += 1
        if upgrading:
            # Before the answer can come (it may already be there): what
            # follows the request line is the stream's, not requests.
            self.feed(Upgrading(self._lines.take_rest()))
        answer.addCallback(self._finished)

    def _hold(self, event) -> None:
        self._held += event.data
        if len(self._held) > MAX_HELD and not self._paused:
            # The client streams before the upgrade is answered: let the
            # socket buffer take the rest.
            self._paused = True
            self._transport.pauseProducing()

    def _drop_held(self, event) -> None:
        # Whatever the client sent for a stream that did not open has no meaning now.
        self._held = bytearray()
        self._resume()

    def _send(self, event) -> None:
        self._transport.write(event.line)

    def _take_over(self, event: Upgraded) -> None:
        held, self._held = bytes(self._held), bytearray()
        self._pipe = event.upgrade.take_over(self._transport)
        self._resume()
        if held:
            self._pipe.dataReceived(held)

    def _abandon(self, event: Upgraded) -> None:
        # The client is gone (or no longer waiting): undo what the command set up.
        if event.upgrade.abandon is not None:
            event.upgrade.abandon()

    def _close_when_idle(self, event) -> None:
        if self._outstanding == 0:
            self._transport.loseConnection()

    def _pipe_data(self, event: BytesReceived) -> None:
        self._pipe.dataReceived(event.data)

    def _pipe_eof(self, event) -> None:
        self._pipe.readConnectionLost()

    def _pipe_lost(self, event: Lost) -> None:
        self._pipe.connectionLost(event.reason)

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            self._transport.resumeProducing()


_C = ControlConnection
READING, HOLDING, HOLDING_EOF, DRAINING, PIPED, CLOSED = State

#: (state, event type) -> (next state, outputs); every pair is listed.
TRANSITIONS = {
    (READING, BytesReceived): (READING, [_C._read_requests]),
    (READING, Upgrading): (HOLDING, [_C._hold]),
    (READING, Answered): (READING, [_C._send]),
    (READING, Upgraded): (READING, [_C._abandon]),  # cannot happen: upgrades run while holding
    (READING, UpgradeFailed): (READING, [_C._send]),  # cannot happen, as above
    (READING, ReadClosed): (DRAINING, [_C._close_when_idle]),
    (READING, Lost): (CLOSED, []),  # running commands finish; their answers are dropped

    (HOLDING, BytesReceived): (HOLDING, [_C._hold]),
    (HOLDING, Upgrading): (HOLDING, []),  # cannot happen: nothing is parsed while holding
    (HOLDING, Answered): (HOLDING, [_C._send]),  # an earlier request's answer
    (HOLDING, Upgraded): (PIPED, [_C._send, _C._take_over]),
    (HOLDING, UpgradeFailed): (READING, [_C._send, _C._drop_held]),
    (HOLDING, ReadClosed): (HOLDING_EOF, []),
    (HOLDING, Lost): (CLOSED, []),

    (HOLDING_EOF, BytesReceived): (HOLDING_EOF, []),  # nothing comes after EOF
    (HOLDING_EOF, Upgrading): (HOLDING_EOF, []),
    (HOLDING_EOF, Answered): (HOLDING_EOF, [_C._send]),
    (HOLDING_EOF, Upgraded): (PIPED, [_C._send, _C._take_over, _C._pipe_eof]),
    (HOLDING_EOF, UpgradeFailed): (DRAINING, [_C._send, _C._drop_held, _C._close_when_idle]),
    (HOLDING_EOF, ReadClosed): (HOLDING_EOF, []),
    (HOLDING_EOF, Lost): (CLOSED, []),

    (DRAINING, BytesReceived): (DRAINING, []),  # nothing comes after EOF
    (DRAINING, Upgrading): (DRAINING, []),
    (DRAINING, Answered): (DRAINING, [_C._send, _C._close_when_idle]),
    (DRAINING, Upgraded): (DRAINING, [_C._abandon, _C._close_when_idle]),  # cannot happen
    (DRAINING, UpgradeFailed): (DRAINING, [_C._send, _C._close_when_idle]),  # cannot happen
    (DRAINING, ReadClosed): (DRAINING, []),
    (DRAINING, Lost): (CLOSED, []),

    (PIPED, BytesReceived): (PIPED, [_C._pipe_data]),
    (PIPED, Upgrading): (PIPED, []),
    (PIPED, Answered): (PIPED, []),  # no JSON inside the raw pipe
    (PIPED, Upgraded): (PIPED, [_C._abandon]),  # cannot happen: one upgrade per connection
    (PIPED, UpgradeFailed): (PIPED, []),
    (PIPED, ReadClosed): (PIPED, [_C._pipe_eof]),
    (PIPED, Lost): (CLOSED, [_C._pipe_lost]),

    (CLOSED, BytesReceived): (CLOSED, []),
    (CLOSED, Upgrading): (CLOSED, []),
    (CLOSED, Answered): (CLOSED, []),
    (CLOSED, Upgraded): (CLOSED, [_C._abandon]),  # the client hung up before the answer
    (CLOSED, UpgradeFailed): (CLOSED, []),
    (CLOSED, ReadClosed): (CLOSED, []),
    (CLOSED, Lost): (CLOSED, []),
}

del _C
