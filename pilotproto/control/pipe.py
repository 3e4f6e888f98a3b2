"""
Streams through the daemon from plain blocking Python (no reactor).

``open_stream(home, peer, port)`` sends ``connect`` on a fresh control
connection and, once the daemon says ok, hands back the socket as a raw
byte pipe to the overlay stream (``docs/control.md``).  ``listen_port`` and
``accept_stream`` do the same for the serving side.  This is what
``pilotctl connect/send/recv/send-file/bench`` use, and about what an SDK in
another language has to write.
"""

from __future__ import annotations

import json
import socket
import time

from ..errors import NotRunning, PilotError, ProtocolError, Timeout
from ..streams import errors as _stream_errors  # noqa: F401  (registers connection_refused & co.)
from .client import ControlClient
from .server import MAX_RESPONSE_LINE

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


def _upgrade(home: str, cmd: str, args: dict, timeout: float) -> RawStream:
    client = ControlClient(home)
    sock = client._connect(timeout)
    try:
        sock.sendall(json.dumps({"id": 1, "cmd": cmd, "args": args}, separators=(",", ":")).encode() + b"\n")
        buffer = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Timeout(f"the daemon did not answer {cmd!r} within {timeout:g} s")
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                raise Timeout(f"the daemon did not answer {cmd!r} within {timeout:g} s") from None
            if not chunk:
                raise NotRunning(f"the daemon closed the control connection before answering {cmd!r}")
            buffer += chunk
            if len(buffer) > MAX_RESPONSE_LINE:
                raise ProtocolError(f"the daemon's answer to {cmd!r} is too long")
        line, _, early = buffer.partition(b"\n")
        try:
            doc = json.loads(line)
        except ValueError:
            raise ProtocolError("the daemon answered with a line that is not JSON") from None
        if not isinstance(doc, dict) or doc.get("status") not in ("ok", "error"):
            raise ProtocolError("the daemon's answer has no status")
        if doc["status"] == "error":
            raise PilotError.from_dict(doc)
        data = doc.get("data") if isinstance(doc.get("data"), dict) else {}
        return RawStream(sock, data, early)
    except BaseException:
        sock.close()
        raise


def open_stream(home: str, peer: str, port: int, timeout: float = 40.0) -> RawStream:
    """A stream to ``port`` on ``peer`` through the daemon at ``home``."""
    return _upgrade(home, "connect", {"target": peer, "port": port}, timeout)


def accept_stream(home: str, stream_id: int, timeout: float = 10.0) -> RawStream:
    """Claim an incoming stream announced by a ``listen`` connection."""
    return _upgrade(home, "accept", {"stream_id": stream_id}, timeout)


def listen_port(home: str, port: int, timeout: float = 10.0) -> RawStream:
    """A ``listen`` connection: ``read_line`` gives one ``incoming`` event per stream."""
    return _upgrade(home, "listen", {"port": port}, timeout)
