"""
Issue 14, item 5: a fleet beacon acknowledges a name, a trust request or a
visibility list only once Redis holds it, so a crash of Redis (SIGKILL; the
test's redis-server runs with appendonly yes and appendfsync always) loses
nothing acknowledged; with Redis away the answer is ``unavailable``, not Ok.
The beacon is the sans-IO server on the reactor, writing to a real Redis.
"""

import pytest_twisted
from fleet_support import redis_server  # noqa: F401 (a fixture)
from helpers import SignedNode
from test_beacon_redis_store import connect
from twisted.internet import reactor, task

from pilotproto.beacon.fleet import REDIS_TIMEOUT, RedisFleet
from pilotproto.beacon.redis_store import RedisStore
from pilotproto.beacon.server import BeaconServer
from pilotproto.wire import Endpoint
from pilotproto.wire import beacon as msgs

A_EP, B_EP = Endpoint("198.51.100.1", 4001), Endpoint("198.51.100.2", 4002)


class Beacon:
    """A fleet beacon on a real Redis; each answer notes what Redis held when it left."""

    def __init__(self, redis_server, redis):  # noqa: F811
        self.redis_server = redis_server
        self.answers = []
        self.store = RedisStore(reactor, "one", hold=3600)
        self.server = BeaconServer(reactor, store=self.store, send=self._sent)
        self.fleet = RedisFleet(reactor, self.server, self.store, "one")
        self.server.join_fleet(self.fleet)
        self.store.connected(redis)
        self.fleet.connected(redis)

    def _sent(self, data, destination):
        held = None
        if self.redis_server.ping():
            held = {h: self.redis_server.command("HLEN", f"pilot:{h}") for h in ("names", "mail", "vis")}
        self.answers.append((msgs.decode(data), held))

    def ask(self, node, msg):
        """Send ``msg``; the answer, once the beacon sends it (bounded wait)."""
        before = len(self.answers)
        assert node.send(msg) == []  # held until Redis acknowledged the change
        for _ in range(int((REDIS_TIMEOUT + 2) / 0.02)):
            if len(self.answers) > before:
                return self.answers[before]
            yield_ = task.deferLater(reactor, 0.02, lambda: None)
            yield yield_
        raise AssertionError("no answer")


def ask(beacon, node, msg):
    return pytest_twisted.inlineCallbacks(lambda: (yield from beacon.ask(node, msg)))()


@pytest_twisted.inlineCallbacks
def test_what_a_fleet_beacon_acknowledged_survives_a_redis_crash_and_with_redis_away_it_acknowledges_nothing(redis_server):  # noqa: F811
    redis = yield connect(redis_server.url)
    beacon = Beacon(redis_server, redis)
    try:
        a, b = SignedNode(beacon.server, A_EP, "agent-a"), SignedNode(beacon.server, B_EP, "agent-b")
        nonce = a.challenge().nonce
        registered, held = yield ask(beacon, a, a.signed(msgs.Register(2, nonce, "agent-a", 0, ())))
        assert isinstance(registered, msgs.Registered) and held["names"] == b":1\r\n"
        ok, held = yield ask(beacon, a, a.signed(msgs.HandshakeRequest(8, 7, False, b"agent-b", "agent-a", "hi")))
        assert ok == msgs.Ok(8) and held["mail"] == b":1\r\n"
        ok, held = yield ask(beacon, a, a.signed(msgs.SetVisibility(6, 1, 0, 1, (b.key,))))
        assert ok == msgs.Ok(6) and held["vis"] == b":1\r\n"

        redis_server.kill()  # SIGKILL: only what reached the append-only file comes back
        redis_server.start()
        for h in ("names", "mail", "vis"):
            assert redis_server.command("HLEN", f"pilot:{h}") == b":1\r\n"

        redis_server.kill()
        refused, held = yield ask(beacon, a, a.signed(msgs.SetVisibility(6, 2, 0, 1, ())))
        assert isinstance(refused, msgs.Error) and refused.code == "unavailable" and "Redis" in refused.message
        assert beacon.server.counters["fleet_answers_unkept"] == 1
    finally:
        redis_server.kill()
        yield redis.disconnect()
