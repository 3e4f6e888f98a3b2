"""
How pilotctl reports: one JSON object with ``--json``, short text without.

In JSON mode stdout carries exactly one object, success or failure, and
nothing else, so an agent can always ``json.loads`` it.  In human mode the
result goes to stdout and errors to stderr.
"""

from __future__ import annotations

import json

from ..errors import Interrupted, InvalidArgument, PilotError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def exit_code_for(error: PilotError) -> int:
    if error.code == "invalid_argument":
        return EXIT_USAGE
    if error.code == "interrupted":
        return EXIT_INTERRUPTED
    return EXIT_ERROR


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

    def success(self, data: dict, human: str | None) -> int:
        if self.json_mode:
            self._write_json(self._stdout, {"status": "ok", "data": data})
        elif human:
            self._stdout.write(human.rstrip("\n") + "\n")
            self._stdout.flush()
        return EXIT_OK

    def failure(self, error: PilotError) -> int:
        if self.json_mode:
            self._write_json(self._stdout, error_document(error))
        else:
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
