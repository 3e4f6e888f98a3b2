"""
NAT discovery, driven by a Clock against the real beacon server code behind a
simulated NAT of each kind: the classification, the requests in order, and the
retransmission and deadline bounds.
"""

from __future__ import annotations

import itertools
import os

import pytest
from twisted.internet.task import Clock
from zope.interface import implementer

from pilotproto.beacon.server import BeaconServer
from pilotproto.interfaces import IDatagramSender
from pilotproto.session.natprobe import DEADLINE, TRIES, TRY_INTERVAL, NatProber
from pilotproto.wire import Endpoint
from pilotproto.wire import stun

A1P1 = Endpoint("203.0.113.2", 9000)
A1P2 = Endpoint("203.0.113.2", 9001)
A2P1 = Endpoint("203.0.113.3", 9000)
A2P2 = Endpoint("203.0.113.3", 9001)
LOCAL = Endpoint("10.1.0.2", 5000)
PUBLIC_IP = "198.51.100.2"
ONE_WAY = 0.02

# (mapping, filtering) per kind, in RFC 4787 terms
BEHAVIOUR = {
    "none": (None, None),
    "full_cone": ("independent", "independent"),
    "restricted_cone": ("independent", "address"),
    "port_restricted_cone": ("independent", "address_and_port"),
    "symmetric": ("address_and_port", "address_and_port"),
    "udp_blocked": ("blocked", None),
}


@implementer(IDatagramSender)
class FakeNat:
    """One host behind a NAT of a given behaviour, talking to a beacon: the prober's socket."""

    def __init__(self, clock, kind, beacon=None, one_way=ONE_WAY):
        self.clock = clock
        self.mapping, self.filtering = BEHAVIOUR[kind]
        self.beacon = beacon if beacon is not None else BeaconServer(clock, primary_address=A1P1, other_address=A2P2)
        self.one_way = one_way
        self.sent = []  # (destination, change_ip, change_port, transaction id)
        self.ports = {}
        self.permits = set()
        # Remote endpoints whose unsolicited datagrams the filter dropped: a
        # Linux NAT keeps a conntrack entry for each, and drops our own
        # packets to them while it lives (the exact-port SNAT would clash).
        self.refused_senders = set()
        self.next_port = itertools.count(40000)
        self.prober = None
        self.delivered = []  # what datagram_received returned, per delivery

    def send(self, datagram, destination, ttl=None):
        message = stun.decode(datagram)
        change = message.find(stun.ChangeRequest) or stun.ChangeRequest()
        self.sent.append((destination, change.change_ip, change.change_port, message.transaction_id))
        if self.mapping == "blocked" or destination in self.refused_senders:
            return
        public = self._map(destination)
        self.permits.add(destination)
        self.clock.callLater(self.one_way, self._at_beacon, datagram, public, destination)

    def _map(self, destination):
        if self.mapping is None:
            return LOCAL
        key = destination if self.mapping == "address_and_port" else None
        if key not in self.ports:
            self.ports[key] = Endpoint(PUBLIC_IP, next(self.next_port))
        return self.ports[key]

    def _at_beacon(self, datagram, public, local):
        for reply in self.beacon.datagram_received(datagram, public, local):
            data, destination = reply
            origin = getattr(reply, "origin", None) or local
            assert destination == public
            if self._admits(origin):
                self.clock.callLater(self.one_way, self._deliver, data, origin)
            else:
                self.refused_senders.add(origin)

    def _admits(self, source):
        if self.filtering in (None, "independent"):
            return True
        if self.filtering == "address":
            return source.host in {p.host for p in self.permits}
        return source in self.permits

    def _deliver(self, data, source):
        self.delivered.append(self.prober.datagram_received(data, source))

    def requests(self):
        """What was asked, in order, retransmissions collapsed."""
        asked = []
        for destination, change_ip, change_port, txid in self.sent:
            if not asked or asked[-1][1] != txid:
                asked.append(((destination, change_ip, change_port), txid))
        return [a for a, _ in asked]


def _prober(kind, beacon=None, one_way=ONE_WAY, **kwargs):
    clock = Clock()
    net = FakeNat(clock, kind, beacon, one_way)
    results = []
    net.prober = NatProber(clock, net, lambda: LOCAL, on_result=results.append, **kwargs)
    return clock, net, results


def _run(clock, seconds, step=0.01):
    for _ in range(int(seconds / step) + 1):
        clock.advance(step)


BINDING = (A1P1, False, False)
CHANGE_BOTH = (A1P1, True, True)
CHANGE_PORT = (A1P1, False, True)
MAPPING = (A2P1, False, False)

EXPECTED = {
    "none": [BINDING],
    "full_cone": [BINDING, CHANGE_BOTH, MAPPING],
    "restricted_cone": [BINDING, CHANGE_BOTH, CHANGE_PORT, MAPPING],
    "port_restricted_cone": [BINDING, CHANGE_BOTH, CHANGE_PORT, MAPPING],
    "symmetric": [BINDING, CHANGE_BOTH, CHANGE_PORT, MAPPING],
    "udp_blocked": [BINDING],
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_each_nat_kind_is_classified_with_these_requests(kind):
    clock, net, results = _prober(kind)
    net.prober.start(A1P1)
    _run(clock, 8)
    assert results == [kind]
    assert net.prober.nat_type == kind
    assert net.requests() == EXPECTED[kind]
    # Nothing is sent once a result is in.
    sent = len(net.sent)
    _run(clock, DEADLINE)
    assert len(net.sent) == sent


def test_unanswered_requests_are_sent_tries_times_then_given_up():
    clock, net, results = _prober("udp_blocked")
    net.prober.start(A1P1)
    clock.advance(0)
    times = []
    for _ in range(100):
        times.append((clock.seconds(), len(net.sent)))
        clock.advance(0.05)
    sends = [t for (t, n), (_, before) in zip(times[1:], times) if n > before]
    assert len(net.sent) == TRIES
    assert len({s[3] for s in net.sent}) == 1, "retransmissions keep the transaction id"
    assert sends == pytest.approx([TRY_INTERVAL * i + 0.05 for i in range(1, TRIES)], abs=0.051)
    assert results == ["udp_blocked"]


def test_udp_blocked_is_decided_only_after_the_last_try_has_had_its_time():
    clock, net, results = _prober("udp_blocked")
    net.prober.start(A1P1)
    _run(clock, TRIES * TRY_INTERVAL - 0.02)
    assert results == []
    _run(clock, 0.03)
    assert results == ["udp_blocked"]


def test_a_late_answer_to_an_earlier_copy_counts():
    # Round trip 0.6 s: the answer to the first copy comes after the second was sent.
    clock, net, results = _prober("none", one_way=0.3)
    net.prober.start(A1P1)
    _run(clock, 0.65)
    assert results == ["none"]
    assert len(net.sent) == 2
    # The answer to the second copy is a duplicate nobody waits for.
    _run(clock, 1.0)
    assert net.delivered == [True, False]


def test_the_deadline_bounds_a_run_whatever_the_retry_settings():
    clock, net, results = _prober("udp_blocked", tries=1000, deadline=3.0)
    net.prober.start(A1P1)
    _run(clock, 2.9)
    assert results == []
    _run(clock, 0.2)
    assert results == ["unknown"]
    sent = len(net.sent)
    _run(clock, 5)
    assert len(net.sent) == sent


def test_a_beacon_without_alternate_address_leaves_the_type_unknown():
    beacon = BeaconServer(Clock())
    clock, net, results = _prober("port_restricted_cone", beacon=beacon)
    net.prober.start(A1P1)
    _run(clock, 5)
    assert results == ["unknown"]
    assert net.requests() == [BINDING]
    assert net.prober.reflexive == Endpoint(PUBLIC_IP, 40000)


def test_without_alternate_address_a_public_host_is_still_none():
    clock, net, results = _prober("none", beacon=BeaconServer(Clock()))
    net.prober.start(A1P1)
    _run(clock, 1)
    assert results == ["none"]


class IgnoresChangeRequests(BeaconServer):
    """An older beacon: it announces OTHER-ADDRESS but answers every request itself."""

    def datagram_received(self, data, source, local=None):
        return [(d, dst) for d, dst in super().datagram_received(stun.binding_request(stun.decode(data).transaction_id), source, local)]


def test_a_change_answer_from_the_wrong_socket_is_not_believed():
    beacon = IgnoresChangeRequests(Clock(), primary_address=A1P1, other_address=A2P2)
    clock, net, results = _prober("full_cone", beacon=beacon)
    net.prober.start(A1P1)
    _run(clock, 8)
    # The mapping is still measured, but the filtering cannot be.
    assert results == ["unknown"]
    assert net.requests() == [BINDING, CHANGE_BOTH, MAPPING]


def test_a_symmetric_nat_is_found_even_when_filtering_is_unknown():
    beacon = IgnoresChangeRequests(Clock(), primary_address=A1P1, other_address=A2P2)
    clock, net, results = _prober("symmetric", beacon=beacon)
    net.prober.start(A1P1)
    _run(clock, 8)
    assert results == ["symmetric"]


def test_an_error_answer_to_the_first_test_leaves_the_type_unknown():
    class Refuses(BeaconServer):
        def datagram_received(self, data, source, local=None):
            request = stun.decode(data)
            return [(stun.binding_error(request, 500, "Server Error"), source)]

    clock, net, results = _prober("full_cone", beacon=Refuses(Clock()))
    net.prober.start(A1P1)
    _run(clock, 2)
    assert results == ["unknown"]
    assert len(net.sent) == 1


def test_start_during_a_run_starts_over_and_ignores_the_old_answers():
    clock, net, results = _prober("port_restricted_cone")
    net.prober.start(A1P1)
    _run(clock, 0.6)  # in the filtering tests
    old = {s[3] for s in net.sent}
    net.prober.start(A1P1)
    _run(clock, 8)
    assert results == ["port_restricted_cone"]
    assert net.requests()[-4:] == EXPECTED["port_restricted_cone"]
    assert old.isdisjoint({s[3] for s in net.sent[len(old) + 1 :]})


def test_a_rerun_keeps_the_previous_type_until_it_has_a_new_one():
    clock, net, results = _prober("restricted_cone")
    net.prober.start(A1P1)
    _run(clock, 8)
    net.prober.start(A1P1)
    _run(clock, 0.5)
    assert net.prober.nat_type == "restricted_cone"
    _run(clock, 8)
    assert results == ["restricted_cone", "restricted_cone"]


def test_a_rerun_on_the_same_mapping_keeps_its_filtering_and_checks_the_mapping():
    # The first run's mapping tests opened the NAT's filter to A2; measuring
    # the filtering again through the same mapping would find a full cone.
    clock, net, results = _prober("port_restricted_cone")
    net.prober.start(A1P1)
    _run(clock, 8)
    first = len(net.requests())
    net.prober.start(A1P1)
    _run(clock, 8)
    assert results == ["port_restricted_cone", "port_restricted_cone"]
    assert net.requests()[first:] == [BINDING, MAPPING]


def test_a_new_mapping_is_measured_afresh():
    clock, net, results = _prober("full_cone")
    net.prober.start(A1P1)
    _run(clock, 8)
    first = len(net.requests())
    # The NAT forgets everything and maps us to a new public port.
    net.ports.clear()
    net.permits.clear()
    net.refused_senders.clear()
    net.filtering = "address"
    net.prober.start(A1P1)
    _run(clock, 8)
    assert results == ["full_cone", "restricted_cone"]
    assert net.requests()[first:] == EXPECTED["restricted_cone"]


def test_stop_ends_everything():
    clock, net, results = _prober("port_restricted_cone")
    net.prober.start(A1P1)
    _run(clock, 0.1)
    net.prober.stop()
    sent = len(net.sent)
    _run(clock, DEADLINE + 1)
    assert len(net.sent) == sent and results == []
    net.prober.start(A1P1)
    _run(clock, 1)
    assert len(net.sent) == sent


def test_stray_datagrams_are_not_ours():
    clock, net, results = _prober("none")
    prober = net.prober
    txid = os.urandom(12)
    request = stun.decode(stun.binding_request(txid))
    answer = stun.binding_response(request, LOCAL)
    assert prober.datagram_received(answer, A1P1) is False  # nothing outstanding
    prober.start(A1P1)
    assert prober.datagram_received(answer, A1P1) is False  # someone else's transaction
    assert prober.datagram_received(stun.binding_request(txid), A1P1) is False  # a request, not an answer
    assert prober.datagram_received(b"\x01\x01" + os.urandom(30), A1P1) is False
    _run(clock, 1)
    assert results == ["none"]


def test_every_state_answers_every_input():
    automaton = NatProber._machine._automaton
    pairs = {(state, symbol) for state, symbol, _, _ in automaton.allTransitions()}
    missing = [(s, i) for s in automaton.states() for i in automaton.inputAlphabet() if (s, i) not in pairs]
    assert missing == []


def test_collaborators_are_checked_when_wired():
    clock, net = Clock(), FakeNat(Clock(), "none")
    with pytest.raises(TypeError, match="IDatagramSender"):
        NatProber(clock, net.send, lambda: LOCAL, on_result=print)
    with pytest.raises(TypeError):
        NatProber(clock, net, LOCAL, on_result=print)


@pytest.mark.parametrize(
    "kind, filtering",
    [("full_cone", "endpoint-independent"), ("port_restricted_cone", "address-and-port-dependent"),
     ("symmetric", "address-and-port-dependent"), ("none", "unknown")],
)
def test_the_measured_filtering_is_reported_apart_from_the_type(kind, filtering):
    # A symmetric NAT's type names its mapping only; netcheck shows its filtering too.
    clock, net, results = _prober(kind)
    net.prober.start(A1P1)
    _run(clock, 8)
    assert results == [kind]
    assert net.prober.filtering == filtering
