"""Two in-memory nodes talking through a Clock-driven, optionally lossy link."""

import random

import pytest
from twisted.internet.task import Clock

from helpers import RecordingTunnelOwner, StaticTrust
from pilotproto.errors import Timeout
from pilotproto.identity import Identity
from pilotproto.tunnel import HandshakeTimers, TunnelClosed, TunnelEndpoint
from pilotproto.wire import KIND_TUNNEL_DATA, KIND_TUNNEL_INIT, KIND_TUNNEL_RESPONSE, Endpoint
from pilotproto.wire.sources import Direct

LATENCY = 0.01
SOURCES = {"a": Direct(Endpoint("192.0.2.1", 1000)), "b": Direct(Endpoint("192.0.2.2", 2000))}


class Net:
    """Nodes ``a`` and ``b``; ``drop(src, dst, packet)`` decides losses."""

    def __init__(self, trusted_by_b=True, seed_a=b"a" * 32, seed_b=b"b" * 32):
        self.clock = Clock()
        self.clock.advance(1_767_225_600)
        self.rng = random.Random(1)
        self.sent = []
        self.drop = lambda src, dst, packet: False
        self.ids = {"a": Identity.from_seed(seed_a), "b": Identity.from_seed(seed_b)}
        trust = {"a": StaticTrust(), "b": StaticTrust(None if trusted_by_b else ())}
        self.owners = {
            name: RecordingTunnelOwner(route=lambda key, packet, name=name: self.link(name, "b" if name == "a" else "a")(packet))
            for name in ("a", "b")
        }
        self.eps = {
            name: TunnelEndpoint(
                self.ids[name],
                self.clock,
                trust=trust[name],
                owner=self.owners[name],
                randbytes=self.rng.randbytes,
                timers=HandshakeTimers(deadline=20.0),
            )
            for name in ("a", "b")
        }

    @property
    def received(self):
        return {name: owner.data() for name, owner in self.owners.items()}

    def link(self, src, dst):
        def send(packet):
            self.sent.append((src, dst, packet))
            if not self.drop(src, dst, packet):
                self.clock.callLater(LATENCY, self.eps[dst].datagram_received, packet, SOURCES[src], self.link(dst, src))

        return send

    def tunnel(self, name):
        other = "b" if name == "a" else "a"
        return self.eps[name].peer(self.ids[other].public_key)

    def run(self, seconds, step=LATENCY):
        for _ in range(int(round(seconds / step))):
            self.clock.advance(step)

    def kinds(self, src):
        return [p[0] for s, _, p in self.sent if s == src]


def outcome(d):
    results = []
    d.addBoth(results.append)
    return results


def test_handshake_and_data_both_ways():
    net = Net()
    done = outcome(net.tunnel("a").connect())
    net.run(0.1)
    assert done == [net.tunnel("a")]
    net.tunnel("a").send_data(b"hello b")
    net.run(0.1)
    net.tunnel("b").send_data(b"hello a")
    net.run(0.1)
    assert net.received == {"a": [b"hello a"], "b": [b"hello b"]}
    a, b = net.tunnel("a"), net.tunnel("b")
    assert a.current.local_index == b.current.remote_index
    assert b.current.local_index == a.current.remote_index
    assert net.kinds("a")[:2] == [KIND_TUNNEL_INIT, KIND_TUNNEL_DATA]


def test_lost_initiation_is_retried():
    net = Net()
    lost = []

    def drop_first_init(src, dst, packet):
        if packet[0] == KIND_TUNNEL_INIT and not lost:
            lost.append(packet)
            return True
        return False

    net.drop = drop_first_init
    done = outcome(net.tunnel("a").connect())
    net.run(0.45)
    assert done == []
    net.run(0.35)  # first retry after 0.5 s plus at most 0.25 s jitter
    assert done == [net.tunnel("a")]
    assert net.eps["a"].stats["init_sent"] == 2
    net.tunnel("a").send_data(b"after the retry")
    net.run(0.1)
    assert net.received["b"] == [b"after the retry"]


def test_lost_response_is_retried_too():
    net = Net()
    lost = []
    net.drop = lambda s, d, p: p[0] == KIND_TUNNEL_RESPONSE and not lost and not lost.append(p)
    done = outcome(net.tunnel("a").connect())
    net.run(1.5)
    assert done == [net.tunnel("a")]
    assert net.eps["b"].stats["response_sent"] == 2


def test_queued_data_is_sent_once_the_session_is_up():
    net = Net()
    for n in range(3):
        net.tunnel("a").send_data(b"early %d" % n)
    net.run(0.1)
    assert net.received["b"] == [b"early 0", b"early 1", b"early 2"]
    # Real data confirmed the keys, so no keepalive was needed.
    assert net.eps["a"].stats["keepalive_sent"] == 0


def test_responder_sends_only_after_key_confirmation():
    net = Net()
    net.drop = lambda s, d, p: s == "a" and p[0] == KIND_TUNNEL_DATA
    net.tunnel("a").connect()
    net.run(0.1)
    b = net.tunnel("b")
    assert b.current is None and b.next is not None
    b.send_data(b"held back")
    assert [k for k in net.kinds("b") if k == KIND_TUNNEL_DATA] == []


def test_simultaneous_open_converges_on_one_session():
    net = Net()
    a_done = outcome(net.tunnel("a").connect())
    b_done = outcome(net.tunnel("b").connect())
    net.run(0.2)
    a, b = net.tunnel("a"), net.tunnel("b")
    assert a_done == [a] and b_done == [b]
    assert a.current.local_index == b.current.remote_index
    assert b.current.local_index == a.current.remote_index
    winner, loser = (a, b) if a.wins_tie() else (b, a)
    assert winner.current.is_initiator and not loser.current.is_initiator
    assert winner.stats["simultaneous_init_ignored"] == 1
    assert loser.stats["response_sent"] == 1 and winner.stats["response_sent"] == 0
    a.send_data(b"x")
    b.send_data(b"y")
    net.run(0.1)
    assert net.received == {"a": [b"y"], "b": [b"x"]}


def test_rekey_on_time_loses_no_packet():
    net = Net()
    a, b = net.tunnel("a"), net.tunnel("b")
    a.connect()
    net.run(0.1)
    first = a.current
    sent = []
    for n in range(90):  # 450 s of traffic, a packet each way every 5 s
        a.send_data(b"a%d" % n)
        b.send_data(b"b%d" % n)
        sent.append(n)
        net.run(5.0, step=0.05)
    assert net.received["b"] == [b"a%d" % n for n in sent]
    assert net.received["a"] == [b"b%d" % n for n in sent]
    assert a.current is not first
    assert net.eps["a"].stats["init_sent"] >= 3  # rekeyed at ~120 s, ~240 s, ~360 s
    for ep in net.eps.values():
        assert ep.stats["data_expired_key"] == ep.stats["data_auth_failed"] == ep.stats["data_replayed"] == 0


def test_packet_sealed_before_rekey_still_opens_after_the_switch():
    net = Net()
    a, b = net.tunnel("a"), net.tunnel("b")
    a.connect()
    net.run(0.1)
    old = a.current
    in_flight = old.seal(b"straggler")
    net.clock.advance(121)
    a.send_data(b"triggers rekey")
    net.run(0.1)
    assert a.current is not old and b.current.local_index == a.current.remote_index
    net.eps["b"].datagram_received(in_flight, SOURCES["a"], net.link("b", "a"))
    assert net.received["b"] == [b"triggers rekey", b"straggler"]


def test_tampered_and_replayed_data_are_dropped_and_counted():
    net = Net()
    net.tunnel("a").connect()
    net.run(0.1)
    packet = net.tunnel("a").current.seal(b"genuine")
    tampered = packet[:-1] + bytes([packet[-1] ^ 1])
    reply = net.link("b", "a")
    net.eps["b"].datagram_received(tampered, SOURCES["a"], reply)
    net.eps["b"].datagram_received(packet, SOURCES["a"], reply)
    net.eps["b"].datagram_received(packet, SOURCES["a"], reply)
    net.eps["b"].datagram_received(b"\xc4\x01garbage", SOURCES["a"], reply)
    assert net.received["b"] == [b"genuine"]
    stats = net.eps["b"].stats
    assert (stats["data_auth_failed"], stats["data_replayed"], stats["malformed"]) == (1, 1, 1)


def test_untrusted_initiator_gets_no_reply_at_all():
    net = Net(trusted_by_b=False)
    done = outcome(net.tunnel("a").connect())
    net.run(25.0, step=0.1)
    assert net.kinds("b") == []
    assert net.eps["b"].stats["init_untrusted"] == net.eps["a"].stats["init_sent"] >= 4
    assert len(done) == 1 and isinstance(done[0].value, Timeout)
    assert "20 s" in str(done[0].value)


def test_replayed_initiation_is_refused():
    net = Net()
    net.tunnel("a").connect()
    net.run(0.1)
    init = next(p for s, _, p in net.sent if s == "a" and p[0] == KIND_TUNNEL_INIT)
    net.eps["b"].datagram_received(init, SOURCES["a"], net.link("b", "a"))
    assert net.eps["b"].stats["init_replayed"] == 1
    assert net.eps["b"].stats["response_sent"] == 1


def test_stop_fails_waiters_and_releases_indices():
    net = Net()
    net.drop = lambda s, d, p: True
    a = net.tunnel("a")
    done = outcome(a.connect())
    a.stop()
    assert isinstance(done[0].value, TunnelClosed)
    assert len(net.eps["a"].indices) == 0
    later = outcome(a.connect())
    assert isinstance(later[0].value, TunnelClosed)
    net.run(30.0, step=0.5)
    assert net.eps["a"].stats["init_sent"] == 1


def test_session_expires_without_traffic():
    net = Net()
    a = net.tunnel("a")
    a.connect()
    net.run(0.1)
    net.run(181.0, step=1.0)
    assert a.current is None and len(net.eps["a"].indices) == 0
    a.send_data(b"wakes it up")
    net.run(0.1)
    assert net.received["b"] == [b"wakes it up"]


def test_collaborators_are_checked_when_wired():
    identity, clock = Identity.from_seed(b"c" * 32), Clock()
    with pytest.raises(TypeError, match="ITrustPolicy"):
        TunnelEndpoint(identity, clock, trust=lambda key: True, owner=RecordingTunnelOwner())
    with pytest.raises(TypeError, match="ITunnelOwner"):
        TunnelEndpoint(identity, clock, trust=StaticTrust(), owner=lambda key, packet: None)


def test_the_owner_hears_data_and_authentication_with_the_typed_source():
    net = Net()
    net.tunnel("a").connect()
    net.run(0.1)
    a_key, b_key = net.ids["a"].public_key, net.ids["b"].public_key
    b_events = net.owners["b"].events
    # The responder learnt where the initiation came from before answering it;
    # the initiator's first packet (a keepalive: no data to report) confirmed
    # the session, and authenticated too.
    assert [e[0] for e in b_events] == ["authenticated", "up", "authenticated"]
    assert b_events[1] == ("up", a_key)
    assert all(e[1:3] == (a_key, SOURCES["a"]) for e in (b_events[0], b_events[2]))
    del b_events[:]
    net.tunnel("a").send_data(b"payload")
    net.run(0.1)
    (data, authenticated) = b_events
    assert data == ("data", a_key, b"payload", SOURCES["a"])
    assert authenticated[:3] == ("authenticated", a_key, SOURCES["a"]) and authenticated[3] > len(b"payload")
    assert ("up", b_key) in net.owners["a"].events


def test_a_burst_is_sealed_at_once_and_a_gro_read_opens_in_order_with_the_replay_window_exact():
    net = Net()
    net.tunnel("a").connect()
    net.run(0.1)
    net.owners["a"].sent.clear()
    burst = [b"packet %d" % i for i in range(5)]
    net.sent.clear()
    net.tunnel("a").send_data_many(burst)
    packets = [p for s, _, p in net.sent if s == "a"]
    assert len(packets) == 5 and net.tunnel("a").stats["data_sent"] >= 5
    # Reordered, with a replay, a forgery and a keepalive-sized stranger inside one read.
    tampered = packets[3][:-1] + bytes([packets[3][-1] ^ 1])
    read = [packets[1], packets[0], tampered, packets[1], packets[3], packets[2], packets[4], packets[0]]
    before = dict(net.eps["b"].stats)
    authenticated = len([e for e in net.owners["b"].events if e[0] == "authenticated"])
    net.eps["b"].packets_received(read, SOURCES["a"], net.link("b", "a"))
    assert net.received["b"][-5:] == [b"packet 1", b"packet 0", b"packet 3", b"packet 2", b"packet 4"]
    stats = net.eps["b"].stats
    assert stats["data_replayed"] - before.get("data_replayed", 0) == 2
    assert stats["data_auth_failed"] - before.get("data_auth_failed", 0) == 1
    assert stats["data_received"] - before.get("data_received", 0) == 5
    # One run of one tunnel: the path hears once, with the size of what opened.
    events = [e for e in net.owners["b"].events if e[0] == "authenticated"][authenticated:]
    assert events == [("authenticated", net.ids["a"].public_key, SOURCES["a"], sum(map(len, packets)))]
