"""
Issue 14, item 2: the quotas a client could multiply by spreading over the
beacons of a fleet are counted fleet-wide, in a real redis-server (the SPEND
script), by two sans-IO beacon servers: new names per source address,
signed requests per key, relay bytes per node.
"""

import pytest_twisted
from fleet_support import redis_server  # noqa: F401 (a fixture)
from helpers import SignedNode
from test_beacon_redis_store import connect
from twisted.internet import defer, reactor
from twisted.internet.task import Clock

from pilotproto.beacon.fleet_quotas import FleetQuotas
from pilotproto.beacon.limits import Limits, Rate
from pilotproto.beacon.server import BeaconServer
from pilotproto.wire import Endpoint
from pilotproto.wire import beacon as msgs

LIMITS = Limits(register_per_address=Rate(4, 600), requests_per_key=Rate(32, 600), relay_per_node=Rate(64 << 10, 1))


def beacons(clock, redis, prefix):
    out = []
    for _ in range(2):
        server = BeaconServer(clock, limits=LIMITS)
        shared = FleetQuotas(clock, LIMITS, prefix, server.counters)
        shared.connected(redis)
        server.quotas.share(shared)
        out.append((server, shared))
    return out


@defer.inlineCallbacks
def settle(clock, *shares):
    """Let the reports reach Redis and its answers come back (real round trips)."""
    for _ in range(3):
        clock.advance(0)
        for shared in shares:
            shared.flush()
        for _ in range(20):
            if not any(s._sending for s in shares):
                break
            yield deferLater(0.01)


def deferLater(seconds):
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


@pytest_twisted.inlineCallbacks
def test_new_names_from_one_address_are_counted_over_the_whole_fleet(redis_server):  # noqa: F811
    redis = yield connect(redis_server.url)
    try:
        clock = Clock()
        clock.advance(1_000_000)
        (one, s1), (two, s2) = beacons(clock, redis, "names")
        source = "198.51.100.9"
        answers = []
        for i in range(8):
            # Alternate beacons: alone, each would allow 4 (8 in all).
            server = one if i % 2 == 0 else two
            answers.append(SignedNode(server, Endpoint(source, 5000 + i), f"agent-{i}").register())
            yield settle(clock, s1, s2)
        kinds = [type(a).__name__ if not isinstance(a, msgs.Error) else a.code for a in answers]
        # The fleet allows 4, plus at most one per other beacon (which learns the
        # window is spent when it next reports): 5, not the 8 two lone beacons allow.
        assert kinds == ["Registered"] * 5 + ["rate_limited"] * 3
        assert all(a.retry_after > 0 for a in answers[5:])
        # Another address is not held back.
        assert isinstance(SignedNode(one, Endpoint("203.0.113.1", 5000), "agent-x").register(), msgs.Registered)
    finally:
        yield redis.disconnect()


@pytest_twisted.inlineCallbacks
def test_signed_requests_of_one_key_are_counted_over_the_fleet_in_batches(redis_server):  # noqa: F811
    redis = yield connect(redis_server.url)
    try:
        clock = Clock()
        clock.advance(1_000_000)
        (one, s1), (two, s2) = beacons(clock, redis, "reqs")
        identity = SignedNode(one, Endpoint("198.51.100.1", 1), "agent-a").identity
        a1 = SignedNode(one, Endpoint("198.51.100.1", 1), "agent-a", identity=identity)
        a2 = SignedNode(two, Endpoint("198.51.100.1", 2), "agent-a", identity=identity)
        a1.register(), a2.register()
        a2.seq = 10_000_000  # the same key on both beacons (as with --beacon A --beacon B)
        ok = 0
        for _ in range(2):
            for node in (a1, a2):
                for _ in range(12):
                    [reply] = node.keepalive()
                    ok += not isinstance(reply, msgs.Error)
            clock.advance(1)
            yield settle(clock, s1, s2)
        # Each beacon alone allows 32 (64 for two): the fleet allowed 48 before Redis said "over".
        assert ok == 48
        [r1] = a1.keepalive()
        [r2] = a2.keepalive()
        assert r1.code == r2.code == "rate_limited"
        assert one.counters["fleet_quota_blocked_req"] + two.counters["fleet_quota_blocked_req"] >= 1
    finally:
        yield redis.disconnect()


def test_a_client_that_spends_little_on_a_beacon_costs_redis_nothing_and_redis_away_is_harmless():
    clock = Clock()
    shared = FleetQuotas(clock, LIMITS, "x", {})
    for _ in range(LIMITS.requests_per_key.count // 16 - 1):
        shared.spent("req", b"k" * 32, 1, clock.seconds())
    assert shared._pending == {}  # below 1/16 of the limit: not reported
    shared.spent("req", b"k" * 32, 1, clock.seconds())
    assert len(shared._pending) == 1
    assert shared.flush() == 0  # no Redis yet: dropped, the beacon's own buckets hold
    assert shared.blocked("req", b"k" * 32, clock.seconds()) == 0


class Sender:
    """What Quotas.relay needs of a registration."""

    def __init__(self, key):
        self.public_key = key
        self.relay_bytes = None
        self.relay_pairs = None


@pytest_twisted.inlineCallbacks
def test_relay_bytes_of_a_node_registered_on_two_beacons_are_counted_over_the_fleet(redis_server):  # noqa: F811
    from pilotproto.beacon.limits import Quotas

    redis = yield connect(redis_server.url)
    try:
        clock = Clock()
        clock.advance(1_000_000.25)
        limits = Limits(relay_per_node=Rate(64 << 10, 1), relay_per_pair=Rate(64 << 10, 1))
        shares, quotas = [], []
        for _ in range(2):
            shared = FleetQuotas(clock, limits, "relay", collections_counter())
            shared.connected(redis)
            q = Quotas(clock, limits, collections_counter())
            q.share(shared)
            shares.append(shared)
            quotas.append(q)
        key = b"r" * 32
        senders = [Sender(key), Sender(key)]  # the same node, registered on both beacons
        frame = 8 << 10
        # Within one second, 5 frames on each beacon: 80 KiB, over the 64 KiB the fleet allows.
        assert all(quotas[i].relay(senders[i], b"d" * 32, frame) for i in (0, 1) for _ in range(5))
        yield settle(clock, *shares)
        # The beacon whose report crossed the limit refuses at once; the other
        # when its next report (a second later at most) reads the total.
        assert not quotas[1].relay(senders[1], b"d" * 32, frame)
        assert quotas[0].relay(senders[0], b"d" * 32, frame)
        yield settle(clock, *shares)
        assert not quotas[0].relay(senders[0], b"d" * 32, frame)
        assert not quotas[1].relay(senders[1], b"d" * 32, frame)
        clock.advance(1)  # the next window
        assert quotas[0].relay(senders[0], b"d" * 32, frame)
    finally:
        yield redis.disconnect()


def collections_counter():
    import collections

    return collections.Counter()
