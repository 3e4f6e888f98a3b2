"""
:class:`BeaconSet`: the node's beacons, several as Nebula's lighthouses,
behind the one face the node and the sessions knew for one beacon.

::

    BeaconSet  (IRendezvous, IPeerDirectory, IRelay), a MultiService
      |-- BeaconLink 0   registration, transport, TLS, requests     link.py
      |-- BeaconLink 1   ... one per --beacon, each on its own
      |-- FannedRequests  trust mail, visibility, cards: to every beacon   fanout.py
      '-- RelayChoice     which beacon relays to which peer                 merge.py

What each beacon gets is the same: the node registers with every one under
the same name and flags, and its visibility list, agent card and trust mail
go to every one (:mod:`~pilotproto.rendezvous.fanout`).

Lookups ask every beacon that answers us (all of them while none does) and
merge the answers by :func:`~pilotproto.rendezvous.merge.merge_lookups`.  A
lookup does not wait for a beacon that died a moment ago: once one beacon
has found the node, the others have ``LOOKUP_GRACE`` seconds to answer (to
catch a conflict), and a beacon still silent then counts as down.

Relaying goes through one beacon the peer shares with us, chosen by
:class:`~pilotproto.rendezvous.merge.RelayChoice` from what lookups said;
when that beacon stops answering our keepalives (``BeaconLink.live``, at
most a keepalive interval and a confirmation timeout after it dies), the
next shared one takes over.  Relayed packets from any of our beacons are
accepted (``is_beacon``).

Incoming datagrams: by UDP, the link whose endpoint sent it takes it; off a
TLS link, a small adapter (:class:`_OwnStream`) hands beacon messages to
that link itself (the source ``BeaconStream`` does not say which beacon it
was) and everything else (relay frames) to the node's router.

NAT discovery runs against the first beacon only (the first ``--beacon``):
it measures the NAT, which is the same whichever beacon answers.
"""

from __future__ import annotations

import collections

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from ..common.wiring import check_provides
from ..errors import InvalidArgument, Unavailable
from ..identity import Address
from ..interfaces import IBeaconObserver, IDatagramRouter, IPeerDirectory, IRelay, IRendezvous
from ..wire import DecodeError
from ..wire.datagrams import BeaconMessage, classify
from ..wire.sources import BeaconStream, Direct
from .fanout import FannedRequests
from .interfaces import IRegistrationWatcher
from .merge import RelayChoice, merge_lookups

#: seconds the other beacons have to answer a lookup once one has found the node
LOOKUP_GRACE = 1.5
#: seconds between lookups that place a peer we relay to blindly
PLACE_INTERVAL = 10.0


@implementer(IDatagramRouter)
class _OwnStream:
    """A link's TLS datagrams: its beacon messages to it, the rest to the node's router."""

    def __init__(self, router, link):
        self._router = check_provides(router, IDatagramRouter, "BeaconSet router")
        self._link = link

    def datagram_received(self, data, source) -> None:
        try:
            packet = classify(data)
        except DecodeError:
            self._link.counters["dropped_malformed"] += 1
            return
        if isinstance(packet, BeaconMessage):
            if not self._link.beacon_message_received(packet.message, source):
                self._link.counters["dropped_unsolicited"] += 1
            return
        self._router.datagram_received(data, source)


@implementer(IBeaconObserver)
class _NatElsewhere:
    """What a beacon other than the first tells NAT discovery: nothing (it runs against the first)."""

    def beacon_resolved(self, endpoint) -> None:
        """NAT discovery has its beacon."""

    def public_endpoint_seen(self, endpoint) -> None:
        """The first beacon reports ours."""


@implementer(IRegistrationWatcher)
class _Registered:
    """Tells the set which of its links (re)registered."""

    def __init__(self, beacons, index):
        self._beacons, self._index = beacons, index

    def beacon_registered(self, observed) -> None:
        self._beacons.link_registered(self._index, observed)


class _Lookup:
    """One lookup through several beacons: ``result`` fires with the merged answer."""

    def __init__(self, clock, target, asked):
        self._clock, self._target = clock, target
        #: index -> (beacon, Deferred) still out
        self._out = {i: d for i, (_, d) in asked.items()}
        self._names = {i: where for i, (where, _) in asked.items()}
        self._answers: dict[int, object] = {}
        self._grace = None
        self.result = defer.Deferred(lambda _: self._cancel_all())
        for i, d in list(self._out.items()):
            d.addCallbacks(self._answered, self._failed, callbackArgs=(i,), errbackArgs=(i,))

    def _answered(self, answer, i):
        self._done(i, answer)

    def _failed(self, failure, i):
        if failure.check(defer.CancelledError):
            return None
        self._done(i, failure.value)

    def _done(self, i, outcome) -> None:
        self._out.pop(i, None)
        self._answers[i] = outcome
        if self.result.called:
            return
        if not self._out:
            self._finish()
        elif isinstance(outcome, dict) and self._grace is None:
            self._grace = self._clock.callLater(LOOKUP_GRACE, self._finish)

    def _finish(self) -> None:
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self._cancel_all()
        answers = [(self._names[i], self._answers.get(i)) for i in sorted(self._names)]
        try:
            merged = merge_lookups(self._target, answers)
        except Exception as e:
            self.result.errback(e)
            return
        merged["_found_on"] = [i for i in sorted(self._names) if isinstance(self._answers.get(i), dict)]
        self.result.callback(merged)

    def _cancel_all(self) -> None:
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        out, self._out = self._out, {}
        for d in out.values():
            d.cancel()


@implementer(IRendezvous, IPeerDirectory, IRelay)
class BeaconSet(service.MultiService):
    """The node's ``links`` (:class:`~pilotproto.rendezvous.link.BeaconLink`, in
    the order the beacons were given) as one rendezvous.  Call :meth:`wire`
    before starting."""

    name = "beacons"
    log = Logger()

    def __init__(self, clock, links):
        super().__init__()
        if not links:
            raise InvalidArgument("the node needs a beacon address", hint="Pass --beacon HOST:PORT")
        self._clock = clock
        self.links = list(links)
        for i, link in enumerate(self.links):
            link.name = f"beacon {link.where}"
            link.setServiceParent(self)
            link.watch_registration(_Registered(self, i))
        #: trust mail, visibility and the card, to every beacon
        self.requests = FannedRequests(self.links)
        self.choice = RelayChoice()
        self._waiters: list[defer.Deferred] = []
        #: peer -> when a lookup last tried to place it
        self._placing: collections.OrderedDict[bytes, float] = collections.OrderedDict()

    def wire(self, *, router, mail, observer) -> None:
        """As :meth:`BeaconLink.wire`; NAT discovery (``observer``) hears the first beacon only.
        ``mail`` may be a function of the link, for a reader per link (it acks to that beacon)."""
        check_provides(observer, IBeaconObserver, "BeaconSet observer")
        for i, link in enumerate(self.links):
            link.wire(router=_OwnStream(router, link), mail=mail(link) if callable(mail) else mail,
                      observer=observer if i == 0 else _NatElsewhere())

    def stopService(self):
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(Unavailable("the node stopped before it registered"))
        return super().stopService()

    # -- what the node asks ------------------------------------------------------------------

    @property
    def first(self):
        return self.links[0]

    @property
    def registered(self) -> bool:
        """Registered with at least one beacon (peers can find us)."""
        return any(link.registered for link in self.links)

    @property
    def kind(self) -> str:
        """How the node talks to its first beacon: ``"udp"`` or ``"tls"``."""
        return self.first.kind

    @property
    def reflexive_endpoint(self):
        """Where the first registered beacon sees our UDP datagrams come from."""
        for link in self.links:
            if link.registered and link.reflexive_endpoint is not None:
                return link.reflexive_endpoint
        return self.first.reflexive_endpoint

    @property
    def counters(self) -> collections.Counter:
        total = collections.Counter(self.choice.counters)
        for link in self.links:
            total.update(link.counters)
        return total

    def status(self) -> dict:
        """The single-beacon fields for the first beacon (``registered``: with any),
        and ``beacons``: each one's state."""
        first = self.first.status()
        return {
            "beacon_transport": first["beacon_transport"],
            "registered": self.registered,
            "beacon_error": first["beacon_error"],
            "beacons": [link.describe() for link in self.links],
        }

    def when_registered(self) -> defer.Deferred:
        """Fires with our public endpoint once registered with any beacon."""
        for link in self.links:
            if link.registered:
                return defer.succeed(link.registration.observed)

        def forget(d):
            if d in self._waiters:
                self._waiters.remove(d)

        waiter = defer.Deferred(forget)
        self._waiters.append(waiter)
        return waiter

    def link_registered(self, index: int, observed) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(observed)
        self.requests.link_registered(index)

    def watch_registration(self, watcher) -> None:
        """Tell ``watcher`` of every registration with any beacon."""
        for link in self.links:
            link.watch_registration(watcher)

    # -- IPeerDirectory ---------------------------------------------------------------------

    def lookup(self, target: str) -> defer.Deferred:
        """Ask every beacon that answers us (all, while none does); the merged answer."""
        live = [i for i, link in enumerate(self.links) if link.live] or range(len(self.links))
        # The first link checks the target (InvalidArgument at once); the rest ask the same.
        asked = {i: (self.links[i].where, self.links[i].lookup(target)) for i in live}
        return _Lookup(self._clock, target, asked).result.addCallback(self._place)

    def _place(self, merged: dict) -> dict:
        found_on = merged.pop("_found_on")
        self.choice.learned(Address.parse(merged["address"]).to_bytes(), found_on)
        return merged

    # -- IRelay ------------------------------------------------------------------------------

    def _usable(self) -> list[int]:
        usable = [i for i, link in enumerate(self.links) if link.relay_usable]
        # None answering at this moment (a lost keepalive ack): those with a relay key.
        return usable or [i for i, link in enumerate(self.links) if link.relay_ready]

    def send_relay(self, destination: bytes, payload: bytes) -> None:
        """Through the beacon chosen for ``destination``; through every usable one
        while no lookup has placed it (and a lookup is started)."""
        self.send_relay_many(destination, (payload,))

    def send_relay_many(self, destination: bytes, payloads) -> None:
        """:meth:`send_relay` for a burst of packets to one peer, in order."""
        targets, unplaced = self.choice.route(destination, self._usable())
        if not targets:
            self.first.send_relay_many(destination, payloads)  # counted there as relay_unavailable
            return
        for i in targets:
            self.links[i].send_relay_many(destination, payloads)
        if unplaced and len(self.links) > 1:
            self._start_placing(destination)

    def _start_placing(self, peer: bytes) -> None:
        now = self._clock.seconds()
        last = self._placing.get(peer)
        if last is not None and now - last < PLACE_INTERVAL:
            return
        self._placing.pop(peer, None)
        self._placing[peer] = now
        while len(self._placing) > 1024:
            self._placing.popitem(last=False)
        self.lookup(str(Address.from_bytes(peer))).addErrback(lambda f: None)

    def relay_kind(self) -> str:
        usable = self._usable()
        return self.links[usable[0] if usable else 0].relay_kind()

    # -- IRendezvous -------------------------------------------------------------------------

    def is_beacon(self, source) -> bool:
        return any(link.is_beacon(source) for link in self.links)

    def beacon_message_received(self, msg, source) -> bool:
        if isinstance(source, Direct):
            for link in self.links:
                if link.is_beacon(source):
                    return link.beacon_message_received(msg, source)
            return False
        if isinstance(source, BeaconStream):
            # Off a TLS link, messages reach their link through _OwnStream; this is
            # only for a caller that routes them here: the first link that claims it.
            return any(link.beacon_message_received(msg, source) for link in self.links if link.tls is not None)
        return False
