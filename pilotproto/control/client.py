"""
The blocking client of the daemon's control socket.

Plain ``socket``, no reactor: ``pilotctl``, scripts and the lab call one
command at a time and wait for its answer (:meth:`ControlClient.call`), or
turn a control connection into a raw byte pipe to an overlay stream
(:meth:`~ControlClient.open_stream`, :meth:`~ControlClient.listen`,
:meth:`~ControlClient.accept`; ``docs/control.md``).  Each call uses its own
connection, so a late answer to a call that timed out can never be mistaken
for the next one's.  The wire format is :mod:`pilotproto.control.codec`'s,
shared with the daemon and the Twisted client.
"""

from __future__ import annotations

import itertools
import os
import socket
import time

from ..common import timeouts
from ..common.home import CONTROL_SOCKET, resolve_home
from ..errors import NotRunning, PilotError, ProtocolError, Timeout
from .codec import MAX_RESPONSE_LINE, Response, decode_response, encode_request, split_line
from .socketfile import connect_socket

CHUNK = 256 * 1024


class RawStream:
    """An upgraded control connection: ``sock`` is the stream; ``info`` the daemon's ok data."""

    def __init__(self, sock: socket.socket, info: dict, early: bytes):
        self.sock = sock
        self.info = info
        #: stream bytes that arrived in the same read as the ok line
        self.early = early

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def finish_sending(self) -> None:
        """Half-close: the peer sees the end of the stream; we keep reading."""
        self.sock.shutdown(socket.SHUT_WR)

    def recv(self, timeout: float) -> bytes:
        """The next bytes (``b""`` at the end of the stream); Timeout after ``timeout`` s of silence."""
        if self.early:
            data, self.early = self.early, b""
            return data
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(CHUNK)
        except socket.timeout:
            raise Timeout(f"nothing arrived on the stream for {timeout:g} s") from None
        except ConnectionResetError:
            return b""

    def read_line(self, timeout: float, limit: int = MAX_RESPONSE_LINE) -> bytes:
        buffer = b""
        while b"\n" not in buffer:
            if len(buffer) > limit:
                raise ProtocolError("the peer sent a line that is too long")
            chunk = self.recv(timeout)
            if not chunk:
                raise ProtocolError("the stream ended before a complete line arrived")
            buffer += chunk
        line, _, rest = buffer.partition(b"\n")
        self.early = rest + self.early
        return line

    def read_to_end(self, timeout: float, limit: int | None = None) -> bytes:
        """Everything until the peer's end of stream (``timeout``: seconds of silence allowed)."""
        parts, size = [], 0
        while True:
            chunk = self.recv(timeout)
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)
            size += len(chunk)
            if limit is not None and size > limit:
                raise ProtocolError(f"more than {limit} bytes arrived")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ControlClient:
    """The daemon whose home is ``home`` (default ``$PILOT_HOME`` or ``~/.pilot``)."""

    def __init__(self, home: str | None = None, socket_path: str | None = None):
        self.home = resolve_home(home)
        self.socket_path = socket_path or os.path.join(self.home, CONTROL_SOCKET)
        self._ids = itertools.count(1)

    # -- commands ---------------------------------------------------------------------

    def call(self, cmd: str, timeout: float = timeouts.CONTROL_COMMAND, **args) -> dict:
        """Run ``cmd`` in the daemon and return its result data (or raise its error)."""
        return self.request(cmd, args, timeout)

    def request(self, cmd: str, args: dict, timeout: float = timeouts.CONTROL_COMMAND) -> dict:
        """Like :meth:`call`, for args whose names clash with ``cmd``/``timeout``."""
        sock = self.connect(timeout)
        try:
            response, _ = self.exchange(sock, cmd, args, timeout)
        finally:
            sock.close()
        return response.result()

    # -- streams ----------------------------------------------------------------------

    def open_stream(self, peer: str, port: int, timeout: float = timeouts.CONTROL_CONNECT) -> RawStream:
        """A stream to ``port`` on ``peer`` (``connect``)."""
        return self.upgrade("connect", {"target": peer, "port": port}, timeout)

    def listen(self, port: int, timeout: float = timeouts.CONTROL_COMMAND) -> RawStream:
        """A ``listen`` connection: ``read_line`` gives one ``incoming`` event per stream."""
        return self.upgrade("listen", {"port": port}, timeout)

    def accept(self, stream_id: int, timeout: float = timeouts.CONTROL_COMMAND) -> RawStream:
        """Claim an incoming stream announced by a ``listen`` connection."""
        return self.upgrade("accept", {"stream_id": stream_id}, timeout)

    def upgrade(self, cmd: str, args: dict, timeout: float, sock: socket.socket | None = None) -> RawStream:
        """Send an upgrading command (on ``sock`` if given) and hand back the connection it became."""
        sock = sock if sock is not None else self.connect(timeout)
        try:
            response, early = self.exchange(sock, cmd, args, timeout)
            return RawStream(sock, response.result(), early)
        except BaseException:
            sock.close()
            raise

    # -- one exchange -------------------------------------------------------------------

    def connect(self, timeout: float) -> socket.socket:
        """A new connection to the control socket (NotRunning, Timeout, PermissionDenied)."""
        return connect_socket(self.socket_path, self.home, timeout)

    def exchange(self, sock: socket.socket, cmd: str, args: dict, timeout: float) -> tuple[Response, bytes]:
        """Send one request on ``sock``; its response and the bytes that came after it."""
        request_id = next(self._ids)
        line = encode_request(request_id, cmd, args)
        deadline = time.monotonic() + timeout
        try:
            sock.settimeout(timeout)
            sock.sendall(line)
            buffer = b""
            while True:
                found = split_line(buffer)
                if found is not None:
                    line, buffer = found
                    response = decode_response(line)
                    # An id-less error: the daemon could not even read our request.
                    if response.id == request_id or (response.id is None and not response.ok):
                        return response, buffer
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise socket.timeout
                sock.settimeout(remaining)
                chunk = sock.recv(65536)
                if not chunk:
                    raise _closed_early(cmd)
                buffer += chunk
        except socket.timeout:
            raise Timeout(
                f"the daemon did not answer {cmd!r} within {timeout:g} s",
                hint="Check 'pilotctl daemon status' and the daemon log.",
            ) from None
        except (BrokenPipeError, ConnectionResetError):
            raise _closed_early(cmd) from None


def _closed_early(cmd: str) -> PilotError:
    return NotRunning(
        f"the daemon closed the control connection before answering {cmd!r}",
        hint="It may be shutting down; check 'pilotctl daemon status' and the daemon log.",
    )
