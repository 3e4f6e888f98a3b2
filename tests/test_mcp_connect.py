"""The JSON-RPC-aware bridge of ``pilotctl mcp connect``: real sockets and pipes on this host, no daemon."""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import threading

import pytest

from pilotproto.cli import mcp_connect
from pilotproto.cli.mcp_commands import parse_peer
from pilotproto.control.client import RawStream
from pilotproto.errors import InvalidArgument, NotTrusted


def line(doc) -> bytes:
    return json.dumps(doc).encode() + b"\n"


def request(rid, method="tools/call"):
    return line({"jsonrpc": "2.0", "id": rid, "method": method, "params": {}})


def response(rid):
    return line({"jsonrpc": "2.0", "id": rid, "result": {}})


NOTIFY = line({"jsonrpc": "2.0", "method": "notifications/initialized"})


def test_the_tracker_follows_requests_and_their_answers():
    tracker = mcp_connect.JsonRpcTracker()
    data = request(1) + NOTIFY + request("b") + line([{"jsonrpc": "2.0", "id": 3, "method": "x"}])
    tracker.host_sent(data[:10])
    tracker.host_sent(data[10:])
    tracker.host_sent(b"not json\n" + line({"jsonrpc": "2.0", "id": 9, "result": {}}))  # the host answering the server
    assert list(tracker.pending.values()) == [1, "b", 3]
    tracker.server_sent(line({"jsonrpc": "2.0", "id": 7, "method": "sampling/createMessage"}))  # the server asking
    tracker.server_sent(response("b") + line({"jsonrpc": "2.0", "id": 3, "error": {"code": 1, "message": "no"}}))
    assert tracker.drain() == [1] and tracker.pending == {}


def test_an_overlong_line_is_passed_on_but_not_tracked(monkeypatch):
    monkeypatch.setattr(mcp_connect, "MAX_TRACKED_LINE", 64)
    tracker = mcp_connect.JsonRpcTracker()
    tracker.host_sent(b'{"jsonrpc":"2.0","id":1,"method":"x","params":"' + b"a" * 100)
    tracker.host_sent(b'"}\n' + request(2))
    assert tracker.drain() == [2]


def test_error_lines_name_the_pilot_error():
    doc = json.loads(mcp_connect.error_line("x", mcp_connect.UNREACHABLE, NotTrusted("agent-b does not trust us",
                                                                                     hint="Ask it.")))
    assert doc["id"] == "x" and doc["error"]["code"] == -32000
    assert doc["error"]["message"] == "pilot: [not_trusted] agent-b does not trust us (hint: Ask it.)"
    assert doc["error"]["data"] == {"pilot_code": "not_trusted", "message": "agent-b does not trust us", "hint": "Ask it."}


def test_refuse_all_answers_every_request_until_stdin_closes():
    read_fd, write_fd = os.pipe()
    os.write(write_fd, request(1, "initialize") + NOTIFY + request(2))
    os.close(write_fd)
    out = io.BytesIO()
    assert mcp_connect.refuse_all(NotTrusted("no"), read_fd, out) == 2
    os.close(read_fd)
    assert [json.loads(x)["id"] for x in out.getvalue().splitlines()] == [1, 2]


def run_bridge(server, host_lines, close_stdin, pair=None):
    """Bridge a pipe (the host) to one end of ``pair``; ``server(sock)`` plays the far side in a thread."""
    ours, theirs = pair or socket.socketpair()
    read_fd, write_fd = os.pipe()
    os.write(write_fd, host_lines)
    if close_stdin:
        os.close(write_fd)
    thread = threading.Thread(target=server, args=(theirs,), daemon=True)
    thread.start()
    out = io.BytesIO()
    try:
        summary = mcp_connect.bridge(RawStream(ours, {}, b""), read_fd, out, "agent-b", 1003)
    finally:
        thread.join(10)
        os.close(read_fd)
        if not close_stdin:
            os.close(write_fd)
        ours.close()
    return summary, [json.loads(x) for x in out.getvalue().splitlines()]


def read_lines(sock, count):
    buffer = b""
    while buffer.count(b"\n") < count:
        chunk = sock.recv(4096)
        if not chunk:
            break
        buffer += chunk
    return buffer


def test_a_session_that_ends_mid_way_answers_what_is_unanswered_at_once():
    def server(sock):
        read_lines(sock, 3)
        sock.sendall(response(1))
        sock.close()  # the server process died with request 2 unanswered

    summary, out = run_bridge(server, request(1) + NOTIFY + request(2), close_stdin=False)
    assert out[0] == {"jsonrpc": "2.0", "id": 1, "result": {}}
    assert [m["id"] for m in out[1:]] == [2] and out[1]["error"]["code"] == mcp_connect.SESSION_ENDED
    assert "closed before it answered" in out[1]["error"]["message"]
    assert summary["unanswered"] == 1 and summary["error"].code == "unavailable"


def test_a_clean_session_ends_without_error():
    def server(sock):
        read_lines(sock, 1)
        sock.sendall(response(1))
        assert sock.recv(10) == b""  # the host's end of input arrived as the stream's FIN
        sock.close()

    summary, out = run_bridge(server, request(1), close_stdin=True)
    assert out == [{"jsonrpc": "2.0", "id": 1, "result": {}}]
    assert summary["error"] is None and summary["bytes_sent"] == len(request(1))


def test_a_reset_says_so():
    listener = socket.create_server(("127.0.0.1", 0))
    ours = socket.create_connection(listener.getsockname())
    theirs, _ = listener.accept()
    listener.close()

    def server(sock):
        read_lines(sock, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST

    summary, out = run_bridge(server, request(5), close_stdin=False, pair=(ours, theirs))
    assert out[0]["id"] == 5 and "was reset before it answered" in out[0]["error"]["message"]


def test_peer_arguments():
    assert parse_peer("agent-b") == ("agent-b", 1003)
    assert parse_peer("agent-b:7003") == ("agent-b", 7003)
    assert parse_peer("0:A91F.0000.7C2E") == ("0:A91F.0000.7C2E", 1003)
    assert parse_peer("0:A91F.0000.7C2E:80") == ("0:A91F.0000.7C2E", 80)
    with pytest.raises(InvalidArgument):
        parse_peer("agent-b:http")
