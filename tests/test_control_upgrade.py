"""Reactor-free tests of the stream commands (connect/listen/accept) and the splice onto a stream."""

import json

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock

from pilotproto.control.upgrade import ACCEPT_TIMEOUT, StreamCommands, StreamEnd
from pilotproto.errors import AlreadyRunning, InvalidArgument, NotFound
from pilotproto.streams.transport import PilotAddress

from helpers import HalfCloseTransport


# -- StreamEnd: the splice --------------------------------------------------------------


class FakeStreamTransport(HalfCloseTransport):
    def __init__(self):
        super().__init__()
        self.reading = []

    def pauseProducing(self):
        self.reading.append("pause")

    def resumeProducing(self):
        self.reading.append("resume")


def test_stream_end_holds_until_attached_then_splices_both_ways():
    end = StreamEnd()
    stream = FakeStreamTransport()
    end.makeConnection(stream)
    assert stream.reading == ["pause"]
    end.dataReceived(b"early")
    end.readConnectionLost()
    socket_side = HalfCloseTransport()
    pipe = end.attach(socket_side)
    assert socket_side.value() == b"early" and socket_side.write_closed
    assert socket_side.producer is stream and stream.producer is socket_side
    assert stream.reading == ["pause", "resume"]
    pipe.dataReceived(b"to the peer")
    pipe.readConnectionLost()
    assert stream.value() == b"to the peer" and stream.write_closed
    pipe.connectionLost(None)
    assert stream.disconnecting


def test_stream_end_lost_before_attach_closes_the_socket_after_the_data():
    end = StreamEnd()
    stream = FakeStreamTransport()
    end.makeConnection(stream)
    end.dataReceived(b"last words")
    end.connectionLost(None)
    socket_side = HalfCloseTransport()
    end.attach(socket_side)
    assert socket_side.value() == b"last words" and socket_side.disconnecting


def test_a_piped_socket_moves_large_pieces_without_pausing_the_stream():
    # Twisted's defaults (64 KiB per read, the producer paused past 64 KiB
    # unwritten) paused the stream nearly every turn at speed.
    import socket

    from twisted.internet.protocol import Protocol
    from twisted.internet.tcp import Connection
    from twisted.internet.testing import MemoryReactor

    from pilotproto.control.piping import PIPE_BUFFER

    ours, client = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        ours.setblocking(False)
        socket_side = Connection(ours, Protocol(), MemoryReactor())
        socket_side.connected = True  # as tcp.Server's constructor sets it
        end = StreamEnd()
        stream = FakeStreamTransport()
        end.makeConnection(stream)
        pipe = end.attach(socket_side)
        socket_side.protocol = pipe
        piece = b"p" * 1400
        for _ in range(PIPE_BUFFER // len(piece)):  # a burst of stream packets in one turn
            end.dataReceived(piece)
        assert stream.reading == ["pause", "resume"]
        end.dataReceived(piece)  # past PIPE_BUFFER unwritten: now the stream waits
        assert stream.reading[-1] == "pause"
        client.sendall(b"c" * (120 * 1024))
        socket_side.doRead()
        assert len(stream.value()) == 120 * 1024  # one read, not two
    finally:
        ours.close()
        client.close()


# -- StreamCommands with a fake node -----------------------------------------------------


class FakeListening:
    def __init__(self, node, port):
        self.node, self.port = node, port

    def stopListening(self):
        self.node.listeners.pop(self.port, None)

    def getHost(self):
        return PilotAddress("agent-a", "0:0000.0000.0001", self.port)


class FakeNode:
    """dial and listen, as an IPilotNode has them (both Deferreds)."""

    def __init__(self):
        self.listeners = {}
        self.dials = []

    def listen(self, port, factory):
        if port in self.listeners:
            return defer.fail(AlreadyRunning(f"something already listens on port {port}"))
        self.listeners[port] = factory
        return defer.succeed(FakeListening(self, port))

    def dial(self, target, port, factory):
        d = defer.Deferred()
        self.dials.append((target, port, factory, d))
        return d

    def incoming(self, port, peer):
        """What PortTable.incoming does: build the protocol and run it on a stream."""
        protocol = self.listeners[port].buildProtocol(peer)
        if protocol is None:
            return None
        stream = FakeStreamTransport()
        protocol.makeConnection(stream)
        return protocol, stream


PEER = PilotAddress("agent-b", "0:0000.0000.0002", 0)


def listened(commands, port):
    """``listen``'s result (an Upgrade, or the Failure), which a fake node gives at once."""
    results = []
    commands.listen(port).addBoth(results.append)
    [result] = results
    return result


def test_listen_announces_incoming_streams_and_accept_takes_one():
    clock, node = Clock(), FakeNode()
    commands = StreamCommands(node, clock)
    upgrade = listened(commands, 8080)
    assert upgrade.data == {"port": 8080, "hostname": "agent-a", "address": "0:0000.0000.0001"}
    feed_transport = HalfCloseTransport()
    feed = upgrade.take_over(feed_transport)
    protocol, stream = node.incoming(8080, PEER)
    event = json.loads(feed_transport.value())
    assert event == {"event": "incoming", "stream_id": 1, "peer": "agent-b", "address": PEER.address, "port": 8080}
    protocol.dataReceived(b"GET /")
    accepted = commands.accept(1)
    assert accepted.data == {"stream_id": 1, "peer": "agent-b", "address": PEER.address, "port": 8080}
    socket_side = HalfCloseTransport()
    accepted.take_over(socket_side)
    assert socket_side.value() == b"GET /"
    # Accepted once only; the timer no longer runs.
    try:
        commands.accept(1)
        raise AssertionError("accepted twice")
    except NotFound:
        pass
    clock.advance(ACCEPT_TIMEOUT + 1)
    assert not stream.aborted
    # Closing the listen connection stops listening.
    feed.connectionLost(None)
    assert 8080 not in node.listeners


def test_unaccepted_streams_are_reset_after_the_timeout():
    clock, node = Clock(), FakeNode()
    commands = StreamCommands(node, clock)
    listened(commands, 8080).take_over(HalfCloseTransport())
    _, stream = node.incoming(8080, PEER)
    clock.advance(ACCEPT_TIMEOUT - 0.1)
    assert not stream.aborted
    clock.advance(0.2)
    assert stream.aborted
    try:
        commands.accept(1)
        raise AssertionError("an expired stream was accepted")
    except NotFound:
        pass


def test_listen_on_a_busy_port_fails_and_accept_checks_its_argument():
    commands = StreamCommands(FakeNode(), Clock())
    listened(commands, 80)
    assert listened(commands, 80).check(AlreadyRunning)
    for call in (lambda: commands.accept("1"), lambda: commands.listen(0)):
        try:
            call()
            raise AssertionError("accepted a bad request")
        except InvalidArgument:
            pass


def test_connect_dials_and_upgrades_onto_the_stream():
    clock, node = Clock(), FakeNode()
    commands = StreamCommands(node, clock)
    results = []
    commands.connect("agent-b", 7).addBoth(results.append)
    target, port, factory, d = node.dials[0]
    assert (target, port) == ("agent-b", 7)
    end = factory.buildProtocol(PilotAddress("agent-b", PEER.address, 7))
    stream = FakeStreamTransport()
    stream.getPeer = lambda: PilotAddress("agent-b", PEER.address, 7)
    stream.getHost = lambda: PilotAddress("agent-a", "0:0000.0000.0001", 0)
    end.makeConnection(stream)
    d.callback(end)
    [upgrade] = results
    # Our own name and address too, so a client's getHost() is the real one.
    assert upgrade.data == {"peer": "agent-b", "address": PEER.address, "port": 7,
                            "local_hostname": "agent-a", "local_address": "0:0000.0000.0001"}
    upgrade.abandon()
    assert stream.aborted


def test_connect_times_out_with_the_house_code():
    clock, node = Clock(), FakeNode()
    commands = StreamCommands(node, clock)
    results = []
    commands.connect("agent-b", 7).addErrback(lambda f: results.append(f.value.code))
    clock.advance(60)
    assert results == ["timeout"]


def test_listener_refuses_beyond_its_queue():
    from pilotproto.control.upgrade import MAX_PENDING

    clock, node = Clock(), FakeNode()
    commands = StreamCommands(node, clock)
    listened(commands, 80).take_over(HalfCloseTransport())
    for _ in range(MAX_PENDING):
        assert node.incoming(80, PEER) is not None
    assert node.incoming(80, PEER) is None


def test_listener_factory_builds_nothing_before_the_feed_exists():
    commands = StreamCommands(FakeNode(), Clock())
    listened(commands, 80)
    assert commands._node.listeners[80].buildProtocol(PEER) is None
    assert isinstance(Factory.forProtocol(StreamEnd).buildProtocol(PEER), StreamEnd)
