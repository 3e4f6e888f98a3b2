"""
:class:`BeaconLink`: the node's one worker for its beacon, a child service.

It makes the parts of the rendezvous and is the object they report to, as
magic-wormhole's boss is for its workers::

    BeaconLink  (IRendezvous, IPeerDirectory, IRelay)
      |-- BeaconClient     the registration machine            registration.py
      |-- SignedRequests   lookups and trust mail, retried     requests.py (handed to TrustManager)
      |-- BeaconTransport  UDP, or TLS when UDP is blocked     transport.py
      '-- BeaconTLSLink    the TLS connection (ClientService)  tls.py

Starting resolves the beacon's name (unless it is an IP address), tells the
observer (NAT discovery) where the beacon is, and starts registering and
watching the transport.  Stopping unregisters, closes the TLS link and
fires once it has closed.

What comes in: the node's datagram router hands over every beacon message
(:meth:`beacon_message_received`) with its source.  Only the beacon's UDP
endpoint and the TLS link count; a message by UDP first tells the
transport chooser that UDP works, then goes to the signed requests, the
registration machine, and the mail reader (trust), the first that claims
it.  Datagrams off the TLS link go to the router as ``BeaconStream()``,
so they are sorted exactly like those from the socket.

What goes out: :meth:`send_to_beacon` uses the TLS link when that is the
transport and it is up, else UDP (a beacon that was only restarting
answers there first).
"""

from __future__ import annotations

import base64
import collections
import ipaddress
import random

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from ..common.ids import new_request_id
from ..common.names import check_hostname
from ..common.wiring import check_provides
from ..errors import InvalidArgument, NotFound, PilotError, Unavailable
from ..identity import Address
from ..interfaces import (
    IBeaconMail,
    IBeaconObserver,
    IDatagramRouter,
    IDatagramSender,
    IPeerDirectory,
    IRelay,
    IRendezvous,
)
from ..wire import Endpoint, relay
from ..wire import beacon as msgs
from ..wire.sources import BeaconStream, Direct
from .interfaces import IBeaconChannel, IRegistrationWatcher, ITLSLinkListener
from .registration import BeaconClient, SeqCounter
from .requests import SignedRequests
from .tls import BeaconTLSLink
from .transport import TLS, UDP, BeaconTransport

#: beacon messages that report the endpoint our datagrams arrive from
_REPORTS_OBSERVED = (msgs.Challenge, msgs.Registered, msgs.KeepaliveAck)
#: path challenges answered per second at most (each answer is a signature)
PATH_ANSWERS = 8
#: a beacon name that does not resolve is looked up again after this many
#: seconds, doubling (jittered) up to the cap: DNS may come back, a laptop
#: may join a network, a typo stays visible as beacon_error meanwhile
RESOLVE_FIRST_RETRY = 1.0
RESOLVE_MAX_RETRY = 60.0


def resolve_endpoint(reactor, host: str, port: int) -> defer.Deferred:
    """The UDP endpoint ``host:port`` names: at once for an IP address, else through the reactor's resolver."""
    if _is_ip_address(host):
        return defer.succeed(Endpoint(host, port))
    return defer.maybeDeferred(reactor.resolve, host).addCallback(lambda ip: Endpoint(ip, port))


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@implementer(IRendezvous, IPeerDirectory, IRelay, IBeaconChannel, IRegistrationWatcher, ITLSLinkListener)
class BeaconLink(service.Service):
    """Registration, transport and requests for the beacon at ``beacon`` (host, port).

    ``tls`` (host, port) enables the TCP/TLS fallback (checked against
    ``ca_file`` or the pinned ``fingerprint``); ``udp`` is the node's socket
    (:class:`IDatagramSender`).  ``rng`` jitters timers, ``ids`` makes request ids.
    Call :meth:`wire` before starting.
    """

    name = "beacon"
    log = Logger()

    def __init__(
        self,
        reactor,
        identity,
        *,
        hostname: str,
        public: bool,
        beacon: tuple[str, int],
        tls: tuple[str, int] | None,
        ca_file: str | None = None,
        fingerprint: bytes | None = None,
        udp,
        rng=None,
        ids=new_request_id,
    ):
        self._reactor = reactor
        self._identity = identity
        self._udp = check_provides(udp, IDatagramSender, "BeaconLink udp")
        self._beacon = beacon
        rng = rng if rng is not None else random.Random()
        self._rng = rng
        #: the beacon's UDP endpoint, once its name is resolved
        self.beacon_endpoint: Endpoint | None = None
        self.counters: collections.Counter = collections.Counter()
        self.seq = SeqCounter(reactor)
        self.registration = BeaconClient(reactor, identity, self, hostname, watcher=self, public=public, seq=self.seq, rng=rng, ids=ids)
        #: signed requests, retried (the trust manager sends through these too)
        self.requests = SignedRequests(reactor, identity, self, self.seq, ids=ids)
        self.tls: BeaconTLSLink | None = None
        self.transport: BeaconTransport | None = None
        if tls is not None:
            host, port = tls
            self.tls = BeaconTLSLink(
                reactor, host, port, listener=self, ca_file=ca_file, fingerprint=fingerprint, rng=rng, counters=self.counters
            )
            self.transport = BeaconTransport(reactor, registration=self.registration, channel=self, link=self.tls, rng=rng, ids=ids)
        self._router = self._mail = self._observer = None
        self._relay_key: bytes | None = None
        #: seals our relay frames under ``_relay_key`` (made with it)
        self._sealer: relay.RelaySealer | None = None
        # Relay counters start at the clock, like seq, so they keep growing across restarts.
        self._relay_counter = int(reactor.seconds() * 1e9)
        self._waiters: list[defer.Deferred] = []
        #: more IRegistrationWatchers told of each registration (the node's agent card)
        self._registration_watchers: list = []
        self._path_answers: collections.deque = collections.deque()
        self._resolve_error: dict | None = None
        self._resolve_failures = 0
        self._resolve_timer = None
        self._tls_where = f"{tls[0]}:{tls[1]}" if tls is not None else None

    def wire(self, *, router, mail, observer) -> None:
        """``router`` sorts datagrams off the TLS link, ``mail`` reads what the
        beacon pushes (trust), ``observer`` hears where the beacon is and sees us."""
        self._router = check_provides(router, IDatagramRouter, "BeaconLink router")
        self._mail = check_provides(mail, IBeaconMail, "BeaconLink mail")
        self._observer = check_provides(observer, IBeaconObserver, "BeaconLink observer")

    # -- lifecycle ---------------------------------------------------------------------

    def startService(self):
        if self._mail is None:
            raise RuntimeError("BeaconLink.wire() must be called before the link starts")
        super().startService()
        self._start_resolving()

    def _start_resolving(self) -> None:
        self._resolve_timer = None
        self._resolve().addCallbacks(self._resolved, self._not_resolved)

    def _resolve(self) -> defer.Deferred:
        return resolve_endpoint(self._reactor, *self._beacon)

    def _resolved(self, endpoint: Endpoint) -> None:
        if not self.running:
            return
        self.beacon_endpoint = endpoint
        self._resolve_error = None
        self._observer.beacon_resolved(endpoint)
        self.registration.start()
        if self.transport is not None:
            self.transport.start()

    def _not_resolved(self, failure) -> None:
        if not self.running:
            return
        host = self._beacon[0]
        self._resolve_failures += 1
        delay = min(RESOLVE_FIRST_RETRY * 2 ** min(self._resolve_failures - 1, 16), RESOLVE_MAX_RETRY)
        delay *= self._rng.uniform(0.8, 1.2)
        message = f"cannot resolve the beacon's name {host}: {failure.getErrorMessage()}"
        self._resolve_error = {
            "code": Unavailable.code,
            "message": message,
            "hint": f"Check the --beacon name and this host's DNS; the node looks it up again every {RESOLVE_MAX_RETRY:g} s at most.",
        }
        self.log.warn("{message}; trying again in {delay:.1f} s", message=message, delay=delay)
        self._resolve_timer = self._reactor.callLater(delay, self._start_resolving)

    def stopService(self) -> defer.Deferred:
        """Unregister and stop; fires once the TLS link (if any) has closed."""
        super().stopService()
        if self._resolve_timer is not None and self._resolve_timer.active():
            self._resolve_timer.cancel()
        self._resolve_timer = None
        self.registration.stop()
        closed = defer.succeed(None)
        if self.transport is not None:
            self.transport.stop()
            closed = self.tls.stop()
        self.requests.stop()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(Unavailable("the node stopped before it registered"))
        return closed

    # -- what the node asks --------------------------------------------------------------

    @property
    def kind(self) -> str:
        """How the node talks to the beacon now: ``"udp"`` or ``"tls"``."""
        return self.transport.kind if self.transport is not None else UDP

    @property
    def registered(self) -> bool:
        return self.registration.registered

    @property
    def live(self) -> bool:
        """Registered, and the beacon answered our latest keepalive: False within
        one keepalive interval of the beacon dying (``registered`` lasts the TTL)."""
        return self.registration.registered and self.registration.answering

    @property
    def relay_ready(self) -> bool:
        """Has the beacon given us a relay key (we registered at least once)?"""
        return self._relay_key is not None and self.beacon_endpoint is not None

    @property
    def relay_usable(self) -> bool:
        """Can a packet be relayed through this beacon now (it answers us, too)?"""
        return self.relay_ready and self.live

    @property
    def where(self) -> str:
        """The beacon as it was given: ``HOST:PORT``."""
        host, port = self._beacon
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def describe(self) -> dict:
        """This beacon's state, for ``info``'s ``beacons`` list."""
        status = self.status()
        return {
            "beacon": self.where,
            "address": str(self.beacon_endpoint) if self.beacon_endpoint is not None else None,
            # Registered and answering: a beacon that died shows False within a
            # keepalive interval, not when our registration would run out there.
            "registered": self.live,
            "transport": status["beacon_transport"],
            "reflexive_endpoint": str(self.reflexive_endpoint) if self.reflexive_endpoint else None,
            "error": status["beacon_error"],
        }

    @property
    def reflexive_endpoint(self) -> Endpoint | None:
        """Where the beacon sees our UDP datagrams come from; None over TLS
        (the beacon then sees our TCP address, which no peer can use)."""
        return self.registration.observed if self.kind == UDP else None

    def status(self) -> dict:
        """``beacon_transport``, ``registered`` and ``beacon_error`` for ``info``."""
        transport_error = self.transport.last_error if self.transport is not None else None
        if transport_error is not None:
            transport_error = self._tls_fallback_error(transport_error)
        return {
            "beacon_transport": self.kind,
            "registered": self.registered,
            "beacon_error": self.registration.last_error or transport_error or self._resolve_error,
        }

    def _tls_fallback_error(self, error: dict) -> dict:
        # The TLS link only knows its own address; say why it was tried at
        # all, and where that address came from.
        host, port = self._beacon
        return dict(
            error,
            message=f"no answer from the beacon over UDP at {host}:{port}, and the TLS fallback failed: {error['message']}",
            hint=error.get("hint") or f"The TLS fallback ({self._tls_where}) is --beacon-tls, by default the --beacon host on port 443. "
            "Check that the beacon runs, and pass --beacon-tls HOST:PORT if its TLS port is another.",
        )

    def when_registered(self) -> defer.Deferred:
        """Fires with our public endpoint once we are registered; Unavailable if stopped first."""
        if self.registration.registered:
            return defer.succeed(self.registration.observed)

        def forget(d):
            if d in self._waiters:
                self._waiters.remove(d)

        waiter = defer.Deferred(forget)
        self._waiters.append(waiter)
        return waiter

    # -- IPeerDirectory ---------------------------------------------------------------------

    def lookup(self, target: str) -> defer.Deferred:
        """Ask the beacon about a hostname or an address (``0:XXXX.XXXX.XXXX``)."""
        if not isinstance(target, str) or not target:
            raise InvalidArgument("lookup needs a hostname or an address")
        if Address.looks_like(target):
            request = msgs.Lookup(0, True, Address.parse(target).to_bytes())
        else:
            request = msgs.Lookup(0, False, check_hostname(target).encode())

        def describe(result: msgs.LookupResult) -> dict:
            return {
                "hostname": result.hostname,
                "address": str(Address.from_bytes(result.address)),
                "public_key": base64.b64encode(result.public_key).decode(),
                "endpoints": [str(e) for e in result.endpoints],
                "public": bool(result.flags & msgs.FLAG_PUBLIC),
            }

        def not_found(failure):
            failure.trap(NotFound)
            raise NotFound(f"no node {target!r} is visible to this node", hint=NotFound.hint)

        return self.requests.ask(request).addCallbacks(describe, not_found)

    # -- IRelay --------------------------------------------------------------------------

    def send_relay(self, destination: bytes, payload: bytes) -> None:
        """Send a tunnel packet to the node at ``destination`` through the beacon."""
        sealer = self._sealer
        if sealer is None or self.beacon_endpoint is None:
            self.counters["relay_unavailable"] += 1
            return
        self._relay_counter += 1
        self.send_to_beacon(sealer.seal(destination, self._relay_counter, payload))

    def send_relay_many(self, destination: bytes, payloads) -> None:
        """:meth:`send_relay` for a burst (in order): one ``send_many`` to the
        node's socket by UDP, which leaves as GSO runs; over TLS, one write."""
        sealer = self._sealer
        if sealer is None or self.beacon_endpoint is None:
            self.counters["relay_unavailable"] += len(payloads)
            return
        frames = sealer.seal_many(destination, self._relay_counter + 1, payloads)
        self._relay_counter += len(frames)
        if self.kind == TLS and self.tls.send_many(frames):
            return
        self._udp.send_many(frames, self.beacon_endpoint)

    def relay_kind(self) -> str:
        return "relay-tcp" if self.kind == TLS else "relay"

    # -- IRendezvous: what the router hands over --------------------------------------------

    def is_beacon(self, source) -> bool:
        if isinstance(source, BeaconStream):
            return True
        return isinstance(source, Direct) and self.beacon_endpoint is not None and source.endpoint == self.beacon_endpoint

    def beacon_message_received(self, msg, source) -> bool:
        if not self.is_beacon(source):
            return False
        if isinstance(source, Direct) and self.transport is not None and self.transport.udp_message_received(msg):
            return True
        if isinstance(msg, msgs.PathChallenge):
            self._path_challenged(msg, source)
            return True
        handled = self.requests.message_received(msg) or self.registration.message_received(msg) or self._mail.message_received(msg)
        if handled and isinstance(msg, _REPORTS_OBSERVED):
            self._observer.public_endpoint_seen(self.reflexive_endpoint)
        return handled

    def _path_challenged(self, msg, source) -> None:
        """The beacon saw us at a new address (NAT rebinding, back from TLS)
        and will send there once we echo its token from there: by the way
        the challenge came.  Each answer costs a signature, so a flood of
        forged challenges earns at most ``PATH_ANSWERS`` answers a second."""
        now = self._reactor.seconds()
        while self._path_answers and now - self._path_answers[0] >= 1.0:
            self._path_answers.popleft()
        if len(self._path_answers) >= PATH_ANSWERS:
            self.counters["path_challenges_ignored"] += 1
            return
        self._path_answers.append(now)
        self.counters["path_challenges_answered"] += 1
        response = msgs.sign(msgs.PathResponse(msg.request_id, msg.token), self._identity, self.seq.next())
        if isinstance(source, Direct):
            self.send_by_udp(msgs.encode(response))
        else:
            self.send_to_beacon(msgs.encode(response))

    # -- IBeaconChannel: what the parts send ------------------------------------------------

    def send_to_beacon(self, data: bytes) -> None:
        if self.kind == TLS and self.tls.send(data):
            return
        # UDP, or TLS that is not up (yet): try UDP rather than nothing; a
        # beacon that was merely restarting answers there first.
        self.send_by_udp(data)

    def send_by_udp(self, data: bytes) -> None:
        if self.beacon_endpoint is not None:
            self._udp.send(data, self.beacon_endpoint)

    # -- IRegistrationWatcher, ITLSLinkListener: what the parts report ----------------------

    def beacon_registered(self, observed: Endpoint) -> None:
        beacon_key = self.registration.beacon_key
        try:
            self._relay_key = relay.relay_key(self._identity.x25519_private(), beacon_key, self._identity.public_key, beacon_key)
            self._sealer = relay.RelaySealer(self._relay_key, self._identity.address.to_bytes())
        except PilotError:
            self.log.error("the beacon sent an unusable relay key; relaying is off")
            self._relay_key = self._sealer = None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(observed)
        self._mail.registered()
        for watcher in self._registration_watchers:
            watcher.beacon_registered(observed)

    def watch_registration(self, watcher) -> None:
        """Tell ``watcher`` (an :class:`IRegistrationWatcher`) of every registration from now on."""
        self._registration_watchers.append(check_provides(watcher, IRegistrationWatcher, "BeaconLink registration watcher"))

    def tls_link_up(self) -> None:
        self.registration.transport_changed()

    def tls_datagram_received(self, data: bytes) -> None:
        self._router.datagram_received(data, BeaconStream())
