"""Issue 9: return routability (RFC 9000 §8): the beacon sends to a new address only once it has echoed a challenge."""

import pytest
from helpers import SignedNode
from twisted.internet.task import Clock

from pilotproto.beacon.paths import AMPLIFICATION_LIMIT, TOKEN_LIFETIME
from pilotproto.beacon.server import BeaconServer
from pilotproto.wire import Endpoint, relay
from pilotproto.wire import beacon as msgs

NODE_EP = Endpoint("198.51.100.7", 40001)
REBOUND_EP = Endpoint("198.51.100.7", 51515)
VICTIM_EP = Endpoint("192.0.2.99", 53)
PEER_EP = Endpoint("203.0.113.9", 40002)


class World:
    def __init__(self):
        self.clock = Clock()
        self.pushed = []
        self.server = BeaconServer(self.clock, send=lambda data, ep: self.pushed.append((data, ep)))

    def node(self, endpoint, hostname, public=True):
        node = SignedNode(self.server, endpoint, hostname, public=public)
        assert isinstance(node.register(), msgs.Registered)
        return node


@pytest.fixture
def world():
    return World()


def bytes_to(datagrams, endpoint):
    return sum(len(data) for data, destination in datagrams if destination == endpoint)


def test_a_spoofed_keepalive_steers_neither_relay_nor_mail_and_earns_at_most_3x(world):
    mallory = world.node(NODE_EP, "mallory")
    peer = world.node(PEER_EP, "peer")
    # Mallory's own signed keepalives, sent with the victim's address as source.
    received = sent = 0
    for _ in range(20):
        keepalive = msgs.encode(mallory.signed(msgs.Keepalive(4)))
        received += len(keepalive)
        sent += bytes_to(mallory.send(keepalive, source=VICTIM_EP), VICTIM_EP)
    assert world.server.registry.get(mallory.key).endpoint == NODE_EP
    assert 0 < sent <= AMPLIFICATION_LIMIT * received
    # Relay frames for mallory still go where mallory proved it is.
    for i in range(50):
        out = peer.send(peer.relay_frame(mallory, b"x" * 1000))
        assert [destination for _, destination in out] == [NODE_EP]
    # And so does mail.
    peer.handshake("mallory")
    world.clock.advance(0)
    assert world.pushed and {destination for _, destination in world.pushed} == {NODE_EP}
    # A lookup shows no trace of the victim's address.
    assert peer.lookup("mallory").endpoints == (NODE_EP,)


def test_replies_to_an_unvalidated_address_beyond_3x_are_dropped(world):
    mallory = world.node(NODE_EP, "mallory")
    paths = world.server.paths
    assert not paths.arrived(mallory_record := world.server.registry.get(mallory.key), VICTIM_EP, 100)
    big, small = (b"\xb0" * 301, VICTIM_EP), (b"\xb0" * 10, VICTIM_EP)
    out = paths.answer(mallory_record, VICTIM_EP, [big, small])
    assert big not in out and out[0] == small and isinstance(msgs.decode(out[1][0]), msgs.PathChallenge)
    assert world.server.counters["dropped_unvalidated_budget"] >= 1
    assert mallory_record.candidate.sent <= AMPLIFICATION_LIMIT * 100


def test_a_node_whose_nat_rebinds_moves_once_it_echoes_the_challenge(world):
    node = world.node(NODE_EP, "agent-a")
    peer = world.node(PEER_EP, "peer")
    replies = node.ask(node.signed(msgs.Keepalive(4)), source=REBOUND_EP)
    [ack, challenge] = replies
    assert isinstance(ack, msgs.KeepaliveAck) and ack.observed == REBOUND_EP
    assert isinstance(challenge, msgs.PathChallenge)
    assert world.server.registry.get(node.key).endpoint == NODE_EP
    # The echo must carry the token that was sent there...
    assert node.ask(node.signed(msgs.PathResponse(9, b"\x00" * 16)), source=REBOUND_EP) == []
    assert world.server.registry.get(node.key).endpoint == NODE_EP
    assert node.ask(node.signed(msgs.PathResponse(9, challenge.token)), source=REBOUND_EP) == []
    assert world.server.registry.get(node.key).endpoint == REBOUND_EP
    assert [destination for _, destination in peer.send(peer.relay_frame(node, b"hi"))] == [REBOUND_EP]


def test_an_echo_from_another_address_moves_nothing(world):
    node = world.node(NODE_EP, "agent-a")
    [_, challenge] = node.ask(node.signed(msgs.Keepalive(4)), source=REBOUND_EP)
    replies = node.ask(node.signed(msgs.PathResponse(9, challenge.token)), source=VICTIM_EP)
    assert all(isinstance(r, msgs.PathChallenge) and r.token != challenge.token for r in replies)
    assert world.server.registry.get(node.key).endpoint == NODE_EP


def test_a_stale_token_moves_nothing(world):
    node = world.node(NODE_EP, "agent-a")
    [_, challenge] = node.ask(node.signed(msgs.Keepalive(4)), source=REBOUND_EP)
    world.clock.advance(TOKEN_LIFETIME - 10)
    node.keepalive()  # still alive, from its old address
    world.clock.advance(11)
    node.ask(node.signed(msgs.PathResponse(9, challenge.token)), source=REBOUND_EP)
    assert world.server.registry.get(node.key).endpoint == NODE_EP


def test_a_relay_frame_from_a_new_address_is_carried_and_challenges_it(world):
    node = world.node(NODE_EP, "agent-a")
    peer = world.node(PEER_EP, "peer")
    frame = node.relay_frame(peer, b"payload")
    out = node.send(frame, source=REBOUND_EP)
    assert [destination for _, destination in out] == [PEER_EP, REBOUND_EP]
    assert isinstance(msgs.decode(out[1][0]), msgs.PathChallenge)
    assert len(out[1][0]) <= AMPLIFICATION_LIMIT * len(frame)
    # Frames for the node keep going to its proven address meanwhile.
    assert [destination for _, destination in peer.send(peer.relay_frame(node, b"back"))] == [NODE_EP]


def test_mail_is_pushed_again_to_the_new_address_once_validated(world):
    node = world.node(NODE_EP, "agent-a")
    peer = world.node(PEER_EP, "peer")
    peer.handshake("agent-a")
    world.clock.advance(0)
    assert [destination for _, destination in world.pushed] == [NODE_EP]
    [_, challenge] = node.ask(node.signed(msgs.Keepalive(4)), source=REBOUND_EP)
    node.ask(node.signed(msgs.PathResponse(9, challenge.token)), source=REBOUND_EP)
    world.clock.advance(0)
    assert [destination for _, destination in world.pushed] == [NODE_EP, REBOUND_EP]


# -- lookups stay small, and every answer encodes ------------------------------------------


def test_lan_endpoints_are_capped_at_registration_with_a_clear_error(world):
    many = tuple(Endpoint(f"2001:db8::{i:x}", 1000 + i) for i in range(255))
    node = SignedNode(world.server, NODE_EP, "agent-a")
    refusal = node.register(lan_endpoints=many)
    assert refusal.code == "invalid_argument" and f"at most {msgs.MAX_LAN_ENDPOINTS} LAN endpoints" in refusal.message
    assert world.server.registry.get(node.key) is None
    assert isinstance(node.register(lan_endpoints=many[: msgs.MAX_LAN_ENDPOINTS]), msgs.Registered)
    # The largest lookup answer a node can cause, asked for from a spoofed address: bounded.
    asker = world.node(PEER_EP, "x" * 63)
    node.ask(node.signed(msgs.SetVisibility(6, 1, 0, 1, (asker.key,))))
    lookup = msgs.encode(asker.signed(msgs.Lookup(5, False, b"agent-a")))
    answer = asker.send(lookup)
    assert len(msgs.decode(answer[0][0]).endpoints) == 1 + msgs.MAX_LAN_ENDPOINTS
    assert world.server.counters["internal_errors"] == 0


def test_the_node_offers_at_most_the_cap():
    from test_beacon_client import Link

    from pilotproto.identity import Identity
    from pilotproto.rendezvous.registration import BeaconClient

    clock = Clock()
    link = Link(clock)
    many = [Endpoint("10.0.0.1", 1000 + i) for i in range(20)]
    client = BeaconClient(clock, Identity.generate(), link, "agent-a", watcher=link, lan_endpoints=many)
    assert len(client.lan_endpoints) == msgs.MAX_LAN_ENDPOINTS


def test_an_error_with_a_long_message_still_encodes():
    error = msgs.Error(1, "invalid_argument", "é" * 300, retry_after=5)
    decoded = msgs.decode(msgs.encode(error))
    assert len(decoded.message.encode()) <= 255 and decoded.message.startswith("é") and decoded.retry_after == 5


def test_a_mail_too_large_to_deliver_is_refused_not_kept(world):
    from pilotproto.errors import InvalidArgument

    with pytest.raises(InvalidArgument):
        world.server.mailbox.post(b"s" * 32, ("name", "agent-b"), b"\xb0" * (msgs.MAX_DELIVERED + 1), ("x",))
    assert len(world.server.mailbox) == 0


# -- the node answers challenges -------------------------------------------------------------------


def test_a_node_behind_a_rebinding_nat_is_followed_by_the_beacon():
    from test_beacon_link import Node
    from test_beacon_link import World as LinkWorld

    world = LinkWorld()
    a, b = Node(world, "agent-a", 1, public=True), Node(world, "agent-b", 2, public=True)
    for node in (a, b):
        node.link.startService()
    world.run(0.1)
    # a's NAT gives it a new public port: its old mapping is gone.
    del world.nodes[a.endpoint]
    a.endpoint = Endpoint(a.endpoint.host, 61000)
    world.nodes[a.endpoint] = a
    world.run(6)  # the next keepalive, a challenge, the echo
    assert world.server.registry.find_by_name("agent-a").endpoint == a.endpoint
    assert a.link.counters["path_challenges_answered"] == 1
    b.link.send_relay(a.address, b"after the move")
    world.run(0.1)
    assert [relay.decode_from_beacon(d).payload for d, _ in a.router.others] == [b"after the move"]


def test_a_node_answers_a_flood_of_challenges_a_few_times_a_second():
    from test_beacon_link import Node
    from test_beacon_link import World as LinkWorld

    from pilotproto.rendezvous.link import PATH_ANSWERS
    from pilotproto.wire.sources import Direct

    world = LinkWorld()
    a = Node(world, "agent-a", 1)
    a.link.startService()
    world.run(0.1)
    sent = a.udp.sent
    for i in range(100):
        a.link.beacon_message_received(msgs.PathChallenge(i, bytes(16)), Direct(Endpoint("127.0.0.1", 9000)))
    assert a.udp.sent - sent == PATH_ANSWERS
    assert a.link.counters["path_challenges_ignored"] == 100 - PATH_ANSWERS
