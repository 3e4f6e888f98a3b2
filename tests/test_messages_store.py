"""The receiver's durable store and the inbox over it: reopening, seqs, dedup, long polls, limits."""

import hashlib
import json

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from pilotproto.node import mailstore
from pilotproto.node.inbox import Inbox, ItemProtocol, encode_header
from pilotproto.node.mailstore import DEDUP_SECONDS, MailStore
from pilotproto.streams.transport import PilotAddress

PEER = PilotAddress("agent-a", "0:0000.0000.0001", 0)


def send(inbox, data: bytes, id_=None):
    protocol = ItemProtocol(inbox, PEER)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(encode_header("message", len(data), hashlib.sha256(data).hexdigest(), id_=id_) + data)
    return json.loads(transport.value().splitlines()[0])


def test_items_survive_reopening_and_seqs_are_never_reused(tmp_path):
    clock = Clock()
    inbox = Inbox(str(tmp_path), clock)
    for i in range(3):
        assert send(inbox, f"m{i}".encode(), id_=f"{i:016x}")["status"] == "ok"
    inbox.store.close()
    again = Inbox(str(tmp_path), clock)
    items = again.inbox().result["messages"]
    assert [(m["seq"], m["text"], m["id"]) for m in items] == [(1, "m0", f"{0:016x}"), (2, "m1", f"{1:016x}"), (3, "m2", f"{2:016x}")]
    again.delete([1, 2, 3])
    again.store.close()
    third = Inbox(str(tmp_path), clock)
    send(third, b"after", id_="f" * 16)
    assert [m["seq"] for m in third.inbox().result["messages"]] == [4]
    assert third.inbox().result["last"] == 4


def test_a_duplicate_id_is_acked_again_but_stored_once(tmp_path):
    clock = Clock()
    inbox = Inbox(str(tmp_path), clock)
    first = send(inbox, b"once", id_="1" * 16)
    second = send(inbox, b"once", id_="1" * 16)
    assert first["duplicate"] is False and second == {**second, "status": "ok", "duplicate": True}
    assert [m["text"] for m in inbox.inbox().result["messages"]] == ["once"]
    # Without an id (an older sender) nothing is deduplicated; each gets an id of its own.
    send(inbox, b"old")
    send(inbox, b"old")
    ids = [m["id"] for m in inbox.inbox().result["messages"]]
    assert len(set(ids)) == 3
    # Past the dedup window the id is forgotten.
    clock.advance(DEDUP_SECONDS + 1)
    inbox.store.prune()
    assert send(inbox, b"once", id_="1" * 16)["duplicate"] is False


def test_binary_messages_have_data_and_no_text(tmp_path):
    inbox = Inbox(str(tmp_path), Clock())
    send(inbox, b"\xff\x00", id_="2" * 16)
    [item] = inbox.inbox().result["messages"]
    assert item["text"] is None and item["data"] == "/wA=" and item["kind"] == "message"


def test_inbox_long_polls_for_the_next_item_then_times_out(tmp_path):
    clock = Clock()
    inbox = Inbox(str(tmp_path), clock)
    got = []
    inbox.inbox(after=0, timeout=5).addCallback(got.append)
    clock.advance(1)
    send(inbox, b"hi", id_="3" * 16)
    assert [m["text"] for m in got[0]["messages"]] == ["hi"]
    errors = []
    inbox.inbox(after=1, timeout=2, kind="message").addErrback(lambda f: errors.append(f.value.code))
    clock.advance(2.5)
    assert errors == ["timeout"]


def test_the_event_log_keeps_the_newest(tmp_path, monkeypatch):
    monkeypatch.setattr(mailstore, "MAX_EVENTS", 3)
    store = MailStore(str(tmp_path), Clock())
    for i in range(5):
        store.add_event(id_=f"{i:016x}", topic="t", sender="a", address="x", published_at=0, data=b"%d" % i)
    assert [e["text"] for e in store.events_after(0)] == ["2", "3", "4"]
    assert store.last_event_seq() == 5


def test_a_full_inbox_refuses_with_no_space(tmp_path, monkeypatch):
    monkeypatch.setattr(mailstore, "MAX_ITEMS", 2)
    inbox = Inbox(str(tmp_path), Clock())
    send(inbox, b"1", id_="4" * 16)
    send(inbox, b"2", id_="5" * 16)
    answer = send(inbox, b"3", id_="6" * 16)
    assert answer["code"] == "no_space"
    inbox.delete([1])
    assert send(inbox, b"3", id_="6" * 16)["status"] == "ok"  # the retry after room was made
