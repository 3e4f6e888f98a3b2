"""
Which way the node talks to its beacon: UDP, or the TCP/TLS link when UDP
is blocked.  One Automat machine.

::

    idle --start--> on_udp --udp_silent--> on_tls
                     ^  |                    |  ^
                     |  '-- check due:       |  '-- probe due: padded Hello by UDP
                     |      udp_ok           |
                     '------ udp_answered ---'
    any --stop--> stopped

On UDP, a check every second asks how long the registration machine's
first unanswered ``Hello`` has waited (``hello_unanswered_since()``); after
``UDP_GIVE_UP`` seconds without a ``Challenge`` the node moves to TLS.  On
TLS it keeps sending a padded ``Hello`` by UDP every ``UDP_PROBE_INTERVAL``
seconds (and while the TLS link is down, the node's requests go by UDP
too, so a beacon that was only restarting is found again at once); any
answer by UDP proves UDP works both ways, and the node moves back (UDP is
the better path: it can be punched, and it does not suffer head-of-line
blocking).  After each move the registration machine hears
``transport_changed()``, so it re-registers over the new transport at once.

Collaborators (checked): ``registration`` (:class:`IRegistration`: when
did a Hello last go unanswered; tell it of a move), ``channel``
(:class:`IBeaconChannel`: the UDP probe), ``link`` (:class:`ITLSLink`).
"""

from __future__ import annotations

import random

from automat import MethodicalMachine
from twisted.logger import Logger

from ..common.ids import new_request_id
from ..common.wiring import check_provides
from ..wire import beacon as msgs
from .interfaces import IBeaconChannel, IRegistration, ITLSLink

UDP = "udp"
TLS = "tls"
#: seconds a Hello may go unanswered over UDP before the node tries TLS
UDP_GIVE_UP = 3.0
CHECK_INTERVAL = 1.0
#: how often, while on TLS, the node asks by UDP whether UDP works again
UDP_PROBE_INTERVAL = 15.0


class BeaconTransport:
    _machine = MethodicalMachine()
    log = Logger()

    def __init__(self, clock, *, registration, channel, link, rng=None, ids=new_request_id):
        self._clock = clock
        self._registration = check_provides(registration, IRegistration, "BeaconTransport registration")
        self._channel = check_provides(channel, IBeaconChannel, "BeaconTransport channel")
        self._link = check_provides(link, ITLSLink, "BeaconTransport link")
        self._rng = rng if rng is not None else random.Random()
        self._ids = ids
        self._timer = None
        self._probe_id: int | None = None
        #: the transport in use: "udp" or "tls"
        self.kind = UDP
        self.switches = 0

    # -- what the node asks --------------------------------------------------

    @property
    def last_error(self) -> dict | None:
        """The TLS link's latest failure while TLS is in use, else None."""
        return self._link.last_error if self.kind == TLS else None

    def udp_message_received(self, msg) -> bool:
        """A beacon message that came by UDP; True if it was our probe's answer.

        On TLS, any message by UDP proves UDP works both ways: our probe's
        Challenge, or an answer to a request the node sent by UDP while the
        TLS link was down."""
        if self.kind != TLS:
            return False
        ours = isinstance(msg, msgs.Challenge) and self._probe_id is not None and msg.request_id == self._probe_id
        self._probe_id = None
        self.udp_answered()
        return ours

    def _check(self):
        since = self._registration.hello_unanswered_since
        if since is not None and self._clock.seconds() - since >= UDP_GIVE_UP:
            self.udp_silent()
        else:
            self.udp_ok()

    # -- states ------------------------------------------------------------

    @_machine.state(initial=True)
    def idle(self):
        "not started"

    @_machine.state()
    def on_udp(self):
        "talking to the beacon by UDP, watching for silence"

    @_machine.state()
    def on_tls(self):
        "talking to the beacon over TLS, probing UDP now and then"

    @_machine.state()
    def stopped(self):
        "stopped for good"

    # -- inputs ------------------------------------------------------------

    @_machine.input()
    def start(self):
        "the node knows its beacon"

    @_machine.input()
    def stop(self):
        "the node is shutting down"

    @_machine.input()
    def udp_ok(self):
        "the check found UDP answering (or nothing waiting for an answer)"

    @_machine.input()
    def udp_silent(self):
        "a Hello has gone unanswered by UDP for too long"

    @_machine.input()
    def probe_due(self):
        "time to ask by UDP whether UDP works again"

    @_machine.input()
    def udp_answered(self):
        "the beacon answered our UDP probe"

    # -- outputs -----------------------------------------------------------

    def _arm(self, delay, callback):
        self._cancel()
        self._timer = self._clock.callLater(delay, callback)

    def _cancel(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    @_machine.output()
    def arm_check(self):
        self._arm(CHECK_INTERVAL, self._check)

    @_machine.output()
    def arm_probe(self):
        self._arm(UDP_PROBE_INTERVAL * self._rng.uniform(0.8, 1.2), self.probe_due)

    @_machine.output()
    def send_probe(self):
        self._probe_id = self._ids()
        self._channel.send_by_udp(msgs.encode(msgs.Hello(self._probe_id)))

    @_machine.output()
    def use_tls(self):
        self.kind = TLS
        self.switches += 1
        self.log.info("no answer from the beacon by UDP for {s:g} s: using its TLS relay", s=UDP_GIVE_UP)
        self._link.start()
        self._registration.transport_changed()

    @_machine.output()
    def use_udp(self):
        self.kind = UDP
        self.switches += 1
        self.log.info("the beacon answers by UDP again: leaving its TLS relay")
        self._link.stop()
        self._registration.transport_changed()

    @_machine.output()
    def shut_down(self):
        self._cancel()
        self._probe_id = None
        self._link.stop()

    # -- transitions ---------------------------------------------------------

    idle.upon(start, enter=on_udp, outputs=[arm_check])
    idle.upon(stop, enter=stopped, outputs=[])
    for _late in (udp_ok, udp_silent, probe_due, udp_answered):
        idle.upon(_late, enter=idle, outputs=[])

    on_udp.upon(udp_ok, enter=on_udp, outputs=[arm_check])
    on_udp.upon(udp_silent, enter=on_tls, outputs=[use_tls, send_probe, arm_probe])
    on_udp.upon(stop, enter=stopped, outputs=[shut_down])
    for _late in (start, probe_due, udp_answered):
        on_udp.upon(_late, enter=on_udp, outputs=[])

    on_tls.upon(probe_due, enter=on_tls, outputs=[send_probe, arm_probe])
    on_tls.upon(udp_answered, enter=on_udp, outputs=[use_udp, arm_check])
    on_tls.upon(stop, enter=stopped, outputs=[shut_down])
    for _late in (start, udp_ok, udp_silent):
        on_tls.upon(_late, enter=on_tls, outputs=[])

    for _any in (start, stop, udp_ok, udp_silent, probe_due, udp_answered):
        stopped.upon(_any, enter=stopped, outputs=[])
    del _late, _any
