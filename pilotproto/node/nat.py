"""
NAT discovery as a child service of the node, and the candidates it yields.

:class:`NatService` runs the RFC 5780 prober (:mod:`pilotproto.session.natprobe`)
against the beacon when the beacon's address is known, again every
``NAT_RECHECK_INTERVAL`` seconds (NATs change with networks), and at once
when the beacon reports a public endpoint other than the one discovery saw
(a rebinding, a new address, another network).  It answers the session
layer's question "where may peers reach us directly?"
(:class:`~pilotproto.interfaces.ILocalCandidates`): the public endpoint the
beacon sees, a port the gateway mapped for us (PCP, NAT-PMP or UPnP, see
:mod:`pilotproto.node.portmap`) listed first, and our LAN address.  With
an IPv6 socket it adds this host's global IPv6 addresses and, when it knows
the beacon's IPv6 address, the beacon's view of us over IPv6
(:mod:`pilotproto.node.ipv6`); peers race them ahead of IPv4
(:mod:`pilotproto.session.happy_eyeballs`).
"""

from __future__ import annotations

import socket

from twisted.application import service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from ..interfaces import IBeaconObserver, IDatagramSender, ILocalCandidates, INatDiscovery
from ..session.natprobe import NatProber
from ..wire import Endpoint
from .ipv6 import HostAddresses, ReflexiveV6, resolve_ipv6
from .portmap import PortMapper, gateway_towards

#: how often NAT discovery runs again without a reason
NAT_RECHECK_INTERVAL = 300.0


@implementer(INatDiscovery, ILocalCandidates, IBeaconObserver)
class NatService(service.Service):
    log = Logger()
    name = "nat"

    def __init__(
        self,
        reactor,
        udp,
        recheck_interval: float = NAT_RECHECK_INTERVAL,
        port_mapping: bool = True,
        port_mapper=None,
        host_addresses=None,
        beacon6: Endpoint | None = None,
        beacon_name: tuple[str, int] | None = None,
    ):
        if not IDatagramSender.providedBy(udp):
            raise TypeError(f"{udp!r} does not provide IDatagramSender")
        self._udp = udp
        self._beacon: Endpoint | None = None
        self._public: Endpoint | None = None
        self._recheck_interval = recheck_interval
        self.prober = NatProber(reactor, udp, self.source_endpoint, on_result=self._discovered)
        self._recheck = LoopingCall(self._probe)
        self._recheck.clock = reactor
        #: NAT behaviour seen from here; "unknown" until discovery says otherwise
        self.nat_type = "unknown"
        self._nat_watchers: list = []
        if port_mapper is None and port_mapping:
            port_mapper = PortMapper(reactor, self._udp_port, gateway=self._gateway)
        #: asks the router on the way to the beacon for a port (None: switched off)
        self.port_mapper = port_mapper
        #: this host's IPv6 addresses (``HostAddresses``; tests inject the kernel's table)
        self.host_addresses = host_addresses if host_addresses is not None else HostAddresses()
        #: the beacon's view of us over IPv6, asked when its IPv6 address is known
        self.reflexive6 = ReflexiveV6(reactor, udp.send)
        self._beacon6 = beacon6
        self._reactor = reactor
        #: the first beacon's (host, port) as given: a name may have an IPv6 address too
        self._beacon_name = beacon_name

    def _udp_port(self) -> int:
        local = self._udp.local_endpoint
        return local.port if local is not None else 0

    def _gateway(self) -> str | None:
        return gateway_towards(self._beacon.host) if self._beacon is not None else None

    def _discovered(self, nat_type: str) -> None:
        changed = nat_type != self.nat_type
        self.nat_type = nat_type
        if changed:
            for watcher in list(self._nat_watchers):
                watcher(nat_type)

    def watch_nat_type(self, watcher) -> None:
        """Call ``watcher(nat_type)`` whenever discovery reads our NAT differently
        (the sessions layer re-offers candidates to peers still on the relay)."""
        self._nat_watchers.append(watcher)

    # -- lifecycle ---------------------------------------------------------------

    def startService(self):
        super().startService()
        if self._beacon is not None or self._beacon6 is not None:
            self._start_rechecks()
        if self._beacon6 is None and self._beacon_name is not None:
            found = resolve_ipv6(self._reactor, *self._beacon_name)
            found.addCallback(lambda endpoint: self.beacon6_resolved(endpoint) if endpoint and self.running else None)

    def stopService(self):
        super().stopService()
        if self._recheck.running:
            self._recheck.stop()
        self.prober.stop()
        self.reflexive6.stop()
        if self.port_mapper is not None:
            # Waits (briefly) for the router to confirm the mapping is gone.
            return self.port_mapper.stop()
        return None

    def _start_rechecks(self):
        if self.running and self._beacon6 is not None and self._ipv6_port():
            self.reflexive6.start(self._beacon6)
        if self.running and not self._recheck.running:
            # Alongside registration, not after it: nothing waits for the result.
            self._recheck.start(self._recheck_interval, now=True)
        if self.running and self.port_mapper is not None:
            self.port_mapper.start()

    def _probe(self):
        if self._beacon is not None:
            self.prober.start(self._beacon)

    # -- IBeaconObserver -------------------------------------------------------------

    def beacon_resolved(self, endpoint: Endpoint) -> None:
        if ":" in endpoint.host and self._ipv6_port():
            # A beacon reached over IPv6 answers for our IPv6 socket.
            self._beacon6 = endpoint
        self._beacon = endpoint
        self._start_rechecks()

    def beacon6_resolved(self, endpoint: Endpoint) -> None:
        """The beacon's IPv6 address (besides the IPv4 one we register with)."""
        self._beacon6 = endpoint
        self._start_rechecks()

    def public_endpoint_seen(self, endpoint: Endpoint | None) -> None:
        self._public = endpoint
        probed = self.prober.reflexive
        if endpoint is not None and probed is not None and endpoint != probed:
            self.log.info(
                "public endpoint now {new} (NAT discovery saw {old}): discovering the NAT again",
                new=str(endpoint), old=str(probed),
            )
            self._probe()

    # -- INatDiscovery -----------------------------------------------------------------

    def stun_received(self, data: bytes, source: Endpoint) -> bool:
        if ":" in source.host and self.reflexive6.datagram_received(data, source):
            return True
        return self.prober.datagram_received(data, source)

    # -- ILocalCandidates ------------------------------------------------------------------

    def source_endpoint(self) -> Endpoint | None:
        """The address and port our datagrams to the beacon leave from.

        The socket is bound to the wildcard, so its own name does not say
        which interface address the kernel sends from."""
        local = self._udp.local_endpoint
        if local is None or self._beacon is None:
            return None
        family = socket.AF_INET6 if ":" in self._beacon.host else socket.AF_INET
        try:
            # Connecting a UDP socket sends nothing; it only asks the kernel
            # which source address it would route from.
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect(self._beacon.as_tuple())
                host = probe.getsockname()[0]
        except OSError:
            return None
        return Endpoint(host, local.port)

    def lan_endpoints(self) -> list[Endpoint]:
        """Our address on the local network, as a peer on the same LAN would reach it."""
        ep = self.source_endpoint()
        return [] if ep is None or ep == self._public else [ep]

    def _ipv6_port(self) -> int:
        local6 = getattr(self._udp, "local_endpoint6", None)
        return local6.port if local6 is not None else 0

    def ipv6_candidates(self) -> tuple[list[Endpoint], list[Endpoint]]:
        """``(public, lan)`` IPv6 endpoints: the beacon's view first, then our global addresses."""
        port = self._ipv6_port()
        public, lan = self.host_addresses.candidates(port)
        seen = self.reflexive6.endpoint
        if port and seen is not None and seen not in public:
            public.insert(0, seen)
        return public, lan

    def local_candidates(self):
        public = [self._public] if self._public else []
        mapped = self.port_mapper.candidate(self._public) if self.port_mapper is not None else None
        if mapped is not None and mapped not in public:
            # First: a mapped port answers every peer, whatever our NAT does.
            public.insert(0, mapped)
        public6, lan6 = self.ipv6_candidates()
        # IPv6 after IPv4 in the list (older peers read the first as "the" address);
        # the racing prefers it (happy eyeballs) whatever the order.
        return self.nat_type, public + public6, self.lan_endpoints() + lan6

    def port_mapping(self) -> dict:
        """What the router on the way to the beacon granted, for ``info`` and ``netcheck``."""
        if self.port_mapper is None:
            return {"state": "off"}
        status = self.port_mapper.status()
        status["advertised"] = self.port_mapper.candidate(self._public) is not None
        return status
