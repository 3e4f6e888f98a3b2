"""
The control socket's wire format, as pure functions (no sockets, no Twisted).

One JSON object per line (``docs/control.md``): a request
``{"id", "cmd", "args"}``, answered by ``{"id", "status": "ok", "data"}`` or
``{"id", "status": "error", "code", "message", "hint"}``; after an upgrading
command, a listener's event lines ``{"event": ...}``.  The daemon
(:mod:`pilotproto.control.server`), the blocking client
(:mod:`pilotproto.control.client`) and the Twisted client
(:mod:`pilotproto.control.link`) all encode and decode here, so the three
cannot drift apart; an SDK in another language has to get exactly this right.

Decoding never raises anything but :class:`BadRequest` (the daemon's side:
an ``invalid_argument`` error that knows which request id to answer) or
:class:`BadResponse` (the client's side: the daemon broke the protocol).
Every way a line can be malformed (not UTF-8, not JSON, an integer of 5000
digits, a float that overflows, ``NaN``, arrays nested 30,000 deep, a lone
surrogate that no UTF-8 encoder can send back) is caught in one place,
:func:`_load`, so the commands only ever see bounded, re-encodable values.
"""

from __future__ import annotations

import json
import math
import re

import attrs

from ..errors import InvalidArgument, PilotError, ProtocolError

MAX_REQUEST_LINE = 128 * 1024
"""Longest request line accepted, newline included: room for a 64 KiB message or event in base64."""

MAX_RESPONSE_LINE = 1024 * 1024
"""Longest response (or event) line sent; clients must accept at least this much."""

MAX_DEPTH = 32
"""Deepest nesting of arrays and objects in a line (the envelope counts as one)."""

MAX_INTEGER = 2**64 - 1
"""Largest magnitude of an integer in a line: the protocol's widest numbers are
unsigned 64-bit ids (a handshake id); nothing needs more."""

COMMAND_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class BadRequest(InvalidArgument):
    """The request line cannot be dispatched."""

    def __init__(self, message: str, request_id=None, hint: str | None = None):
        super().__init__(message, hint)
        #: the id to answer with: None when the line did not even yield one
        self.request_id = request_id


class BadResponse(ProtocolError):
    """The daemon sent a line that is not a valid answer."""


@attrs.frozen
class Request:
    id: int | str
    cmd: str
    args: dict = attrs.field(factory=dict)


@attrs.frozen
class Response:
    """An answer: ``data`` when ``error`` is None, else the daemon's error rebuilt."""

    id: int | str | None
    data: dict | None = None
    error: PilotError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def result(self) -> dict:
        """The data, or raise the error."""
        if self.error is not None:
            raise self.error
        return self.data


def _dump(doc: dict) -> bytes:
    return json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8") + b"\n"


class _Malformed(ValueError):
    """A line breaks one of the codec's own limits; the text says which."""


def _integer(digits: str) -> int:
    # The parser hands us the digits before converting them: a 5000-digit
    # number is refused without the quadratic work of converting it.
    if len(digits.lstrip("-")) > len(str(MAX_INTEGER)) or abs(value := int(digits)) > MAX_INTEGER:
        raise _Malformed("holds an integer beyond 2**64 - 1 in magnitude")
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Malformed("holds a number too large for a double")
    return value


def _constant(name: str):
    raise _Malformed(f"holds {name}, which is not JSON")


def _check_tree(doc) -> None:
    """Refuse nesting deeper than MAX_DEPTH and strings no UTF-8 encoder can send back."""
    stack = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            value.encode("utf-8")  # a lone surrogate ("\ud800") raises UnicodeEncodeError
        elif isinstance(value, (list, dict)):
            if depth > MAX_DEPTH:
                raise _Malformed(f"nests deeper than {MAX_DEPTH} levels")
            if isinstance(value, dict):
                stack.extend((key, depth) for key in value)
                value = value.values()
            stack.extend((item, depth + 1) for item in value)


def _reason(error: Exception) -> str:
    if isinstance(error, _Malformed):
        return str(error)
    if isinstance(error, UnicodeDecodeError):
        return "is not valid UTF-8"
    if isinstance(error, UnicodeEncodeError):
        return "holds a lone surrogate (a \\uD800-\\uDFFF escape that is not a character)"
    if isinstance(error, RecursionError):
        return f"nests deeper than {MAX_DEPTH} levels"
    if isinstance(error, json.JSONDecodeError):
        return f"is not JSON ({error.msg} at column {error.colno})"
    return "is not JSON"


def _load(line: bytes, bad):
    """The JSON object on ``line``; ``bad(message)`` builds the error for anything else.

    The one handler for every parse error: whatever the line holds, the
    caller gets its codec's error, never a traceback."""
    try:
        doc = json.loads(line.decode("utf-8"), parse_int=_integer, parse_float=_float, parse_constant=_constant)
        _check_tree(doc)
    except (ValueError, RecursionError) as e:  # UnicodeError and JSONDecodeError are ValueErrors
        raise bad("the line " + _reason(e)) from None
    if not isinstance(doc, dict):
        raise bad("the line is not a JSON object")
    return doc


def _is_id(value) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


# -- requests (client -> daemon) -------------------------------------------------------


def encode_request(request_id, cmd: str, args: dict | None = None) -> bytes:
    """One request line.  Raises InvalidArgument for what the daemon would refuse."""
    if not _is_id(request_id):
        raise InvalidArgument("a request id is an integer or a string")
    if not isinstance(cmd, str) or not COMMAND_NAME.match(cmd):
        raise InvalidArgument(f"not a command name: {cmd!r}")
    try:
        line = _dump({"id": request_id, "cmd": cmd, "args": dict(args or {})})
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"the arguments of {cmd!r} are not JSON: {e}") from None
    if len(line) > MAX_REQUEST_LINE:
        raise InvalidArgument(f"the request for {cmd!r} is longer than {MAX_REQUEST_LINE} bytes")
    return line


_REQUEST_HINT = 'Send one JSON object per line, such as {"id": 1, "cmd": "info", "args": {}} (docs/control.md).'


def decode_request(line: bytes) -> Request:
    """One request line (without its newline), or raise BadRequest."""
    doc = _load(line, lambda message: BadRequest(message.replace("the line", "request line", 1), hint=_REQUEST_HINT))
    request_id = doc.get("id")
    if not _is_id(request_id):
        raise BadRequest("a request needs an \"id\" that is an integer or a string", hint=_REQUEST_HINT)
    cmd = doc.get("cmd")
    if not isinstance(cmd, str) or not COMMAND_NAME.match(cmd):
        raise BadRequest("a request needs a \"cmd\" naming a command", request_id, hint=_REQUEST_HINT)
    args = doc.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise BadRequest("\"args\" must be a JSON object", request_id, hint=_REQUEST_HINT)
    return Request(request_id, cmd, args)


# -- responses (daemon -> client) --------------------------------------------------------


def encode_ok(request_id, data: dict) -> bytes:
    """An ok line.  Raises TypeError/ValueError if ``data`` is not JSON (a bug of the command)."""
    return _dump({"id": request_id, "status": "ok", "data": data})


def encode_error(request_id, error: PilotError) -> bytes:
    """An error line; never raises, so that every request can be answered.

    A message may quote what the client sent: text that cannot be UTF-8
    (a lone surrogate) is replaced, and an id that cannot be sent back is
    sent as null."""
    if not (request_id is None or (_is_id(request_id) and _encodable(request_id))):
        request_id = None
    return _dump({"id": request_id, "status": "error", "code": str(error.code), "message": _printable(error.message),
                  "hint": None if error.hint is None else _printable(error.hint)})


def _encodable(value) -> bool:
    return not isinstance(value, str) or _printable(value) == value


def _printable(text) -> str:
    return str(text).encode("utf-8", "replace").decode("utf-8")


def decode_response(line: bytes) -> Response:
    """One response line (without its newline), or raise BadResponse."""
    doc = _load(line, lambda message: BadResponse(f"the daemon sent a response that is not valid: {message}"))
    request_id = doc.get("id")
    if request_id is not None and not _is_id(request_id):
        raise BadResponse("the daemon sent a response whose id is neither an integer nor a string")
    status = doc.get("status")
    if status == "ok":
        data = doc.get("data")
        return Response(request_id, data if isinstance(data, dict) else {})
    if status == "error":
        code, message, hint = doc.get("code"), doc.get("message"), doc.get("hint")
        if not isinstance(code, str) or not isinstance(message, str) or not (hint is None or isinstance(hint, str)):
            raise BadResponse("the daemon sent an error without a code and a message")
        return Response(request_id, error=PilotError.from_dict({"code": code, "message": message, "hint": hint}))
    raise BadResponse(f"the daemon sent a response with unknown status {status!r}")


# -- events (a listen connection, daemon -> client) ---------------------------------------


def encode_event(event: dict) -> bytes:
    return _dump(event)


def decode_event(line: bytes) -> dict:
    """One event line: a JSON object with a string ``event``; else BadResponse."""
    doc = _load(line, lambda message: BadResponse(f"the daemon sent a listener event that is not valid: {message}"))
    if not isinstance(doc.get("event"), str):
        raise BadResponse("the daemon sent a listener event without an \"event\" name")
    return doc


# -- lines ------------------------------------------------------------------------------


class LineSplitter:
    """
    Cuts a byte stream into lines of at most ``limit`` bytes (newline included).

    An over-long line is reported once (``TOO_LONG``) and its remainder
    skipped up to the next newline, so one bad request does not cost the
    client its connection.  A ``\\r`` before the newline is dropped.  Lines
    are cut at an offset, not by copying the rest of the buffer each time,
    so a read full of short lines costs time linear in its size.
    """

    TOO_LONG = object()

    def __init__(self, limit: int):
        self._limit = limit
        self._buffer = b""
        #: where the next line starts in ``_buffer``
        self._start = 0
        self._skipping = False

    def feed(self, data: bytes) -> list:
        """The complete lines in ``data`` (without newline), and TOO_LONG markers."""
        self.push(data)
        return list(self.lines())

    def push(self, data: bytes) -> None:
        self._buffer = self._buffer[self._start :] + data
        self._start = 0

    def lines(self):
        """Yield complete lines one at a time, consuming each before it is yielded,
        so a caller that stops early leaves the rest in :meth:`take_rest`."""
        while True:
            start = self._start
            newline = self._buffer.find(b"\n", start)
            if newline < 0:
                if not self._skipping and len(self._buffer) - start >= self._limit:
                    self._skipping = True
                    self._buffer, self._start = b"", 0
                    yield self.TOO_LONG
                if self._skipping:
                    self._buffer, self._start = b"", 0
                return
            self._start = newline + 1
            if self._skipping:
                self._skipping = False
            elif newline + 1 - start > self._limit:
                yield self.TOO_LONG
            else:
                yield self._buffer[start:newline].rstrip(b"\r")

    def take_rest(self) -> bytes:
        """The bytes after the last line taken (an upgraded connection's first raw bytes)."""
        rest = self._buffer[self._start :]
        self._buffer, self._start = b"", 0
        return rest


def split_line(buffer: bytes, limit: int = MAX_RESPONSE_LINE) -> tuple[bytes, bytes] | None:
    """``(line, rest)`` if ``buffer`` holds a complete line, else None; BadResponse
    when more than ``limit`` bytes arrived without a newline (a client's guard)."""
    newline = buffer.find(b"\n")
    if newline < 0:
        if len(buffer) >= limit:
            raise BadResponse(f"the daemon sent a line longer than {limit} bytes")
        return None
    if newline + 1 > limit:
        raise BadResponse(f"the daemon sent a line longer than {limit} bytes")
    return buffer[:newline].rstrip(b"\r"), buffer[newline + 1 :]
