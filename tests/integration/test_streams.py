"""
Streams between two in-process nodes over real UDP on loopback: any Twisted
protocol over pilot: endpoints, refused ports, many concurrent streams, a
byte-exact bulk transfer, and HTTP through treq.
"""

import hashlib
import os

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.interfaces import IPushProducer
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

from pilotproto.streams.errors import ConnectionRefused

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
    server = serverFromString(reactor, f"pilot:4242:home={b.home}")
    listening = yield server.listen(Factory.forProtocol(Shout))
    client = clientFromString(reactor, f"pilot:agent-b:4242:home={a.home}")
    proto = yield client.connect(Factory.forProtocol(Collect))
    assert proto.transport.getPeer().hostname == "agent-b"
    proto.sendLine(b"hello")
    proto.sendLine(b"again")
    lines = yield proto.done
    assert lines == [b"HELLO from 4242", b"AGAIN from 4242"]
    proto.transport.loseConnection()
    yield listening.stopListening()


@pytest_twisted.inlineCallbacks
def test_nobody_listening_is_connection_refused(pair):
    a, _ = pair
    with pytest.raises(ConnectionRefused):
        yield a.dial("agent-b", 5555, Factory.forProtocol(Protocol))


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
