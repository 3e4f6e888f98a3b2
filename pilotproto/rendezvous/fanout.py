"""
Signed requests to several beacons at once: :class:`FannedRequests`, the
:class:`~pilotproto.interfaces.ISignedRequests` the trust manager and the
agent card use when the node has several beacons (one beacon: the same
rules, one link).

The node's registration, visibility list, agent card and trust mail must be
the same on every beacon, so:

* :meth:`~FannedRequests.send` goes to **every** beacon, each link retrying
  on its own.  The owner hears ``on_ok`` once, at the first ``Ok`` (some
  beacon holds it now); ``on_error`` only if no beacon said Ok and one
  refused; ``on_give_up`` only if none answered at all (the owner sends it
  again after the next registration, as with one beacon).  A beacon that
  gave up while another said Ok is *owed* the request: it gets it again
  when it registers again (it was down, or restarting), without the owner
  hearing anything more.  Sending the same ``what`` again, or cancelling
  it, forgets what was owed.
* :meth:`~FannedRequests.ask` (find cards, one answer wanted) asks one
  beacon, the first that answers us, and the next if it gives no answer.
* :meth:`~FannedRequests.post` (a ``MailAck``) goes to every answering beacon:
  the mail may have come from any of them; one that does not hold it
  ignores the ack.

Collaborators: ``links``, each with ``requests`` (an
:class:`ISignedRequests`) and ``live`` (does the beacon answer us now?).
"""

from __future__ import annotations

import attrs
from twisted.internet import defer
from zope.interface import implementer

from ..common.wiring import check_provides
from ..errors import Unavailable
from ..interfaces import ISignedRequests

#: fanned requests kept for owed beacons at most (oldest forgotten first)
MAX_OWED = 1024


@attrs.define(eq=False)
class _Fanned:
    what: tuple
    request: object
    on_ok: object
    on_error: object
    on_give_up: object
    #: links that have not settled this round
    waiting: set = attrs.field(factory=set)
    #: links that gave up while another said Ok: sent again when they register
    owed: set = attrs.field(factory=set)
    refusal: object = None
    #: the owner has heard the outcome
    told: bool = False


@implementer(ISignedRequests)
class FannedRequests:
    """``links``' signed requests as one :class:`ISignedRequests`."""

    def __init__(self, links):
        self._links = list(links)
        for i, link in enumerate(self._links):
            check_provides(link.requests, ISignedRequests, f"FannedRequests link {i} requests")
        self._by_what: dict[tuple, _Fanned] = {}

    def _order(self) -> list[int]:
        """Links that answer us first, then the others, each group in the given order."""
        live = [i for i, link in enumerate(self._links) if link.live]
        return live + [i for i in range(len(self._links)) if i not in live]

    # -- ISignedRequests ------------------------------------------------------------------

    @defer.inlineCallbacks
    def ask(self, request):
        last = None
        for i in self._order():
            try:
                answer = yield self._links[i].requests.ask(request)
            except Unavailable as e:
                last = e
                continue
            return answer
        raise last if last is not None else Unavailable("the node has no beacon")

    def send(self, what: tuple, request, on_ok, on_error=None, on_give_up=None) -> None:
        self.cancel(what)
        fanned = _Fanned(what, request, on_ok, on_error, on_give_up)
        self._by_what[what] = fanned
        while len(self._by_what) > MAX_OWED:
            self._forget(next(iter(self._by_what)))
        for i in range(len(self._links)):
            self._send_to(i, fanned)

    def post(self, request) -> None:
        targets = [i for i, link in enumerate(self._links) if link.live] or range(len(self._links))
        for i in targets:
            self._links[i].requests.post(request)

    def in_flight(self, what: tuple) -> bool:
        fanned = self._by_what.get(what)
        return fanned is not None and not fanned.told

    def cancel(self, what: tuple) -> None:
        if what in self._by_what:
            self._forget(what)

    def cancel_matching(self, prefix: tuple) -> None:
        for link in self._links:
            link.requests.cancel_matching(prefix)
        for what in [w for w in self._by_what if w[: len(prefix)] == prefix]:
            del self._by_what[what]

    def message_received(self, msg) -> bool:
        return any(link.requests.message_received(msg) for link in self._links)

    def stop(self) -> None:
        self._by_what.clear()
        for link in self._links:
            link.requests.stop()

    # -- what the beacon set tells ---------------------------------------------------------

    def link_registered(self, index: int) -> None:
        """Link ``index`` (re)registered: send it what it is owed."""
        for fanned in list(self._by_what.values()):
            if index in fanned.owed:
                fanned.owed.discard(index)
                self._send_to(index, fanned)

    # -- one link's outcome ------------------------------------------------------------------

    def _forget(self, what: tuple) -> None:
        del self._by_what[what]
        for link in self._links:
            link.requests.cancel(what)

    def _send_to(self, index: int, fanned: _Fanned) -> None:
        fanned.waiting.add(index)
        self._links[index].requests.send(
            fanned.what,
            fanned.request,
            lambda: self._ok(index, fanned),
            lambda error: self._refused(index, fanned, error),
            lambda: self._gave_up(index, fanned),
        )

    def _current(self, fanned: _Fanned) -> bool:
        return self._by_what.get(fanned.what) is fanned

    def _ok(self, index: int, fanned: _Fanned) -> None:
        fanned.waiting.discard(index)
        fanned.owed.discard(index)
        if not fanned.told:
            fanned.told = True
            fanned.on_ok()
        self._done_if_settled(fanned)

    def _refused(self, index: int, fanned: _Fanned, error) -> None:
        fanned.waiting.discard(index)
        fanned.refusal = fanned.refusal or error
        self._settle(fanned)

    def _gave_up(self, index: int, fanned: _Fanned) -> None:
        fanned.waiting.discard(index)
        # Owed only if another beacon says Ok; if none does, the owner hears
        # on_give_up and sends it again itself, and this record is dropped.
        fanned.owed.add(index)
        self._settle(fanned)

    def _settle(self, fanned: _Fanned) -> None:
        if not fanned.told and not fanned.waiting:
            fanned.told = True
            if self._current(fanned):
                del self._by_what[fanned.what]
            if fanned.refusal is not None:
                if fanned.on_error is not None:
                    fanned.on_error(fanned.refusal)
            elif fanned.on_give_up is not None:
                fanned.on_give_up()
            return
        self._done_if_settled(fanned)

    def _done_if_settled(self, fanned: _Fanned) -> None:
        if fanned.told and not fanned.waiting and not fanned.owed and self._current(fanned):
            del self._by_what[fanned.what]
