"""
Signed one-shot requests to the beacon (lookups), with retries.

Each request keeps its ``request_id`` across retries, so an answer to any
copy settles it; each copy has a fresh ``seq`` and signature, so the beacon's
replay check does not refuse the retry.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from ..errors import InvalidArgument, NotRegistered, PilotError, Unavailable
from ..identity import Address
from ..common.names import check_hostname
from ..wire import beacon as msgs
from ..common.ids import new_request_id

# Five tries over ~8 s: a lookup must survive a lossy path (each try is one datagram each way).
RETRY_DELAYS = (0.5, 1.0, 1.5, 2.0, 3.0)


class _Pending:
    def __init__(self, request, deferred):
        self.request = request
        self.deferred = deferred
        self.attempt = 0
        self.timer = None


class BeaconRequests:
    def __init__(self, clock, identity, send, seq):
        self._clock = clock
        self._identity = identity
        self._send = send
        self._seq = seq
        self._pending: dict[int, _Pending] = {}

    def lookup(self, target: str) -> Deferred:
        """Ask the beacon about a hostname or an address (``0:XXXX.XXXX.XXXX``)."""
        if not isinstance(target, str) or not target:
            raise InvalidArgument("lookup needs a hostname or an address")
        if Address.looks_like(target):
            request = msgs.Lookup(new_request_id(), True, Address.parse(target).to_bytes())
        else:
            request = msgs.Lookup(new_request_id(), False, check_hostname(target).encode())
        return self._start(request)

    def _start(self, request) -> Deferred:
        pending = _Pending(request, Deferred(lambda d: self._forget(request.request_id)))
        self._pending[request.request_id] = pending
        self._transmit(pending)
        return pending.deferred

    def _transmit(self, pending):
        if pending.attempt >= len(RETRY_DELAYS):
            self._forget(pending.request.request_id)
            pending.deferred.errback(Unavailable("the beacon did not answer"))
            return
        delay = RETRY_DELAYS[pending.attempt]
        pending.attempt += 1
        self._send(msgs.encode(msgs.sign(pending.request, self._identity, self._seq.next())))
        pending.timer = self._clock.callLater(delay, self._transmit, pending)

    def _forget(self, request_id):
        pending = self._pending.pop(request_id, None)
        if pending is not None and pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        return pending

    def message_received(self, msg) -> bool:
        """Settle the request ``msg`` answers; False if it answers none."""
        pending = self._forget(msg.request_id)
        if pending is None:
            return False
        if isinstance(msg, msgs.Error):
            if msg.code == "not_registered":
                error = NotRegistered()
            else:
                error = PilotError.from_dict({"code": msg.code, "message": msg.message})
            pending.deferred.errback(error)
        else:
            pending.deferred.callback(msg)
        return True

    def cancel_all(self):
        for request_id in list(self._pending):
            pending = self._forget(request_id)
            pending.deferred.errback(Unavailable("the node is shutting down"))
