"""The beacon's mailbox and visibility lists, driven datagram by datagram with a Clock."""

import pytest
from twisted.internet.task import Clock

from pilotproto.beacon import mailbox as mailbox_module
from pilotproto.beacon.server import BeaconServer
from pilotproto.identity import Identity, verify_signature
from pilotproto.wire import Endpoint
from pilotproto.wire import beacon as msgs

A_EP = Endpoint("198.51.100.7", 40001)
B_EP = Endpoint("203.0.113.9", 40002)
C_EP = Endpoint("192.0.2.5", 40003)


class Node:
    def __init__(self, server, endpoint, hostname, identity=None):
        self.server = server
        self.endpoint = endpoint
        self.hostname = hostname
        self.identity = identity or Identity.generate()
        self.seq = 1_000

    @property
    def key(self):
        return self.identity.public_key

    def signed(self, msg):
        self.seq += 1
        return msgs.sign(msg, self.identity, self.seq)

    def ask(self, msg, signed=True):
        if signed:
            msg = self.signed(msg)
        replies = self.server.datagram_received(msgs.encode(msg), self.endpoint)
        return [msgs.decode(data) for data, _ in replies]

    def register(self):
        [challenge] = self.ask(msgs.Hello(1), signed=False)
        [reply] = self.ask(msgs.Register(2, challenge.nonce, self.hostname))
        assert isinstance(reply, msgs.Registered)

    def lookup(self, target):
        [reply] = self.ask(msgs.Lookup(3, False, target.encode()))
        return reply

    def handshake(self, target, reason="hi", handshake_id=7, expires_at=0):
        return self.ask(msgs.HandshakeRequest(4, handshake_id, False, target.encode(), self.hostname, reason, expires_at))

    def set_visibility(self, keys, version):
        return self.ask(msgs.SetVisibility(5, version, 0, 1, tuple(keys)))


class World:
    def __init__(self):
        self.clock = Clock()
        self.sent = []
        self.server = BeaconServer(self.clock, send=lambda data, ep: self.sent.append((msgs.decode(data), ep)))

    def node(self, endpoint, hostname):
        return Node(self.server, endpoint, hostname)

    def pushes_to(self, endpoint):
        return [m for m, ep in self.sent if ep == endpoint and isinstance(m, msgs.Deliver)]


@pytest.fixture
def world():
    return World()


def test_request_to_an_online_node_is_pushed_and_retransmitted_until_acked(world):
    a, b = world.node(A_EP, "agent-a"), world.node(B_EP, "agent-b")
    a.register()
    b.register()
    assert [type(r) for r in a.handshake("agent-b", "share results")] == [msgs.Ok]
    world.clock.advance(0)
    [push] = world.pushes_to(B_EP)
    inner = msgs.decode(push.datagram)
    # The original signed datagram, byte for byte: the recipient checks a's signature.
    assert inner.public_key == a.key and inner.reason == "share results"
    assert verify_signature(a.key, msgs.signed_bytes(inner), inner.signature)
    # Pushed again after 1 s, then 2 s later: the delays double.
    world.clock.advance(1.0)
    world.clock.advance(1.0)
    assert len(world.pushes_to(B_EP)) == 2
    world.clock.advance(1.0)
    assert len(world.pushes_to(B_EP)) == 3
    assert b.ask(msgs.MailAck(9, push.mail_id)) == []
    world.clock.advance(60.0)
    assert len(world.pushes_to(B_EP)) == 3
    assert len(world.server.mailbox) == 0


def test_retransmission_is_bounded_per_registration(world):
    a, b = world.node(A_EP, "agent-a"), world.node(B_EP, "agent-b")
    a.register()
    b.register()
    a.handshake("agent-b")
    for _ in range(120):  # b stays registered and never acks
        world.clock.advance(5.0)
        [ack] = b.ask(msgs.Keepalive(6))
        assert isinstance(ack, msgs.KeepaliveAck)
    # Keepalives start no new round: MAX_PUSHES in all, the mail is kept.
    assert len(world.pushes_to(B_EP)) == mailbox_module.MAX_PUSHES
    assert len(world.server.mailbox) == 1
    # A new registration (b restarted, say) starts one new round.
    b.register()
    world.clock.advance(0)
    assert len(world.pushes_to(B_EP)) == mailbox_module.MAX_PUSHES + 1


def test_mail_for_an_offline_node_is_delivered_when_it_registers(world):
    a, b = world.node(A_EP, "agent-a"), world.node(B_EP, "agent-b")
    b.register()
    b.ask(msgs.Unregister(8))
    a.register()
    assert [type(r) for r in a.handshake("agent-b")] == [msgs.Ok]
    world.clock.advance(5)
    assert world.pushes_to(B_EP) == []
    b.register()
    world.clock.advance(0)
    [push] = world.pushes_to(B_EP)
    assert msgs.decode(push.datagram).public_key == a.key


def test_mail_for_a_name_never_seen_goes_to_the_first_key_to_register_it(world):
    a, late = world.node(A_EP, "agent-a"), world.node(C_EP, "agent-late")
    a.register()
    assert [type(r) for r in a.handshake("agent-late")] == [msgs.Ok]
    late.register()
    world.clock.advance(0)
    assert len(world.pushes_to(C_EP)) == 1


def test_mail_expires(world):
    a, b = world.node(A_EP, "agent-a"), world.node(B_EP, "agent-b")
    a.register()
    a.handshake("agent-b", expires_at=int(world.clock.seconds()) + 60)
    world.clock.advance(61)
    world.server.expire()
    assert len(world.server.mailbox) == 0
    b.register()
    world.clock.advance(0)
    assert world.pushes_to(B_EP) == []


def test_expiry_is_at_most_the_default(world):
    a = world.node(A_EP, "agent-a")
    a.register()
    a.handshake("agent-b", expires_at=2**63)
    [mail] = world.server.mailbox.waiting_for(("name", "agent-b"))
    assert mail.expires_at == mailbox_module.DEFAULT_EXPIRY


def test_one_sender_cannot_fill_a_mailbox_and_resends_replace(world):
    a = world.node(A_EP, "agent-a")
    a.register()
    for _ in range(3):
        assert [type(r) for r in a.handshake("agent-b", handshake_id=1)] == [msgs.Ok]
    assert len(world.server.mailbox) == 1
    for i in range(2, 2 + mailbox_module.PER_PAIR - 1):
        a.handshake("agent-b", handshake_id=i)
    [refusal] = a.handshake("agent-b", handshake_id=999)
    assert isinstance(refusal, msgs.Error) and refusal.code == "rate_limited"
    assert refusal.retry_after == mailbox_module.FULL_RETRY_AFTER
    assert len(world.server.mailbox) == mailbox_module.PER_PAIR


def test_handshake_must_carry_the_registered_name(world):
    a = world.node(A_EP, "agent-a")
    a.register()
    a.hostname = "agent-x"
    [reply] = a.handshake("agent-b")
    assert isinstance(reply, msgs.Error) and reply.code == "invalid_argument"


def test_unregistered_sender_is_refused(world):
    a = world.node(A_EP, "agent-a")
    [reply] = a.handshake("agent-b")
    assert reply.code == "not_registered"


def test_only_the_recipient_can_ack(world):
    a, b, c = world.node(A_EP, "agent-a"), world.node(B_EP, "agent-b"), world.node(C_EP, "agent-c")
    for n in (a, b, c):
        n.register()
    a.handshake("agent-b")
    world.clock.advance(0)
    [push] = world.pushes_to(B_EP)
    c.ask(msgs.MailAck(9, push.mail_id))
    assert len(world.server.mailbox) == 1


# -- visibility ----------------------------------------------------------------


def test_private_node_is_visible_only_to_the_keys_it_signed(world):
    a, b, c = world.node(A_EP, "agent-a"), world.node(B_EP, "agent-b"), world.node(C_EP, "agent-c")
    for n in (a, b, c):
        n.register()
    assert b.lookup("agent-a").code == "not_found"
    assert [type(r) for r in a.set_visibility([b.key], version=1)] == [msgs.Ok]
    assert isinstance(b.lookup("agent-a"), msgs.LookupResult)
    assert c.lookup("agent-a").code == "not_found"
    # Revoked: a newer list without b.
    a.set_visibility([], version=2)
    assert b.lookup("agent-a").code == "not_found"
    # A replay of the older list cannot bring b back.
    a.set_visibility([b.key], version=1)
    assert b.lookup("agent-a").code == "not_found"


def test_forged_visibility_list_is_refused(world):
    a, b = world.node(A_EP, "agent-a"), world.node(B_EP, "agent-b")
    a.register()
    b.register()
    # b signs a list claiming to be a's: the signature does not match a's key.
    forged = msgs.sign(msgs.SetVisibility(5, 1, 0, 1, (b.key,)), b.identity, 5_000)
    forged = msgs.SetVisibility(5, 1, 0, 1, (b.key,), public_key=a.key, seq=5_000, signature=forged.signature)
    [reply] = [msgs.decode(d) for d, _ in world.server.datagram_received(msgs.encode(forged), B_EP)]
    assert reply.code == "refused"
    assert b.lookup("agent-a").code == "not_found"


def test_chunked_list_is_installed_when_complete(world):
    a = world.node(A_EP, "agent-a")
    a.register()
    # From 35 networks: one address may register only so many new names at once.
    viewers = [world.node(Endpoint(f"10.{i}.0.9", 41000 + i), f"viewer-{i}") for i in range(35)]
    for v in viewers:
        v.register()
    keys = [v.key for v in viewers]
    a.ask(msgs.SetVisibility(5, 10, 0, 2, tuple(keys[:30])))
    assert viewers[0].lookup("agent-a").code == "not_found"
    a.ask(msgs.SetVisibility(5, 10, 1, 2, tuple(keys[30:])))
    assert all(isinstance(v.lookup("agent-a"), msgs.LookupResult) for v in viewers)


def test_relay_follows_visibility(world):
    a, b = world.node(A_EP, "agent-a"), world.node(B_EP, "agent-b")
    a.register()
    b.register()
    ra, rb = world.server.registry.get(a.key), world.server.registry.get(b.key)
    assert not world.server.relay_allowed(rb, ra)
    a.set_visibility([b.key], version=1)
    assert world.server.relay_allowed(rb, ra)
