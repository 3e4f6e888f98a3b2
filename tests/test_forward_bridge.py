"""
The bridge between a TCP connection and a stream (pilotproto/node/bridge.py),
driven by hand against StringTransports: held bytes, half-close both ways,
each side the other's producer, a failed far side aborting the near one.
"""

from __future__ import annotations

import pytest
from helpers import FakePilotNode, HalfCloseTransport
from twisted.internet import defer, error
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer

from pilotproto.node.bridge import BRIDGE_TRANSITIONS, Bridge, IBridgeOwner, Side, State
from pilotproto.node.bridge_entries import ExposeEntry, ForwardEntry
from pilotproto.node.bridge_specs import ExposeSpec, ForwardSpec
from pilotproto.node.failures import StreamRefused
from pilotproto.streams.transport import PilotAddress


@implementer(IBridgeOwner)
class RecordingOwner:
    def __init__(self):
        self.events: list = []
        self.attempts: list[tuple[defer.Deferred, object]] = []

    def open_far(self, bridge, factory):
        d = defer.Deferred()
        self.attempts.append((d, factory))
        self.events.append("open_far")
        return d

    def bridge_opened(self, bridge):
        self.events.append("opened")

    def bridge_failed(self, bridge, failure):
        self.events.append(("failed", type(failure.value).__name__))

    def bridge_closed(self, bridge):
        self.events.append("closed")

    def bytes_moved(self, bridge, to_overlay, count):
        self.events.append(("bytes", to_overlay, count))


def near_up(owner, stream_side=Side.FAR):
    bridge = Bridge(owner, stream_side)
    near = bridge.near_protocol()
    near.makeConnection(HalfCloseTransport())
    return bridge, near


def far_up(owner):
    d, factory = owner.attempts[-1]
    far = factory.buildProtocol(None)
    far.makeConnection(HalfCloseTransport())
    d.callback(far)
    return far


def test_every_state_and_event_is_in_the_table():
    from pilotproto.node.bridge import FarFailed, FarUp

    inputs = [FarUp, FarFailed, Side.NEAR, Side.FAR]
    assert set(BRIDGE_TRANSITIONS) == {(state, event) for state in State for event in inputs}


def test_the_near_side_waits_paused_and_its_early_bytes_are_held():
    owner = RecordingOwner()
    bridge, near = near_up(owner)
    assert near.transport.producerState == "paused" and owner.events == ["open_far"]
    near.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
    far = far_up(owner)
    assert bridge.state is State.OPEN
    assert far.transport.value() == b"GET / HTTP/1.1\r\n\r\n"
    assert near.transport.producerState == "producing"
    assert owner.events == ["open_far", ("bytes", True, 18), "opened"]


def test_each_side_is_the_others_streaming_producer():
    owner = RecordingOwner()
    _, near = near_up(owner)
    far = far_up(owner)
    assert near.transport.producer is far.transport and near.transport.streaming
    assert far.transport.producer is near.transport and far.transport.streaming
    # The near side's buffer fills: the far side stops reading, and goes on when it drains.
    near.transport.producer.pauseProducing()
    assert far.transport.producerState == "paused"
    near.transport.producer.resumeProducing()
    far.transport.producer.pauseProducing()
    assert near.transport.producerState == "paused" and far.transport.producerState == "producing"


def test_half_close_passes_both_ways_and_an_end_closes_when_both_directions_are_done():
    owner = RecordingOwner()
    _, near = near_up(owner, stream_side=Side.FAR)
    far = far_up(owner)
    near.dataReceived(b"request")
    near.readConnectionLost()  # the TCP client sent FIN
    assert far.transport.write_closed and not far.transport.disconnecting
    far.dataReceived(b"response")  # the stream still answers
    assert near.transport.value() == b"response"
    far.readConnectionLost()  # the peer's FIN
    assert near.transport.write_closed and not near.transport.disconnecting
    near.writeConnectionLost()  # our FIN went out: both directions of TCP are done
    assert near.transport.disconnecting
    assert ("bytes", True, 7) in owner.events and ("bytes", False, 8) in owner.events


def test_a_fin_before_the_far_side_is_up_is_passed_on_once_it_is():
    owner = RecordingOwner()
    _, near = near_up(owner)
    near.dataReceived(b"all of it")
    near.readConnectionLost()
    far = far_up(owner)
    assert far.transport.value() == b"all of it" and far.transport.write_closed


def test_a_failed_far_side_aborts_the_near_one():
    owner = RecordingOwner()
    bridge, near = near_up(owner)
    owner.attempts[0][0].errback(StreamRefused())
    assert near.transport.aborted and bridge.state is State.CLOSED
    assert owner.events == ["open_far", ("failed", "StreamRefused")]
    near.connectionLost(Failure(error.ConnectionAborted()))  # the abort arrives: nothing more happens
    assert owner.events[-1] == ("failed", "StreamRefused")


def test_the_near_side_leaving_cancels_the_far_attempt():
    owner = RecordingOwner()
    cancelled = []
    bridge, near = Bridge(owner, Side.FAR), None
    owner.open_far = lambda b, f: defer.Deferred(lambda d: cancelled.append(d))
    near = bridge.near_protocol()
    near.makeConnection(HalfCloseTransport())
    near.connectionLost(Failure(error.ConnectionLost()))
    assert len(cancelled) == 1 and bridge.state is State.CLOSED and owner.events == ["closed"]


@pytest.mark.parametrize("reason, aborted", [(error.ConnectionDone(), False), (error.ConnectionLost(), True)])
def test_a_lost_side_closes_the_other_gracefully_or_with_an_abort(reason, aborted):
    owner = RecordingOwner()
    _, near = near_up(owner)
    far = far_up(owner)
    far.connectionLost(Failure(reason))
    assert near.transport.aborted is aborted and near.transport.disconnecting
    assert owner.events[-1] == "closed"


def test_a_side_that_failed_after_its_clean_end_of_data_closes_the_other_gracefully():
    owner = RecordingOwner()
    _, near = near_up(owner)
    far = far_up(owner)
    far.readConnectionLost()
    far.connectionLost(Failure(error.ConnectionLost()))
    assert near.transport.disconnecting and not near.transport.aborted


# -- the entries: a forward's failed dial, an expose's allow list ------------------------


def test_a_forward_to_a_refused_port_aborts_the_connection_and_keeps_the_error():
    reactor = MemoryReactorClock()
    node = FakePilotNode(reactor)
    entry = ForwardEntry(reactor, node, ForwardSpec("127.0.0.1", 8080, "agent-b", 81))
    protocol = entry.connection()
    transport = HalfCloseTransport()
    protocol.makeConnection(transport)
    assert transport.aborted and node.calls == [("dial", "agent-b", 81)]
    counts = entry.describe()
    assert (counts["active"], counts["total"], counts["failed"]) == (0, 1, 1)
    assert counts["last_error"]["code"] == "connection_refused"
    assert "pilotctl expose 81" in counts["last_error"]["hint"]


def test_a_forward_bridges_to_what_listens_on_the_peer():
    reactor = MemoryReactorClock()
    node = FakePilotNode(reactor)
    served = []
    from twisted.internet.protocol import Factory, Protocol

    class Serve(Protocol):
        def dataReceived(self, data):
            served.append(data)
            self.transport.write(b"pong")

    node.listen(9, Factory.forProtocol(Serve))
    entry = ForwardEntry(reactor, node, ForwardSpec("127.0.0.1", 8080, "agent-b", 9))
    transport = HalfCloseTransport()
    protocol = entry.connection()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"ping")
    reactor.advance(0)
    reactor.advance(0)
    assert served == [b"ping"] and transport.value() == b"pong"
    counts = entry.describe()
    assert (counts["active"], counts["bytes_sent"], counts["bytes_received"]) == (1, 4, 4)


def test_an_expose_refuses_a_peer_not_in_its_allow_list():
    reactor = MemoryReactorClock()
    spec = ExposeSpec.checked(80, "127.0.0.1", 8000, ["0:0000.0000.0002"])
    entry = ExposeEntry(reactor, FakePilotNode(reactor), spec)
    assert entry.stream(PilotAddress("agent-c", "0:0000.0000.0003", 0)) is None
    assert entry.stream(PilotAddress("agent-b", "0:0000.0000.0002", 0)) is not None
    counts = entry.describe()
    assert (counts["refused"], counts["total"]) == (1, 1)


def test_an_expose_whose_service_refuses_resets_the_stream():
    reactor = MemoryReactorClock()
    entry = ExposeEntry(reactor, FakePilotNode(reactor), ExposeSpec.checked(80, "127.0.0.1", 8000))
    protocol = entry.stream(PilotAddress("agent-b", "0:0000.0000.0002", 0))
    stream = HalfCloseTransport()
    protocol.makeConnection(stream)
    assert stream.producerState == "paused"
    # HostnameEndpoint connects through the reactor; the service is not there.
    connector = reactor.tcpClients[-1]
    assert connector[:2] == ("127.0.0.1", 8000)
    connector[2].clientConnectionFailed(None, Failure(error.ConnectionRefusedError()))
    reactor.advance(10)
    assert stream.aborted
    assert entry.describe()["last_error"]["code"] == "connection_refused"
