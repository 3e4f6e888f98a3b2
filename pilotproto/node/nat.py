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
:mod:`pilotproto.node.portmap`) listed first, and our LAN address.
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
from .portmap import PortMapper, gateway_towards

#: how often NAT discovery runs again without a reason
NAT_RECHECK_INTERVAL = 300.0


@implementer(INatDiscovery, ILocalCandidates, IBeaconObserver)
class NatService(service.Service):
    log = Logger()
    name = "nat"

    def __init__(self, reactor, udp, recheck_interval: float = NAT_RECHECK_INTERVAL, port_mapping: bool = True, port_mapper=None):
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
        if port_mapper is None and port_mapping:
            port_mapper = PortMapper(reactor, self._udp_port, gateway=self._gateway)
        #: asks the router on the way to the beacon for a port (None: switched off)
        self.port_mapper = port_mapper

    def _udp_port(self) -> int:
        local = self._udp.local_endpoint
        return local.port if local is not None else 0

    def _gateway(self) -> str | None:
        return gateway_towards(self._beacon.host) if self._beacon is not None else None

    def _discovered(self, nat_type: str) -> None:
        self.nat_type = nat_type

    # -- lifecycle ---------------------------------------------------------------

    def startService(self):
        super().startService()
        if self._beacon is not None:
            self._start_rechecks()

    def stopService(self):
        super().stopService()
        if self._recheck.running:
            self._recheck.stop()
        self.prober.stop()
        if self.port_mapper is not None:
            # Waits (briefly) for the router to confirm the mapping is gone.
            return self.port_mapper.stop()
        return None

    def _start_rechecks(self):
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
        self._beacon = endpoint
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

    def local_candidates(self):
        public = [self._public] if self._public else []
        mapped = self.port_mapper.candidate(self._public) if self.port_mapper is not None else None
        if mapped is not None and mapped not in public:
            # First: a mapped port answers every peer, whatever our NAT does.
            public.insert(0, mapped)
        return self.nat_type, public, self.lan_endpoints()

    def port_mapping(self) -> dict:
        """What the router on the way to the beacon granted, for ``info`` and ``netcheck``."""
        if self.port_mapper is None:
            return {"state": "off"}
        status = self.port_mapper.status()
        status["advertised"] = self.port_mapper.candidate(self._public) is not None
        return status
