"""
The daemon side of the local control socket.

A client writes JSON request lines; each is dispatched to
``handler.ctl_<cmd>(**args)`` and answered with a JSON response line carrying
the same ``id``.  Requests run concurrently: a slow ``lookup`` does not hold
up an ``info`` sent after it, so responses may leave in any order.  The wire
format is specified in ``docs/control.md``.

The handler is any object with ``ctl_*`` methods; each returns a dict (or
None, sent as ``{}``) or a Deferred firing one.  A PilotError, raised or
errbacked, is sent as that error; anything else is a bug, logged, and sent
as ``internal``.

A command may instead return an :class:`Upgrade`: after its ok line the
connection stops carrying JSON and belongs to the object the upgrade names
(a raw byte pipe to a stream, or a listener's event feed).
"""

from __future__ import annotations

import errno
import inspect
import json
import os
import re
import socket
import stat

from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IHalfCloseableProtocol, IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from ..errors import AlreadyRunning, InvalidArgument, PilotError, StateError

MAX_REQUEST_LINE = 64 * 1024
"""Longest request line accepted, newline included."""

MAX_RESPONSE_LINE = 1024 * 1024
"""Longest response line sent; clients must accept at least this much."""

SOCKET_MODE = 0o600
_MAX_UNIX_PATH = 107  # sun_path is 108 bytes on Linux, one of them the NUL
_COMMAND_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_HANDLER_PREFIX = "ctl_"

UPGRADING_COMMANDS = frozenset({"connect", "accept", "listen"})
"""Commands after which the client's bytes are no longer requests: nothing
more on their connection is parsed as JSON while they run; bytes that arrive
meanwhile go to the pipe if the command succeeds and are dropped if it fails."""

#: bytes held for a pending upgrade before the connection stops reading
_MAX_HELD = 256 * 1024

log = Logger()


def command_names(handler) -> list[str]:
    """The commands ``handler`` answers, sorted."""
    return sorted(
        name[len(_HANDLER_PREFIX):]
        for name in dir(handler)
        if name.startswith(_HANDLER_PREFIX) and callable(getattr(handler, name, None))
    )


class Upgrade:
    """
    A command result that takes the connection over after the ok line.

    ``take_over(transport)`` is called right after ``data`` was written as
    the ok response and returns the connection's new owner: an object with
    ``dataReceived(bytes)``, ``readConnectionLost()`` (the client half-closed)
    and ``connectionLost(reason)``.  ``abandon()`` is called instead when the
    client hung up before the answer could be sent.
    """

    def __init__(self, data: dict, take_over, abandon=None):
        self.data = data
        self.take_over = take_over
        self.abandon = abandon


class _Reject(Exception):
    """A request that cannot be dispatched; carries the id to answer with."""

    def __init__(self, request_id, error: PilotError):
        super().__init__(error.message)
        self.request_id = request_id
        self.error = error


def parse_request(line: bytes) -> tuple[object, str, dict]:
    """Split one request line into (id, cmd, args), or raise _Reject."""
    try:
        doc = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise _Reject(None, InvalidArgument("request line is not valid UTF-8")) from None
    except ValueError as e:
        raise _Reject(None, InvalidArgument(f"request line is not JSON ({e.msg} at column {e.colno})")) from None
    if not isinstance(doc, dict):
        raise _Reject(None, InvalidArgument("a request must be a JSON object"))
    request_id = doc.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, (int, str)):
        raise _Reject(None, InvalidArgument("a request needs an \"id\" that is an integer or a string"))
    cmd = doc.get("cmd")
    if not isinstance(cmd, str) or not _COMMAND_NAME.match(cmd):
        raise _Reject(request_id, InvalidArgument("a request needs a \"cmd\" naming a command"))
    args = doc.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise _Reject(request_id, InvalidArgument("\"args\" must be a JSON object"))
    return request_id, cmd, args


def encode_response(request_id, data: dict) -> bytes:
    return _encode({"id": request_id, "status": "ok", "data": data})


def encode_error(request_id, error: PilotError) -> bytes:
    return _encode(
        {"id": request_id, "status": "error", "code": error.code, "message": error.message, "hint": error.hint}
    )


def _encode(doc: dict) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


class LineSplitter:
    """
    Cuts a byte stream into lines of at most ``limit`` bytes.

    An over-long line is reported once and its remainder skipped up to the
    next newline, so one bad request does not cost the client its connection.
    """

    TOO_LONG = object()

    def __init__(self, limit: int = MAX_REQUEST_LINE):
        self._limit = limit
        self._buffer = b""
        self._skipping = False

    def feed(self, data: bytes) -> list:
        """Return the complete lines in ``data`` (without newline), and TOO_LONG markers."""
        self.push(data)
        return list(self.lines())

    def push(self, data: bytes) -> None:
        self._buffer += data

    def lines(self):
        """Yield complete lines one at a time, consuming each before it is yielded,
        so a caller that stops early leaves the rest in :meth:`take_rest`."""
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                if not self._skipping and len(self._buffer) >= self._limit:
                    self._skipping = True
                    self._buffer = b""
                    yield self.TOO_LONG
                if self._skipping:
                    self._buffer = b""
                return
            line, self._buffer = self._buffer[:newline], self._buffer[newline + 1 :]
            if self._skipping:
                self._skipping = False
            elif newline + 1 > self._limit:
                yield self.TOO_LONG
            else:
                yield line.rstrip(b"\r")

    def take_rest(self) -> bytes:
        """The bytes after the last line taken (an upgraded connection's first raw bytes)."""
        rest, self._buffer = self._buffer, b""
        return rest


@implementer(IHalfCloseableProtocol)
class ControlProtocol(Protocol):
    """One client connection; thin: split lines, dispatch, write answers."""

    def __init__(self, handler):
        self._handler = handler
        self._lines = LineSplitter()
        self._connected = False
        #: the connection's owner after an Upgrade; no JSON is written once set
        self._pipe = None
        #: an upgrading command runs: client bytes are held, not parsed
        self._holding = False
        self._held = bytearray()
        self._read_closed = False
        self._paused = False

    def connectionMade(self):
        self._connected = True

    def connectionLost(self, reason=None):
        # Commands already running finish (a shutdown must not be cut in
        # half because its caller hung up); their answers are dropped.
        self._connected = False
        if self._pipe is not None:
            self._pipe.connectionLost(reason)

    def readConnectionLost(self):
        self._read_closed = True
        if self._pipe is not None:
            self._pipe.readConnectionLost()
        elif not self._holding:
            self.transport.loseConnection()

    def writeConnectionLost(self):
        """Our write side closed; the read side decides when we are done."""

    def dataReceived(self, data: bytes):
        if self._pipe is not None:
            self._pipe.dataReceived(data)
            return
        if self._holding:
            self._hold(data)
            return
        self._lines.push(data)
        for line in self._lines.lines():
            if line is LineSplitter.TOO_LONG:
                self._send(
                    encode_error(
                        None,
                        InvalidArgument(
                            f"request line longer than {MAX_REQUEST_LINE} bytes",
                            hint="Keep each request on one line under 64 KiB.",
                        ),
                    )
                )
            elif line.strip() and self._request(line):
                # The rest is not requests: held, piped, or (if the command
                # already failed) dropped.
                rest = self._lines.take_rest()
                if rest and (self._holding or self._pipe is not None):
                    self.dataReceived(rest)
                return

    def _hold(self, data: bytes):
        self._held += data
        if len(self._held) > _MAX_HELD and not self._paused:
            # The client streams before the upgrade is answered: let the
            # socket buffer take the rest.
            self._paused = True
            self.transport.pauseProducing()

    def _unpause(self):
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()

    def _request(self, line: bytes) -> bool:
        """Dispatch one request; True if it was an upgrading command."""
        try:
            request_id, cmd, args = parse_request(line)
            method = self._method(request_id, cmd, args)
        except _Reject as rejected:
            self._send(encode_error(rejected.request_id, rejected.error))
            return False
        upgrading = cmd in UPGRADING_COMMANDS
        self._holding = upgrading
        d = maybeDeferred(method, **args)
        d.addCallbacks(self._succeeded, self._failed, callbackArgs=(request_id, cmd), errbackArgs=(request_id, cmd))
        return upgrading

    def _method(self, request_id, cmd: str, args: dict):
        method = getattr(self._handler, _HANDLER_PREFIX + cmd, None)
        if method is None or not callable(method):
            raise _Reject(
                request_id,
                InvalidArgument(
                    f"unknown command {cmd!r}",
                    hint="Commands: " + ", ".join(command_names(self._handler)),
                ),
            )
        # Check the arguments before calling, so a TypeError raised by a bug
        # inside the command is not mistaken for the caller's mistake.
        try:
            inspect.signature(method).bind(**args)
        except TypeError as e:
            raise _Reject(
                request_id, InvalidArgument(f"bad arguments for {cmd!r}: {e}", hint=_signature_hint(cmd, method))
            ) from None
        return method

    def _succeeded(self, data, request_id, cmd):
        if isinstance(data, Upgrade):
            self._upgrade(data, request_id, cmd)
            return
        try:
            self._answer(data, request_id, cmd)
        finally:
            self._release(cmd)

    def _answer(self, data, request_id, cmd):
        if data is None:
            data = {}
        if not isinstance(data, dict):
            log.error("control command {cmd!r} returned {kind}, not a dict", cmd=cmd, kind=type(data).__name__)
            self._send(encode_error(request_id, PilotError(f"command {cmd!r} returned no result object")))
            return
        try:
            line = encode_response(request_id, data)
        except (TypeError, ValueError) as e:
            log.error("control command {cmd!r} returned unencodable data: {e}", cmd=cmd, e=e)
            self._send(encode_error(request_id, PilotError(f"command {cmd!r} returned a result that is not JSON")))
            return
        if len(line) > MAX_RESPONSE_LINE:
            self._send(encode_error(request_id, PilotError(f"the result of {cmd!r} is too large to send")))
            return
        self._send(line)

    def _upgrade(self, upgrade: Upgrade, request_id, cmd):
        if not self._connected or self._pipe is not None:
            if upgrade.abandon is not None:
                upgrade.abandon()
            return
        try:
            line = encode_response(request_id, upgrade.data)
        except (TypeError, ValueError) as e:
            log.error("control command {cmd!r} returned unencodable data: {e}", cmd=cmd, e=e)
            if upgrade.abandon is not None:
                upgrade.abandon()
            self._release(cmd)
            self._send(encode_error(request_id, PilotError(f"command {cmd!r} returned a result that is not JSON")))
            return
        self._send(line)
        self._holding = False
        held, self._held = bytes(self._held), bytearray()
        self._pipe = upgrade.take_over(self.transport)
        self._unpause()
        if held:
            self._pipe.dataReceived(held)
        if self._read_closed:
            self._pipe.readConnectionLost()

    def _release(self, cmd):
        """An upgrading command failed (or did not upgrade): back to JSON lines."""
        if cmd not in UPGRADING_COMMANDS or not self._holding:
            return
        self._holding = False
        # Whatever the client sent for the stream that did not open has no meaning now.
        self._held = bytearray()
        if self._connected:
            self._unpause()
            if self._read_closed:
                self.transport.loseConnection()

    def _failed(self, failure, request_id, cmd):
        try:
            self._report_failure(failure, request_id, cmd)
        finally:
            self._release(cmd)

    def _report_failure(self, failure, request_id, cmd):
        if failure.check(PilotError):
            self._send(encode_error(request_id, failure.value))
            return
        log.failure("control command {cmd!r} failed", failure, cmd=cmd)
        self._send(
            encode_error(
                request_id,
                PilotError(
                    f"{cmd!r} failed inside the daemon: {failure.getErrorMessage()}",
                    hint="This is a bug; the daemon log has the traceback.",
                ),
            )
        )

    def _send(self, line: bytes):
        if self._connected and self._pipe is None:
            self.transport.write(line)


def _signature_hint(cmd: str, method) -> str:
    params = [
        p.name if p.default is inspect.Parameter.empty else f"{p.name}?"
        for p in inspect.signature(method).parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    return f"{cmd!r} takes args: {{{', '.join(params)}}}" if params else f"{cmd!r} takes no args"


class ControlServerFactory(Factory):
    noisy = False  # the daemon log is for the network, not for every pilotctl call

    def __init__(self, handler):
        self.handler = handler

    def buildProtocol(self, addr):
        protocol = ControlProtocol(self.handler)
        protocol.factory = self
        return protocol


def check_socket_path(path: str) -> str:
    if len(os.fsencode(path)) > _MAX_UNIX_PATH:
        raise InvalidArgument(
            f"control socket path is too long for a UNIX socket: {path}",
            hint="Use a shorter --home (UNIX socket paths are limited to 107 bytes).",
        )
    return path


def socket_is_live(path: str) -> bool:
    """True if something accepts connections on the UNIX socket at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
        return True
    except socket.timeout:
        # A full backlog still means someone owns it.
        return True
    except OSError as e:
        if e.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise
    finally:
        probe.close()


def remove_stale_socket(path: str) -> None:
    """Delete ``path`` if it is a socket nobody listens on; raise AlreadyRunning if someone does."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise StateError(
            f"{path} exists and is not a socket",
            hint="Move that file aside; the daemon needs the name for its control socket.",
        )
    if socket_is_live(path):
        raise AlreadyRunning(f"a pilot daemon is already listening on {path}")
    os.unlink(path)


def listen_control_socket(reactor, path: str, handler) -> IListeningPort:
    """
    Listen for control connections at ``path`` with mode 0600.

    A socket file left by a daemon that died is removed; one that a live
    daemon answers on raises AlreadyRunning.
    """
    check_socket_path(path)
    remove_stale_socket(path)
    port = reactor.listenUNIX(path, ControlServerFactory(handler), mode=SOCKET_MODE, wantPID=False)
    # listenUNIX binds with the umask and chmods afterwards; the home is 0700
    # so nobody else can reach the socket in between, and we verify the end
    # result rather than trust it.
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode != SOCKET_MODE:
        port.stopListening()
        raise StateError(f"control socket {path} has mode {mode:o}, not {SOCKET_MODE:o}")
    return port
