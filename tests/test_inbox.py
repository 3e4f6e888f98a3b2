"""The port-1001 inbox without a network: framing, names, checksums, the durable items."""

import hashlib
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from pilotproto.errors import InvalidArgument, PilotError, ProtocolError
from pilotproto.node import mailstore
from pilotproto.node.inbox import (
    ChecksumMismatch,
    Inbox,
    InboxProtocol,
    encode_header,
    parse_header,
    parse_reply,
    safe_file_name,
)
from pilotproto.streams.transport import PilotAddress

PEER = PilotAddress("agent-a", "0:0000.0000.0001", 0)


def deliver(inbox, chunks):
    protocol = InboxProtocol(inbox, PEER)
    transport = StringTransport()
    protocol.makeConnection(transport)
    for chunk in chunks:
        protocol.dataReceived(chunk)
    return protocol, transport


def reply(transport):
    return json.loads(transport.value().splitlines()[0])


def file_chunks(data, name, sha=None, step=7000):
    header = encode_header("file", len(data), sha or hashlib.sha256(data).hexdigest(), name)
    stream = header + data
    return [stream[i : i + step] for i in range(0, len(stream), step)] or [b""]


def listing(inbox):
    return sorted(os.listdir(inbox.directory))


def test_a_file_lands_in_the_inbox_and_never_overwrites(tmp_path):
    inbox = Inbox(str(tmp_path), Clock())
    data = os.urandom(100_000)
    for expected in ("report.txt", "report (1).txt", "report (2).txt"):
        _, transport = deliver(inbox, file_chunks(data, "report.txt"))
        answer = reply(transport)
        assert answer == {"status": "ok", "kind": "file", "name": expected, "size": len(data),
                          "sha256": hashlib.sha256(data).hexdigest(), "id": answer["id"], "duplicate": False,
                          "path": os.path.join(os.path.abspath(inbox.directory), expected)}
        assert transport.disconnecting
    assert listing(inbox) == ["report (1).txt", "report (2).txt", "report.txt"]
    assert open(os.path.join(inbox.directory, "report.txt"), "rb").read() == data


def test_a_traversal_name_keeps_only_its_last_component(tmp_path):
    home = tmp_path / "home"
    inbox = Inbox(str(home), Clock())
    _, transport = deliver(inbox, file_chunks(b"payload", "../../etc/x"))
    assert reply(transport)["name"] == "x"
    assert listing(inbox) == ["x"]
    assert not (tmp_path / "etc").exists() and sorted(os.listdir(home)) == ["inbox", "inbox.db"]


@pytest.mark.parametrize("name", ["..", "../..", "", ".", ".hidden", "dir/", "a\x00b", "bad\nname", None, "x" * 300])
def test_unusable_names_are_refused_before_any_byte_is_stored(tmp_path, name):
    inbox = Inbox(str(tmp_path), Clock())
    header = json.dumps({"kind": "file", "name": name, "size": 3, "sha256": hashlib.sha256(b"abc").hexdigest()})
    _, transport = deliver(inbox, [header.encode() + b"\nabc"])
    answer = reply(transport)
    assert answer["status"] == "error" and answer["code"] == "invalid_argument"
    assert not os.path.exists(inbox.directory) or listing(inbox) == []


def test_a_checksum_mismatch_deletes_the_data_and_says_so(tmp_path):
    inbox = Inbox(str(tmp_path), Clock())
    _, transport = deliver(inbox, file_chunks(b"real data", "f.bin", sha="0" * 64))
    answer = reply(transport)
    assert answer["code"] == "checksum_mismatch"
    assert listing(inbox) == []
    with pytest.raises(ChecksumMismatch):
        parse_reply(transport.value().splitlines()[0])


def test_a_stream_that_ends_early_leaves_nothing(tmp_path):
    inbox = Inbox(str(tmp_path), Clock())
    protocol, transport = deliver(inbox, [encode_header("file", 10, "a" * 64, "f.bin") + b"0123"])
    protocol.readConnectionLost()
    assert reply(transport)["code"] == "protocol_error"
    assert listing(inbox) == []


def test_too_many_bytes_is_a_protocol_error(tmp_path):
    inbox = Inbox(str(tmp_path), Clock())
    _, transport = deliver(inbox, [encode_header("file", 2, "a" * 64, "f") + b"abc"])
    assert reply(transport)["code"] == "protocol_error"
    assert listing(inbox) == []


def test_the_connection_going_away_mid_file_removes_the_temporary(tmp_path):
    inbox = Inbox(str(tmp_path), Clock())
    protocol, _ = deliver(inbox, [encode_header("file", 100, "a" * 64, "f") + b"abc"])
    assert len(listing(inbox)) == 1  # the hidden temporary
    protocol.connectionLost(None)
    assert listing(inbox) == []


def test_messages_queue_and_recv_waits_for_them(tmp_path):
    clock = Clock()
    inbox = Inbox(str(tmp_path), clock)
    results = []
    inbox.recv(2, 5).addCallback(results.append)
    for text in ("one", "two ✓"):
        data = text.encode()
        _, transport = deliver(inbox, [encode_header("message", len(data), hashlib.sha256(data).hexdigest()), data])
        assert reply(transport)["status"] == "ok"
    [got] = results
    assert [m["text"] for m in got["messages"]] == ["one", "two ✓"]
    assert got["messages"][0]["from"] == "agent-a"
    failures = []
    inbox.recv(1, 1).addErrback(lambda f: failures.append(f.value.code))
    clock.advance(1.5)
    assert failures == ["timeout"]
    assert inbox.recv(None, 0).result == {"messages": []}


def test_the_inbox_is_bounded_per_sender_and_says_no_space(tmp_path, monkeypatch):
    monkeypatch.setattr(mailstore, "MAX_ITEMS_PER_SENDER", 5)
    inbox = Inbox(str(tmp_path), Clock())
    for i in range(5):
        data = str(i).encode()
        inbox.store_message(PEER, data, hashlib.sha256(data).hexdigest())
    data = b"one too many"
    _, transport = deliver(inbox, [encode_header("message", len(data), hashlib.sha256(data).hexdigest()), data])
    assert reply(transport)["code"] == "no_space"
    messages = inbox.recv(None, 0).result["messages"]
    assert [m["text"] for m in messages] == ["0", "1", "2", "3", "4"]


def test_recv_checks_its_arguments(tmp_path):
    inbox = Inbox(str(tmp_path), Clock())
    for count, timeout in ((0, 0), (True, 0), (1, -1), (1, "soon")):
        with pytest.raises(InvalidArgument):
            inbox.recv(count, timeout)


@given(
    kind=st.sampled_from(["message", "file"]),
    size=st.integers(0, 64 * 1024),
    digest=st.binary(min_size=32, max_size=32).map(bytes.hex),
    name=st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40).filter(
        lambda n: not n.strip().startswith(".") and "/" not in n and "\\" not in n and n.strip()
    ),
)
def test_header_round_trip(kind, size, digest, name):
    name = name if kind == "file" else None
    header = parse_header(encode_header(kind, size, digest, name).rstrip(b"\n"))
    assert header == {"kind": kind, "size": size, "sha256": digest, "name": name.strip() if name else None, "id": None}


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_header_bytes_raise_only_the_documented_errors(data):
    try:
        parse_header(data)
    except (ProtocolError, InvalidArgument):
        pass


@given(st.text(max_size=80))
def test_safe_names_never_leave_the_directory(name):
    try:
        safe = safe_file_name(name)
    except InvalidArgument:
        return
    assert "/" not in safe and "\\" not in safe and "\x00" not in safe
    assert safe and not safe.startswith(".") and safe not in (".", "..")


def test_parse_reply_rebuilds_errors():
    with pytest.raises(PilotError) as e:
        parse_reply(b'{"status":"error","code":"no_space","message":"full","hint":null}')
    assert e.value.code == "no_space"
    with pytest.raises(ProtocolError):
        parse_reply(b"[]")
