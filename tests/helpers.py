"""
Fakes shared by the unit tests: a reactor with UDP, recording collaborators.

Each fake provides the interface it stands in for (checked by the workers'
wiring), and records what it was asked, in order, so a test asserts on the
ordered events rather than on internal state.
"""

from __future__ import annotations

import collections

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface import implementer

from pilotproto.interfaces import IDatagramSender, ITrustPolicy
from pilotproto.tunnel.events import ITunnelOwner
from pilotproto.wire import Endpoint


class FakeSocket:
    """Socket options only: the TTL that priming probes set and restore."""

    def __init__(self):
        self.options: dict = {}
        self.ttls_written: list[int] = []

    def getsockopt(self, level, option):
        return self.options.get((level, option), 64)

    def setsockopt(self, level, option, value):
        self.options[(level, option)] = value


class FakeUDPPort:
    """What ``listenUDP`` returns: records datagrams written to it."""

    def __init__(self, reactor, port: int, protocol, interface: str):
        self.reactor = reactor
        self.port = port or 40000 + len(reactor.udp_ports)
        self.protocol = protocol
        self.interface = interface
        self.written: list[tuple[bytes, tuple]] = []
        self.listening = True
        self.socket = FakeSocket()

    def write(self, data, addr):
        self.written.append((bytes(data), addr))
        self.socket.ttls_written.append(self.socket.getsockopt(0, 2))

    def getHost(self):
        return IPv4Address("UDP", self.interface or "0.0.0.0", self.port)

    def stopListening(self):
        self.listening = False
        self.protocol.doStop()
        return defer.succeed(None)


class UDPMemoryReactor(MemoryReactorClock):
    """``MemoryReactorClock`` plus ``listenUDP`` and ``resolve``."""

    def __init__(self, names: dict | None = None):
        super().__init__()
        self.udp_ports: list[FakeUDPPort] = []
        self.names = dict(names or {})

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        fake = FakeUDPPort(self, port, protocol, interface)
        self.udp_ports.append(fake)
        protocol.makeConnection(fake)
        return fake

    def resolve(self, name, timeout=(1, 3, 11, 45)):
        if name in self.names:
            return defer.succeed(self.names[name])
        from twisted.internet.error import DNSLookupError

        return defer.fail(DNSLookupError(name))


@implementer(IDatagramSender)
class RecordingSender:
    """An IDatagramSender that keeps every datagram: ``sent`` is ``[(data, Endpoint, ttl)]``."""

    def __init__(self, local: Endpoint | None = None):
        self.sent: list[tuple[bytes, Endpoint, int | None]] = []
        self.local_endpoint = local

    def send(self, data, destination, ttl=None):
        self.sent.append((bytes(data), destination, ttl))

    def send_many(self, packets, destination):
        for data in packets:
            self.send(data, destination)

    def flush(self):
        """Nothing is held: every send is recorded at once."""


class Recorder:
    """Records calls to any method name as ``(name, args)``; returns ``results.get(name)``."""

    def __init__(self, **results):
        self.calls: list[tuple] = []
        self.results = results

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def record(*args, **kwargs):
            self.calls.append((name,) + args + ((kwargs,) if kwargs else ()))
            result = self.results.get(name)
            return result(*args) if callable(result) else result

        return record

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


def counting() -> collections.Counter:
    return collections.Counter()


class FakeNet:
    """
    A loss-free network on one :class:`UDPMemoryReactor`: every fake UDP port
    is ``127.0.0.1:port``, and one sans-IO beacon server answers at ``beacon``.
    :meth:`pump` moves datagrams until none are left (bounded).
    """

    def __init__(self, reactor: UDPMemoryReactor, beacon: Endpoint = Endpoint("127.0.0.1", 9000)):
        from pilotproto.beacon.server import BeaconServer

        self.reactor = reactor
        self.beacon = beacon
        self.server = BeaconServer(reactor, send=lambda data, dst: self._pushed.append((data, dst)))
        self._pushed: list = []
        self.delivered = 0

    def pump(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            moved = False
            pushed, self._pushed = self._pushed, []
            for data, destination in pushed:
                moved = True
                self._to_node(data, self.beacon, destination)
            for port in list(self.reactor.udp_ports):
                source = Endpoint("127.0.0.1", port.port)
                written, port.written = port.written, []
                for data, addr in written:
                    moved = True
                    self._deliver(data, source, Endpoint(*addr))
            if not moved:
                return

    def run(self, seconds: float, step: float = 0.05) -> None:
        """Advance the clock ``seconds`` in ``step``s, pumping after each step."""
        self.pump()
        for _ in range(int(seconds / step)):
            self.reactor.advance(step)
            self.pump()

    def _deliver(self, data, source, destination):
        if destination == self.beacon:
            for reply in self.server.datagram_received(data, source):
                reply_data, reply_to = reply
                self._to_node(reply_data, getattr(reply, "origin", None) or self.beacon, reply_to)
        else:
            self._to_node(data, source, destination)

    def _to_node(self, data, source, destination):
        for port in self.reactor.udp_ports:
            if port.listening and port.port == destination.port and destination.host == "127.0.0.1":
                self.delivered += 1
                port.protocol.datagramReceived(data, source.as_tuple())


# -- trust and tunnels (session helper) ------------------------------------------------


@implementer(ITrustPolicy)
class StaticTrust:
    """An ITrustPolicy that trusts the keys in ``keys`` (every key when None)."""

    def __init__(self, keys=None):
        self.keys = None if keys is None else set(keys)

    def is_trusted(self, public_key):
        return self.keys is None or public_key in self.keys

    def hostname_of(self, public_key):
        return None


@implementer(ITunnelOwner)
class RecordingTunnelOwner:
    """An ITunnelOwner: ``route(peer_key, packet)`` moves packets; ``events`` records the rest, in order."""

    def __init__(self, route=None):
        self._route = route
        self.sent: list[tuple[bytes, bytes]] = []
        self.events: list[tuple] = []

    def tunnel_send(self, peer_key, packet):
        self.sent.append((peer_key, packet))
        if self._route is not None:
            self._route(peer_key, packet)

    def tunnel_send_many(self, peer_key, packets):
        for packet in packets:
            self.tunnel_send(peer_key, packet)

    def tunnel_authenticated(self, peer_key, source, size):
        self.events.append(("authenticated", peer_key, source, size))

    def tunnel_data_many(self, peer_key, plaintexts, source):
        for plaintext in plaintexts:
            self.events.append(("data", peer_key, plaintext, source))

    def tunnel_up(self, peer_key):
        self.events.append(("up", peer_key))

    def tunnel_down(self, peer_key):
        self.events.append(("down", peer_key))

    def data(self) -> list[bytes]:
        return [e[2] for e in self.events if e[0] == "data"]


# -- the rendezvous and trust: a beacon channel, a directory, a trust listener, a trust net --------

from pilotproto.interfaces import IPeerDirectory, ITrustListener  # noqa: E402
from pilotproto.rendezvous.interfaces import IBeaconChannel  # noqa: E402


class Seq:
    """Strictly increasing ``seq`` numbers, as ``SeqCounter`` gives, from a fixed start."""

    def __init__(self, start: int = 10**6):
        self.value = start

    def next(self) -> int:
        self.value += 1
        return self.value


@implementer(IBeaconChannel)
class RecordingChannel:
    """An IBeaconChannel: ``sent`` holds ``(how, data)`` with ``how`` "beacon" or "udp";
    ``deliver(data)``, if given, carries each datagram on (to a beacon)."""

    def __init__(self, deliver=None):
        self.sent: list[tuple[str, bytes]] = []
        self._deliver = deliver

    def send_to_beacon(self, data):
        self.sent.append(("beacon", data))
        if self._deliver is not None:
            self._deliver(data)

    def send_by_udp(self, data):
        self.sent.append(("udp", data))
        if self._deliver is not None:
            self._deliver(data)

    def messages(self) -> list:
        from pilotproto.wire import beacon as msgs

        return [msgs.decode(data) for _, data in self.sent]


@implementer(IPeerDirectory)
class FakeDirectory:
    """An IPeerDirectory answering from ``entries`` (target -> dict); NotFound otherwise."""

    def __init__(self, entries: dict | None = None):
        self.entries = dict(entries or {})
        self.asked: list[str] = []

    def lookup(self, target):
        from pilotproto.errors import NotFound

        self.asked.append(target)
        if target in self.entries:
            return defer.succeed(self.entries[target])
        return defer.fail(NotFound())


@implementer(ITrustListener)
class TrustEvents:
    """An ITrustListener recording keys in ``established`` and ``revoked``."""

    def __init__(self):
        self.established: list[bytes] = []
        self.revoked: list[bytes] = []

    def trust_established(self, public_key):
        self.established.append(public_key)

    def trust_revoked(self, public_key):
        self.revoked.append(public_key)


class TrustNet:
    """Datagrams between trust managers and a sans-IO beacon, each one a clock
    tick later (like a network), on one Clock.

    ``dropping``: endpoints cut off both ways; ``muted``: endpoints whose
    datagrams to the beacon are lost (the other way still works)."""

    def __init__(self):
        from twisted.internet.task import Clock

        from pilotproto.beacon.server import BeaconServer

        self.clock = Clock()
        self.beacon = BeaconServer(self.clock, send=self.from_beacon)
        self.nodes: dict = {}
        self.dropping: set = set()
        self.muted: set = set()

    def from_beacon(self, data, endpoint):
        if endpoint in self.dropping:
            return
        node = self.nodes.get(endpoint)
        if node is not None and node.online:
            self.clock.callLater(0, node.receive, data)

    def settle(self, seconds: float = 0.0) -> None:
        self.clock.advance(0)
        self.clock.advance(0)
        for _ in range(int(seconds * 10)):
            self.clock.advance(0.1)


class TrustNode:
    """One node's TrustManager on a :class:`TrustNet`, with real SignedRequests,
    registered by hand (no registration machine)."""

    def __init__(self, net: TrustNet, tmp_path, hostname: str, port: int, auto_approve: bool = False):
        import os

        from pilotproto.identity import Identity
        from pilotproto.rendezvous.requests import SignedRequests

        self.net = net
        self.endpoint = Endpoint("127.0.0.1", port)
        self.hostname = hostname
        self.identity = Identity.generate()
        self.seq = Seq()
        self.home = str(tmp_path / hostname)
        os.makedirs(self.home)
        self.online = True
        self.events = TrustEvents()
        self.revoked, self.trusted = self.events.revoked, self.events.established
        self.directory = FakeDirectory()
        self.lookups = self.directory.entries
        self.channel = RecordingChannel(self.send)
        self.requests = SignedRequests(net.clock, self.identity, self.channel, self.seq)
        self.manager = self.make_manager(auto_approve)
        net.nodes[self.endpoint] = self

    def make_manager(self, auto_approve: bool = False):
        from pilotproto.trust.manager import TrustManager

        return TrustManager(
            self.net.clock,
            self.identity,
            self.home,
            requests=self.requests,
            directory=self.directory,
            listener=self.events,
            hostname=self.hostname,
            auto_approve=auto_approve,
        )

    def send(self, data):
        if self.online and self.endpoint not in self.net.dropping | self.net.muted:
            self.net.clock.callLater(0, self._to_beacon, data)

    def _to_beacon(self, data):
        for reply, endpoint in self.net.beacon.datagram_received(data, self.endpoint):
            self.net.from_beacon(reply, endpoint)

    def receive(self, data):
        from pilotproto.wire import beacon as msgs

        # As the beacon link dispatches: answers to our requests first, then mail.
        msg = msgs.decode(data)
        self.requests.message_received(msg) or self.manager.message_received(msg)

    def register(self):
        from pilotproto.wire import beacon as msgs

        self.online = True
        [challenge] = self._ask(msgs.Hello(1))
        [reply] = self._ask(msgs.sign(msgs.Register(2, challenge.nonce, self.hostname), self.identity, self.seq.next()))
        assert isinstance(reply, msgs.Registered)
        self.manager.registered()
        self.net.settle()

    def _ask(self, msg):
        from pilotproto.wire import beacon as msgs

        return [msgs.decode(d) for d, _ in self.net.beacon.datagram_received(msgs.encode(msg), self.endpoint)]

    def go_offline(self):
        from pilotproto.wire import beacon as msgs

        self._ask(msgs.sign(msgs.Unregister(3), self.identity, self.seq.next()))
        self.online = False

    def sees(self, other) -> bool:
        me = self.net.beacon.registry.get(self.identity.public_key)
        them = self.net.beacon.registry.get(other.identity.public_key)
        return self.net.beacon.visible(them, me)


# -- the node as the control layer sees it (IPilotNode) ------------------------------


class MemoryPipeEnd:
    """
    One end of an in-memory stream between two protocols: what a pilot stream
    looks like to them (write, half-close, close, pilot addresses), with every
    delivery one ``clock.callLater(0)`` later, in order, as a real transport's.
    """

    def __init__(self, clock, host, peer):
        self._clock = clock
        self._host, self._peer = host, peer
        self.other: "MemoryPipeEnd" | None = None
        self.protocol = None
        self.write_closed = False
        self.disconnecting = False
        self.lost = False
        self.producer = None

    def write(self, data):
        if not (self.write_closed or self.disconnecting or self.lost):
            self._clock.callLater(0, self.other._deliver, bytes(data))

    def writeSequence(self, data):
        self.write(b"".join(data))

    def loseWriteConnection(self):
        if not self.write_closed:
            self.write_closed = True
            self._clock.callLater(0, self.other._eof)

    def loseConnection(self):
        if not self.disconnecting:
            self.disconnecting = True
            self._clock.callLater(0, self._close)

    def abortConnection(self):
        self.disconnecting = True
        self._close()

    def getHost(self):
        return self._host

    def getPeer(self):
        return self._peer

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def pauseProducing(self):
        """Everything is delivered at once; nothing to pause."""

    def resumeProducing(self):
        """Everything is delivered at once."""

    def stopProducing(self):
        self.loseConnection()

    def _deliver(self, data):
        if not self.lost:
            self.protocol.dataReceived(data)

    def _eof(self):
        from twisted.internet.interfaces import IHalfCloseableProtocol

        if self.lost:
            return
        if self.write_closed:  # both directions are done: the stream ends
            self._close()
            return
        half = IHalfCloseableProtocol(self.protocol, None)
        if half is not None:
            half.readConnectionLost()
        else:
            self.loseConnection()

    def _close(self):
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        for end in (self, self.other):
            if not end.lost:
                end.lost = True
                end.protocol.connectionLost(Failure(ConnectionDone()))


def memory_pipe(clock, client, server, client_address, server_address):
    """Connect protocols ``client`` and ``server`` through a pair of MemoryPipeEnds."""
    a = MemoryPipeEnd(clock, client_address, server_address)
    b = MemoryPipeEnd(clock, server_address, client_address)
    a.other, b.other = b, a
    a.protocol, b.protocol = client, server
    server.makeConnection(b)
    client.makeConnection(a)
    return a, b


class FakeListeningPort:
    def __init__(self, node, port, factory):
        self.node, self.port, self.factory = node, port, factory

    def startListening(self):
        """Listening began when the fake node made this object."""

    def stopListening(self):
        if self.node.listeners.get(self.port) is self:
            del self.node.listeners[self.port]
            self.factory.doStop()
        return defer.succeed(None)

    def getHost(self):
        from pilotproto.streams.transport import PilotAddress

        return PilotAddress(self.node.hostname, self.node.address, self.port)


from pilotproto.interfaces import IPilotNode  # noqa: E402  (this section's own import)


@implementer(IPilotNode)
class FakePilotNode:
    """
    An IPilotNode in memory.  It knows one peer, ``agent-b``, which is
    itself: a stream dialled to ``agent-b:P`` reaches what listens on P
    here (through a :class:`MemoryPipeEnd` pair), and nothing listening
    there is refused, as a PilotNode refuses.  ``calls`` records every
    command in order; ``results`` overrides a command's answer (a value,
    a Deferred, or an exception to fail with).
    """

    hostname = "agent-a"
    address = "0:0000.0000.0001"
    peer_hostname = "agent-b"
    peer_address = "0:0000.0000.0002"

    def __init__(self, reactor, home="/fake/home"):
        self.reactor = reactor
        self.home = home
        self.calls: list[tuple] = []
        self.results: dict = {}
        self.listeners: dict[int, FakeListeningPort] = {}

    def _answer(self, name, *args, default=None):
        self.calls.append((name,) + args)
        result = self.results.get(name, default)
        if isinstance(result, BaseException):
            return defer.fail(result)
        if isinstance(result, defer.Deferred):
            return result
        return defer.succeed(result)

    def info(self):
        return self._answer("info", default={"hostname": self.hostname, "address": self.address, "pid": 1})

    def lookup(self, target):
        from pilotproto.errors import NotFound

        if target != self.peer_hostname:
            self.calls.append(("lookup", target))
            return defer.fail(NotFound(f"no node {target!r} is visible to this node"))
        return self._answer("lookup", target, default={"hostname": target, "address": self.peer_address})

    def ping(self, target, count=4, interval=1.0, timeout=2.0, payload=b""):
        return self._answer("ping", target, count, interval, timeout, payload,
                            default={"target": target, "sent": count, "received": count})

    def peers(self):
        return self._answer("peers", default={"peers": []})

    def handshake(self, target, reason):
        return self._answer("handshake", target, reason, default={"peer": target, "status": "sent"})

    def pending(self):
        return self._answer("pending", default={"pending": [], "outgoing": []})

    def approve(self, peer):
        return self._answer("approve", peer, default={"peer": peer, "trusted": True})

    def reject(self, peer):
        return self._answer("reject", peer, default={"peer": peer})

    def trusted(self):
        return self._answer("trusted", default={"trusted": []})

    def revoke(self, peer):
        return self._answer("revoke", peer, default={"peer": peer})

    def recv(self, count=None, timeout=0):
        return self._answer("recv", count, timeout, default={"messages": []})

    def shutdown(self):
        return self._answer("shutdown", default={"stopping": True, "pid": 1})

    # forwards and exposes: recorded, answered from ``results``
    def forward(self, bind, local_port, target, port):
        return self._answer("forward", bind, local_port, target, port,
                            default={"bind": bind or "127.0.0.1", "local_port": local_port, "target": target, "port": port})

    def forwards(self):
        return self._answer("forwards", default={"forwards": []})

    def unforward(self, bind, local_port):
        return self._answer("unforward", bind, local_port, default={"removed": {}})

    def expose(self, port, host, tcp_port, allow=()):
        return self._answer("expose", port, host, tcp_port, list(allow),
                            default={"port": port, "host": host or "127.0.0.1", "tcp_port": tcp_port, "allow": []})

    def exposes(self):
        return self._answer("exposes", default={"exposes": []})

    def unexpose(self, port):
        return self._answer("unexpose", port, default={"removed": {}})

    # MCP servers: recorded, answered from ``results``
    def mcp_serve(self, port, argv, cwd, allow=()):
        return self._answer("mcp_serve", port, list(argv), cwd, list(allow),
                            default={"port": port, "argv": list(argv), "cwd": cwd, "allow": []})

    def mcp_servers(self):
        return self._answer("mcp_servers", default={"servers": []})

    def mcp_unserve(self, port):
        return self._answer("mcp_unserve", port, default={"removed": {}})

    # agent cards: recorded, answered from ``results``
    def card_set(self, card):
        return self._answer("card_set", card, default={"card": card, "version": 1, "published": True})

    def card_show(self, peer=None):
        return self._answer("card_show", peer, default={"card": None, "published": False})

    def card_delete(self):
        return self._answer("card_delete", default={"deleted": True, "published": True})

    def find(self, tag=None, capability=None, text=None):
        return self._answer("find", tag, capability, text, default={"cards": [], "total": 0, "rejected": 0})

    def listen(self, port, factory):
        from pilotproto.errors import AlreadyRunning
        from pilotproto.node.failures import as_listen_error

        self.calls.append(("listen", port))
        if port in self.listeners:
            return defer.fail(as_listen_error(port, AlreadyRunning(f"something already listens on port {port}")))
        listening = self.listeners[port] = FakeListeningPort(self, port, factory)
        factory.doStart()
        return defer.succeed(listening)

    def dial(self, target, port, factory):
        from pilotproto.errors import NotFound
        from pilotproto.node.failures import StreamRefused, UnknownPeer
        from pilotproto.streams.transport import PilotAddress

        self.calls.append(("dial", target, port))
        if "dial" in self.results:
            return defer.fail(self.results["dial"])
        if target not in (self.peer_hostname, self.peer_address):
            return defer.fail(UnknownPeer(f"no node {target!r} is visible to this node", NotFound.hint))
        listening = self.listeners.get(port)
        if listening is None:
            return defer.fail(StreamRefused())
        ours = PilotAddress(self.hostname, self.address, 0)
        theirs = PilotAddress(self.peer_hostname, self.peer_address, port)
        server = listening.factory.buildProtocol(ours)
        if server is None:
            return defer.fail(StreamRefused())
        client = factory.buildProtocol(theirs)
        memory_pipe(self.reactor, client, server, ours, PilotAddress(self.peer_hostname, self.peer_address, port))
        return defer.succeed(client)


from pilotproto.interfaces import ISignedRequests  # noqa: E402


@implementer(ISignedRequests)
class RecordingRequests:
    """An ISignedRequests that sends nothing: ``sends`` maps each name in
    flight to ``(request, on_ok, on_error, on_give_up)``, so a test plays
    the beacon by calling them; ``posted`` and ``cancelled`` record the rest."""

    def __init__(self):
        self.sends: dict = {}
        self.asked: list = []
        self.posted: list = []
        self.cancelled: list = []

    def ask(self, request):
        d = defer.Deferred()
        self.asked.append((request, d))
        return d

    def send(self, what, request, on_ok, on_error=None, on_give_up=None):
        self.sends[what] = (request, on_ok, on_error, on_give_up)

    def post(self, request):
        self.posted.append(request)

    def in_flight(self, what):
        return what in self.sends

    def cancel(self, what):
        if self.sends.pop(what, None) is not None:
            self.cancelled.append(what)

    def cancel_matching(self, prefix):
        for what in [w for w in self.sends if w[: len(prefix)] == prefix]:
            self.cancel(what)

    def message_received(self, msg):
        return False

    def stop(self):
        self.sends.clear()

    def settle(self, what, how="ok", error=None):
        """Play the beacon: answer the request named ``what`` ("ok", "error" or "silent")."""
        request, on_ok, on_error, on_give_up = self.sends.pop(what)
        if how == "ok":
            on_ok()
        elif how == "error":
            on_error(error)
        else:
            on_give_up()


class HalfCloseTransport(StringTransport):
    """A StringTransport that also records half-closes and aborts."""

    def __init__(self):
        super().__init__()
        self.write_closed = False
        self.aborted = False

    def loseWriteConnection(self):
        self.write_closed = True

    def abortConnection(self):
        self.aborted = True
        self.disconnecting = True


# -- a hand-driven beacon client (issue 9: the beacon against attackers) --------------------


class SignedNode:
    """Speaks to a sans-IO :class:`BeaconServer` datagram by datagram, as a node
    (or an attacker with its own key) would: ``send`` returns the raw
    ``(data, destination)`` replies, ``ask`` the decoded ones."""

    def __init__(self, server, endpoint, hostname, identity=None, public=False):
        from pilotproto.identity import Identity

        self.server = server
        self.endpoint = endpoint
        self.hostname = hostname
        self.public = public
        self.identity = identity or Identity.generate()
        self.seq = 1_000
        self.relay_key = None
        self.relay_counter = 0

    @property
    def key(self) -> bytes:
        return self.identity.public_key

    def signed(self, msg):
        from pilotproto.wire import beacon as msgs

        self.seq += 1
        return msgs.sign(msg, self.identity, self.seq)

    def send(self, msg, source=None) -> list:
        from pilotproto.wire import beacon as msgs

        data = msg if isinstance(msg, bytes) else msgs.encode(msg)
        return list(self.server.datagram_received(data, source or self.endpoint))

    def ask(self, msg, source=None) -> list:
        from pilotproto.wire import beacon as msgs

        return [msgs.decode(data) for data, _ in self.send(msg, source)]

    def challenge(self, source=None):
        from pilotproto.wire import beacon as msgs

        [reply] = self.ask(msgs.Hello(1), source)
        return reply

    def register(self, lan_endpoints=(), source=None):
        """The beacon's answer to a fresh Register (Registered, or an Error)."""
        from pilotproto.wire import beacon as msgs
        from pilotproto.wire import relay

        challenge = self.challenge(source)
        flags = msgs.FLAG_PUBLIC if self.public else 0
        [reply] = self.ask(self.signed(msgs.Register(2, challenge.nonce, self.hostname, flags, tuple(lan_endpoints))), source)
        if isinstance(reply, msgs.Registered):
            key = challenge.beacon_key
            self.relay_key = relay.relay_key(self.identity.x25519_private(), key, self.identity.public_key, key)
            if source is not None:
                self.endpoint = source
        return reply

    def release(self, hostname=None):
        from pilotproto.wire import beacon as msgs

        challenge = self.challenge()
        [reply] = self.ask(self.signed(msgs.ReleaseName(3, challenge.nonce, hostname or self.hostname)))
        return reply

    def keepalive(self, source=None) -> list:
        from pilotproto.wire import beacon as msgs

        return self.ask(self.signed(msgs.Keepalive(4)), source)

    def lookup(self, target):
        from pilotproto.wire import beacon as msgs

        [reply] = self.ask(self.signed(msgs.Lookup(5, False, target.encode())))
        return reply

    def set_visibility(self, keys, version):
        from pilotproto.wire import beacon as msgs

        return self.ask(self.signed(msgs.SetVisibility(6, version, 0, 1, tuple(keys))))

    def handshake(self, target, reason="hi", handshake_id=7):
        from pilotproto.wire import beacon as msgs

        return self.ask(self.signed(msgs.HandshakeRequest(8, handshake_id, False, target.encode(), self.hostname, reason)))

    def relay_frame(self, other, payload: bytes) -> bytes:
        from pilotproto.wire import relay

        self.relay_counter += 1
        return relay.seal_to_beacon(
            self.relay_key, self.identity.address.to_bytes(), other.identity.address.to_bytes(), self.relay_counter, payload
        )


def lab_marks() -> list:
    """``pytestmark`` for a lab test module: marked ``lab``, skipped (saying why) where no lab can be built."""
    import pytest

    from pilotproto.lab import LabError, check_prerequisites

    try:
        check_prerequisites()
    except LabError as e:
        reason = f"{e.message} {e.hint or ''}".strip()
        return [pytest.mark.lab, pytest.mark.skip(reason=reason)]
    return [pytest.mark.lab]
