"""
Streams between two in-process nodes over real UDP on loopback: any Twisted
protocol over pilot: endpoints (classes holding the node, and strings
through the control socket), Twisted's failure conventions, refused ports,
many concurrent streams, a byte-exact bulk transfer, and HTTP through treq.
"""

import hashlib
import os

import pytest
import pytest_twisted
from twisted.internet import defer, error, reactor
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.interfaces import IPushProducer
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

from pilotproto.control.service import ControlService
from pilotproto.endpoints import PilotClientEndpoint, PilotServerEndpoint
from pilotproto.errors import NotFound
from pilotproto.streams.errors import ConnectionRefused
from pilotproto.streams.transport import PilotAddress

from .inproc import make_node, start_beacon, stop_all, trust_each_other

pytestmark = pytest.mark.integration


@pytest_twisted.async_yield_fixture
async def pair(tmp_path):
    beacon = start_beacon()
    a = make_node(tmp_path, beacon, "agent-a")
    b = make_node(tmp_path, beacon, "agent-b")
    await trust_each_other(a, b)
    yield a, b
    await stop_all(a, b)
    beacon.stopService()


class Shout(LineReceiver):
    def lineReceived(self, line):
        self.sendLine(line.upper() + b" from " + str(self.transport.getHost().port).encode())


class Collect(LineReceiver):
    def connectionMade(self):
        self.lines = []
        self.done = defer.Deferred()

    def lineReceived(self, line):
        self.lines.append(line)
        if len(self.lines) == 2:
            self.done.callback(self.lines)


@pytest_twisted.inlineCallbacks
def test_any_protocol_runs_over_pilot_endpoint_strings(pair):
    a, b = pair
    # pilot: strings reach a node through its control socket, here in this very process.
    services = [ControlService(a), ControlService(b)]
    for service in services:
        service.startService()
    try:
        server = serverFromString(reactor, f"pilot:4242:home={b.home}")
        listening = yield server.listen(Factory.forProtocol(Shout))
        assert listening.getHost() == PilotAddress("agent-b", str(b.address), 4242)
        client = clientFromString(reactor, f"pilot:agent-b:4242:home={a.home}")
        proto = yield client.connect(Factory.forProtocol(Collect))
        assert proto.transport.getPeer() == PilotAddress("agent-b", str(b.address), 4242)
        assert proto.transport.getHost().hostname == "agent-a"
        assert proto.transport.getHost().address == str(a.address)
        proto.sendLine(b"hello")
        proto.sendLine(b"again")
        lines = yield proto.done
        assert lines == [b"HELLO from 4242", b"AGAIN from 4242"]
        proto.transport.loseConnection()
        yield listening.stopListening()
    finally:
        yield defer.gatherResults([service.stopService() for service in services])


@pytest_twisted.inlineCallbacks
def test_endpoints_holding_the_node(pair):
    a, b = pair
    listening = yield PilotServerEndpoint(b, 4243).listen(Factory.forProtocol(Shout))
    assert listening.getHost() == PilotAddress("agent-b", str(b.address), 4243)
    proto = yield PilotClientEndpoint(a, "agent-b", 4243).connect(Factory.forProtocol(Collect))
    assert proto.transport.getPeer() == PilotAddress("agent-b", str(b.address), 4243)
    proto.sendLine(b"one")
    proto.sendLine(b"two")
    assert (yield proto.done) == [b"ONE from 4243", b"TWO from 4243"]
    proto.transport.loseConnection()
    with pytest.raises(error.CannotListenError):
        yield PilotServerEndpoint(b, 4243).listen(Factory.forProtocol(Shout))
    yield listening.stopListening()


@pytest_twisted.inlineCallbacks
def test_nobody_listening_is_connection_refused(pair):
    a, _ = pair
    with pytest.raises(ConnectionRefused) as caught:
        yield a.dial("agent-b", 5555, Factory.forProtocol(Protocol))
    assert isinstance(caught.value, error.ConnectionRefusedError)
    with pytest.raises(error.ConnectionRefusedError):
        yield PilotClientEndpoint(a, "agent-b", 5555).connect(Factory.forProtocol(Protocol))


@pytest_twisted.inlineCallbacks
def test_an_unknown_peer_is_a_dns_lookup_error(pair):
    a, _ = pair
    with pytest.raises(error.DNSLookupError) as caught:
        yield PilotClientEndpoint(a, "nobody-here", 80).connect(Factory.forProtocol(Protocol))
    assert isinstance(caught.value, NotFound) and isinstance(caught.value, error.ConnectError)


class Gather(Protocol):
    def __init__(self, payload):
        self.payload = payload
        self.received = []
        self.done = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.payload)
        self.transport.loseWriteConnection()

    def dataReceived(self, data):
        self.received.append(data)

    def readConnectionLost(self):
        self.done.callback(b"".join(self.received))

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.callback(b"".join(self.received))


@pytest_twisted.inlineCallbacks
def test_a_hundred_concurrent_streams_each_arrive_intact(pair):
    a, _ = pair
    payloads = [os.urandom(16 * 1024 + i) for i in range(100)]
    protocols = yield defer.gatherResults(
        [a.dial("agent-b", 7, Factory.forProtocol(lambda p=p: Gather(p))) for p in payloads]
    )
    echoed = yield defer.gatherResults([p.done for p in protocols])
    assert echoed == payloads


class Sink(Protocol):
    def connectionMade(self):
        self.hash = hashlib.sha256()
        self.size = 0
        self.factory.sinks.append(self)

    def dataReceived(self, data):
        self.hash.update(data)
        self.size += len(data)

    def connectionLost(self, reason):
        self.factory.finished.callback((self.size, self.hash.hexdigest()))


@implementer(IPushProducer)
class Source:
    """Writes ``size`` bytes of ``chunk`` as fast as the stream lets it, then closes."""

    def __init__(self, transport, chunk, size):
        self.transport, self.chunk, self.size = transport, chunk, size
        self.sent = 0
        self.paused = False

    def start(self):
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self):
        self.paused = False
        while self.sent < self.size and not self.paused:
            self.transport.write(self.chunk)
            self.sent += len(self.chunk)
        if self.sent >= self.size and self.transport.producer is self:
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def pauseProducing(self):
        self.paused = True

    def stopProducing(self):
        self.paused = True


@pytest_twisted.inlineCallbacks
def test_bulk_transfer_is_byte_exact(pair):
    a, b = pair
    factory = Factory.forProtocol(Sink)
    factory.sinks, factory.finished = [], defer.Deferred()
    yield b.listen(9000, factory)
    size = 100 * 1024 * 1024
    chunk = os.urandom(64 * 1024)
    expected = hashlib.sha256(chunk * (size // len(chunk))).hexdigest()
    sender = yield a.dial("agent-b", 9000, Factory.forProtocol(Protocol))
    Source(sender.transport, chunk, size).start()
    got_size, got_hash = yield factory.finished
    assert got_size == size and got_hash == expected


@pytest_twisted.inlineCallbacks
def test_http_through_treq_over_pilot(pair):
    from twisted.web.resource import Resource
    from twisted.web.server import Site
    from twisted.web.static import Data

    from pilotproto.http import pilot_treq

    a, b = pair
    root = Resource()
    root.putChild(b"hello", Data(b"hello over pilot", "text/plain"))
    yield b.listen(80, Site(root))
    client = pilot_treq(reactor, node=a)
    response = yield client.get("http://agent-b/hello")
    body = yield response.content()
    assert response.code == 200 and body == b"hello over pilot"
    again = yield client.get("http://agent-b/hello")
    assert (yield again.content()) == b"hello over pilot"
    from pilotproto.http import pool_for

    yield pool_for(reactor, a).closeCachedConnections()
