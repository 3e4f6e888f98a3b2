"""
NAT behaviour discovery (RFC 5780 §4.3 mapping, §4.4 filtering): one Automat
machine, run from the node's own UDP socket, because a classification of any
other socket's mapping would say nothing about the one peers punch to.

::

    idle --start--> binding --translated--> filter_both --answer---------+
     ^               |  |                       | no answer               |
     |               |  |                       v                         v
     |               |  |                   filter_port --answer/none--> mapping
     |               |  +--translated, mapping measured before --------> |
     |               | local / no answer / no OTHER-ADDRESS               |
     +--- (result) <-+------------------------------- same / new mapping -+

* ``binding`` (Test I): a plain Binding request to the beacon's main endpoint
  A1:P1.  No answer after every retransmission: ``udp_blocked``.  The mapped
  address equal to the address we send from: ``none``.  No usable
  OTHER-ADDRESS (A2:P2, differing from A1:P1 in address and port): ``unknown``.
* ``filter_both`` / ``filter_port``: CHANGE-REQUEST to A1:P1 asking for an
  answer from A2:P2, then from A1:P2.  An answer to the first means
  endpoint-independent filtering (``full_cone``), to the second only
  address-dependent (``restricted_cone``), to neither address-and-port-
  dependent (``port_restricted_cone``).  An answer must come from the
  endpoint asked for, or the beacon does not honour CHANGE-REQUEST and the
  filtering stays unknown.
* ``mapping`` (Test II): a plain Binding request to A2:P1.  A mapped endpoint
  other than Test I's means the NAT maps per destination: ``symmetric``;
  otherwise the filtering result names the cone.

Why in this order, and why no Test III (A2:P2): a mapping test sends to A2,
which opens an address-dependent filter to exactly the answer ``filter_both``
measures, so filtering is measured first.  After it, A2:P2 and A1:P2 have sent
unsolicited datagrams to our mapping; a Linux NAT keeps a conntrack entry for
them, and a later packet of ours to either would be re-mapped or dropped.
A2:P1 never sends to us unasked.  Test III would only tell address-dependent
from address-and-port-dependent mapping, which are both ``symmetric`` here.

Filters belong to a mapping, and an earlier run's mapping test opened this
mapping's filter to A2.  So when Test I shows the mapping an earlier run
measured, the filtering tests are skipped and that result is kept: the same
public mapping means the same NAT.  A new mapping (the node's reflexive
endpoint changed) is measured afresh.

Every request is retransmitted with the same transaction id (a late answer to
an earlier copy still counts) a bounded number of times, and the whole run has
a deadline.  ``start`` during a run starts it over (the node calls it when
its reflexive endpoint changes, which makes a half-done run meaningless).
``on_result`` must not call back into the machine.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from automat import MethodicalMachine
from twisted.logger import Logger
from zope.interface import implementer

from ..common.wiring import check_provides
from ..interfaces import IDatagramSender
from ..wire import Endpoint
from ..wire import stun
from .birthday_schedule import IMappingObservations

#: attempts per request, and the wait after each before the next (or giving up)
TRIES = 3
TRY_INTERVAL = 0.4
#: an upper bound on one whole run; with the defaults a run takes under 5 s
DEADLINE = 10.0

NAT_TYPES = ("none", "full_cone", "restricted_cone", "port_restricted_cone", "symmetric", "udp_blocked", "unknown")


class _Outstanding(NamedTuple):
    transaction_id: bytes
    kind: str  # "binding", "change" or "mapping"
    destination: Endpoint
    datagram: bytes
    #: where the answer must come from: the destination, or the changed endpoint
    expected_origin: Endpoint


#: what each filtering result means, in RFC 4787 words
_FILTERING_WORDS = {
    "full_cone": "endpoint-independent",
    "restricted_cone": "address-dependent",
    "port_restricted_cone": "address-and-port-dependent",
}


@implementer(IMappingObservations)
class NatProber:
    """
    Collaborators: ``udp`` (:class:`~pilotproto.interfaces.IDatagramSender`)
    is the node's own socket, which the tests must run from;
    ``source_endpoint()`` returns the address and port that socket's
    datagrams leave from (its real interface address, not the wildcard it
    is bound to), or None; ``on_result(nat_type)`` hears every finished run.

    ``source_endpoint`` stays a callable, not a value given to :meth:`start`:
    it is a question to the kernel's routing table, asked when Test I's
    answer arrives, so a run compares the mapped endpoint with the route in
    force at that moment.
    """

    _machine = MethodicalMachine()
    log = Logger()

    def __init__(
        self,
        clock,
        udp,
        source_endpoint,
        on_result,
        tries: int = TRIES,
        try_interval: float = TRY_INTERVAL,
        deadline: float = DEADLINE,
        random_bytes=os.urandom,
    ):
        if not callable(source_endpoint) or not callable(on_result):
            raise TypeError("NatProber needs source_endpoint() and on_result(nat_type) callables")
        self._clock = clock
        self._udp = check_provides(udp, IDatagramSender, "NatProber.udp")
        self._source_endpoint = source_endpoint
        self._on_result = on_result
        self._tries = tries
        self._try_interval = try_interval
        self._deadline = deadline
        self._random_bytes = random_bytes
        self._outstanding: _Outstanding | None = None
        self._tries_left = 0
        self._try_timer = None
        self._deadline_timer = None
        self._server: Endpoint | None = None
        self._filtering = "unknown"
        #: (reflexive endpoint, filtering) last measured: filters belong to a mapping
        self._measured: tuple[Endpoint, str] | None = None
        #: the latest classification, one of NAT_TYPES
        self.nat_type = "unknown"
        #: Test I's mapped endpoint in the latest run (None if it got none)
        self.reflexive: Endpoint | None = None
        #: the beacon's alternate endpoint (A2:P2) from OTHER-ADDRESS
        self.other: Endpoint | None = None
        #: every mapped endpoint the latest finished run saw, in order (Test I, Test II):
        #: a NAT that allocates sequentially shows its step here (birthday punching)
        self.observed: tuple[Endpoint, ...] = ()
        self._seen: list[Endpoint] = []

    # -- datagrams ------------------------------------------------------------

    def datagram_received(self, data: bytes, source: Endpoint) -> bool:
        """A STUN datagram on the node's socket; False if it answers nothing we asked."""
        request = self._outstanding
        if request is None:
            return False
        try:
            result = stun.parse_binding_response(data)
        except stun.StunErrorResponse as e:
            if e.transaction_id != request.transaction_id:
                return False
            self._outstanding = None
            self.log.info("NAT discovery: the beacon answered {code} {reason}", code=e.error_code, reason=e.reason)
            self.rx_error()
            return True
        except stun.StunDecodeError:
            return False
        if result.transaction_id != request.transaction_id:
            return False
        self._outstanding = None
        self.log.debug(
            "NAT discovery: {kind} answer from {source}, mapped {mapped}",
            kind=request.kind, source=str(source), mapped=str(result.xor_mapped),
        )  # fmt: skip
        if request.kind == "binding":
            if result.xor_mapped == self._source_endpoint():
                self.rx_not_translated(result=result)
            elif not self._usable_alternate(result.other_address):
                self.rx_translated_no_alternate(result=result)
            elif self._measured is not None and self._measured[0] == result.xor_mapped:
                self.rx_translated_as_before(result=result)
            else:
                self.rx_translated(result=result)
        elif request.kind == "change":
            # Answered from anywhere but the endpoint asked for, the beacon
            # ignored CHANGE-REQUEST, and the answer measures nothing.
            if source == request.expected_origin:
                self.rx_change_answered()
            else:
                self.rx_error()
        elif result.xor_mapped == self.reflexive:
            self._seen.append(result.xor_mapped)
            self.rx_same_mapping()
        else:
            self._seen.append(result.xor_mapped)
            self.rx_new_mapping()
        return True

    def observed_ports(self) -> tuple[int, ...]:
        """IMappingObservations: the public ports of the latest run's mappings, oldest first."""
        return tuple(ep.port for ep in self.observed)

    def _usable_alternate(self, other: Endpoint | None) -> bool:
        server = self._server
        return (
            other is not None
            and other.host != server.host
            and other.port != server.port
            and (":" in other.host) == (":" in server.host)
        )

    # -- states ----------------------------------------------------------------

    @_machine.state(initial=True)
    def idle(self):
        "no run in progress (before the first, or after a result)"

    @_machine.state()
    def binding(self):
        "Test I: plain Binding request to A1:P1"

    @_machine.state()
    def filter_both(self):
        "filtering: CHANGE-REQUEST (IP and port), answer expected from A2:P2"

    @_machine.state()
    def filter_port(self):
        "filtering: CHANGE-REQUEST (port only), answer expected from A1:P2"

    @_machine.state()
    def mapping(self):
        "Test II: plain Binding request to A2:P1"

    @_machine.state()
    def stopped(self):
        "stopped for good"

    # -- inputs ----------------------------------------------------------------

    @_machine.input()
    def start(self, server):
        "run the tests against the beacon at ``server`` (A1:P1), starting over if running"

    @_machine.input()
    def stop(self):
        "the node is shutting down"

    @_machine.input()
    def retransmit(self):
        "the retry timer fired and tries remain"

    @_machine.input()
    def give_up(self):
        "the retry timer fired after the last try: no answer"

    @_machine.input()
    def deadline(self):
        "the run took longer than it ever should"

    @_machine.input()
    def rx_not_translated(self, result=None):
        "Test I's mapped endpoint is our own source endpoint"

    @_machine.input()
    def rx_translated(self, result=None):
        "Test I's mapped endpoint differs from ours, and the beacon has an alternate"

    @_machine.input()
    def rx_translated_as_before(self, result=None):
        "Test I saw the mapping whose filtering an earlier run measured"

    @_machine.input()
    def rx_translated_no_alternate(self, result=None):
        "Test I's mapped endpoint differs from ours; no usable OTHER-ADDRESS"

    @_machine.input()
    def rx_change_answered(self):
        "a CHANGE-REQUEST answer arrived from the endpoint asked for"

    @_machine.input()
    def rx_same_mapping(self):
        "a mapping test saw Test I's mapped endpoint"

    @_machine.input()
    def rx_new_mapping(self):
        "a mapping test saw a different mapped endpoint"

    @_machine.input()
    def rx_error(self):
        "the beacon answered with an error, or not from where it was asked to"

    # -- outputs: requests -------------------------------------------------------

    @_machine.output()
    def begin(self, server):
        self._cancel_timers()
        self._outstanding = None
        self._server = server
        self._filtering = "unknown"
        self.reflexive = None
        self.other = None
        self._seen = []
        self._deadline_timer = self._clock.callLater(self._deadline, self.deadline)

    def _request(self, kind, destination, expected_origin, change_ip=False, change_port=False):
        transaction_id = self._random_bytes(12)
        datagram = stun.binding_request(transaction_id, change_ip=change_ip, change_port=change_port)
        self._outstanding = _Outstanding(transaction_id, kind, destination, datagram, expected_origin)
        self.log.debug(
            "NAT discovery: {kind} request to {destination} (change IP {ip}, port {port})",
            kind=kind, destination=str(destination), ip=change_ip, port=change_port,
        )  # fmt: skip
        self._tries_left = self._tries - 1
        self._udp.send(datagram, destination)
        self._arm_try()

    def _arm_try(self):
        if self._try_timer is not None and self._try_timer.active():
            self._try_timer.cancel()
        self._try_timer = self._clock.callLater(self._try_interval, self._try_timer_fired)

    def _try_timer_fired(self):
        self._try_timer = None
        if self._tries_left > 0:
            self.retransmit()
        else:
            self._outstanding = None
            self.give_up()

    @_machine.output()
    def send_binding(self):
        self._request("binding", self._server, self._server)

    @_machine.output()
    def record_reflexive(self, result):
        self.reflexive = result.xor_mapped
        self.other = result.other_address
        self._seen.append(result.xor_mapped)

    @_machine.output()
    def send_change_both(self):
        self._request("change", self._server, self.other, change_ip=True, change_port=True)

    @_machine.output()
    def send_change_port(self):
        self._request("change", self._server, Endpoint(self._server.host, self.other.port), change_port=True)

    @_machine.output()
    def send_mapping(self):
        destination = Endpoint(self.other.host, self._server.port)
        self._request("mapping", destination, destination)

    @_machine.output()
    def resend(self):
        self._tries_left -= 1
        self._udp.send(self._outstanding.datagram, self._outstanding.destination)
        self._arm_try()

    @property
    def filtering(self) -> str:
        """The filtering the latest run measured, in RFC 4787 words ("unknown" if none).

        A symmetric NAT's type hides it, so it is said apart: ``netcheck`` shows it."""
        return _FILTERING_WORDS.get(self._filtering, "unknown")

    # -- outputs: what the filtering tests found ------------------------------------

    def _filtering_measured(self, cone: str) -> None:
        self._filtering = cone
        self._measured = (self.reflexive, cone)

    @_machine.output()
    def filtering_endpoint_independent(self):
        self._filtering_measured("full_cone")

    @_machine.output()
    def filtering_address_dependent(self):
        self._filtering_measured("restricted_cone")

    @_machine.output()
    def filtering_address_and_port_dependent(self):
        self._filtering_measured("port_restricted_cone")

    @_machine.output()
    def filtering_as_before(self):
        # Our own earlier mapping tests sent to A2, which opened this very
        # mapping's filter to the answers the filtering tests wait for:
        # measuring again would find a full cone.  Same mapping, same NAT.
        self._filtering = self._measured[1]

    # -- outputs: results ------------------------------------------------------------

    def _conclude(self, nat_type: str, why: str) -> None:
        self._cancel_timers()
        self._outstanding = None
        changed = nat_type != self.nat_type
        self.nat_type = nat_type
        if self._seen:
            self.observed = tuple(self._seen)
        emit = self.log.info if changed else self.log.debug
        emit("NAT type: {nat_type} ({why})", nat_type=nat_type, why=why)
        self._on_result(nat_type)

    @_machine.output()
    def conclude_none(self):
        self._conclude("none", "the beacon sees our own address")

    @_machine.output()
    def conclude_udp_blocked(self):
        self._conclude("udp_blocked", f"no STUN answer from {self._server} after {self._tries} tries")

    @_machine.output()
    def conclude_symmetric(self):
        self._conclude("symmetric", "the mapping changes with the destination address")

    @_machine.output()
    def conclude_filtering(self):
        self._conclude(self._filtering, f"the same mapping {self.reflexive} towards both beacon addresses")

    @_machine.output()
    def conclude_no_alternate(self):
        self._conclude("unknown", f"the beacon at {self._server} announces no second address and port (--alt-address, --alt-port)")

    @_machine.output()
    def conclude_refused(self):
        self._conclude("unknown", "the beacon answered a Binding request with an error")

    @_machine.output()
    def conclude_mapping_unanswered(self):
        self._conclude("unknown", f"no answer from the beacon's alternate address {self.other.host}")

    @_machine.output()
    def conclude_out_of_time(self):
        self._conclude("unknown", f"the tests took longer than {self._deadline} s")

    @_machine.output()
    def cancel(self):
        self._cancel_timers()
        self._outstanding = None

    def _cancel_timers(self):
        for timer in (self._try_timer, self._deadline_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._try_timer = self._deadline_timer = None

    # -- transitions --------------------------------------------------------------

    _answers = (
        rx_not_translated,
        rx_translated,
        rx_translated_as_before,
        rx_translated_no_alternate,
        rx_change_answered,
        rx_same_mapping,
        rx_new_mapping,
        rx_error,
    )

    idle.upon(start, enter=binding, outputs=[begin, send_binding])
    idle.upon(stop, enter=stopped, outputs=[])
    for _late in (retransmit, give_up, deadline) + _answers:
        idle.upon(_late, enter=idle, outputs=[])

    # Inputs every running state treats alike.
    for _state in (binding, filter_both, filter_port, mapping):
        _state.upon(start, enter=binding, outputs=[begin, send_binding])
        _state.upon(stop, enter=stopped, outputs=[cancel])
        _state.upon(retransmit, enter=_state, outputs=[resend])
        _state.upon(deadline, enter=idle, outputs=[conclude_out_of_time])

    binding.upon(rx_not_translated, enter=idle, outputs=[record_reflexive, conclude_none])
    binding.upon(rx_translated, enter=filter_both, outputs=[record_reflexive, send_change_both])
    binding.upon(rx_translated_as_before, enter=mapping, outputs=[record_reflexive, filtering_as_before, send_mapping])
    binding.upon(rx_translated_no_alternate, enter=idle, outputs=[record_reflexive, conclude_no_alternate])
    binding.upon(rx_error, enter=idle, outputs=[conclude_refused])
    binding.upon(give_up, enter=idle, outputs=[conclude_udp_blocked])
    for _late in (rx_change_answered, rx_same_mapping, rx_new_mapping):
        binding.upon(_late, enter=binding, outputs=[])

    filter_both.upon(rx_change_answered, enter=mapping, outputs=[filtering_endpoint_independent, send_mapping])
    filter_both.upon(give_up, enter=filter_port, outputs=[send_change_port])
    # Refused or misrouted: the port-only test would be too; filtering stays unknown.
    filter_both.upon(rx_error, enter=mapping, outputs=[send_mapping])
    for _late in (rx_not_translated, rx_translated, rx_translated_as_before, rx_translated_no_alternate, rx_same_mapping, rx_new_mapping):
        filter_both.upon(_late, enter=filter_both, outputs=[])

    filter_port.upon(rx_change_answered, enter=mapping, outputs=[filtering_address_dependent, send_mapping])
    filter_port.upon(give_up, enter=mapping, outputs=[filtering_address_and_port_dependent, send_mapping])
    filter_port.upon(rx_error, enter=mapping, outputs=[send_mapping])
    for _late in (rx_not_translated, rx_translated, rx_translated_as_before, rx_translated_no_alternate, rx_same_mapping, rx_new_mapping):
        filter_port.upon(_late, enter=filter_port, outputs=[])

    mapping.upon(rx_same_mapping, enter=idle, outputs=[conclude_filtering])
    mapping.upon(rx_new_mapping, enter=idle, outputs=[conclude_symmetric])
    mapping.upon(give_up, enter=idle, outputs=[conclude_mapping_unanswered])
    mapping.upon(rx_error, enter=idle, outputs=[conclude_refused])
    for _late in (rx_not_translated, rx_translated, rx_translated_as_before, rx_translated_no_alternate, rx_change_answered):
        mapping.upon(_late, enter=mapping, outputs=[])

    for _any in (start, stop, retransmit, give_up, deadline) + _answers:
        stopped.upon(_any, enter=stopped, outputs=[])
    del _late, _any, _state, _answers
