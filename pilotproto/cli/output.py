"""
How pilotctl reports: one JSON object with ``--json``, short text without.

In JSON mode stdout carries exactly one object, success or failure, and
nothing else, so an agent can always ``json.loads`` it.  In human mode the
result goes to stdout and errors to stderr.
"""

from __future__ import annotations

import json
import time

from ..errors import Interrupted, InvalidArgument, PilotError

#: Exit codes (docs/cli.md lists them): scripts may rely on these.
EXIT_OK = 0
#: what the command was asked to do did not happen (every other error code)
EXIT_ERROR = 1
#: the command line was wrong (code ``invalid_argument``)
EXIT_USAGE = 2
#: no daemon runs for this home (code ``not_running``), as LSB's ``status`` says 3
EXIT_NOT_RUNNING = 3
EXIT_INTERRUPTED = 130

_EXIT_BY_CODE = {"invalid_argument": EXIT_USAGE, "not_running": EXIT_NOT_RUNNING, "interrupted": EXIT_INTERRUPTED}


def exit_code_for(error: PilotError) -> int:
    return _EXIT_BY_CODE.get(error.code, EXIT_ERROR)


class CheckFailed(PilotError):
    """A check found problems."""

    code = "check_failed"


class CommandFailed(Exception):
    """The command ran, but what it was asked did not happen.

    ``error`` says why (its code decides the exit code); ``data`` is what
    the command did find, printed as on success (rendered for a person, or
    as ``"data"`` beside ``"status": "error"`` in JSON) so nothing measured
    is lost."""

    def __init__(self, error: PilotError, data: dict):
        super().__init__(error.message)
        self.error = error
        self.data = data


class Output:
    def __init__(self, json_mode: bool, stdout, stderr):
        self.json_mode = json_mode
        self._stdout = stdout
        self._stderr = stderr

    def say(self, text: str = "") -> None:
        """Progress for a person; silent in JSON mode."""
        if not self.json_mode:
            self._stdout.write(text + "\n")
            self._stdout.flush()

    def note(self, text: str) -> None:
        """A side remark on stderr, in either mode (never pollutes JSON stdout)."""
        self._stderr.write(text + "\n")
        self._stderr.flush()

    def progress_stream(self):
        """Where a transient progress line goes: stderr if it is a terminal and
        the output is for a person; None (no progress) when piped or ``--json``."""
        if self.json_mode:
            return None
        isatty = getattr(self._stderr, "isatty", None)
        return self._stderr if isatty is not None and isatty() else None

    def success(self, data: dict, human: str | None) -> int:
        if self.json_mode:
            self._write_json(self._stdout, {"status": "ok", "data": data})
        elif human:
            self._stdout.write(human.rstrip("\n") + "\n")
            self._stdout.flush()
        return EXIT_OK

    def failure(self, error: PilotError, data: dict | None = None, human: str | None = None) -> int:
        """Report ``error``; ``data`` (with its rendering ``human``) is what the command found anyway."""
        if self.json_mode:
            doc = error_document(error)
            if data is not None:
                doc["data"] = data
            self._write_json(self._stdout, doc)
        else:
            if human:
                self._stdout.write(human.rstrip("\n") + "\n")
                self._stdout.flush()
            self._stderr.write(f"error: {error.message}\n")
            if error.hint:
                self._stderr.write(f"hint: {error.hint}\n")
            self._stderr.flush()
        return exit_code_for(error)

    @staticmethod
    def _write_json(stream, doc: dict) -> None:
        stream.write(json.dumps(doc, ensure_ascii=False) + "\n")
        stream.flush()


def error_document(error: PilotError) -> dict:
    return {"status": "error", "code": error.code, "message": error.message, "hint": error.hint}


def interrupted() -> PilotError:
    return Interrupted()


def usage_error(message: str, usage: str | None) -> InvalidArgument:
    hint = usage.strip().replace("\n", " ") if usage else "Run 'pilotctl --help'."
    return InvalidArgument(message, hint=" ".join(hint.split()))


def duration(seconds) -> str:
    """An uptime as a person reads it: 45s, 12m, 3h05m."""
    if not isinstance(seconds, (int, float)):
        return "?"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def render_lookup(data: dict) -> str:
    """A ``lookup`` result as text (pilotctl lookup, and the demo's tour)."""
    visibility = "public" if data.get("public") else "private"
    endpoints = ", ".join(data.get("endpoints") or []) or "none known"
    return "\n".join(
        [
            f"{data.get('hostname')}  {data.get('address')}  ({visibility})",
            f"  endpoints:  {endpoints}",
            f"  public key: {data.get('public_key')}",
        ]
    )


MIB = 1024 * 1024


class Progress:
    """One line on a terminal, rewritten in place: how far, how fast, how long to go.

    ``stream`` None (piped, ``--json``: see :meth:`Output.progress_stream`)
    makes every call a no-op, so commands call it unconditionally.  ``unit``
    is ``"bytes"`` (shown in MiB and MiB/s, or Mbit/s with ``bits``) or a
    word for counted things (``"pairs"``).  ``done`` wipes the line, so the
    command's summary starts on a clean one."""

    def __init__(self, stream, total: int, unit: str = "bytes", bits: bool = False, label: str = "", clock=time.monotonic, interval: float = 0.1):
        self._stream, self._total, self._unit, self._bits, self._label = stream, max(total, 1), unit, bits, label
        self._clock, self._interval = clock, interval
        self._started = clock()
        self._shown: float | None = None

    def update(self, done: int, note: str = "") -> None:
        if self._stream is None:
            return
        now = self._clock()
        if self._shown is not None and now - self._shown < self._interval and done < self._total:
            return
        self._shown = now
        self._stream.write("\r\033[K" + self.line(done, now - self._started, note))
        self._stream.flush()

    def line(self, done: int, elapsed: float, note: str = "") -> str:
        fraction = min(done / self._total, 1.0)
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = _clock_time((self._total - done) / rate) if rate > 0 else "--:--"
        if self._unit == "bytes":
            amount = f"{done / MIB:.1f}/{self._total / MIB:.1f} MiB"
            speed = f"{rate * 8 / 1e6:.1f} Mbit/s" if self._bits else f"{rate / MIB:.1f} MiB/s"
        else:
            amount = f"{done}/{self._total} {self._unit}"
            speed = ""
        parts = [self._label, f"{fraction:4.0%}", amount, speed, f"ETA {eta}", note]
        return "  ".join(p for p in parts if p)

    def done(self) -> None:
        if self._stream is not None and self._shown is not None:
            self._stream.write("\r\033[K")
            self._stream.flush()


def _clock_time(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds >= 3600:
        return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    return f"{seconds // 60}:{seconds % 60:02d}"
