"""The node's TrustManager against a real BeaconServer, all on one Clock."""

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from pilotproto.beacon.server import BeaconServer
from pilotproto.errors import InvalidArgument, NotFound
from pilotproto.identity import Identity
from pilotproto.trust.manager import TrustManager
from pilotproto.trust.store import TrustStore
from pilotproto.wire import Endpoint
from pilotproto.wire import beacon as msgs


class Counter:
    def __init__(self):
        self.value = 10**6

    def next(self):
        self.value += 1
        return self.value


class Net:
    """Datagrams between managers and the beacon, each one a clock tick later (like a network)."""

    def __init__(self):
        self.clock = Clock()
        self.beacon = BeaconServer(self.clock, send=self._from_beacon)
        self.nodes = {}
        self.dropping = set()
        #: endpoints whose datagrams to the beacon are lost (the other way still works)
        self.muted = set()

    def _from_beacon(self, data, endpoint):
        if endpoint in self.dropping:
            return
        node = self.nodes.get(endpoint)
        if node is not None and node.online:
            self.clock.callLater(0, node.receive, data)

    def settle(self, seconds=0.0):
        self.clock.advance(0)
        self.clock.advance(0)
        for _ in range(int(seconds * 10)):
            self.clock.advance(0.1)


class FakeNode:
    def __init__(self, net, tmp_path, hostname, port, auto_approve=False):
        self.net = net
        self.endpoint = Endpoint("127.0.0.1", port)
        self.hostname = hostname
        self.identity = Identity.generate()
        self.seq = Counter()
        self.home = str(tmp_path / hostname)
        import os

        os.makedirs(self.home)
        self.online = True
        self.revoked, self.trusted = [], []
        self.lookups = {}
        self.manager = self._manager(auto_approve)
        net.nodes[self.endpoint] = self

    def _manager(self, auto_approve=False):
        return TrustManager(
            self.net.clock,
            self.identity,
            self.home,
            self.send,
            self.seq,
            self.lookup,
            hostname=self.hostname,
            auto_approve=auto_approve,
            on_revoked=self.revoked.append,
            on_trusted=self.trusted.append,
        )

    def lookup(self, target):
        if target in self.lookups:
            return defer.succeed(self.lookups[target])
        return defer.fail(NotFound())

    def send(self, data):
        if self.online and self.endpoint not in self.net.dropping | self.net.muted:
            self.net.clock.callLater(0, self._to_beacon, data)

    def _to_beacon(self, data):
        for reply, endpoint in self.net.beacon.datagram_received(data, self.endpoint):
            self.net._from_beacon(reply, endpoint)

    def receive(self, data):
        self.manager.message_received(msgs.decode(data))

    def register(self):
        self.online = True
        [challenge] = self._ask(msgs.Hello(1))
        [reply] = self._ask(msgs.sign(msgs.Register(2, challenge.nonce, self.hostname), self.identity, self.seq.next()))
        assert isinstance(reply, msgs.Registered)
        self.manager.registered()
        self.net.settle()

    def _ask(self, msg):
        return [msgs.decode(d) for d, _ in self.net.beacon.datagram_received(msgs.encode(msg), self.endpoint)]

    def go_offline(self):
        self._ask(msgs.sign(msgs.Unregister(3), self.identity, self.seq.next()))
        self.online = False

    def sees(self, other) -> bool:
        me = self.net.beacon.registry.get(self.identity.public_key)
        them = self.net.beacon.registry.get(other.identity.public_key)
        return self.net.beacon.visible(them, me)


@pytest.fixture
def net():
    return Net()


@pytest.fixture
def pair(net, tmp_path):
    a, b = FakeNode(net, tmp_path, "agent-a", 1), FakeNode(net, tmp_path, "agent-b", 2)
    a.register()
    b.register()
    return a, b


def handshake(node, target, reason="share results"):
    results = []
    node.manager.handshake(target, reason).addBoth(results.append)
    node.net.settle()
    return results[0]


def test_handshake_approve_then_both_see_each_other(net, pair):
    a, b = pair
    assert not a.sees(b) and not b.sees(a)
    assert handshake(a, "agent-b")["state"] == "sent"
    net.settle()
    [pending] = b.manager.pending()
    assert (pending["hostname"], pending["reason"], pending["address"]) == ("agent-a", "share results", str(a.identity.address))
    assert not b.manager.is_trusted(a.identity.public_key)
    b.manager.approve("agent-a")
    net.settle()
    assert b.manager.is_trusted(a.identity.public_key) and a.manager.is_trusted(b.identity.public_key)
    assert a.sees(b) and b.sees(a)
    assert [p["mutual"] for p in a.manager.trusted()] == [True]
    assert b.manager.pending() == []
    assert a.trusted == [b.identity.public_key] and b.trusted == [a.identity.public_key]


def test_reject(net, pair):
    a, b = pair
    handshake(a, "agent-b")
    b.manager.reject(str(a.identity.address))
    net.settle()
    assert not a.manager.is_trusted(b.identity.public_key)
    assert [o["state"] for o in a.manager.outgoing()] == ["rejected"]
    assert not b.sees(a)


def test_revoke_tells_the_peer_and_hides_us(net, pair):
    a, b = pair
    handshake(a, "agent-b")
    b.manager.approve("agent-a")
    net.settle()
    a.manager.revoke("agent-b")
    net.settle()
    assert a.revoked == [b.identity.public_key] and b.revoked == [a.identity.public_key]
    assert not a.manager.is_trusted(b.identity.public_key) and not b.manager.is_trusted(a.identity.public_key)
    assert not a.sees(b) and not b.sees(a)
    with pytest.raises(NotFound):
        a.manager.revoke("agent-b")


def test_offline_peer_gets_the_request_when_it_registers(net, pair):
    a, b = pair
    b.go_offline()
    assert handshake(a, "agent-b")["state"] == "sent"
    net.settle(3)
    assert b.manager.pending() == []
    b.register()
    net.settle()
    assert [p["hostname"] for p in b.manager.pending()] == ["agent-a"]


def test_duplicates_are_acked_once_and_ignored(net, pair):
    a, b = pair
    net.muted.add(b.endpoint)  # b's acks are lost: the beacon pushes again
    handshake(a, "agent-b")
    net.settle(2)
    net.muted.clear()
    net.settle(2)
    assert len(b.manager.pending()) == 1
    assert b.manager.counters.get("mail_duplicate", 0) >= 1
    assert len(net.beacon.mailbox) == 0


def test_forged_delivery_is_ignored(net, pair):
    a, b = pair
    mallory = Identity.generate()
    request = msgs.sign(msgs.HandshakeRequest(1, 2, False, b"agent-b", "agent-a", "trust me"), mallory, 5)
    tampered = msgs.encode(request)[:-1] + bytes([msgs.encode(request)[-1] ^ 1])
    b.manager.message_received(msgs.Deliver(9, 1, tampered))
    assert b.manager.pending() == [] and b.manager.counters["mail_bad_signature"] == 1


def test_request_not_addressed_to_us_is_ignored(net, pair):
    a, b = pair
    request = msgs.sign(msgs.HandshakeRequest(1, 2, False, b"agent-z", "agent-a", "hi"), a.identity, 5)
    b.manager.message_received(msgs.Deliver(9, 1, msgs.encode(request)))
    assert b.manager.pending() == [] and b.manager.counters["mail_not_for_us"] == 1


def test_auto_approve(net, tmp_path):
    a, b = FakeNode(net, tmp_path, "agent-a", 1), FakeNode(net, tmp_path, "agent-b", 2, auto_approve=True)
    a.register()
    b.register()
    handshake(a, "agent-b")
    net.settle()
    assert b.manager.pending() == []
    assert a.sees(b) and b.sees(a)


def test_visible_target_is_trusted_at_once(net, pair):
    a, b = pair
    import base64

    a.lookups["agent-b"] = {"hostname": "agent-b", "public_key": base64.b64encode(b.identity.public_key).decode()}
    handshake(a, "agent-b")
    assert a.manager.is_trusted(b.identity.public_key)
    assert [p["mutual"] for p in a.manager.trusted()] == [False]
    assert b.sees(a)  # so b can find a the moment it approves


def test_trust_survives_a_restart(net, pair):
    a, b = pair
    handshake(a, "agent-b")
    b.manager.approve("agent-a")
    net.settle()
    a.manager.stop()
    a.manager = a._manager()
    assert a.manager.is_trusted(b.identity.public_key)
    assert TrustStore.load(a.home).trusted.keys() == {b.identity.public_key}


def test_queued_when_the_beacon_does_not_answer_and_sent_after_registering(net, pair):
    a, b = pair
    net.dropping.add(a.endpoint)
    result = []
    a.manager.handshake("agent-b", "later").addBoth(result.append)
    net.settle(10)
    assert result[0]["state"] == "queued"
    net.dropping.clear()
    a.register()
    net.settle()
    assert [o["state"] for o in a.manager.outgoing()] == ["sent"]
    assert [p["reason"] for p in b.manager.pending()] == ["later"]


@pytest.mark.parametrize(
    "target,reason",
    [("agent-b", ""), ("agent-b", "   "), ("agent-b", "x" * 501), ("agent-a", "me"), ("Bad Name", "hi")],
)
def test_bad_handshakes_are_refused(pair, target, reason):
    a, _ = pair
    with pytest.raises(InvalidArgument):
        a.manager.handshake(target, reason)


def test_unknown_peer_in_approve_is_not_found(pair):
    a, _ = pair
    for peer in ("agent-q", "0:0000.0000.0001", "A" * 43 + "="):
        with pytest.raises(NotFound):
            a.manager.approve(peer)
