"""
The path machine alone, on a Clock: inputs (candidates, punches, acks and
packets from typed sources, silence) in, and the ordered outputs its owner
was asked for (probes with their TTL, relayed and direct sends, punch
requests) out.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from zope.interface import implementer

from pilotproto.session.paths import IPathOwner, PathTimers, PeerPath
from pilotproto.wire import Endpoint
from pilotproto.wire.sources import Direct, Relayed

E1 = Endpoint("198.51.100.7", 4000)
E2 = Endpoint("203.0.113.9", 5000)
E3 = Endpoint("192.0.2.44", 6000)
LAN = Endpoint("10.0.0.7", 4000)
RELAYED = Relayed(b"\x01\x02\x03\x04\x05\x06")
T = PathTimers()


@implementer(IPathOwner)
class RecordingOwner:
    """Every request the path makes, with the time it was made."""

    def __init__(self, clock):
        self.clock = clock
        self.events: list[tuple] = []
        #: (direct, via) for every path_changed, apart from the sends
        self.changes: list[tuple] = []
        self.relay = "relay"

    def _record(self, *event):
        self.events.append((round(self.clock.seconds(), 3),) + event)

    def send_datagram(self, packet, endpoint, via=None):
        self._record("direct", packet, endpoint, *([via] if via is not None else []))

    def send_relay(self, packet):
        self._record("relay", packet)

    def send_probe(self, endpoint, ttl=None, via=None):
        self._record("probe", endpoint, ttl, *([via] if via is not None else []))

    def path_changed(self, direct, via):
        self.changes.append((direct, via))

    def request_punch(self):
        self._record("punch")

    def relay_kind(self):
        return self.relay

    def label(self):
        return "peer"

    def take(self) -> list[tuple]:
        events, self.events = self.events, []
        return events


def make(allow_direct=True, timers=T):
    clock = Clock()
    owner = RecordingOwner(clock)
    return clock, owner, PeerPath(clock, owner, allow_direct=allow_direct, timers=timers)


def advance(clock, seconds):
    """Advance ``seconds``, stopping at each timer on the way so it sees its own time."""
    end = clock.seconds() + seconds
    while True:
        due = [c.getTime() for c in clock.getDelayedCalls() if c.getTime() <= end + 1e-9]
        if not due:
            break
        clock.advance(max(0.0, min(due) - clock.seconds()))
    clock.advance(max(0.0, end - clock.seconds()))


def on_direct(endpoint=E1):
    """A path that punched and was acked from ``endpoint`` at t=0."""
    clock, owner, path = make()
    path.add_candidates([endpoint])
    path.start_punch()
    path.acked(Direct(endpoint))
    owner.take()
    return clock, owner, path


def test_owner_is_checked_when_wired():
    with pytest.raises(TypeError, match="IPathOwner"):
        PeerPath(Clock(), lambda packet: None)


def test_a_path_starts_on_the_relay():
    clock, owner, path = make()
    path.send(b"first")
    assert owner.take() == [(0, "relay", b"first")]
    assert path.kind == "relay" and not path.using_direct()
    owner.relay = "relay-tcp"
    assert path.kind == "relay-tcp"
    path.peer_nat = "udp_blocked"
    owner.relay = "relay"
    assert path.kind == "relay-tcp"  # the peer's side is on TLS: the whole path is


def test_punch_primes_with_a_low_ttl_then_bursts_full_probes():
    clock, owner, path = make(timers=PathTimers(burst_count=3))
    path.add_candidates([E2, E1])
    path.start_punch()
    assert owner.take() == [(0, "probe", E1, 2), (0, "probe", E2, 2)]
    advance(clock, 0.4)
    assert owner.take() == [
        (0.05, "probe", E1, None), (0.05, "probe", E2, None),
        (0.15, "probe", E1, None), (0.15, "probe", E2, None),
        (0.25, "probe", E1, None), (0.25, "probe", E2, None),
    ]  # fmt: skip
    path.send(b"during the burst")
    assert owner.take() == [(0.4, "relay", b"during the burst")]


def test_a_direct_ack_moves_traffic_at_once_and_ends_the_burst():
    clock, owner, path = make()
    path.our_nat = path.peer_nat = "none"
    path.add_candidates([E1, E2])
    path.start_punch()
    advance(clock, 0.1)
    owner.take()
    path.acked(Direct(E2))
    path.send(b"now direct")
    assert owner.take() == [(0.1, "direct", b"now direct", E2)]
    assert path.kind == "direct" and path.switches == 1
    path.received(Direct(E2), 80)
    advance(clock, 5.0)
    assert owner.take() == []  # no more burst probes, and no keepalive yet


def test_an_ack_through_the_relay_proves_nothing():
    clock, owner, path = make()
    path.add_candidates([E1])
    path.start_punch()
    path.acked(RELAYED)
    assert not path.using_direct()


def test_the_path_kind_names_lan_and_punched_paths():
    clock, owner, path = make()
    path.our_nat = path.peer_nat = "full_cone"
    path.add_candidates([E1], lan=[LAN])
    path.start_punch()
    path.acked(Direct(LAN))
    assert path.kind == "lan"
    path.acked(Direct(E1))
    assert path.kind == "direct"
    path.our_nat = "port_restricted_cone"
    assert path.kind == "punched"


def test_a_burst_without_an_ack_retries_with_backoff():
    timers = PathTimers(burst_count=1, retry_first=5.0, retry_max=20.0)
    clock, owner, path = make(timers=timers)
    path.add_candidates([E1])
    path.start_punch()
    advance(clock, 80.0)
    punches = [e[0] for e in owner.take() if e[1] == "punch"]
    # the burst ends at 0.15 s; then 5, 10, 20, 20, ... seconds apart
    assert punches == [5.15, 15.15, 35.15, 55.15, 75.15]
    assert not path.using_direct()


def test_idle_direct_path_sends_keepalive_probes():
    clock, owner, path = on_direct()
    advance(clock, 10.0)
    assert owner.take() == [(10.0, "probe", E1, None)]
    path.received(Direct(E1), 60)  # the PathAck came back
    advance(clock, 10.0)
    assert owner.take() == [(20.0, "probe", E1, None)]


def test_silence_after_sending_falls_back_to_the_relay_then_retries():
    clock, owner, path = on_direct()
    clock.advance(1.0)
    path.send(b"unanswered")
    advance(clock, 1.5)
    events = owner.take()
    assert events[0] == (1.0, "direct", b"unanswered", E1)
    # Probes check_interval apart; at 2.2 s silence_after has passed with
    # three probes unanswered: the path is dead.
    assert events[1:] == [(1.3, "probe", E1, None), (1.6, "probe", E1, None), (1.9, "probe", E1, None)]
    assert not path.using_direct() and path.fallbacks == 1
    path.send(b"again")
    assert owner.take() == [(2.5, "relay", b"again")]
    advance(clock, 1.0)
    assert owner.take() == [(3.1, "punch")]  # silence_after later: a new coordinated punch


def test_an_answer_keeps_the_path():
    clock, owner, path = on_direct()
    for n in range(20):
        path.send(b"ping %d" % n)
        clock.advance(0.2)
        path.received(Direct(E1), 100)
        clock.advance(0.8)
    assert path.using_direct()
    events = owner.take()
    assert [e[1] for e in events if e[1] != "probe"] == ["direct"] * 20
    # Answered traffic needs no checks; probes only hold the NAT open.
    assert [e[0] for e in events if e[1] == "probe"] == [10.0, 20.0]


def test_the_peer_relaying_while_we_go_direct_checks_the_path_at_once():
    clock, owner, path = on_direct()
    clock.advance(1.0)
    path.received(RELAYED, 100)
    clock.advance(0)
    assert owner.take() == [(1.0, "probe", E1, None)]


def test_quiet_for_too_long_falls_back_even_without_traffic():
    clock, owner, path = on_direct()
    advance(clock, 12.0)
    assert not path.using_direct()  # the keepalive at 10 s went unanswered
    assert path.fallbacks == 1


def test_a_packet_from_a_new_endpoint_is_probed_and_the_path_roams_there():
    clock, owner, path = on_direct()
    clock.advance(1.0)
    path.received(Direct(E3), 100)
    assert owner.take() == [(1.0, "probe", E3, None)]
    path.acked(Direct(E3))
    path.send(b"follows the peer")
    assert owner.take() == [(1.0, "direct", b"follows the peer", E3)]
    assert path.direct == E3 and path.switches == 2
    path.received(Direct(E3), 100)
    assert owner.take() == []  # a known endpoint is not probed again


def test_stop_ends_everything():
    clock, owner, path = on_direct()
    path.stop()
    path.send(b"after stop")
    path.acked(Direct(E1))
    path.start_punch()
    advance(clock, 30.0)
    assert owner.take() == [(0, "relay", b"after stop")]


def test_without_direct_paths_nothing_is_probed():
    clock, owner, path = make(allow_direct=False)
    path.add_candidates([E1])
    path.start_punch()
    path.received(Direct(E3), 100)
    path.acked(Direct(E1))
    path.send(b"relayed")
    advance(clock, 10.0)
    assert owner.take() == [(0, "relay", b"relayed")]
    assert path.candidates == set() and path.bytes_received == 100
