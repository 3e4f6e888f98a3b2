"""
Keeping a node registered with its beacon: one Automat machine.

::

    idle --start--> greeting --challenge--> registering --registered--> registered
                      ^  |                     |                           |   ^
                      |  '--timer (backoff)    '--timer/refused/stale      |   | ack
                      |                           (back to greeting)       v   |
                      '------------- timer / not_registered ----------- confirming

``greeting`` sends a padded Hello and waits for a Challenge (a nonce and the
address the beacon saw); ``registering`` sends the signed Register;
``registered`` waits for the keepalive interval; ``confirming`` has sent a
signed Keepalive and waits for its ack.  A lost ack, or an error such as
``not_registered`` (the beacon restarted and forgot us), sends the machine
back to greeting, so a node re-registers by itself.  Retries back off
exponentially with jitter, capped at ``MAX_RETRY`` seconds.

The node says it is registered only while the beacon says so: a refusal
(``name_taken``: another key holds the name) or ``not_registered`` ends
``registered`` at once, not when the last registration would have run out.
``rate_limited`` on a Register waits the retry-after the beacon gives
before greeting again; on a Keepalive it changes nothing (the beacon still
counted it as a sign of life, and waiting longer would let the
registration expire).  A ``PathChallenge`` is answered
by the link (:mod:`pilotproto.rendezvous.link`), not here: it needs no
state.
"""

from __future__ import annotations

import random

from automat import MethodicalMachine
from twisted.logger import Logger
from zope.interface import implementer

from ..common.ids import new_request_id
from ..common.wiring import check_provides
from ..identity import Address
from ..wire import beacon as msgs
from .interfaces import IBeaconChannel, IRegistration, IRegistrationWatcher

FIRST_RETRY = 0.5
MAX_RETRY = 4.0
CONFIRM_TIMEOUT = 1.5
#: Errors for a Register that re-sending the same request will not cure.
REFUSALS = {"name_taken", "refused", "invalid_argument"}
RATE_LIMITED = "rate_limited"


class SeqCounter:
    """Sequence numbers for signed requests: nanoseconds, strictly increasing.

    Time-based so that they keep increasing across restarts of the node.
    """

    def __init__(self, clock):
        self._clock = clock
        self._last = 0

    def next(self) -> int:
        self._last = max(self._last + 1, int(self._clock.seconds() * 1e9))
        return self._last


@implementer(IRegistration)
class BeaconClient:
    """Registers ``identity`` as ``hostname``, sending through ``channel``
    (:class:`IBeaconChannel`) and telling ``watcher``
    (:class:`IRegistrationWatcher`) each time the beacon accepts it."""

    _machine = MethodicalMachine()
    log = Logger()

    def __init__(self, clock, identity, channel, hostname, *, watcher, public=False, lan_endpoints=(), seq=None, rng=None, ids=new_request_id):
        self._clock = clock
        self._identity = identity
        self._channel = check_provides(channel, IBeaconChannel, "BeaconClient channel")
        self._watcher = check_provides(watcher, IRegistrationWatcher, "BeaconClient watcher")
        self.hostname = hostname
        self.public = public
        # The beacon refuses more; a node with many interfaces offers its first few.
        self.lan_endpoints = tuple(lan_endpoints)[: msgs.MAX_LAN_ENDPOINTS]
        self.seq = seq if seq is not None else SeqCounter(clock)
        self._rng = rng if rng is not None else random.Random()
        self._ids = ids
        self._timer = None
        self._delay = FIRST_RETRY
        self._outstanding: dict[int, str] = {}
        self.keepalive_interval = 5.0
        self.ttl = 30.0
        self.observed = None
        self.beacon_key = None
        self.registered_until = None
        self.last_error = None
        #: True while the beacon answers: from a registration until a keepalive
        #: goes unanswered.  ``registered`` lasts the registration's TTL; this
        #: turns False within one keepalive interval of the beacon dying, which
        #: is what a node with several beacons needs to move its relaying.
        self.answering = False
        #: when the first Hello that no Challenge has answered yet was sent
        #: (the node's cue that UDP to the beacon may be blocked)
        self.hello_unanswered_since = None

    # -- what the node asks --------------------------------------------------

    @property
    def registered(self) -> bool:
        return self.registered_until is not None and self._clock.seconds() < self.registered_until

    def message_received(self, msg) -> bool:
        """Handle a message from the beacon; False if it answers nothing we asked."""
        kind = self._outstanding.pop(msg.request_id, None)
        if kind is None:
            return False
        if isinstance(msg, msgs.Challenge) and kind == "hello":
            self.rx_challenge(msg)
        elif isinstance(msg, msgs.Registered) and kind == "register":
            self.rx_registered(msg)
        elif isinstance(msg, msgs.KeepaliveAck) and kind == "keepalive":
            self.rx_keepalive_ack(msg)
        elif isinstance(msg, msgs.Error):
            self.last_error = {"code": msg.code, "message": msg.message}
            if msg.code == RATE_LIMITED:
                self.last_error["retry_after"] = msg.retry_after
                self.rx_rate_limited(msg)
            elif kind == "register" and msg.code in REFUSALS:
                self.rx_refused(msg)
            else:
                self.rx_unknown(msg)
        return True

    # -- states ----------------------------------------------------------------

    @_machine.state(initial=True)
    def idle(self):
        "not started"

    @_machine.state()
    def greeting(self):
        "Hello sent, waiting for a Challenge"

    @_machine.state()
    def registering(self):
        "Register sent, waiting for Registered"

    @_machine.state()
    def registered_idle(self):
        "registered; waiting until the next keepalive is due"

    @_machine.state()
    def confirming(self):
        "Keepalive sent, waiting for its ack"

    @_machine.state()
    def stopped(self):
        "stopped for good"

    # -- inputs ----------------------------------------------------------------

    @_machine.input()
    def start(self, msg=None):
        "begin registering"

    @_machine.input()
    def stop(self, msg=None):
        "the node is shutting down"

    @_machine.input()
    def timer(self, msg=None):
        "the retry or keepalive timer fired"

    @_machine.input()
    def transport_changed(self, msg=None):
        "the node now reaches the beacon another way (UDP or TLS): prove we are there"

    @_machine.input()
    def rx_challenge(self, msg=None):
        "the beacon sent a nonce"

    @_machine.input()
    def rx_registered(self, msg=None):
        "the beacon accepted our registration"

    @_machine.input()
    def rx_keepalive_ack(self, msg=None):
        "the beacon acknowledged a keepalive"

    @_machine.input()
    def rx_refused(self, msg=None):
        "the beacon refused our registration for a reason that will not pass by itself"

    @_machine.input()
    def rx_unknown(self, msg=None):
        "the beacon does not know us (restart, expired, replay): register again"

    @_machine.input()
    def rx_rate_limited(self, msg=None):
        "the beacon asks us to wait ``msg.retry_after`` seconds"

    # -- outputs ---------------------------------------------------------------

    def _arm(self, delay):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self._clock.callLater(delay, self.timer)

    def _write(self, msg, kind):
        # Only the newest request of each kind is worth an answer.
        for rid, k in list(self._outstanding.items()):
            if k == kind:
                del self._outstanding[rid]
        self._outstanding[msg.request_id] = kind
        self._channel.send_to_beacon(msgs.encode(msg))

    @_machine.output()
    def send_hello(self):
        if self.hello_unanswered_since is None:
            self.hello_unanswered_since = self._clock.seconds()
        self._write(msgs.Hello(self._ids()), "hello")

    @_machine.output()
    def send_register(self, msg):
        request = msgs.Register(
            self._ids(),
            msg.nonce,
            self.hostname,
            msgs.FLAG_PUBLIC if self.public else 0,
            self.lan_endpoints,
        )
        self.observed = msg.observed
        self.beacon_key = msg.beacon_key
        self.hello_unanswered_since = None
        self._write(msgs.sign(request, self._identity, self.seq.next()), "register")

    @_machine.output()
    def send_keepalive(self):
        self._write(msgs.sign(msgs.Keepalive(self._ids()), self._identity, self.seq.next()), "keepalive")

    @_machine.output()
    def send_unregister(self):
        unregister = msgs.sign(msgs.Unregister(self._ids()), self._identity, self.seq.next())
        self._channel.send_to_beacon(msgs.encode(unregister))
        self.registered_until = None

    @_machine.output()
    def arm_retry(self):
        jitter = self._rng.uniform(0.8, 1.2)
        self._arm(self._delay * jitter)
        self._delay = min(self._delay * 2, MAX_RETRY)

    @_machine.output()
    def restart_greeting(self):
        # The old transport's silence says nothing about the new one.
        self.hello_unanswered_since = None
        self._delay = FIRST_RETRY

    @_machine.output()
    def arm_retry_after(self, msg):
        # As asked, and at least as long as the backoff; jittered up, so that
        # nodes limited together do not come back together.
        self._arm(max(float(msg.retry_after), self._delay) * self._rng.uniform(1.0, 1.2))
        self._delay = min(self._delay * 2, MAX_RETRY)

    @_machine.output()
    def still_registered(self, msg):
        # Limited, but counted by the beacon as a sign of life.
        self.registered_until = self._clock.seconds() + self.ttl

    @_machine.output()
    def note_silence(self):
        self.answering = False

    @_machine.output()
    def forget_registration(self, msg=None):
        self.registered_until = None

    @_machine.output()
    def forget_if_beacon_forgot(self, msg=None):
        if msg is not None and msg.code == "not_registered":
            self.registered_until = None

    @_machine.output()
    def arm_keepalive(self):
        self._arm(self.keepalive_interval * self._rng.uniform(0.9, 1.0))

    @_machine.output()
    def arm_confirm(self):
        self._arm(CONFIRM_TIMEOUT)

    @_machine.output()
    def record_registration(self, msg):
        self._delay = FIRST_RETRY
        self.last_error = None
        self.keepalive_interval = float(min(max(msg.keepalive_interval, 1), 25))
        self.ttl = float(msg.ttl)
        self.observed = msg.observed
        self.registered_until = self._clock.seconds() + self.ttl
        self.answering = True
        address = Address.from_bytes(msg.address)
        self.log.info("registered as {name} ({address}), public endpoint {ep}", name=self.hostname, address=str(address), ep=str(msg.observed))
        self._watcher.beacon_registered(msg.observed)

    @_machine.output()
    def record_ack(self, msg):
        self.registered_until = self._clock.seconds() + self.ttl
        self.answering = True
        if msg.observed != self.observed:
            self.log.info("public endpoint changed: {old} -> {new}", old=str(self.observed), new=str(msg.observed))
            self.observed = msg.observed

    @_machine.output()
    def log_refusal(self, msg):
        self.log.error("beacon refused registration: {code}: {message}", code=msg.code, message=msg.message)

    @_machine.output()
    def log_limited(self, msg):
        self.log.warn("beacon asks us to wait {s} s: {message}", s=msg.retry_after, message=msg.message)

    @_machine.output()
    def cancel_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._outstanding.clear()

    # -- transitions -------------------------------------------------------------

    idle.upon(start, enter=greeting, outputs=[send_hello, arm_retry])
    idle.upon(stop, enter=stopped, outputs=[])
    idle.upon(transport_changed, enter=idle, outputs=[])
    for _late in (timer, rx_challenge, rx_registered, rx_keepalive_ack, rx_refused, rx_unknown, rx_rate_limited):
        idle.upon(_late, enter=idle, outputs=[])

    greeting.upon(rx_challenge, enter=registering, outputs=[send_register, arm_retry])
    greeting.upon(timer, enter=greeting, outputs=[send_hello, arm_retry])
    greeting.upon(stop, enter=stopped, outputs=[cancel_timer])
    greeting.upon(start, enter=greeting, outputs=[])
    greeting.upon(transport_changed, enter=greeting, outputs=[restart_greeting, send_hello, arm_retry])
    for _late in (rx_registered, rx_keepalive_ack, rx_refused, rx_unknown, rx_rate_limited):
        greeting.upon(_late, enter=greeting, outputs=[])

    registering.upon(rx_registered, enter=registered_idle, outputs=[cancel_timer, record_registration, arm_keepalive])
    registering.upon(rx_refused, enter=greeting, outputs=[forget_registration, log_refusal, arm_retry])
    registering.upon(rx_rate_limited, enter=greeting, outputs=[forget_registration, log_limited, arm_retry_after])
    registering.upon(rx_unknown, enter=greeting, outputs=[forget_if_beacon_forgot, send_hello, arm_retry])
    registering.upon(timer, enter=greeting, outputs=[send_hello, arm_retry])
    registering.upon(stop, enter=stopped, outputs=[cancel_timer])
    registering.upon(transport_changed, enter=greeting, outputs=[restart_greeting, send_hello, arm_retry])
    for _late in (start, rx_challenge, rx_keepalive_ack):
        registering.upon(_late, enter=registering, outputs=[])

    registered_idle.upon(timer, enter=confirming, outputs=[send_keepalive, arm_confirm])
    registered_idle.upon(rx_keepalive_ack, enter=registered_idle, outputs=[record_ack])
    registered_idle.upon(rx_unknown, enter=greeting, outputs=[forget_if_beacon_forgot, send_hello, arm_retry])
    registered_idle.upon(rx_rate_limited, enter=registered_idle, outputs=[])
    registered_idle.upon(stop, enter=stopped, outputs=[cancel_timer, send_unregister])
    # A signed keepalive moves our record to the new transport in one round trip.
    registered_idle.upon(transport_changed, enter=confirming, outputs=[send_keepalive, arm_confirm])
    for _late in (start, rx_challenge, rx_registered, rx_refused):
        registered_idle.upon(_late, enter=registered_idle, outputs=[])

    confirming.upon(rx_keepalive_ack, enter=registered_idle, outputs=[record_ack, arm_keepalive])
    confirming.upon(timer, enter=greeting, outputs=[note_silence, send_hello, arm_retry])
    confirming.upon(rx_unknown, enter=greeting, outputs=[forget_if_beacon_forgot, send_hello, arm_retry])
    # Limited keepalives still count at the beacon; waiting longer than usual
    # would let the registration expire.
    confirming.upon(rx_rate_limited, enter=registered_idle, outputs=[still_registered, arm_keepalive])
    confirming.upon(stop, enter=stopped, outputs=[cancel_timer, send_unregister])
    confirming.upon(transport_changed, enter=confirming, outputs=[send_keepalive, arm_confirm])
    for _late in (start, rx_challenge, rx_registered, rx_refused):
        confirming.upon(_late, enter=confirming, outputs=[])

    for _any in (start, stop, timer, transport_changed, rx_challenge, rx_registered, rx_keepalive_ack, rx_refused, rx_unknown, rx_rate_limited):
        stopped.upon(_any, enter=stopped, outputs=[])
    del _late, _any
