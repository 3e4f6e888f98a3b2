"""
Birthday punching without a network: the probe schedule (bounded in count,
rate and bytes; predicted ports first for a sequential NAT), the machine on
a Clock against a recording owner (only the session-given host is probed,
probing stops at the first verified ack, the opening side keeps only the
winning socket), the path's routes through an extra socket, and the node's
punch sockets on a memory reactor.
"""

from __future__ import annotations

import random

import pytest
from twisted.internet.task import Clock
from zope.interface import implementer

from helpers import UDPMemoryReactor
from pilotproto.interfaces import IDatagramRouter
from pilotproto.node.punch_sockets import PunchSockets
from pilotproto.session.birthday import Birthday, IBirthdayOwner
from pilotproto.session.birthday_schedule import (
    MAX_PROBES,
    PORT_MAX,
    PORT_MIN,
    BirthdayOptions,
    IMappingObservations,
    IPunchSockets,
    ViaSocket,
    predicted_ports,
    probe_ports,
    role,
)
from pilotproto.session.paths import PeerPath
from pilotproto.wire import Endpoint
from pilotproto.wire import session as smsg
from pilotproto.wire.sources import Direct
from test_paths import RecordingOwner, advance

SYM = Endpoint("198.51.100.10", 40000)  # the symmetric side, as the beacon saw it
CONE = Endpoint("198.51.100.2", 39006)  # the port-restricted side
ELSEWHERE = "203.0.113.77"
#: a sealed PathProbe on the wire: 14-byte header, 9-byte message, 16-byte tag, UDP and IPv4
PROBE_WIRE_BYTES = 14 + 9 + 16 + 8 + 20


# -- the schedule ----------------------------------------------------------------------


def test_roles_follow_the_nat_types():
    assert role("symmetric", "port_restricted_cone") == "opens"
    assert role("port_restricted_cone", "symmetric") == "probes"
    for pair in [("symmetric", "symmetric"), ("full_cone", "symmetric"), ("symmetric", "restricted_cone"),
                 ("port_restricted_cone", "port_restricted_cone"), ("unknown", "symmetric")]:
        assert role(*pair) is None


def test_the_schedule_is_bounded_distinct_and_in_range():
    options = BirthdayOptions(max_probes=900)
    ports = probe_ports(random.Random(7), options, sockets=256)
    assert len(ports) == 900 and len(set(ports)) == 900
    assert all(PORT_MIN <= p <= PORT_MAX for p in ports)
    # The options cannot be set past the hard limits, and the limits stay a few hundred kB.
    with pytest.raises(ValueError):
        BirthdayOptions(max_probes=MAX_PROBES + 1)
    with pytest.raises(ValueError):
        BirthdayOptions(sockets=0)
    assert MAX_PROBES * PROBE_WIRE_BYTES <= 300_000


def test_a_sequential_nat_gets_its_next_ports_probed_first():
    ports = probe_ports(random.Random(1), BirthdayOptions(max_probes=1000), sockets=256, observed=(20001, 20002))
    assert ports[:320] == list(range(20003, 20003 + 320))
    assert len(ports) == 1000 and len(set(ports)) == 1000
    assert predicted_ports((30000, 30002, 30004), 3) == [30006, 30008, 30010]


@pytest.mark.parametrize("observed", [(), (20001,), (20001, 20001), (20001, 45000), (1, 2, 4), (65534, 65535)])
def test_no_prediction_without_a_small_regular_step(observed):
    # (65534, 65535): sequential, but there is nothing past the last port.
    assert predicted_ports(observed, 5) == []


# -- the machine ------------------------------------------------------------------------


@implementer(IBirthdayOwner)
class BirthdayOwner:
    def __init__(self, clock):
        self.clock = clock
        self.messages: list = []
        self.probes: list[tuple] = []
        self.relay = True

    def send_message(self, msg):
        self.messages.append(msg)

    def send_probe(self, endpoint, ttl=None, via=None):
        self.probes.append((round(self.clock.seconds(), 3), endpoint, ttl, via))

    def on_relay(self):
        return self.relay

    def label(self):
        return "peer"


class FakeSocket:
    def __init__(self, n):
        self.local_port = 50000 + n
        self.closed = False

    def close(self):
        self.closed = True


@implementer(IPunchSockets)
class FakePunchSockets:
    def __init__(self, observed=()):
        self.opened: list[FakeSocket] = []
        self._observed = observed

    def open(self, count):
        new = [FakeSocket(len(self.opened) + i) for i in range(count)]
        self.opened += new
        return new

    def observed_ports(self):
        return self._observed


def prober(options=BirthdayOptions()):
    clock = Clock()
    owner = BirthdayOwner(clock)
    b = Birthday(clock, owner, None, options, random.Random(3))
    b.consider("port_restricted_cone", "symmetric", [SYM], [CONE])
    return clock, owner, b


def test_the_probing_side_probes_only_the_host_the_peer_gave_at_the_rate_asked():
    options = BirthdayOptions(probe_rate=250, max_probes=500, tick=0.02)
    clock, owner, b = prober(options)
    b.message_received(smsg.Birthday(False, 9, 256, SYM.host))
    assert owner.messages == [smsg.Birthday(True, 9)]
    advance(clock, 1.0)
    assert {ep.host for _, ep, _, _ in owner.probes} == {SYM.host}
    assert all(ttl is None and via is None for _, _, ttl, via in owner.probes)
    # 250 per second, in batches of 5 every 20 ms.
    assert 240 <= len(owner.probes) <= 260
    assert max(sum(1 for t, *_ in owner.probes if t == when) for when, *_ in owner.probes) == 5
    advance(clock, 10.0)
    assert len(owner.probes) == 500 and b.stats["probes"] == 500
    assert clock.getDelayedCalls() == []


def test_probing_stops_at_the_first_verified_ack():
    clock, owner, b = prober()
    b.message_received(smsg.Birthday(False, 9, 256, SYM.host))
    advance(clock, 0.1)
    sent = len(owner.probes)
    b.path_changed(True, None)  # a PathAck arrived straight from the symmetric side
    advance(clock, 10.0)
    assert len(owner.probes) == sent and b.stats["won"] == 1
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("why", ["other host", "not on the relay", "wrong roles"])
def test_a_start_is_refused_unless_the_session_allows_it(why):
    clock, owner, b = prober()
    host = ELSEWHERE if why == "other host" else SYM.host
    if why == "not on the relay":
        owner.relay = False
    if why == "wrong roles":
        b.consider("port_restricted_cone", "full_cone", [SYM], [CONE])
    b.message_received(smsg.Birthday(False, 9, 256, host))
    advance(clock, 5.0)
    assert owner.probes == [] and owner.messages == []


def test_attempts_per_session_are_bounded():
    clock, owner, b = prober(BirthdayOptions(max_attempts=2, max_probes=10))
    for attempt in range(5):
        b.message_received(smsg.Birthday(False, attempt, 256, SYM.host))
        advance(clock, 5.0)
    assert len(owner.probes) == 20 and b.attempts == 2


def opener(options=BirthdayOptions(sockets=8), observed=(20001, 20002)):
    clock = Clock()
    owner = BirthdayOwner(clock)
    punch = FakePunchSockets(observed)
    b = Birthday(clock, owner, punch, options, random.Random(3))
    b.consider("symmetric", "port_restricted_cone", [CONE], [SYM])
    return clock, owner, punch, b


def test_the_symmetric_side_primes_every_socket_then_asks_the_peer_to_probe():
    clock, owner, punch, b = opener()
    assert len(punch.opened) == 8
    assert [(ep, ttl, via) for _, ep, ttl, via in owner.probes] == [(CONE, 2, s) for s in punch.opened]
    start = owner.messages[0]
    assert (start.reply, start.sockets, start.host, start.observed) == (False, 8, SYM.host, (20001, 20002))
    advance(clock, 1.2)
    assert len(owner.messages) == 3  # repeated until answered
    b.message_received(smsg.Birthday(True, start.attempt))
    advance(clock, 2.0)
    assert len(owner.messages) == 3


def test_the_winning_socket_is_kept_and_the_others_closed_at_once():
    clock, owner, punch, b = opener()
    winner = punch.opened[5]
    b.path_changed(True, winner)
    assert [s.closed for s in punch.opened] == [True] * 5 + [False] + [True] * 2
    advance(clock, 30.0)
    assert not winner.closed  # it is the path now, however long
    b.path_changed(False, None)
    assert winner.closed


def test_an_attempt_that_finds_nothing_closes_every_socket():
    options = BirthdayOptions(sockets=4, max_probes=300, probe_rate=300)
    clock, owner, punch, b = opener(options)
    advance(clock, options.start_retry * options.start_tries + options.duration + options.linger - 0.01)
    assert not any(s.closed for s in punch.opened)
    advance(clock, 0.02)
    assert all(s.closed for s in punch.opened)
    assert clock.getDelayedCalls() == []


def test_no_sockets_are_opened_while_direct_or_for_other_nats():
    clock = Clock()
    owner = BirthdayOwner(clock)
    punch = FakePunchSockets()
    b = Birthday(clock, owner, punch, BirthdayOptions(sockets=4))
    b.consider("symmetric", "full_cone", [CONE], [SYM])
    owner.relay = False
    b.consider("symmetric", "port_restricted_cone", [CONE], [SYM])
    assert punch.opened == [] and owner.messages == []


def test_stop_closes_everything():
    clock, owner, punch, b = opener()
    b.stop()
    assert all(s.closed for s in punch.opened) and clock.getDelayedCalls() == []


# -- the path through an extra socket ------------------------------------------------------


def test_an_ack_on_an_extra_socket_makes_it_the_path_for_everything():
    clock = Clock()
    owner = RecordingOwner(clock)
    path = PeerPath(clock, owner)
    sock = FakeSocket(1)
    path.add_candidates([CONE])
    # A probe from the cone side reaches one of our sockets: probe back on that route at once, once.
    path.probed(ViaSocket(CONE, socket=sock))
    path.probed(ViaSocket(CONE, socket=sock))
    assert owner.take() == [(0.0, "probe", CONE, None, sock)]
    path.acked(ViaSocket(CONE, socket=sock))
    assert path.using_direct() and path.direct_via is sock and owner.changes == [(True, sock)]
    path.send(b"data")
    assert owner.take() == [(0.0, "direct", b"data", CONE, sock)]
    advance(clock, 2.0)  # unanswered: checked from the same socket, then back to the relay
    probes = [e for e in owner.take() if e[1] == "probe"]
    assert probes and all(e[-1] is sock for e in probes)
    assert not path.using_direct() and path.direct_via is None and owner.changes[-1] == (False, None)


def test_an_ack_on_the_nodes_own_socket_leaves_the_extra_ones():
    clock = Clock()
    owner = RecordingOwner(clock)
    path = PeerPath(clock, owner)
    path.add_candidates([CONE])
    path.acked(Direct(CONE))
    assert path.direct_via is None and owner.changes == [(True, None)]


# -- the node's punch sockets ----------------------------------------------------------------


@implementer(IDatagramRouter)
class RecordingRouter:
    def __init__(self):
        self.received: list = []

    def datagram_received(self, data, source):
        self.received.append((data, source))


@implementer(IMappingObservations)
class Observations:
    def observed_ports(self):
        return (20001, 20002)


def test_punch_sockets_receive_with_their_socket_send_from_it_and_close():
    reactor = UDPMemoryReactor()
    router = RecordingRouter()
    sockets = PunchSockets(reactor, Observations(), limit=5)
    sockets.wire(router)
    assert sockets.open(3) == []  # not running
    sockets.startService()
    opened = sockets.open(4)
    assert len(opened) == 4 and len(sockets.open(4)) == 1  # the limit holds across attempts
    first = opened[0]
    first.datagramReceived(b"\xc4probe", ("198.51.100.2", 39006))
    data, source = router.received[0]
    assert isinstance(source, ViaSocket) and isinstance(source, Direct)
    assert source.socket is first and source.endpoint == CONE
    first.send(b"ack", CONE, ttl=2)
    port = reactor.udp_ports[0]
    assert port.written == [(b"ack", ("198.51.100.2", 39006))] and port.socket.ttls_written == [2]
    first.close()
    first.send(b"late", CONE)
    assert len(port.written) == 1 and sockets.counters["send_while_closed"] == 1
    assert sockets.observed_ports() == (20001, 20002)
    sockets.stopService()
    assert sockets.open_count == 0 and not any(p.listening for p in reactor.udp_ports)


def test_punch_sockets_check_their_collaborators():
    with pytest.raises(TypeError):
        PunchSockets(UDPMemoryReactor(), object())
    with pytest.raises(TypeError):
        PunchSockets(UDPMemoryReactor(), Observations()).wire(object())
