"""Reactor-free tests of the control socket's upgrade to a raw pipe, and of connect/listen/accept."""

import json

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from pilotproto.control.server import ControlServerFactory, Upgrade
from pilotproto.control.upgrade import ACCEPT_TIMEOUT, StreamCommands, StreamEnd
from pilotproto.errors import AlreadyRunning, InvalidArgument, NotFound
from pilotproto.streams.errors import ConnectionRefused
from pilotproto.streams.transport import PilotAddress


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


class RecordingPipe:
    def __init__(self, transport):
        self.transport = transport
        self.events = []

    def dataReceived(self, data):
        self.events.append(("data", data))

    def readConnectionLost(self):
        self.events.append(("eof",))

    def connectionLost(self, reason=None):
        self.events.append(("lost",))


class UpgradingHandler:
    def __init__(self):
        self.pending = []
        self.pipes = []
        self.abandoned = []

    def ctl_connect(self, target, port):
        d = defer.Deferred()
        self.pending.append(d)
        return d

    def ctl_info(self):
        return {"hostname": "agent-a"}

    def ctl_slow(self):
        d = defer.Deferred()
        self.pending.append(d)
        return d

    def upgrade(self, data=None):
        def take_over(transport):
            pipe = RecordingPipe(transport)
            self.pipes.append(pipe)
            return pipe

        return Upgrade(data or {"peer": "agent-b", "port": 7}, take_over, lambda: self.abandoned.append(True))


def connected(handler):
    protocol = ControlServerFactory(handler).buildProtocol(None)
    transport = HalfCloseTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def lines(transport):
    return [json.loads(line) for line in transport.value().splitlines() if line]


def test_connect_upgrades_and_early_bytes_reach_the_pipe():
    handler = UpgradingHandler()
    protocol, transport = connected(handler)
    protocol.dataReceived(b'{"id":1,"cmd":"connect","args":{"target":"agent-b","port":7}}\nearly {"id":2,"cmd":"info"}\n')
    assert transport.value() == b""  # held: neither answered nor parsed as a request
    handler.pending[0].callback(handler.upgrade())
    assert lines(transport) == [{"id": 1, "status": "ok", "data": {"peer": "agent-b", "port": 7}}]
    [pipe] = handler.pipes
    assert pipe.events == [("data", b'early {"id":2,"cmd":"info"}\n')]
    protocol.dataReceived(b"more\n")
    protocol.readConnectionLost()
    assert pipe.events[1:] == [("data", b"more\n"), ("eof",)]
    protocol.connectionLost(None)
    assert pipe.events[-1] == ("lost",)


def test_upgrade_in_the_same_chunk_when_the_command_answers_at_once():
    handler = UpgradingHandler()
    handler.ctl_connect = lambda target, port: handler.upgrade()
    protocol, transport = connected(handler)
    protocol.dataReceived(b'{"id":1,"cmd":"connect","args":{"target":"b","port":7}}\nraw\n')
    assert lines(transport)[0]["status"] == "ok"
    assert handler.pipes[0].events == [("data", b"raw\n")]


def test_failed_upgrade_answers_an_error_and_the_connection_stays_json():
    handler = UpgradingHandler()
    protocol, transport = connected(handler)
    protocol.dataReceived(b'{"id":1,"cmd":"connect","args":{"target":"agent-b","port":9}}\nstream bytes\n')
    handler.pending[0].errback(ConnectionRefused())
    protocol.dataReceived(b'{"id":2,"cmd":"info"}\n')
    answers = lines(transport)
    assert answers[0]["id"] == 1 and answers[0]["code"] == "connection_refused"
    assert answers[1] == {"id": 2, "status": "ok", "data": {"hostname": "agent-a"}}
    assert len(answers) == 2  # "stream bytes" were dropped, not parsed
    assert handler.pipes == []


def test_half_close_before_the_answer_reaches_the_pipe_after_it():
    handler = UpgradingHandler()
    protocol, transport = connected(handler)
    protocol.dataReceived(b'{"id":1,"cmd":"connect","args":{"target":"b","port":7}}\nhello')
    protocol.readConnectionLost()
    assert not transport.disconnecting  # the answer is still to come
    handler.pending[0].callback(handler.upgrade())
    assert handler.pipes[0].events == [("data", b"hello"), ("eof",)]


def test_half_close_then_failure_closes_after_the_error():
    handler = UpgradingHandler()
    protocol, transport = connected(handler)
    protocol.dataReceived(b'{"id":1,"cmd":"connect","args":{"target":"b","port":7}}\n')
    protocol.readConnectionLost()
    handler.pending[0].errback(NotFound("no node 'b'"))
    assert lines(transport)[0]["code"] == "not_found"
    assert transport.disconnecting


def test_client_gone_before_the_answer_abandons_the_upgrade():
    handler = UpgradingHandler()
    protocol, transport = connected(handler)
    protocol.dataReceived(b'{"id":1,"cmd":"connect","args":{"target":"b","port":7}}\n')
    protocol.connectionLost(None)
    handler.pending[0].callback(handler.upgrade())
    assert handler.abandoned == [True] and handler.pipes == []


def test_answers_to_earlier_requests_are_dropped_after_the_upgrade():
    handler = UpgradingHandler()
    protocol, transport = connected(handler)
    protocol.dataReceived(b'{"id":1,"cmd":"slow"}\n{"id":2,"cmd":"connect","args":{"target":"b","port":7}}\n')
    slow, connect = handler.pending
    connect.callback(handler.upgrade())
    before = transport.value()
    slow.callback({"late": True})
    assert transport.value() == before  # no JSON inside the raw pipe


def test_held_bytes_beyond_the_limit_pause_reading():
    handler = UpgradingHandler()
    protocol, transport = connected(handler)
    protocol.dataReceived(b'{"id":1,"cmd":"connect","args":{"target":"b","port":7}}\n')
    protocol.dataReceived(b"x" * (300 * 1024))
    assert transport.producerState == "paused"
    handler.pending[0].callback(handler.upgrade())
    assert transport.producerState == "producing"
    assert handler.pipes[0].events == [("data", b"x" * (300 * 1024))]


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


# -- StreamCommands with a fake node -----------------------------------------------------


class FakeListening:
    def __init__(self, node, port):
        self.node, self.port = node, port

    def stopListening(self):
        self.node.listeners.pop(self.port, None)

    def getHost(self):
        return PilotAddress("agent-a", "0:0000.0000.0001", self.port)


class FakeNode:
    def __init__(self):
        self.listeners = {}
        self.dials = []

    def listen(self, port, factory):
        if port in self.listeners:
            raise AlreadyRunning(f"something already listens on port {port}")
        self.listeners[port] = factory
        return FakeListening(self, port)

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


def test_listen_announces_incoming_streams_and_accept_takes_one():
    clock, node = Clock(), FakeNode()
    commands = StreamCommands(node, clock)
    upgrade = commands.listen(8080)
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
    commands.listen(8080).take_over(HalfCloseTransport())
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
    commands.listen(80)
    for call in (lambda: commands.listen(80), lambda: commands.accept("1"), lambda: commands.listen(0)):
        try:
            call()
            raise AssertionError("accepted a bad request")
        except (AlreadyRunning, InvalidArgument):
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
    end.makeConnection(stream)
    d.callback(end)
    [upgrade] = results
    assert upgrade.data == {"peer": "agent-b", "address": PEER.address, "port": 7}
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
    commands.listen(80).take_over(HalfCloseTransport())
    for _ in range(MAX_PENDING):
        assert node.incoming(80, PEER) is not None
    assert node.incoming(80, PEER) is None


def test_listener_factory_builds_nothing_before_the_feed_exists():
    commands = StreamCommands(FakeNode(), Clock())
    commands.listen(80)
    assert commands._node.listeners[80].buildProtocol(PEER) is None
    assert isinstance(Factory.forProtocol(StreamEnd).buildProtocol(PEER), StreamEnd)
