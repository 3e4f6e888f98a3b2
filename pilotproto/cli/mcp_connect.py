"""
``pilotctl mcp connect PEER[:P]``: a stdio MCP server for a local MCP host,
whose other end is the stdio MCP server a peer publishes with ``pilotctl mcp
serve`` (overlay port :data:`~pilotproto.node.mcp_specs.MCP_PORT` unless
``:P`` says otherwise).

The bytes pass through unchanged: MCP's stdio framing is newline-delimited
JSON-RPC, and the far end speaks it.  But the bridge reads along
(:class:`JsonRpcTracker`) and keeps the ids of the host's requests that have
no response yet, so that a host never waits for an answer that cannot come:

- the peer cannot be reached (no daemon, ``not_found``, ``not_trusted``,
  ``connection_refused``, ``timeout``...): every request the host sends is
  answered with a JSON-RPC error naming the pilot code, message and hint
  (code :data:`UNREACHABLE`), until the host closes stdin; exit non-zero;
- the stream ends or resets mid-session (the server process died): every
  request still unanswered gets a JSON-RPC error at once (code
  :data:`SESSION_ENDED`) and the command exits, non-zero.

Notifications (no id) get no answer.  Nothing but JSON-RPC is ever written
to stdout; diagnostics go to stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket

from ..errors import PilotError, Unavailable

#: JSON-RPC error codes (the -32000..-32099 range is the implementation's)
UNREACHABLE = -32000
SESSION_ENDED = -32001
#: a line longer than this is passed on but not read along (its id, if any, is not tracked)
MAX_TRACKED_LINE = 16 * 1024 * 1024
CHUNK = 64 * 1024


def _ids_of(doc, requests: bool) -> list:
    """The ids of the requests (``requests``) or of the responses in one message or batch."""
    items = doc if isinstance(doc, list) else [doc]
    found = []
    for item in items:
        if not isinstance(item, dict) or "id" not in item or item["id"] is None:
            continue
        if requests and "method" in item:
            found.append(item["id"])
        elif not requests and "method" not in item and ("result" in item or "error" in item):
            found.append(item["id"])
    return found


def _key(request_id) -> str:
    return json.dumps(request_id, sort_keys=True)


class _Lines:
    """Splits a byte stream into complete lines, bounded."""

    def __init__(self):
        self._buffer = b""
        self._skipping = False

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        lines = []
        while True:
            line, sep, rest = self._buffer.partition(b"\n")
            if not sep:
                break
            self._buffer = rest
            if self._skipping:
                self._skipping = False
            else:
                lines.append(line)
        if len(self._buffer) > MAX_TRACKED_LINE:
            self._buffer, self._skipping = b"", True
        return lines


class JsonRpcTracker:
    """Reads both directions along and knows which of the host's requests await an answer."""

    def __init__(self):
        self._from_host = _Lines()
        self._from_server = _Lines()
        #: id key -> the id, in the order the requests were sent
        self.pending: dict[str, object] = {}

    def host_sent(self, data: bytes) -> None:
        for line in self._from_host.feed(data):
            for request_id in _ids_of(_parse(line), requests=True):
                self.pending[_key(request_id)] = request_id

    def server_sent(self, data: bytes) -> None:
        for line in self._from_server.feed(data):
            for request_id in _ids_of(_parse(line), requests=False):
                self.pending.pop(_key(request_id), None)

    def requests_in(self, data: bytes) -> list:
        """The request ids in ``data`` from the host, when nothing is forwarded (the peer is unreachable)."""
        return [rid for line in self._from_host.feed(data) for rid in _ids_of(_parse(line), requests=True)]

    def drain(self) -> list:
        """The unanswered ids, forgotten."""
        ids, self.pending = list(self.pending.values()), {}
        return ids


def _parse(line: bytes):
    try:
        return json.loads(line)
    except ValueError:
        return None


def error_line(request_id, code: int, problem: PilotError) -> bytes:
    """A JSON-RPC error response for ``request_id``, naming the pilot error's code, message and hint."""
    text = f"pilot: [{problem.code}] {problem.message}" + (f" (hint: {problem.hint})" if problem.hint else "")
    doc = {"jsonrpc": "2.0", "id": request_id,
           "error": {"code": code, "message": text,
                     "data": {"pilot_code": problem.code, "message": problem.message, "hint": problem.hint}}}
    return json.dumps(doc, ensure_ascii=False).encode("utf-8") + b"\n"


def session_ended(peer: str, port: int, reset: bool) -> PilotError:
    how = "reset" if reset else "closed"
    return Unavailable(f"the MCP session with {peer} port {port} was {how} before it answered (its server "
                       "process ended)", hint=f"See the daemon log on {peer} (its stderr is there), then reconnect.")


def refuse_all(problem: PilotError, stdin_fd: int, stdout) -> int:
    """The peer is unreachable: answer every request with ``problem`` until stdin closes; how many."""
    tracker, answered = JsonRpcTracker(), 0
    while True:
        data = os.read(stdin_fd, CHUNK)
        if not data:
            return answered
        for request_id in tracker.requests_in(data):
            stdout.write(error_line(request_id, UNREACHABLE, problem))
            stdout.flush()
            answered += 1


def bridge(stream, stdin_fd: int, stdout, peer: str, port: int) -> dict:
    """stdin -> stream, stream -> stdout, reading along; a summary, with ``error`` if the session broke."""
    tracker = JsonRpcTracker()
    sent = received = 0
    sock = stream.sock
    sock.setblocking(True)

    def to_host(data: bytes) -> None:
        nonlocal received
        tracker.server_sent(data)
        stdout.write(data)
        stdout.flush()
        received += len(data)

    if stream.early:
        to_host(stream.early)
        stream.early = b""
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ, "stream")
    selector.register(stdin_fd, selectors.EVENT_READ, "stdin")
    stdin_open = True
    try:
        while True:
            for key, _ in selector.select():
                if key.data == "stdin":
                    data = os.read(stdin_fd, CHUNK)
                    if data:
                        tracker.host_sent(data)
                        try:
                            sock.sendall(data)
                        except (BrokenPipeError, ConnectionResetError):
                            pass  # the read side tells how it ended
                        sent += len(data)
                    else:
                        stdin_open = False
                        selector.unregister(stdin_fd)
                        with contextlib.suppress(OSError):  # the stream already ended
                            sock.shutdown(socket.SHUT_WR)
                    continue
                reset = False
                try:
                    data = sock.recv(CHUNK)
                except ConnectionResetError:
                    data, reset = b"", True
                if data:
                    to_host(data)
                    continue
                unanswered = tracker.drain()
                problem = session_ended(peer, port, reset)
                for request_id in unanswered:
                    stdout.write(error_line(request_id, SESSION_ENDED, problem))
                stdout.flush()
                broke = reset or stdin_open or bool(unanswered)
                return {"peer": peer, "port": port, "bytes_sent": sent, "bytes_received": received,
                        "unanswered": len(unanswered), "error": problem if broke else None}
    finally:
        selector.close()
