"""
BeaconLink, the node's one worker for its beacon, against a real sans-IO
BeaconServer on a MemoryReactorClock: registration, lookups, the relay,
the dispatch of beacon messages, and the fallback to TLS (over an
in-memory pipe to the beacon's own stream protocol) when UDP is blocked.
"""

from __future__ import annotations

import base64
import random

import pytest
from cryptography.hazmat.primitives import hashes
from helpers import Recorder, UDPMemoryReactor
from OpenSSL import crypto
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from pilotproto.beacon.server import BeaconServer
from pilotproto.beacon.tls import BeaconStreamFactory, StreamEndpoint
from pilotproto.errors import InvalidArgument, NotFound, Unavailable
from pilotproto.identity import Identity
from pilotproto.interfaces import (
    IBeaconMail,
    IBeaconObserver,
    IDatagramRouter,
    IDatagramSender,
    IPeerDirectory,
    IRelay,
    IRendezvous,
)
from pilotproto.lab.pki import make_ca, make_leaf
from pilotproto.rendezvous.link import BeaconLink
from pilotproto.rendezvous.transport import UDP_GIVE_UP
from pilotproto.wire import Endpoint, relay
from pilotproto.wire import beacon as msgs
from pilotproto.wire.sources import BeaconStream, Direct, Relayed

BEACON = Endpoint("127.0.0.1", 9000)
LATENCY = 0.001


@implementer(IDatagramSender)
class NodeUDP:
    """A node's socket: datagrams to the beacon arrive there a moment later (unless blocked)."""

    def __init__(self, world, node):
        self.world = world
        self.node = node
        self.sent = 0

    def send(self, data, destination, ttl=None):
        self.sent += 1
        if destination == BEACON and not self.node.udp_blocked:
            self.world.reactor.callLater(LATENCY, self.world.to_beacon, data, self.node.endpoint)

    def send_many(self, packets, destination):
        for data in packets:
            self.send(data, destination)


@implementer(IDatagramRouter)
class Router:
    """Sorts like the node's router: beacon messages to the link, the rest kept."""

    def __init__(self):
        self.link = None
        self.others: list[tuple[bytes, object]] = []

    def datagram_received(self, data, source):
        if data[0] == msgs.KIND:
            self.link.beacon_message_received(msgs.decode(data), source)
        else:
            self.others.append((data, source))


@implementer(IBeaconMail)
class Mail:
    def __init__(self):
        self.registrations = 0
        self.messages = []

    def message_received(self, msg):
        self.messages.append(msg)
        return isinstance(msg, msgs.Deliver)

    def registered(self):
        self.registrations += 1


@implementer(IBeaconObserver)
class Observer:
    def __init__(self):
        self.events = []

    def beacon_resolved(self, endpoint):
        self.events.append(("resolved", endpoint))

    def public_endpoint_seen(self, endpoint):
        self.events.append(("public", endpoint))


class Pipe(StringTransport):
    """One end of an in-memory TCP connection: writes reach the other end a moment later."""

    def __init__(self, reactor, peer: tuple, cert=None):
        super().__init__(peerAddress=IPv4Address("TCP", *peer))
        self.reactor = reactor
        self.cert = cert
        self.other: Pipe | None = None
        self.protocol = None
        self.closed = False

    def getPeerCertificate(self):
        return self.cert

    def write(self, data):
        if not self.closed:
            self.reactor.callLater(LATENCY, self.other.protocol.dataReceived, data)

    def loseConnection(self):
        for end in (self, self.other):
            if not end.closed:
                end.closed = True
                self.reactor.callLater(0, end.protocol.connectionLost, Failure(ConnectionDone()))

    abortConnection = loseConnection


class Node:
    def __init__(self, world, name, port, public=False, tls=None, fingerprint=None, beacon=("127.0.0.1", 9000)):
        self.world = world
        self.endpoint = Endpoint("198.51.100.1", port)
        self.udp_blocked = False
        self.identity = Identity.generate()
        self.udp = NodeUDP(world, self)
        self.router, self.mail, self.observer = Router(), Mail(), Observer()
        self.link = BeaconLink(
            world.reactor,
            self.identity,
            hostname=name,
            public=public,
            beacon=beacon,
            tls=tls,
            fingerprint=fingerprint,
            udp=self.udp,
            rng=random.Random(port),
            ids=_ids(port),
        )
        self.router.link = self.link
        self.link.wire(router=self.router, mail=self.mail, observer=self.observer)
        world.nodes[self.endpoint] = self

    @property
    def address(self) -> bytes:
        return self.identity.address.to_bytes()


def _ids(seed):
    """Request ids from a seeded source."""
    rng = random.Random(seed)
    return lambda: rng.getrandbits(64)


class World:
    def __init__(self):
        self.reactor = UDPMemoryReactor(names={"beacon.example": "127.0.0.1"})
        self.server = BeaconServer(self.reactor, send=self.deliver)
        self.nodes: dict[Endpoint, Node] = {}
        self.cert, self.fingerprint = _certificate()

    def to_beacon(self, data, source):
        for reply, destination in self.server.datagram_received(data, source):
            self.deliver(reply, destination)

    def deliver(self, data, destination):
        if isinstance(destination, StreamEndpoint):
            destination.sink.deliver(data)
            return
        node = self.nodes.get(destination)
        if node is not None and not node.udp_blocked:
            self.reactor.callLater(LATENCY, node.router.datagram_received, data, Direct(BEACON))

    def run(self, seconds, step=0.01):
        for _ in range(round(seconds / step)):
            self.reactor.advance(step)

    def connect_tls(self, node):
        """Complete the TLS connection the node's link dialled, to the beacon's stream protocol."""
        host, port, factory = self.reactor.sslClients[-1][:3]
        assert (host, port) == ("127.0.0.1", 443)
        client = factory.buildProtocol(IPv4Address("TCP", host, port))
        server = BeaconStreamFactory(self.server).buildProtocol(None)
        server.callLater = self.reactor.callLater
        client_end = Pipe(self.reactor, (host, port), cert=self.cert)
        server_end = Pipe(self.reactor, (node.endpoint.host, 40001))
        client_end.other, server_end.other = server_end, client_end
        client_end.protocol, server_end.protocol = client, server
        server.makeConnection(server_end)
        client.makeConnection(client_end)
        client.handshakeCompleted()
        return client_end


_CERT = []


def _certificate():
    if not _CERT:
        ca_cert, ca_key = make_ca()
        cert, _ = make_leaf(ca_cert, ca_key, ["127.0.0.1"], [])
        _CERT.append((crypto.X509.from_cryptography(cert), cert.fingerprint(hashes.SHA256())))
    return _CERT[0]


def result_of(d):
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


@pytest.fixture
def world():
    return World()


def test_the_link_provides_what_the_node_wires_it_as(world):
    link = Node(world, "agent-a", 1).link
    for interface in (IRendezvous, IPeerDirectory, IRelay):
        assert interface.providedBy(link)


def test_registers_and_tells_mail_observer_and_waiters(world):
    a = Node(world, "agent-a", 1)
    a.link.startService()
    waiting = a.link.when_registered()
    assert a.observer.events == [("resolved", BEACON)]
    assert a.link.status() == {"beacon_transport": "udp", "registered": False, "beacon_error": None}
    world.run(0.1)
    assert result_of(waiting) == a.endpoint
    assert a.link.registered and a.link.reflexive_endpoint == a.endpoint
    assert a.link.status() == {"beacon_transport": "udp", "registered": True, "beacon_error": None}
    assert a.mail.registrations == 1
    assert ("public", a.endpoint) in a.observer.events
    assert result_of(a.link.when_registered()) == a.endpoint
    assert world.server.registry.find_by_name("agent-a") is not None
    # Keepalive acks report the endpoint again, for NAT discovery to compare.
    seen = len(a.observer.events)
    world.run(6)
    assert a.observer.events[seen:] and set(a.observer.events[seen:]) == {("public", a.endpoint)}


def test_a_beacon_name_is_resolved_first(world):
    a = Node(world, "agent-a", 1, beacon=("beacon.example", 9000))
    a.link.startService()
    assert a.observer.events == [("resolved", BEACON)]
    world.run(0.1)
    assert a.link.registered


def test_a_beacon_name_that_does_not_resolve_is_reported(world):
    a = Node(world, "agent-a", 1, beacon=("nowhere.example", 9000))
    a.link.startService()
    world.run(1)
    error = a.link.status()["beacon_error"]
    assert error["code"] == "unavailable" and "nowhere.example" in error["message"]
    assert a.observer.events == [] and a.udp.sent == 0


def test_stop_unregisters_and_fails_waiters(world):
    a, b = Node(world, "agent-a", 1), Node(world, "agent-b", 2)
    a.link.startService()
    world.run(0.1)
    assert result_of(a.link.stopService()) is None
    world.run(0.1)
    assert world.server.registry.find_by_name("agent-a") is None
    b.udp_blocked = True
    b.link.startService()
    waiting = b.link.when_registered()
    b.link.stopService()
    assert result_of(waiting).check(Unavailable)


def test_lookup_describes_a_visible_node_and_not_a_hidden_one(world):
    a, b, c = Node(world, "agent-a", 1), Node(world, "agent-b", 2, public=True), Node(world, "agent-c", 3)
    for node in (a, b, c):
        node.link.startService()
    world.run(0.1)
    found = a.link.lookup("agent-b")
    world.run(0.1)
    assert result_of(found) == {
        "hostname": "agent-b",
        "address": str(b.identity.address),
        "public_key": base64.b64encode(b.identity.public_key).decode(),
        "endpoints": [str(b.endpoint)],
        "public": True,
    }
    by_address = a.link.lookup(str(b.identity.address))
    world.run(0.1)
    assert result_of(by_address)["hostname"] == "agent-b"
    hidden = a.link.lookup("agent-c")
    world.run(0.1)
    failure = result_of(hidden)
    assert failure.check(NotFound) and str(failure.value) == "no node 'agent-c' is visible to this node"
    with pytest.raises(InvalidArgument):
        a.link.lookup("")


def test_only_the_beacon_is_the_beacon(world):
    a = Node(world, "agent-a", 1)
    a.link.startService()
    assert a.link.is_beacon(Direct(BEACON)) and a.link.is_beacon(BeaconStream())
    assert not a.link.is_beacon(Direct(Endpoint("127.0.0.1", 9001))) and not a.link.is_beacon(Relayed(b"\0" * 8))
    deliver = msgs.Deliver(1, 2, b"x")
    assert not a.link.beacon_message_received(deliver, Direct(Endpoint("203.0.113.1", 9000)))
    assert a.mail.messages == []
    # Mail from the beacon goes to the mail reader; answers to requests do not.
    assert a.link.beacon_message_received(deliver, Direct(BEACON))
    assert a.mail.messages == [deliver]


def test_answers_go_to_the_signed_requests_before_the_mail(world):
    a = Node(world, "agent-a", 1)
    a.link.startService()
    world.run(0.1)
    oks = []
    a.link.requests.send(("visibility", 0), msgs.SetVisibility(0, 1, 0, 1, ()), lambda: oks.append("ok"))
    world.run(0.1)
    assert oks == ["ok"]
    assert not any(isinstance(m, msgs.Ok) for m in a.mail.messages)


def test_relay_needs_a_registration_then_carries_frames(world):
    a, b = Node(world, "agent-a", 1, public=True), Node(world, "agent-b", 2, public=True)
    a.link.send_relay(b.address, b"\xc4early")
    assert a.link.counters["relay_unavailable"] == 1
    a.link.startService()
    b.link.startService()
    world.run(0.1)
    assert a.link.relay_kind() == "relay"
    a.link.send_relay(b.address, b"\xc4hello")
    world.run(0.1)
    [(data, source)] = b.router.others
    assert source == Direct(BEACON)
    frame = relay.decode_from_beacon(data)
    assert (frame.sender, frame.payload) == (a.address, b"\xc4hello")


def test_a_burst_is_relayed_in_order_with_fresh_counters(world):
    a, b = Node(world, "agent-a", 1, public=True), Node(world, "agent-b", 2, public=True)
    a.link.send_relay_many(b.address, [b"\xc4early"] * 2)
    assert a.link.counters["relay_unavailable"] == 2
    a.link.startService()
    b.link.startService()
    world.run(0.1)
    a.link.send_relay(b.address, b"\xc4one")
    a.link.send_relay_many(b.address, [b"\xc4two", b"\xc4three"])
    a.link.send_relay(b.address, b"\xc4four")
    world.run(0.1)
    # The beacon's replay window passed every frame: the burst took counters of its own.
    assert [relay.decode_from_beacon(data).payload for data, _ in b.router.others] == [b"\xc4one", b"\xc4two", b"\xc4three", b"\xc4four"]


def test_wiring_is_checked(world):
    a = Node(world, "agent-a", 1)
    with pytest.raises(TypeError, match="router"):
        a.link.wire(router=Recorder(), mail=a.mail, observer=a.observer)
    with pytest.raises(TypeError, match="mail"):
        a.link.wire(router=a.router, mail=a.observer, observer=a.observer)
    with pytest.raises(TypeError, match="udp"):
        BeaconLink(world.reactor, Identity.generate(), hostname="x", public=False, beacon=("127.0.0.1", 9000), tls=None, udp=object())
    unwired = BeaconLink(world.reactor, Identity.generate(), hostname="x", public=False, beacon=("127.0.0.1", 9000), tls=None, udp=a.udp)
    with pytest.raises(RuntimeError, match="wire"):
        unwired.startService()


def test_without_udp_the_link_registers_over_tls_and_relays_there(world):
    a = Node(world, "agent-a", 1, public=True, tls=("127.0.0.1", 443), fingerprint=world.fingerprint)
    b = Node(world, "agent-b", 2, public=True, tls=("127.0.0.1", 443), fingerprint=world.fingerprint)
    a.udp_blocked = True
    a.link.startService()
    b.link.startService()
    world.run(UDP_GIVE_UP + 1)
    assert a.link.kind == "tls" and not a.link.registered
    assert b.link.kind == "udp" and b.link.registered
    assert world.reactor.sslClients, "the link dials the beacon's TLS port"
    pipe = world.connect_tls(a)
    world.run(0.2)
    assert a.link.registered
    assert a.link.status() == {"beacon_transport": "tls", "registered": True, "beacon_error": None}
    assert a.link.reflexive_endpoint is None and a.link.relay_kind() == "relay-tcp"
    assert ("public", None) in a.observer.events
    assert isinstance(world.server.registry.find_by_name("agent-a").endpoint, StreamEndpoint)
    # Relayed frames both ways: by UDP to b, down the stream to a.
    a.link.send_relay(b.address, b"\xc4over tls")
    b.link.send_relay(a.address, b"\xc4over udp")
    world.run(0.1)
    assert [relay.decode_from_beacon(d).payload for d, _ in b.router.others] == [b"\xc4over tls"]
    [(data, source)] = a.router.others
    assert source == BeaconStream() and relay.decode_from_beacon(data).payload == b"\xc4over udp"
    # Stopping closes the stream, and fires once it has closed.
    stopped = a.link.stopService()
    world.run(0.1)
    assert result_of(stopped) is None and pipe.closed


# -- issue 10: a beacon that cannot be resolved or reached is retried, and said so ------------


def test_a_beacon_name_that_does_not_resolve_is_looked_up_again_with_backoff(world):
    lookups = []
    resolve = world.reactor.resolve
    world.reactor.resolve = lambda name, *args: lookups.append(world.reactor.seconds()) or resolve(name, *args)
    a = Node(world, "agent-a", 1, beacon=("late.example", 9000))
    a.link.startService()
    world.run(30)
    # Backing off (about 1, 2, 4, 8, 16 s apart), not hammering, not giving up.
    assert 4 <= len(lookups) <= 7, lookups
    gaps = [b - a for a, b in zip(lookups, lookups[1:])]
    assert gaps == sorted(gaps) and gaps[-1] > 4 * gaps[0]
    error = a.link.status()["beacon_error"]
    assert error["code"] == "unavailable" and "late.example" in error["message"] and "--beacon" in error["hint"]
    # The name appears (DNS back, a typo fixed in /etc/hosts): the node registers.
    world.reactor.names["late.example"] = "127.0.0.1"
    world.run(40)
    assert a.link.registered and a.link.status()["beacon_error"] is None
    stopped = len(lookups)
    a.link.stopService()
    world.run(120)
    assert len(lookups) == stopped


def test_the_tls_fallback_error_names_the_udp_and_tls_addresses_it_tried(world):
    from twisted.internet.error import ConnectionRefusedError

    a = Node(world, "agent-a", 1, tls=("127.0.0.1", 443), fingerprint=world.fingerprint)
    a.udp_blocked = True
    a.link.startService()
    world.run(UDP_GIVE_UP + 1)
    assert a.link.kind == "tls" and world.reactor.sslClients
    connector_factory = world.reactor.sslClients[-1][2]
    connector_factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    error = a.link.status()["beacon_error"]
    assert "UDP at 127.0.0.1:9000" in error["message"], error
    assert "TLS at 127.0.0.1:443" in error["message"] and "connection refused" in error["message"], error
    assert "--beacon-tls" in error["hint"] and "port 443" in error["hint"], error
    # An untrusted certificate keeps its own hint: how to trust it.
    from pilotproto.rendezvous.tls import BeaconUntrusted

    attempts = len(world.reactor.sslClients)
    while len(world.reactor.sslClients) == attempts:  # the next attempt, after the retry delay
        world.run(0.1)
    world.reactor.sslClients[-1][2].clientConnectionFailed(None, Failure(BeaconUntrusted("the certificate is not trusted")))
    error = a.link.status()["beacon_error"]
    assert error["code"] == "beacon_untrusted" and "UDP at 127.0.0.1:9000" in error["message"]
    assert "--beacon-ca" in error["hint"], error
