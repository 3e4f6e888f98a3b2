"""
Signed requests to the beacon, resent until answered: the node's one sender.

Three ways to send, for three kinds of request:

* :meth:`SignedRequests.ask` wants one answer (a ``Lookup``): a Deferred
  fires with it, or fails with the beacon's ``Error`` as a
  :class:`~pilotproto.errors.PilotError`.  Five copies, ``ASK_DELAYS``
  apart (~8 s in all): a lookup must survive a lossy path, and each try is
  one datagram each way.  No answer at all is ``Unavailable``.
* :meth:`SignedRequests.send` wants an ``Ok`` (trust mail: handshake
  requests, answers, revocations, visibility lists).  Four copies,
  ``SEND_DELAYS`` apart.  The ``TRANSIENT`` errors mean the beacon forgot
  us or our clock stepped back; the registration machine cures both, so
  the copies keep coming.  Any other error is a refusal (``on_error``).
  After the last copy the request is given up *for now* (``on_give_up``):
  its owner sends it again after the next registration.
* :meth:`SignedRequests.post` sends one copy and wants nothing back (a
  ``MailAck``: a lost one only means the beacon pushes the mail again).

Every copy of a request keeps its ``request_id`` (an answer to any copy
settles it) and gets a fresh ``seq`` and signature (the beacon refuses a
replayed ``seq``).  The retry timer is armed before each copy leaves, so
an answer that arrives inline finds it to cancel.
"""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred
from zope.interface import implementer

from ..common.ids import new_request_id
from ..common.wiring import check_provides
from ..errors import NotRegistered, PilotError, Unavailable
from ..interfaces import ISignedRequests
from ..wire import beacon as msgs
from .interfaces import IBeaconChannel

#: seconds to wait after each copy of an asked request before the next (or giving up)
ASK_DELAYS = (0.5, 1.0, 1.5, 2.0, 3.0)
#: seconds to wait after each copy of a sent request before the next (or giving up for now)
SEND_DELAYS = (0.5, 1.0, 2.0, 4.0)
#: errors a resend cures once the node is registered again
TRANSIENT = frozenset({"not_registered", "replay", "stale_nonce"})


def error_from(msg: msgs.Error) -> PilotError:
    """The PilotError a beacon ``Error`` stands for."""
    if msg.code == "not_registered":
        return NotRegistered()
    return PilotError.from_dict({"code": msg.code, "message": msg.message})


@attrs.define(eq=False)
class _Asked:
    """An asked request: any answer settles it."""

    request: object
    deferred: Deferred | None = None
    what: tuple | None = None  # asked requests have no name: a Deferred stands for them
    delays: tuple = ASK_DELAYS
    attempt: int = 0
    timer: object = None

    def final(self, msg) -> bool:
        return True

    def settle(self, msg) -> None:
        if isinstance(msg, msgs.Error):
            self.deferred.errback(error_from(msg))
        else:
            self.deferred.callback(msg)

    def unanswered(self) -> None:
        self.deferred.errback(Unavailable("the beacon did not answer"))

    def stopped(self) -> None:
        self.deferred.errback(Unavailable("the node is shutting down"))


@attrs.define(eq=False)
class _Sent:
    """A sent request: settled by Ok or a refusal; transient errors wait for the next copy."""

    request: object
    what: tuple
    on_ok: object
    on_error: object = None
    on_give_up: object = None
    delays: tuple = SEND_DELAYS
    attempt: int = 0
    timer: object = None

    def final(self, msg) -> bool:
        if isinstance(msg, msgs.Ok):
            return True
        # Anything else with our request id but Ok or Error answers nothing we sent.
        return isinstance(msg, msgs.Error) and msg.code not in TRANSIENT

    def settle(self, msg) -> None:
        if isinstance(msg, msgs.Ok):
            self.on_ok()
        elif self.on_error is not None:
            self.on_error(error_from(msg))

    def unanswered(self) -> None:
        if self.on_give_up is not None:
            self.on_give_up()

    def stopped(self) -> None:
        """Its owner is stopping too: nothing to tell."""


@implementer(ISignedRequests)
class SignedRequests:
    """Signs requests with ``identity`` (``seq`` from ``seq.next()``) and sends them
    through ``channel`` (an :class:`IBeaconChannel`) until the beacon answers.

    Request ids come from ``ids()`` (64 random bits each: an off-path attacker
    must guess one to forge an answer)."""

    def __init__(self, clock, identity, channel, seq, ids=new_request_id):
        self._clock = clock
        self._identity = identity
        self._channel = check_provides(channel, IBeaconChannel, "SignedRequests channel")
        self._seq = seq
        self._ids = ids
        self._by_request_id: dict[int, _Asked | _Sent] = {}
        self._by_what: dict[tuple, _Sent] = {}

    # -- ISignedRequests ------------------------------------------------------

    def ask(self, request) -> Deferred:
        pending = _Asked(attrs.evolve(request, request_id=self._ids()))
        pending.deferred = Deferred(lambda d: self._forget(pending))
        self._start(pending)
        return pending.deferred

    def send(self, what: tuple, request, on_ok, on_error=None, on_give_up=None) -> None:
        """``on_ok()`` runs on Ok, ``on_error(PilotError)`` on a refusal a resend
        cannot cure, ``on_give_up()`` when no answer came."""
        self.cancel(what)
        pending = _Sent(attrs.evolve(request, request_id=self._ids()), what, on_ok, on_error, on_give_up)
        self._by_what[what] = pending
        self._start(pending)

    def post(self, request) -> None:
        request = attrs.evolve(request, request_id=self._ids())
        self._channel.send_to_beacon(msgs.encode(msgs.sign(request, self._identity, self._seq.next())))

    def in_flight(self, what: tuple) -> bool:
        return what in self._by_what

    def cancel(self, what: tuple) -> None:
        pending = self._by_what.get(what)
        if pending is not None:
            self._forget(pending)

    def cancel_matching(self, prefix: tuple) -> None:
        for what in [w for w in self._by_what if w[: len(prefix)] == prefix]:
            self.cancel(what)

    def message_received(self, msg) -> bool:
        """Settle the request ``msg`` answers; False if it answers none of ours."""
        pending = self._by_request_id.get(msg.request_id)
        if pending is None:
            return False
        if pending.final(msg):
            self._forget(pending)
            pending.settle(msg)
        return True

    def stop(self) -> None:
        for pending in list(self._by_request_id.values()):
            self._forget(pending)
            pending.stopped()

    # -- copies and timers ------------------------------------------------------

    def _start(self, pending) -> None:
        self._by_request_id[pending.request.request_id] = pending
        self._transmit(pending)

    def _transmit(self, pending) -> None:
        if pending.attempt >= len(pending.delays):
            self._forget(pending)
            pending.unanswered()
            return
        delay = pending.delays[pending.attempt]
        pending.attempt += 1
        pending.timer = self._clock.callLater(delay, self._transmit, pending)
        self._channel.send_to_beacon(msgs.encode(msgs.sign(pending.request, self._identity, self._seq.next())))

    def _forget(self, pending) -> None:
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        pending.timer = None
        self._by_request_id.pop(pending.request.request_id, None)
        if pending.what is not None and self._by_what.get(pending.what) is pending:
            del self._by_what[pending.what]
