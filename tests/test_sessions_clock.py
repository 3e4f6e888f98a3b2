"""
Two nodes' session layers joined by an in-memory network and one Clock:
pings across rekeys, the relay-first start, direct-path upgrade, and
fallback to the relay when the direct path goes silent.
"""

import base64
import random

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface import implementer

from helpers import StaticTrust
from pilotproto.common.ids import RandomIds
from pilotproto.identity import Identity
from pilotproto.interfaces import IDatagramSender, ILocalCandidates, IPeerDirectory, IRelay, IStreamAcceptor
from pilotproto.session.sessions import Sessions
from pilotproto.errors import Refused
from pilotproto.wire import KIND_TUNNEL_COOKIE, Endpoint
from pilotproto.wire import session as smsg
from pilotproto.wire.sources import BeaconStream, Direct, Relayed

A_EP = Endpoint("198.51.100.1", 4000)
B_EP = Endpoint("203.0.113.1", 5000)
HOP = 0.005


@implementer(IDatagramSender)
class NetUDP:
    """One node's socket on the Net: datagrams reach the node at the destination after HOP."""

    def __init__(self, net, endpoint):
        self.net, self.endpoint = net, endpoint
        self.sent = []

    def send(self, data, destination, ttl=None):
        net = self.net
        self.sent.append((data, destination))
        if not net.direct_up or (ttl is not None and ttl < 3):
            return
        for other, other_ep, _ in net.nodes.values():
            if other_ep == destination:
                net.clock.callLater(HOP, other.tunnel_packet_received, data, Direct(self.endpoint))

    def send_many(self, packets, destination):
        for data in packets:
            self.send(data, destination)


@implementer(IRelay)
class NetRelay:
    """The beacon's relay: twice as slow as a direct hop, and never down."""

    def __init__(self, net, identity):
        self.net, self.identity = net, identity
        self.sent = []

    def send_relay(self, destination, payload):
        net = self.net
        net.relayed += 1
        self.sent.append((destination, payload))
        for other, _, other_id in net.nodes.values():
            if other_id.address.to_bytes() == destination:
                source = Relayed(self.identity.address.to_bytes())
                net.clock.callLater(2 * HOP, other.tunnel_packet_received, payload, source)

    def relay_kind(self):
        return "relay"


@implementer(IPeerDirectory)
class NetDirectory:
    def __init__(self, net):
        self.net = net

    def lookup(self, target):
        for name, (_, ep, identity) in self.net.nodes.items():
            if name == target:
                return defer.succeed(
                    {
                        "hostname": name,
                        "address": str(identity.address),
                        "public_key": base64.b64encode(identity.public_key).decode(),
                        "endpoints": [str(ep)],
                    }
                )
        return defer.fail(KeyError(target))


@implementer(ILocalCandidates)
class FixedCandidates:
    def __init__(self, endpoint):
        self.endpoint = endpoint

    def local_candidates(self):
        return "none", (self.endpoint,), ()


@implementer(IStreamAcceptor)
class RecordingAcceptor:
    """Accepts streams to port 7 only; records every call with the peer record it named."""

    def __init__(self):
        self.calls = []

    def stream_opened(self, peer, stream, port):
        self.calls.append(("stream", peer, port))
        return port == 7

    def datagram_received(self, peer, port, data):
        self.calls.append(("datagram", peer, port, data))


class Net:
    def __init__(self, clock):
        self.clock = clock
        self.nodes = {}
        self.direct_up = True
        self.relayed = 0

    def add(self, name, identity, endpoint, seed, **options):
        sessions = Sessions(
            self.clock,
            identity,
            trust=StaticTrust(),
            udp=NetUDP(self, endpoint),
            relay=NetRelay(self, identity),
            directory=NetDirectory(self),
            candidates=FixedCandidates(endpoint),
            acceptor=RecordingAcceptor(),
            ids=RandomIds(random.Random(seed).randbytes),
            **options,
        )
        self.nodes[name] = (sessions, endpoint, identity)
        return sessions


def run_until(clock, d, limit_seconds):
    results = []
    d.addBoth(results.append)
    steps = int(limit_seconds / 0.05)
    for _ in range(steps):
        if results:
            break
        clock.advance(0.05)
    assert results, "did not finish in time"
    if isinstance(results[0], Exception) or hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


@pytest.fixture
def world():
    clock = Clock()
    net = Net(clock)
    a = net.add("agent-a", Identity.from_seed(b"a" * 32), A_EP, seed=1)
    b = net.add("agent-b", Identity.from_seed(b"b" * 32), B_EP, seed=2)
    return clock, net, a, b


def test_first_ping_goes_over_the_relay_then_traffic_moves_direct(world):
    clock, net, a, b = world
    result = run_until(clock, a.ping("agent-b", count=5, interval=1.0), 30)
    paths = [r["path"] for r in result["replies"]]
    assert result["received"] == 5
    assert paths[0] == "relay" and paths[-1] == "direct"


def test_pings_survive_rekeys_without_loss(world):
    clock, net, a, b = world
    first = run_until(clock, a.ping("agent-b", count=1), 10)
    assert first["received"] == 1
    tunnel = a.endpoint.peers[net.nodes["agent-b"][2].public_key]
    index_before = tunnel.current.local_index
    result = run_until(clock, a.ping("agent-b", count=40, interval=10.0, timeout=3.0), 500)
    assert result["received"] == 40, result
    assert tunnel.current.local_index != index_before
    assert a.endpoint.stats["data_auth_failed"] == 0 and b.endpoint.stats["data_auth_failed"] == 0


def test_silent_direct_path_falls_back_to_the_relay(world):
    clock, net, a, b = world
    run_until(clock, a.ping("agent-b", count=3, interval=1.0), 30)
    state = a.peers[net.nodes["agent-b"][2].public_key]
    assert state.path.kind == "direct"
    net.direct_up = False
    for _ in range(int(a.path_timers.stale_after / 0.05) + 10):
        clock.advance(0.05)
    assert state.path.kind == "relay"
    result = run_until(clock, a.ping("agent-b", count=2, interval=0.5), 20)
    assert result["received"] == 2 and all(r["path"] == "relay" for r in result["replies"])


def key_of(net, name):
    return net.nodes[name][2].public_key


def test_collaborators_are_checked_when_wired():
    identity = Identity.from_seed(b"c" * 32)
    wiring = dict(
        trust=StaticTrust(),
        udp=NetUDP(None, A_EP),
        relay=NetRelay(None, identity),
        directory=NetDirectory(None),
        candidates=FixedCandidates(A_EP),
        acceptor=RecordingAcceptor(),
    )
    Sessions(Clock(), identity, **wiring)
    for name, interface in [("udp", "IDatagramSender"), ("relay", "IRelay"), ("trust", "ITrustPolicy"),
                            ("directory", "IPeerDirectory"), ("candidates", "ILocalCandidates"),
                            ("acceptor", "IStreamAcceptor")]:  # fmt: skip
        with pytest.raises(TypeError, match=interface):
            Sessions(Clock(), identity, **{**wiring, name: lambda *args: None})


def test_tunnel_packets_come_direct_or_relayed_only(world):
    clock, net, a, b = world
    with pytest.raises(TypeError):
        a.tunnel_packet_received(b"\xc1", BeaconStream())


def test_a_cookie_reply_goes_back_the_way_the_initiation_came():
    # B is "under load" from the start: every initiation must carry a cookie.
    clock = Clock()
    net = Net(clock)
    a = net.add("agent-a", Identity.from_seed(b"a" * 32), A_EP, seed=1)
    net.add("agent-b", Identity.from_seed(b"b" * 32), B_EP, seed=2, cookie_options={"initiation_burst": 0})
    result = run_until(clock, a.ping("agent-b", count=1), 10)
    assert result["received"] == 1
    b_relay = net.nodes["agent-b"][0]._links.relay
    a_address = net.nodes["agent-a"][2].address.to_bytes()
    assert b_relay.sent[0][0] == a_address and b_relay.sent[0][1][0] == KIND_TUNNEL_COOKIE


def test_a_ping_is_answered_on_the_path_it_came_by(world):
    clock, net, a, b = world
    run_until(clock, a.ping("agent-b", count=3, interval=1.0), 30)
    on_b = b.peers[key_of(net, "agent-a")]
    assert on_b.path.using_direct()
    b_udp, b_relay = net.nodes["agent-b"][0]._links.udp, net.nodes["agent-b"][0]._links.relay
    b_udp.sent.clear()
    b_relay.sent.clear()
    a_address = net.nodes["agent-a"][2].address.to_bytes()
    # Through the relay while B goes direct: A cannot hear B directly, so the pong takes the relay.
    b.tunnel_data_many(key_of(net, "agent-a"), [smsg.encode(smsg.Ping(1, b"x"))], Relayed(a_address))
    assert len(b_relay.sent) == 1 and b_udp.sent == []
    # Straight from A: the pong goes the way B's traffic goes, direct.
    b.tunnel_data_many(key_of(net, "agent-a"), [smsg.encode(smsg.Ping(2, b"x"))], Direct(A_EP))
    assert len(b_relay.sent) == 1 and [d for _, d in b_udp.sent] == [A_EP]


def test_a_probe_is_acked_straight_back_and_never_through_the_relay(world):
    clock, net, a, b = world
    run_until(clock, a.ping("agent-b", count=1), 10)
    b_udp, b_relay = net.nodes["agent-b"][0]._links.udp, net.nodes["agent-b"][0]._links.relay
    b_udp.sent.clear()
    b_relay.sent.clear()
    roamed = Endpoint("192.0.2.99", 7777)
    b.tunnel_data_many(key_of(net, "agent-a"), [smsg.encode(smsg.PathProbe(5))], Direct(roamed))
    b.tunnel_data_many(key_of(net, "agent-a"), [smsg.encode(smsg.PathProbe(6))], Relayed(b"\0" * 6))
    # The ack (and, still on the relay, a probe back on the same route) go straight back.
    assert {d for _, d in b_udp.sent} == {roamed} and b_relay.sent == []


def test_streams_reach_the_acceptor_with_the_peer_record(world):
    clock, net, a, b = world
    peer, stream = run_until(clock, a.open_stream("agent-b", 7), 10)
    assert peer is a.peers[key_of(net, "agent-b")] and peer.hostname == "agent-b"
    clock.advance(0.1)
    acceptor = net.nodes["agent-b"][0]._links.acceptor
    assert [(c[0], c[2]) for c in acceptor.calls] == [("stream", 7)]
    assert acceptor.calls[0][1] is b.peers[key_of(net, "agent-a")]
    assert acceptor.calls[0][1].address == net.nodes["agent-a"][2].address


def test_after_the_peer_restarts_a_new_session_goes_direct_again(world):
    clock, net, a, b = world
    run_until(clock, a.ping("agent-b", count=3, interval=1.0), 30)
    old = a.peers[key_of(net, "agent-b")]
    assert old.path.kind == "direct"
    waiting = a.ping("agent-b", count=1, timeout=5.0)
    b.stop()  # a Close (shutdown) reaches A; the ping waiting for a pong fails
    failures = []
    waiting.addErrback(failures.append)
    clock.advance(0.1)
    assert failures and isinstance(failures[0].value, Refused)
    assert old.ended and not old.up
    # B comes back with the same identity.
    net.add("agent-b", net.nodes["agent-b"][2], B_EP, seed=3)
    result = run_until(clock, a.ping("agent-b", count=3, interval=1.0), 30)
    new = a.peers[key_of(net, "agent-b")]
    assert new is not old and new.hostname == "agent-b"
    assert result["received"] == 3 and result["replies"][-1]["path"] == "direct"


def test_revoking_trust_tells_the_peer_and_ends_both_sides(world):
    clock, net, a, b = world
    run_until(clock, b.ping("agent-a", count=1), 10)
    a.trust_revoked(key_of(net, "agent-b"))
    assert a.peers[key_of(net, "agent-b")].ended
    clock.advance(0.1)
    on_b = b.peers[key_of(net, "agent-a")]
    assert on_b.revoked_by_peer and not on_b.up
    started = clock.seconds()
    with pytest.raises(Refused, match="revoked"):
        run_until(clock, b.ping("agent-a", count=1), 5)
    assert clock.seconds() - started < 0.5
    clock.advance(1.0)
    assert key_of(net, "agent-b") not in a.endpoint.peers and key_of(net, "agent-b") not in a.peers


def test_describe_lists_each_peer_with_its_path(world):
    clock, net, a, b = world
    run_until(clock, a.ping("agent-b", count=3, interval=1.0), 30)
    (entry,) = a.describe()
    assert entry["hostname"] == "agent-b" and entry["state"] == "up"
    assert entry["path"] == "direct" and entry["endpoint"] == str(B_EP)
    assert entry["public_key"] == base64.b64encode(key_of(net, "agent-b")).decode()
