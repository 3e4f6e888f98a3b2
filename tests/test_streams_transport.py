"""Unmodified Twisted protocols over StreamTransport pairs on a simulated link."""

import random

from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IConsumer, IHalfCloseableProtocol, IPushProducer, ITransport
from twisted.internet.protocol import Protocol
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer
from zope.interface.verify import verifyObject

from pilotproto.streams import ConnectionRefused
from pilotproto.streams.simlink import SimClock, connected_pair
from pilotproto.streams.transport import PilotAddress, StreamTransport, connect_protocol

A = PilotAddress("agent-a", "0:0000.0000.0001", 49152)
B = PilotAddress("agent-b", "0:0000.0000.0002", 7)


@implementer(IHalfCloseableProtocol)
class EchoServer(LineReceiver):
    def __init__(self):
        self.events = []

    def lineReceived(self, line):
        self.sendLine(line)

    def readConnectionLost(self):
        self.events.append("read_lost")
        self.transport.loseConnection()

    def writeConnectionLost(self):
        self.events.append("write_lost")

    def connectionLost(self, reason):
        self.events.append(("lost", reason.type))


@implementer(IHalfCloseableProtocol)
class LineClient(LineReceiver):
    def __init__(self):
        self.lines = []
        self.events = []

    def connectionMade(self):
        self.events.append("made")

    def lineReceived(self, line):
        self.lines.append(line)

    def readConnectionLost(self):
        self.events.append("read_lost")

    def writeConnectionLost(self):
        self.events.append("write_lost")

    def connectionLost(self, reason):
        self.events.append(("lost", reason.type))


def pair(server_factory=EchoServer, link=None, **options):
    clock = SimClock()
    servers = []

    def opened(stream, port):
        if port != 7:
            return False
        server = server_factory()
        servers.append(server)
        connect_protocol(stream, server, B, A)
        return True

    a, b, ab, ba = connected_pair(clock, random.Random(1), link=link or dict(delay=0.005), on_stream_opened_b=opened,
                                  **options)
    return clock, a, servers


def test_line_receiver_echo_with_half_close():
    clock, a, servers = pair()
    client = LineClient()
    transport = connect_protocol(a.open_stream(7), client, A, B)
    assert verifyObject(ITransport, transport) and verifyObject(IPushProducer, transport)
    assert verifyObject(IConsumer, transport)
    for i in range(100):
        client.sendLine(b"line %d" % i)
    transport.loseWriteConnection()
    done = ("lost", ConnectionDone)
    clock.run_until(lambda: servers and done in client.events and done in servers[0].events, 10)
    assert client.lines == [b"line %d" % i for i in range(100)]
    # The client half-closed, kept reading the echoes, then both sides finished.
    assert client.events == ["made", "write_lost", "read_lost", ("lost", ConnectionDone)]
    assert servers[0].events == ["read_lost", ("lost", ConnectionDone)]
    assert servers[0].transport.getPeer() == A and transport.getPeer() == B and transport.getHost() == A


def test_a_protocol_without_half_close_is_closed_when_the_peer_finishes():
    class Greeter(Protocol):
        def connectionMade(self):
            self.transport.write(b"hello from b")
            self.transport.loseConnection()

    clock, a, servers = pair(server_factory=Greeter)

    class Reader(Protocol):
        def __init__(self):
            self.data = b""
            self.reason = None

        def dataReceived(self, data):
            self.data += data

        def connectionLost(self, reason):
            self.reason = reason

    reader = Reader()
    connect_protocol(a.open_stream(7), reader, A, B)
    clock.run_until(lambda: reader.reason is not None, 10)
    assert reader.data == b"hello from b"
    assert reader.reason.check(ConnectionDone)
    clock.advance(1.0)
    assert a.streams == {}


def test_refused_port_loses_the_connection_with_connection_refused():
    clock, a, servers = pair()
    client = LineClient()
    connect_protocol(a.open_stream(9999), client, A, B)
    clock.run_until(lambda: len(client.events) > 1, 10)
    assert client.events[1] == ("lost", ConnectionRefused)


def test_abort_connection_fails_both_ends():
    clock, a, servers = pair()
    client = LineClient()
    transport = connect_protocol(a.open_stream(7), client, A, B)
    client.sendLine(b"hi")
    clock.advance(0.1)
    transport.abortConnection()
    clock.advance(0.1)
    assert client.events[-1] == ("lost", ConnectionAborted)
    assert servers[0].events[-1][0] == "lost" and servers[0].events[-1][1] is not ConnectionDone


@implementer(IPushProducer)
class ChunkProducer:
    def __init__(self, transport, total, chunk=32 * 1024):
        self.transport = transport
        self.left = total
        self.chunk = chunk
        self.paused = False
        self.pauses = 0
        self.stopped = False

    def resumeProducing(self):
        self.paused = False
        while not self.paused and self.left > 0:
            n = min(self.chunk, self.left)
            self.left -= n
            self.transport.write(b"p" * n)
        if self.left == 0:
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def pauseProducing(self):
        self.paused = True
        self.pauses += 1

    def stopProducing(self):
        self.stopped = True


class SlowCounter(Protocol):
    """Pauses its transport (as a consumer would) after every chunk; counts bytes."""

    def __init__(self):
        self.received = 0
        self.done = None

    def dataReceived(self, data):
        self.received += len(data)

    def connectionLost(self, reason):
        self.done = reason


def test_a_push_producer_is_paused_by_a_full_send_buffer_and_everything_arrives():
    clock, a, servers = pair(server_factory=SlowCounter, link=dict(delay=0.01, bandwidth=10e6), send_buffer=128 * 1024)
    client = LineClient()
    transport = connect_protocol(a.open_stream(7), client, A, B)
    producer = ChunkProducer(transport, 4 * 1024 * 1024)
    transport.registerProducer(producer, True)
    producer.resumeProducing()
    peak = 0
    while producer.left and clock.now < 30:
        clock.advance(0.01)
        peak = max(peak, transport.stream.buffered_send_bytes)
    assert producer.pauses > 0
    assert peak <= 128 * 1024 + 32 * 1024
    clock.run_until(lambda: servers[0].done is not None, 60)
    assert servers[0].received == 4 * 1024 * 1024


def test_pausing_the_transport_stops_delivery_and_resuming_restarts_it():
    clock, a, servers = pair(server_factory=SlowCounter)
    client = LineClient()
    transport = connect_protocol(a.open_stream(7), client, A, B)
    transport.write(b"a" * 1000)
    clock.advance(0.05)
    server_transport = servers[0].transport
    server_transport.pauseProducing()
    transport.write(b"b" * 1000)
    clock.advance(0.05)
    assert servers[0].received == 1000
    server_transport.resumeProducing()
    assert servers[0].received == 2000


def test_a_pull_producer_is_asked_for_more_until_done():
    clock, a, servers = pair(server_factory=SlowCounter)
    client = LineClient()
    transport = connect_protocol(a.open_stream(7), client, A, B)

    class Pull:
        def __init__(self):
            self.calls = 0

        def resumeProducing(self):
            self.calls += 1
            transport.write(b"x" * 1000)
            if self.calls == 50:
                transport.unregisterProducer()
                transport.loseConnection()

        def stopProducing(self):
            pass

    pull = Pull()
    transport.registerProducer(pull, False)
    clock.run_until(lambda: servers and servers[0].done is not None, 10)
    assert pull.calls == 50 and servers[0].received == 50_000


def test_pilot_address_prints_hostname_and_port():
    assert str(B) == "agent-b:7"
    assert str(PilotAddress(None, "0:0000.0000.0002", 80)) == "0:0000.0000.0002:80"
    assert isinstance(StreamTransport, type)


def test_a_pilot_address_has_the_host_that_twisted_web_wsgi_reads():
    # twisted.web.wsgi sets REMOTE_ADDR from getClientAddress().host: without
    # it, every WSGI app served on a pilot: port answered 500.
    from twisted.web.test.requesthelper import DummyRequest
    from twisted.web.wsgi import _WSGIResponse

    peer = PilotAddress("agent-b", "0:8EAC.9041.50DA", 49152)
    assert peer.host == "0:8EAC.9041.50DA"
    request = DummyRequest([b""])
    request.client = peer
    request.isSecure = lambda: False
    request.content = None
    environ = _WSGIResponse(None, None, lambda *a: [], request).environ
    assert environ["REMOTE_ADDR"] == "0:8EAC.9041.50DA"
