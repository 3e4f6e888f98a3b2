"""Events without a network: topic patterns, announcements, linger, publish, receive, replay."""

import hashlib
import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from pilotproto.errors import InvalidArgument
from pilotproto.interfaces import IMailPeers, IOutbox
from pilotproto.node.events import Events, parse_event_header
from pilotproto.node.inbox import ItemProtocol, encode_header
from pilotproto.node.mailstore import MailStore
from pilotproto.node.topics import check_pattern, check_topic, matches
from pilotproto.streams.transport import PilotAddress

B = "0:0000.0000.000B"
C = "0:0000.0000.000C"

part = st.text("abcXYZ019_-", min_size=1, max_size=6)
topics = st.lists(part, min_size=1, max_size=5).map(".".join)


@given(topics, st.data())
def test_a_pattern_made_by_starring_a_substring_matches(topic, data):
    i = data.draw(st.integers(0, len(topic)))
    j = data.draw(st.integers(i, len(topic)))
    pattern = topic[:i] + "*" + topic[j:]
    try:
        check_pattern(pattern)
    except InvalidArgument:
        return  # a star next to a dot boundary can make an empty part: not a pattern
    assert matches(pattern, topic)


@given(topics, topics)
def test_a_pattern_without_stars_matches_only_itself_and_star_everything(a, b):
    assert matches(a, b) == (a == b)
    assert matches("*", a)


def test_wildcards_cross_dots():
    assert matches("news.*", "news.a") and matches("news.*", "news.a.b") and not matches("news.*", "news")
    assert matches("*.errors", "app.db.errors") and not matches("*.errors", "app.errors.x")


@given(st.text(max_size=30))
def test_topic_and_pattern_checks_raise_only_invalid_argument(text):
    for check in (check_topic, check_pattern):
        try:
            assert check(text) == text
        except InvalidArgument:
            pass


@implementer(IOutbox)
class FakeOutbox:
    def __init__(self):
        self.items = []
        self.seen = []

    def enqueue(self, address, port, id, kind, header, data, replaces=None):
        if replaces:
            self.items = [i for i in self.items if not (i[0] == address and i[2] == replaces)]
        self.items.append((address, port, kind, header, data))
        return len(self.items)

    def when_acked(self, n):
        raise NotImplementedError

    def peer_seen(self, address):
        self.seen.append(address)

    def drop_peer(self, address):
        self.items = [i for i in self.items if i[0] != address]

    def announced(self):
        return {i[0]: i[3]["patterns"] for i in self.items if i[2] == "subscriptions"}

    def events(self):
        return [(i[0], i[3]["topic"]) for i in self.items if i[2] == "event"]


@implementer(IMailPeers)
class FakePeers:
    def __init__(self, *addresses):
        self.addresses = list(addresses)

    def trusted_peers(self):
        return [{"hostname": f"host-{a[-1]}", "address": a} for a in self.addresses]

    def lookup(self, target):
        raise NotImplementedError

    def dial(self, target, port, factory):
        raise NotImplementedError


def make(tmp_path, clock, peers=(B, C), linger=600.0):
    outbox = FakeOutbox()
    counter = itertools.count(1)
    events = Events(clock, MailStore(str(tmp_path), clock), outbox, FakePeers(*peers), lambda: next(counter),
                    "me", "0:0000.0000.000A", linger=linger)
    events.start()
    return events, outbox


def test_patterns_are_announced_to_every_trusted_peer_and_linger(tmp_path):
    clock = Clock()
    events, outbox = make(tmp_path, clock)
    assert outbox.announced() == {}  # no patterns, nothing to say: no session to every trusted peer
    sub = events.subscribe("news.*", None, lambda e: None)
    assert outbox.announced() == {B: ["news.*"], C: ["news.*"]}
    assert len([i for i in outbox.items if i[2] == "subscriptions"]) == 2  # the newer set replaced the older
    sub.close()
    clock.advance(599)
    assert outbox.announced() == {B: ["news.*"], C: ["news.*"]}
    clock.advance(2)
    assert outbox.announced() == {B: [], C: []}


def test_without_patterns_a_restart_tells_only_recent_correspondents_it_is_up(tmp_path):
    clock = Clock()
    events, _ = make(tmp_path, clock)
    deliver(events, event_header("news.a", b"x", "00000000000000e1"), b"x")  # B sent us something
    events.stop()
    events.store.close()
    clock.advance(60)
    again, outbox = make(tmp_path, clock)
    assert outbox.announced() == {B: []}  # B may hold more for us: it retries now; C hears nothing


def test_a_new_peer_hears_our_patterns_only_if_we_have_some(tmp_path):
    clock = Clock()
    events, outbox = make(tmp_path, clock)
    events.trust_established(b"\x01" * 32)
    assert outbox.items == []
    events.subscribe("jobs.*", None, lambda e: None)
    outbox.items.clear()
    events.trust_established(b"\x01" * 32)
    assert [item[2] for item in outbox.items] == ["subscriptions"]


def test_a_restart_keeps_announcing_a_pattern_whose_feed_was_open(tmp_path):
    clock = Clock()
    events, _ = make(tmp_path, clock)
    events.subscribe("jobs.*", None, lambda e: None)
    events.stop()
    events.store.close()
    clock.advance(3600)
    again, outbox = make(tmp_path, clock)
    assert outbox.announced() == {B: ["jobs.*"], C: ["jobs.*"]}
    clock.advance(601)
    assert outbox.announced() == {B: [], C: []}


def deliver(events, header: dict, data: bytes, peer=PilotAddress("host-B", B, 0)):
    protocol = ItemProtocol(events, peer)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(json.dumps(header).encode() + b"\n" + data)
    return json.loads(transport.value().splitlines()[0])


def event_header(topic, data, id_):
    return {"kind": "event", "topic": topic, "published_at": 1.0, "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "id": id_}


def test_publish_goes_to_trusted_peers_whose_patterns_match(tmp_path):
    clock = Clock()
    events, outbox = make(tmp_path, clock, peers=(B,))
    empty = hashlib.sha256(b"").hexdigest()
    answer = deliver(events, {"kind": "subscriptions", "patterns": ["news.*"], "size": 0, "sha256": empty, "id": "1" * 16}, b"")
    assert answer["status"] == "ok" and outbox.seen == [B]
    events.store.set_peer_patterns(C, ["*"])  # C announced, but we no longer trust it
    assert events.publish("news.x", b"hi")["subscribers"] == ["host-B"]
    assert events.publish("sports", b"no")["subscribers"] == []
    assert outbox.events() == [(B, "news.x")]
    events.trust_revoked(b"\x00" * 32)  # someone else: B's patterns stay
    assert events.publish("news.y", b"hi")["subscribers"] == ["host-B"]


def test_received_events_are_logged_once_dispatched_and_replayed(tmp_path):
    clock = Clock()
    events, _ = make(tmp_path, clock)
    live = []
    events.subscribe("news.*", None, live.append)
    for _ in range(2):
        deliver(events, event_header("news.a", b"one", "a" * 16), b"one")
    deliver(events, event_header("other", b"two", "b" * 16), b"two")
    assert [e["text"] for e in live] == ["one"]
    events.publish("news.mine", b"three")
    assert [e["text"] for e in live] == ["one", "three"]
    replayed = []
    sub = events.subscribe("*", 0, replayed.append)
    assert [e["text"] for e in replayed] == ["one", "two", "three"] and sub.last == 3
    assert [e["seq"] for e in replayed] == [1, 2, 3]


def test_bad_event_headers_are_refused():
    for doc in ({"kind": "event", "topic": "bad topic", "published_at": 1, "size": 0, "sha256": "0" * 64, "id": "1" * 16},
                {"kind": "event", "topic": "t", "published_at": 1, "size": 0, "sha256": "0" * 64},
                {"kind": "subscriptions", "patterns": "x", "size": 0, "sha256": "0" * 64, "id": "1" * 16},
                {"kind": "message", "size": 0, "sha256": "0" * 64}):
        with pytest.raises((InvalidArgument, Exception)) as e:
            parse_event_header(json.dumps(doc).encode())
        assert getattr(e.value, "code", None) in ("invalid_argument", "protocol_error")
    assert encode_header  # the same framing as port 1001
