"""
Several beacons per node (issue 14): the merge rules, the relay choice, the
fanned-out requests, and a BeaconSet of two BeaconLinks against two real
sans-IO BeaconServers on a Clock (one killed and restarted).
"""

from __future__ import annotations

import base64
import random

import pytest
from helpers import UDPMemoryReactor
from zope.interface import implementer

from pilotproto.beacon.server import BeaconServer
from pilotproto.errors import NotFound, RateLimited, Unavailable
from pilotproto.identity import Identity
from pilotproto.interfaces import IBeaconMail, IBeaconObserver, IDatagramRouter, IDatagramSender, IPeerDirectory, IRelay, IRendezvous, ISignedRequests
from pilotproto.rendezvous.beacons import LOOKUP_GRACE, BeaconSet
from pilotproto.rendezvous.fanout import FannedRequests
from pilotproto.rendezvous.link import BeaconLink
from pilotproto.rendezvous.merge import NameConflict, RelayChoice, merge_lookups
from pilotproto.wire import Endpoint
from pilotproto.wire import beacon as msgs
from pilotproto.wire.datagrams import BeaconMessage, RelayedPacket, classify
from pilotproto.wire.sources import Direct

KEY_A, KEY_B = base64.b64encode(b"a" * 32).decode(), base64.b64encode(b"b" * 32).decode()


def _found(key=KEY_A, endpoints=("198.51.100.1:1",), public=True):
    return {"hostname": "agent-x", "address": "0:0000.0000.0001", "public_key": key, "endpoints": list(endpoints), "public": public}


def result_of(d):
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


# -- the merge rules ----------------------------------------------------------------------


def test_one_key_everywhere_is_one_answer_with_every_endpoint_and_beacon():
    merged = merge_lookups("agent-x", [("b1", _found(endpoints=["1.1.1.1:1"])), ("b2", _found(endpoints=["1.1.1.1:1", "2.2.2.2:2"]))])
    assert merged["public_key"] == KEY_A
    assert merged["endpoints"] == ["1.1.1.1:1", "2.2.2.2:2"]
    assert merged["beacons"] == ["b1", "b2"]


def test_two_keys_for_one_name_is_a_conflict_not_a_coin_toss():
    for answers in ([("b1", _found(KEY_A)), ("b2", _found(KEY_B))], [("b1", _found(KEY_B)), ("b2", _found(KEY_A))]):
        with pytest.raises(NameConflict) as e:
            merge_lookups("agent-x", answers)
        assert e.value.code == "name_conflict" and e.value.hint
        assert "b1" in e.value.message and "b2" in e.value.message


def test_found_on_one_beacon_is_found_whatever_the_others_say():
    merged = merge_lookups("agent-x", [("b1", NotFound()), ("b2", _found()), ("b3", None)])
    assert merged["beacons"] == ["b2"]


def test_not_found_only_when_every_beacon_says_so_or_is_down():
    with pytest.raises(NotFound):
        merge_lookups("agent-x", [("b1", NotFound()), ("b2", Unavailable()), ("b3", None)])
    with pytest.raises(Unavailable):
        merge_lookups("agent-x", [("b1", Unavailable()), ("b2", None)])
    # A beacon that refused for another reason might have known it: its error is the answer.
    with pytest.raises(RateLimited):
        merge_lookups("agent-x", [("b1", NotFound()), ("b2", RateLimited())])


# -- the relay choice ---------------------------------------------------------------------------


def test_a_placed_peer_is_relayed_through_one_shared_beacon_and_stays_there():
    choice = RelayChoice()
    choice.learned(b"peer01", [1, 2])
    assert choice.route(b"peer01", [0, 1, 2]) == ([1], False)
    # Beacon 0 learns of it later: the relay does not flap.
    choice.learned(b"peer01", [0, 1, 2])
    assert choice.route(b"peer01", [0, 1, 2]) == ([1], False)


def test_the_relay_moves_to_another_shared_beacon_when_its_beacon_dies():
    choice = RelayChoice()
    choice.learned(b"peer01", [0, 1])
    assert choice.route(b"peer01", [0, 1]) == ([0], False)
    assert choice.route(b"peer01", [1]) == ([1], False)
    assert choice.counters["relay_moves"] == 1
    # It does not move back when beacon 0 returns.
    assert choice.route(b"peer01", [0, 1]) == ([1], False)


def test_an_unplaced_peer_goes_through_every_usable_beacon_and_asks_for_a_lookup():
    choice = RelayChoice()
    assert choice.route(b"peer01", [0, 1]) == ([0, 1], True)
    choice.learned(b"peer01", [2])  # only on a beacon that does not answer us
    assert choice.route(b"peer01", [0, 1]) == ([0, 1], True)


def test_the_relay_choice_forgets_the_oldest_peers():
    choice = RelayChoice(max_peers=2)
    for peer in (b"p1", b"p2", b"p3"):
        choice.learned(peer, [0])
    assert choice.known(b"p1") == () and choice.known(b"p3") == (0,)


# -- fanned-out requests -----------------------------------------------------------------------


@implementer(ISignedRequests)
class FakeRequests:
    def __init__(self):
        self.sent, self.posted, self.asked = {}, [], []

    def ask(self, request):
        from twisted.internet.defer import Deferred

        d = Deferred()
        self.asked.append((request, d))
        return d

    def send(self, what, request, on_ok, on_error=None, on_give_up=None):
        self.sent[what] = (request, on_ok, on_error, on_give_up)

    def post(self, request):
        self.posted.append(request)

    def in_flight(self, what):
        return what in self.sent

    def cancel(self, what):
        self.sent.pop(what, None)

    def cancel_matching(self, prefix):
        for what in [w for w in self.sent if w[: len(prefix)] == prefix]:
            del self.sent[what]

    def message_received(self, msg):
        return False

    def stop(self):
        self.sent.clear()

    def settle(self, what, how, *args):
        request, on_ok, on_error, on_give_up = self.sent.pop(what)
        {"ok": on_ok, "error": on_error, "give_up": on_give_up}[how](*args)


class FakeLink:
    def __init__(self, live=True):
        self.requests = FakeRequests()
        self.live = live


def _fanned(n=2):
    links = [FakeLink() for _ in range(n)]
    events = []
    fanned = FannedRequests(links)
    return fanned, links, events


def _send(fanned, events, what=("visibility", 0)):
    fanned.send(what, "request", lambda: events.append("ok"), lambda e: events.append(("error", e.code)), lambda: events.append("give_up"))


def test_a_request_goes_to_every_beacon_and_the_owner_hears_the_first_ok_once():
    fanned, links, events = _fanned()
    _send(fanned, events)
    assert all(("visibility", 0) in link.requests.sent for link in links)
    assert fanned.in_flight(("visibility", 0))
    links[1].requests.settle(("visibility", 0), "ok")
    links[0].requests.settle(("visibility", 0), "ok")
    assert events == ["ok"] and not fanned.in_flight(("visibility", 0))


def test_a_beacon_that_missed_a_request_others_took_gets_it_when_it_registers_again():
    fanned, links, events = _fanned()
    _send(fanned, events)
    links[0].requests.settle(("visibility", 0), "give_up")
    links[1].requests.settle(("visibility", 0), "ok")
    assert events == ["ok"]
    fanned.link_registered(1)
    assert ("visibility", 0) not in links[1].requests.sent
    fanned.link_registered(0)
    assert ("visibility", 0) in links[0].requests.sent
    links[0].requests.settle(("visibility", 0), "ok")
    fanned.link_registered(0)
    assert ("visibility", 0) not in links[0].requests.sent and events == ["ok"]


def test_the_owner_hears_give_up_or_refusal_only_when_no_beacon_took_it():
    fanned, links, events = _fanned()
    _send(fanned, events)
    links[0].requests.settle(("visibility", 0), "give_up")
    assert events == []
    links[1].requests.settle(("visibility", 0), "give_up")
    assert events == ["give_up"]
    # The owner sends it again itself: nothing is owed behind its back.
    fanned.link_registered(0)
    assert links[0].requests.sent == {}
    _send(fanned, events, ("handshake", 1))
    links[0].requests.settle(("handshake", 1), "error", RateLimited())
    links[1].requests.settle(("handshake", 1), "give_up")
    assert events[-1] == ("error", "rate_limited")


def test_sending_again_or_cancelling_forgets_what_was_owed():
    fanned, links, events = _fanned()
    _send(fanned, events)
    links[0].requests.settle(("visibility", 0), "give_up")
    links[1].requests.settle(("visibility", 0), "ok")
    fanned.cancel_matching(("visibility",))
    fanned.link_registered(0)
    assert links[0].requests.sent == {}


def test_ask_tries_the_answering_beacons_first_and_the_next_when_one_is_silent():
    fanned, links, _ = _fanned()
    links[0].live = False
    d = fanned.ask("find")
    assert len(links[1].requests.asked) == 1 and links[0].requests.asked == []
    links[1].requests.asked[0][1].errback(Unavailable("silent"))
    assert len(links[0].requests.asked) == 1
    links[0].requests.asked[0][1].callback("page")
    assert result_of(d) == "page"


def test_acks_go_to_every_answering_beacon():
    fanned, links, _ = _fanned(3)
    links[2].live = False
    fanned.post("ack")
    assert [len(link.requests.posted) for link in links] == [1, 1, 0]


# -- a BeaconSet against two real beacons -----------------------------------------------------------

B1, B2 = Endpoint("127.0.0.1", 9000), Endpoint("127.0.0.2", 9000)
LATENCY = 0.001


class TwoBeacons:
    def __init__(self):
        self.reactor = UDPMemoryReactor()
        self.servers = {b: self._server(b) for b in (B1, B2)}
        self.down: set = set()
        self.nodes: dict = {}

    def _server(self, beacon):
        return BeaconServer(self.reactor, send=lambda data, dst: self.deliver(data, dst, beacon))

    def to_beacon(self, data, source, beacon):
        if beacon in self.down:
            return
        for reply, destination in self.servers[beacon].datagram_received(data, source) or ():
            self.deliver(reply, destination, beacon)

    def deliver(self, data, destination, beacon):
        node = self.nodes.get(destination)
        if node is not None and beacon not in self.down:
            self.reactor.callLater(LATENCY, node.router.datagram_received, data, Direct(beacon))

    def kill(self, beacon):
        self.down.add(beacon)

    def restart(self, beacon):
        self.servers[beacon] = self._server(beacon)
        self.down.discard(beacon)

    def run(self, seconds, step=0.01):
        for _ in range(round(seconds / step)):
            self.reactor.advance(step)


@implementer(IDatagramSender)
class NodeUDP:
    def __init__(self, world, node):
        self.world, self.node = world, node

    def send(self, data, destination, ttl=None):
        if destination in self.world.servers:
            self.world.reactor.callLater(LATENCY, self.world.to_beacon, data, self.node.endpoint, destination)

    def send_many(self, packets, destination):
        for data in packets:
            self.send(data, destination)


@implementer(IDatagramRouter)
class Router:
    """As the node's router: beacon messages to the set, relayed packets kept (with the beacon they came by)."""

    def __init__(self):
        self.beacons = None
        self.relayed: list[tuple[bytes, Endpoint]] = []

    def datagram_received(self, data, source):
        packet = classify(data)
        if isinstance(packet, BeaconMessage):
            self.beacons.beacon_message_received(packet.message, source)
        elif isinstance(packet, RelayedPacket) and self.beacons.is_beacon(source):
            self.relayed.append((packet.payload, source.endpoint))


@implementer(IBeaconMail)
class Mail:
    def __init__(self):
        self.registrations = 0

    def message_received(self, msg):
        return False

    def registered(self):
        self.registrations += 1


@implementer(IBeaconObserver)
class Observer:
    def __init__(self):
        self.resolved = []

    def beacon_resolved(self, endpoint):
        self.resolved.append(endpoint)

    def public_endpoint_seen(self, endpoint):
        pass


class Node:
    def __init__(self, world, name, port, beacons=(B1, B2), public=True):
        self.endpoint = Endpoint("198.51.100.1", port)
        self.identity = Identity.generate()
        self.router, self.mail, self.observer = Router(), Mail(), Observer()
        udp = NodeUDP(world, self)
        rng = random.Random(port)
        links = [
            BeaconLink(world.reactor, self.identity, hostname=name, public=public, beacon=b.as_tuple(), tls=None, udp=udp,
                       rng=rng, ids=lambda: rng.getrandbits(64))
            for b in beacons
        ]
        self.beacons = BeaconSet(world.reactor, links)
        self.router.beacons = self.beacons
        self.beacons.wire(router=self.router, mail=self.mail, observer=self.observer)
        world.nodes[self.endpoint] = self
        self.beacons.startService()

    @property
    def address(self) -> bytes:
        return self.identity.address.to_bytes()


@pytest.fixture
def world():
    return TwoBeacons()


def answer(world, d, seconds=0.1):
    world.run(seconds)
    return result_of(d)


def test_the_set_registers_with_every_beacon_and_is_what_the_node_wires(world):
    a = Node(world, "agent-a", 1)
    for interface in (IRendezvous, IPeerDirectory, IRelay):
        assert interface.providedBy(a.beacons)
    waiting = a.beacons.when_registered()
    world.run(0.1)
    assert result_of(waiting) == a.endpoint
    assert all(server.registry.find_by_name("agent-a") for server in world.servers.values())
    status = a.beacons.status()
    assert status["registered"] and [b["registered"] for b in status["beacons"]] == [True, True]
    assert [b["beacon"] for b in status["beacons"]] == ["127.0.0.1:9000", "127.0.0.2:9000"]
    # NAT discovery hears of the first beacon only.
    assert a.observer.resolved == [B1]
    assert a.mail.registrations == 2


def test_a_lookup_merges_every_beacon_and_places_the_peer_for_the_relay(world):
    a, b = Node(world, "agent-a", 1), Node(world, "agent-b", 2)
    world.run(0.1)
    found = answer(world, a.beacons.lookup("agent-b"))
    assert found["beacons"] == ["127.0.0.1:9000", "127.0.0.2:9000"]
    assert base64.b64decode(found["public_key"]) == b.identity.public_key
    a.beacons.send_relay(b.address, b"hello")
    world.run(0.05)
    assert b.router.relayed == [(b"hello", B1)]
    assert world.servers[B2].counters["relayed_frames"] == 0


def test_a_name_held_by_two_keys_on_two_beacons_is_a_conflict(world):
    Node(world, "agent-x", 1, beacons=(B1,))
    Node(world, "agent-x", 2, beacons=(B2,))
    c = Node(world, "agent-c", 3)
    world.run(0.1)
    error = answer(world, c.beacons.lookup("agent-x")).value
    assert isinstance(error, NameConflict) and error.code == "name_conflict"


def test_a_peer_on_one_beacon_is_found_and_relayed_through_that_one(world):
    a = Node(world, "agent-a", 1)
    b = Node(world, "agent-b", 2, beacons=(B2,))
    world.run(0.1)
    assert answer(world, a.beacons.lookup("agent-b"))["beacons"] == ["127.0.0.2:9000"]
    a.beacons.send_relay(b.address, b"via b2")
    world.run(0.05)
    assert b.router.relayed == [(b"via b2", B2)]
    assert isinstance(answer(world, a.beacons.lookup("agent-nobody")).value, NotFound)


def test_killing_a_beacon_moves_the_relay_and_lookups_do_not_wait_for_it(world):
    a, b = Node(world, "agent-a", 1), Node(world, "agent-b", 2)
    world.run(0.1)
    answer(world, a.beacons.lookup("agent-b"))
    a.beacons.send_relay(b.address, b"before")
    world.run(0.05)
    world.kill(B1)
    # Just killed: the links still believe in it, and a lookup waits only the grace.
    pending = a.beacons.lookup("agent-b")
    world.run(LOOKUP_GRACE + 0.1)
    assert result_of(pending)["beacons"] == ["127.0.0.2:9000"]
    # Within a keepalive interval and a confirmation, B1 is known dead: the relay moves to B2.
    world.run(8)
    assert not a.beacons.links[0].live and a.beacons.links[1].live
    assert a.beacons.status()["registered"]
    a.beacons.send_relay(b.address, b"after the kill")
    world.run(0.05)
    assert b.router.relayed == [(b"before", B1), (b"after the kill", B2)]
    assert a.beacons.counters["relay_moves"] == 1
    # Back with an empty registry: both nodes register there again.
    world.restart(B1)
    world.run(6)
    assert world.servers[B1].registry.find_by_name("agent-a") and world.servers[B1].registry.find_by_name("agent-b")
    assert a.beacons.links[0].live


def test_a_peer_no_lookup_placed_is_relayed_everywhere_then_placed(world):
    a, b = Node(world, "agent-a", 1), Node(world, "agent-b", 2)
    world.run(0.1)
    # b answers a without having looked it up (a opened the session).
    b.beacons.send_relay(a.address, b"blind")
    world.run(0.05)
    assert sorted(a.router.relayed) == [(b"blind", B1), (b"blind", B2)]
    # The blind send started a lookup by address: the next goes through one beacon.
    world.run(0.1)
    b.beacons.send_relay(a.address, b"placed")
    world.run(0.05)
    assert a.router.relayed[2:] == [(b"placed", B1)]


def test_relayed_packets_and_messages_from_any_of_our_beacons_are_ours(world):
    a = Node(world, "agent-a", 1)
    assert a.beacons.is_beacon(Direct(B1)) and a.beacons.is_beacon(Direct(B2))
    assert not a.beacons.is_beacon(Direct(Endpoint("127.0.0.3", 9000)))
    assert not a.beacons.beacon_message_received(msgs.Ok(1), Direct(Endpoint("127.0.0.3", 9000)))
