"""The beacon's request handling, driven datagram by datagram with a Clock."""

import os
import random

import pytest
from twisted.internet.task import Clock

from pilotproto.beacon.server import AMPLIFICATION_LIMIT, BeaconServer
from pilotproto.identity import Identity
from pilotproto.wire import Endpoint
from pilotproto.wire import beacon as msgs
from pilotproto.wire import stun

A_EP = Endpoint("198.51.100.7", 40001)
B_EP = Endpoint("203.0.113.9", 40002)


class Node:
    """A minimal well-behaved client, so tests can say what they mean."""

    def __init__(self, server, endpoint, hostname, public=False, identity=None):
        self.server = server
        self.endpoint = endpoint
        self.hostname = hostname
        self.public = public
        self.identity = identity or Identity.generate()
        self.seq = 1_000

    def ask(self, msg, source=None):
        replies = self.server.datagram_received(msgs.encode(msg), source or self.endpoint)
        return [msgs.decode(data) for data, _ in replies]

    def signed(self, msg, seq=None):
        if seq is None:
            self.seq += 1
            seq = self.seq
        return msgs.sign(msg, self.identity, seq)

    def challenge(self):
        [reply] = self.ask(msgs.Hello(1))
        assert isinstance(reply, msgs.Challenge)
        return reply

    def register_request(self, nonce=None):
        if nonce is None:
            nonce = self.challenge().nonce
        flags = msgs.FLAG_PUBLIC if self.public else 0
        return self.signed(msgs.Register(2, nonce, self.hostname, flags))

    def register(self):
        return self.ask(self.register_request())

    def lookup(self, target):
        return self.ask(self.signed(msgs.Lookup(3, False, target.encode())))


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def server(clock):
    return BeaconServer(clock)


def test_hello_gets_nonce_and_observed_address(server):
    node = Node(server, A_EP, "agent-a")
    challenge = node.challenge()
    assert challenge.observed == A_EP
    assert len(challenge.nonce) == 32


def test_register_then_keepalive(server, clock):
    node = Node(server, A_EP, "agent-a")
    [reply] = node.register()
    assert isinstance(reply, msgs.Registered)
    assert reply.observed == A_EP
    assert reply.address == node.identity.address.to_bytes()
    clock.advance(10)
    [ack] = node.ask(node.signed(msgs.Keepalive(4)))
    assert isinstance(ack, msgs.KeepaliveAck) and ack.observed == A_EP


def test_registration_signed_by_wrong_key_is_refused(server):
    node = Node(server, A_EP, "agent-a")
    request = node.register_request()
    forged = msgs.decode(msgs.encode(request))
    other = Identity.generate()
    # The signature is the right length but made by another key.
    bad = msgs.Register(
        forged.request_id, forged.nonce, forged.hostname, forged.flags, forged.lan_endpoints,
        public_key=node.identity.public_key, seq=forged.seq,
        signature=other.sign(msgs.signed_bytes(forged)),
    )
    [reply] = node.ask(bad)
    assert isinstance(reply, msgs.Error) and reply.code == "refused"
    assert server.registry.get(node.identity.public_key) is None
    assert server.counters["dropped_bad_signature"] == 1


def test_replayed_registration_is_refused(server):
    node = Node(server, A_EP, "agent-a")
    request = node.register_request()
    [ok] = node.ask(request)
    assert isinstance(ok, msgs.Registered)
    [again] = node.ask(request)
    assert isinstance(again, msgs.Error) and again.code == "stale_nonce"
    # Replayed from somewhere else (an attacker moving the node): refused too.
    [moved] = node.ask(request, source=B_EP)
    assert isinstance(moved, msgs.Error) and moved.code == "stale_nonce"
    assert server.registry.get(node.identity.public_key).endpoint == A_EP


def test_nonce_from_another_address_or_expired_is_refused(server, clock):
    node = Node(server, A_EP, "agent-a")
    nonce = node.challenge().nonce
    [reply] = node.ask(node.register_request(nonce), source=B_EP)
    assert reply.code == "stale_nonce"
    clock.advance(60)
    [reply] = node.ask(node.register_request(nonce))
    assert reply.code == "stale_nonce"


def test_nonce_from_before_a_beacon_restart_is_refused(clock):
    node = Node(BeaconServer(clock), A_EP, "agent-a")
    nonce = node.challenge().nonce
    node.server = BeaconServer(clock)
    [reply] = node.ask(node.register_request(nonce))
    assert reply.code == "stale_nonce"


def test_a_name_cannot_be_taken_by_another_key_until_its_hold_time_has_passed(server, clock):
    owner = Node(server, A_EP, "agent-a")
    thief = Node(server, B_EP, "agent-a")
    assert isinstance(owner.register()[0], msgs.Registered)
    [reply] = thief.register()
    assert isinstance(reply, msgs.Error) and reply.code == "name_taken"
    assert server.registry.find_by_name("agent-a").public_key == owner.identity.public_key
    # The owner's registration expires (it went offline): its name stays held.
    clock.advance(server.registry.ttl + 1)
    assert server.registry.find_by_name("agent-a") is None
    assert thief.register()[0].code == "name_taken"
    # Days later, unseen all the while, it is free.
    clock.advance(server.registry.hold)
    server.expire()
    assert isinstance(thief.register()[0], msgs.Registered)


def test_same_key_from_new_endpoint_updates_it(server):
    node = Node(server, A_EP, "agent-a")
    node.register()
    node.endpoint = B_EP
    [reply] = node.register()
    assert isinstance(reply, msgs.Registered)
    assert server.registry.find_by_name("agent-a").endpoint == B_EP


def test_replayed_keepalive_is_refused_and_cannot_move_a_node(server):
    node = Node(server, A_EP, "agent-a")
    node.register()
    keepalive = node.signed(msgs.Keepalive(9))
    assert isinstance(node.ask(keepalive)[0], msgs.KeepaliveAck)
    [reply] = node.ask(keepalive, source=B_EP)
    assert reply.code == "replay"
    assert server.registry.get(node.identity.public_key).endpoint == A_EP


def test_signed_requests_from_unregistered_key_are_refused(server):
    node = Node(server, A_EP, "agent-a")
    [reply] = node.ask(node.signed(msgs.Keepalive(1)))
    assert reply.code == "not_registered"


def test_registration_expires_without_keepalives(server, clock):
    node = Node(server, A_EP, "agent-a")
    node.register()
    clock.advance(server.registry.ttl - 1)
    node.ask(node.signed(msgs.Keepalive(1)))
    clock.advance(server.registry.ttl - 1)
    assert server.registry.get(node.identity.public_key) is not None
    clock.advance(2)
    server.expire()
    assert len(server.registry) == 0
    [reply] = node.ask(node.signed(msgs.Keepalive(1)))
    assert reply.code == "not_registered"


def test_lookup_public_and_private(server):
    a = Node(server, A_EP, "agent-a")
    b = Node(server, B_EP, "agent-b", public=True)
    a.register()
    b.register()
    [found] = a.lookup("agent-b")
    assert isinstance(found, msgs.LookupResult)
    assert found.public_key == b.identity.public_key
    assert found.endpoints == (B_EP,)
    [hidden] = b.lookup("agent-a")
    assert isinstance(hidden, msgs.Error) and hidden.code == "not_found"
    [missing] = a.lookup("nobody")
    assert missing.code == "not_found" and missing.message == hidden.message
    # A private node can always find itself.
    [me] = a.lookup("agent-a")
    assert me.public_key == a.identity.public_key


def test_lookup_by_address(server):
    a = Node(server, A_EP, "agent-a")
    b = Node(server, B_EP, "agent-b", public=True)
    a.register()
    b.register()
    [found] = a.ask(a.signed(msgs.Lookup(3, True, b.identity.address.to_bytes())))
    assert found.hostname == "agent-b"


def test_unregister(server):
    a = Node(server, A_EP, "agent-a")
    a.register()
    [ok] = a.ask(a.signed(msgs.Unregister(5)))
    assert isinstance(ok, msgs.Ok)
    assert server.registry.find_by_name("agent-a") is None


def test_invalid_hostname_is_refused(server):
    a = Node(server, A_EP, "Not Valid!")
    [reply] = a.register()
    assert reply.code == "invalid_argument"


def test_no_amplification_for_unauthenticated_requests(server):
    # An unpadded Hello earns nothing bigger than three times its size.
    tiny = msgs.encode(msgs.Hello(1, padding=0))
    replies = server.datagram_received(tiny, Endpoint("2001:db8::5", 9))
    assert all(len(data) <= AMPLIFICATION_LIMIT * len(tiny) for data, _ in replies)
    for _ in range(50):
        raw = bytes([msgs.KIND, msgs.VERSION]) + os.urandom(random.randrange(0, 200))
        for data, _ in server.datagram_received(raw, A_EP):
            assert len(data) <= AMPLIFICATION_LIMIT * len(raw)


def test_stun_binding_is_answered_with_xor_mapped_address(server):
    txid = os.urandom(12)
    [(data, dest)] = server.datagram_received(stun.binding_request(txid), A_EP)
    result = stun.parse_binding_response(data)
    assert dest == A_EP
    assert result.transaction_id == txid and result.xor_mapped == A_EP


def test_random_datagrams_never_crash_the_beacon(server):
    rng = random.Random(1234)
    prefixes = [b"", bytes([msgs.KIND]), bytes([msgs.KIND, msgs.VERSION]), b"\x00\x01\x00\x00\x21\x12\xa4\x42"]
    legit = Node(server, A_EP, "agent-a")
    legit.register()
    for i in range(100_000):
        prefix = prefixes[i % len(prefixes)]
        body = rng.randbytes(rng.randrange(0, 120))
        for data, _ in server.datagram_received(prefix + body, B_EP):
            assert isinstance(data, bytes)
    assert server.counters["internal_errors"] == 0
    assert server.counters["dropped_malformed"] > 0
    # And the beacon still serves its real clients.
    assert isinstance(legit.ask(legit.signed(msgs.Keepalive(1)))[0], msgs.KeepaliveAck)
