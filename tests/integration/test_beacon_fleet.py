"""
Issue 14, item 2: a fleet of two beacons sharing a real redis-server.  Nodes
(in this process, kept on the relay) register on different beacons; a
lookup on one finds the node on the other, a trust request is pushed across,
a stream goes through the relay across the two beacons, and a name cannot be
taken through the other beacon.  The beacons run in this process too, so the
test can read their counters; tests/integration/test_beacon_fleet_processes.py
runs them as processes, with restarts.
"""

import base64
import hashlib

import pytest
import pytest_twisted
from fleet_support import redis_server  # noqa: F401 (a fixture)
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol

from pilotproto.beacon.service import BeaconService
from pilotproto.errors import NotFound

from .inproc import make_node, sleep, stop_all, trust_each_other

pytestmark = pytest.mark.integration


def start_fleet_beacon(url):
    service = BeaconService(reactor, interface="127.0.0.1", port=0, store=url)
    service.startService()
    return service


@defer.inlineCallbacks
def wait_until(predicate, timeout):
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return True
        yield sleep(0.05)
    return predicate()


@pytest_twisted.async_yield_fixture
async def fleet(redis_server):  # noqa: F811
    one, two = start_fleet_beacon(redis_server.url), start_fleet_beacon(redis_server.url)
    await defer.gatherResults([one.fleet.ready, two.fleet.ready])
    yield one, two
    await stop_all(one, two)


class Gather(Protocol):
    def __init__(self, done):
        self.done = done
        self.hash = hashlib.sha256()
        self.size = 0

    def dataReceived(self, data):
        self.hash.update(data)
        self.size += len(data)

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.callback((self.size, self.hash.hexdigest()))


@pytest_twisted.inlineCallbacks
def test_nodes_on_two_beacons_find_trust_and_stream_to_each_other_through_the_fleet(tmp_path, fleet):
    one, two = fleet
    a = make_node(tmp_path, one, "agent-a", allow_direct=False)
    b = make_node(tmp_path, two, "agent-b", allow_direct=False)
    try:
        yield defer.gatherResults([a.when_registered(), b.when_registered()])
        with pytest.raises(NotFound):  # private by default, across the fleet too
            yield a.lookup("agent-b")

        yield trust_each_other(a, b)
        # The request was posted on beacon one and pushed by beacon two, where B is.
        assert one.server.counters["mail_posted"] >= 1 and two.server.counters["mail_pushes"] >= 1
        assert two.server.counters["fleet_changes"] >= 1
        found = yield a.lookup("agent-b")
        assert found["hostname"] == "agent-b" and found["public_key"] == base64.b64encode(b.identity.public_key).decode()
        assert one.server.counters["fleet_lookups"] >= 1

        done = defer.Deferred()
        yield b.listen(7000, Factory.forProtocol(lambda: Gather(done)))
        sender = yield a.dial("agent-b", 7000, Factory.forProtocol(Protocol))
        blob = bytes(range(256)) * 1024  # 256 KiB
        sender.transport.write(blob)
        sender.transport.loseConnection()
        size, digest = yield done
        assert (size, digest) == (len(blob), hashlib.sha256(blob).hexdigest())
        assert one.server.counters["fleet_relayed_out"] > 10 and two.server.counters["fleet_relayed_in"] > 10
        assert two.server.counters["fleet_relayed_out"] > 0 and one.server.counters["fleet_relayed_in"] > 0
        [peer] = (yield a.peers())["peers"]
        assert peer["path"] == "relay"
    finally:
        yield stop_all(a, b)


@pytest_twisted.inlineCallbacks
def test_a_name_held_through_one_beacon_is_taken_through_no_other(tmp_path, fleet):
    one, two = fleet
    owner = make_node(tmp_path, one, "agent-owner")
    try:
        yield owner.when_registered()
        assert (yield wait_until(lambda: two.server.registry.holder_of("agent-owner") is not None, 5))
        thief = make_node(tmp_path / "thief", two, "agent-owner")
        try:
            assert (yield wait_until(lambda: thief.link.status()["beacon_error"], 8))
            assert thief.link.status()["beacon_error"]["code"] == "name_taken"
            assert not thief.link.registered
        finally:
            yield stop_all(thief)
    finally:
        yield stop_all(owner)
