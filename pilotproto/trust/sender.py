"""
Signed requests the beacon must accept: resent until it answers ``Ok``.

Each request keeps its ``request_id`` across copies (an answer to any copy
settles it) and gets a fresh ``seq`` and signature per copy (the beacon
refuses a replayed ``seq``).  ``not_registered`` and ``replay`` mean the
beacon forgot us or our clock stepped back; the registration machine cures
both, so the copies keep coming.  After the last copy the request is given
up *for now*: its owner resends it after the next registration.
"""

from __future__ import annotations

import attrs

from ..errors import PilotError
from ..common.ids import new_request_id
from ..wire import beacon as msgs

RESEND_DELAYS = (0.5, 1.0, 2.0, 4.0)
#: Errors a resend cures once the node is registered again.
TRANSIENT = {"not_registered", "replay", "stale_nonce"}


@attrs.define(eq=False)
class _Send:
    what: tuple
    request: object
    on_ok: object
    on_error: object
    on_give_up: object
    attempt: int = 0
    timer: object = None


class ReliableSender:
    def __init__(self, clock, identity, send_to_beacon, seq):
        self._clock = clock
        self._identity = identity
        self._send = send_to_beacon
        self._seq = seq
        self._by_request_id: dict[int, _Send] = {}
        self._by_what: dict[tuple, _Send] = {}

    def send(self, what: tuple, request, on_ok, on_error=None, on_give_up=None) -> None:
        """Send ``request`` (unsigned) until the beacon says Ok.

        ``what`` names the thing being sent; sending the same ``what`` again
        replaces the copy in flight.  ``on_ok()`` runs on Ok,
        ``on_error(PilotError)`` on a refusal a resend cannot cure, and
        ``on_give_up()`` when no answer came.
        """
        self.cancel(what)
        request = attrs.evolve(request, request_id=new_request_id())
        pending = _Send(what, request, on_ok, on_error, on_give_up)
        self._by_request_id[request.request_id] = pending
        self._by_what[what] = pending
        self._transmit(pending)

    def in_flight(self, what: tuple) -> bool:
        return what in self._by_what

    def _transmit(self, pending: _Send) -> None:
        if pending.attempt >= len(RESEND_DELAYS):
            self._forget(pending)
            if pending.on_give_up is not None:
                pending.on_give_up()
            return
        delay = RESEND_DELAYS[pending.attempt]
        pending.attempt += 1
        # Armed before sending, so an answer that arrives inline finds it to cancel.
        pending.timer = self._clock.callLater(delay, self._transmit, pending)
        self._send(msgs.encode(msgs.sign(pending.request, self._identity, self._seq.next())))

    def _forget(self, pending: _Send) -> None:
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        pending.timer = None
        self._by_request_id.pop(pending.request.request_id, None)
        if self._by_what.get(pending.what) is pending:
            del self._by_what[pending.what]

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
        if isinstance(msg, msgs.Ok):
            self._forget(pending)
            pending.on_ok()
        elif isinstance(msg, msgs.Error):
            if msg.code in TRANSIENT:
                return True  # the next copy (after re-registration) will do
            self._forget(pending)
            if pending.on_error is not None:
                pending.on_error(PilotError.from_dict({"code": msg.code, "message": msg.message}))
        return True

    def stop(self) -> None:
        for pending in list(self._by_request_id.values()):
            self._forget(pending)
