"""
Path MTU discovery for one peer: the :class:`~pilotproto.session.pmtu.PathMtu`
search wired to the path the peer's packets take now and to its stream
connection.

* **Direct path** (``path_changed`` with an endpoint): a new route (endpoint
  or local socket) starts a fresh search.  The ceiling is the MTU of the
  local route towards the peer (the kernel's ``IP_MTU`` on a connected
  socket, capped at 9216): one probe of it settles the usual path.
* **UDP relay** (``path_changed`` without an endpoint, our frames go to the
  beacon by UDP): the same search, capped at the route MTU towards the
  beacon.  Every relayed packet travels inside a 0xD0 frame
  (:data:`~pilotproto.wire.relay.TO_BEACON_OVERHEAD`, 42 bytes) to the beacon,
  which forwards it in a 0xD1 frame 32 bytes smaller: the node -> beacon leg
  is the binding one, and a probe sized for it also crosses the beacon ->
  peer leg, so a narrower second leg is found too.
* **TCP/TLS relay** (our frames go to the beacon over TLS): no IP MTU on our
  leg, so no search.  If the peer is on TLS as well (it reported its UDP
  blocked), the size is the largest relay frame the beacon's TLS link reads
  (:data:`TLS_RELAY_FRAME`); otherwise the beacon sends the peer UDP
  datagrams of unknown path MTU and the size stays
  :data:`~pilotproto.streams.MAX_PACKET` (1150 bytes, fits a 1280-byte path).
* Probes are ``MtuProbe`` session messages padded so that the whole IP
  packet the node sends (IP and UDP headers, the relay frame if any, tunnel
  header and tag, plaintext) is exactly the size tried, sent on the path
  searched only (never to an address the peer did not prove through the
  session).  The peer echoes the nonce in a small ``MtuAck`` sent back the
  way the probe came (the same endpoint, or the relay), and an ack counts
  only if it came the way the search's probes go.
* Every confirmed size becomes the stream connection's packet size at once
  (``set_packet_size``: the plaintext a stream packet may fill).  The streams
  layer reports black holes (full-size packets lost while small ones get
  through, :mod:`pilotproto.streams.blackhole`): the size drops to the base
  (1280) and the search starts over; on the relay the way the relay carries
  our frames is looked at again first (the link may have moved between
  UDP and TLS since).
"""

from __future__ import annotations

import os

from twisted.logger import Logger
from zope.interface import Interface

from ..common.wiring import check_provides
from ..streams import MAX_PACKET
from ..wire import relay
from ..wire import session as smsg
from ..wire.sources import Direct, Relayed
from . import pmtu
from .birthday_schedule import via_of

#: the ceiling when the kernel cannot name the route's MTU (the probes still decide)
UNKNOWN_ROUTE_MTU = 1500
#: the largest frame the beacon reads from a node's TLS link (beacon/tls.py ``MAX_FRAME``)
TLS_RELAY_FRAME = 4096
#: the stream packet size when both ends reach the beacon over TLS: one 0xD0 frame of TLS_RELAY_FRAME bytes
TLS_RELAY_PACKET = TLS_RELAY_FRAME - relay.TO_BEACON_OVERHEAD - pmtu.TUNNEL_OVERHEAD
#: the kinds of route a search (or a fixed size) belongs to
DIRECT, RELAY, RELAY_TCP = "direct", "relay", "relay-tcp"


class IMtuOwner(Interface):
    """What one peer's MTU search needs from the peer's record."""

    def send_direct(plaintext, endpoint, via):
        """Seal ``plaintext`` and send it straight to ``endpoint`` from socket ``via`` (None: the node's own)."""

    def send_relayed(plaintext):
        """Seal ``plaintext`` and send it to the peer through the beacon's relay."""

    def relay_kind():
        """How our relayed packets leave now: ``"relay"`` (UDP) or ``"relay-tcp"`` (TLS)."""

    def relay_beacon():
        """The beacon's UDP endpoint our relay frames go to, or None (not known: the search assumes the usual 1500)."""

    def peer_relays_by_tcp():
        """Does the peer reach the beacon over TLS only (it reported its UDP blocked)?"""

    def set_packet_size(size):
        """Stream packets (the tunnel plaintext) are at most ``size`` bytes from now on."""


class PeerMtu:
    """The MTU search of one peer's path; ``pmtu`` is the confirmed IP MTU (None: no search)."""

    log = Logger()

    def __init__(self, clock, owner, *, route_mtu=pmtu.route_mtu, random_bytes=os.urandom, probe_timeout: float = pmtu.PROBE_TIMEOUT):
        self._clock = clock
        self._owner = check_provides(owner, IMtuOwner, "PeerMtu.owner")
        self._route_mtu = route_mtu
        self._random_bytes = random_bytes
        self._probe_timeout = probe_timeout
        self.machine: pmtu.PathMtu | None = None
        #: (kind, what identifies the route): a search or a fixed size belongs to one
        self._route = None
        self._family = 4
        #: bytes around each tunnel packet on the searched path (the 0xD0 frame on the relay)
        self._framing = 0
        #: the packet size when no search runs
        self._fixed_size = MAX_PACKET
        self.probes_answered = 0

    @property
    def pmtu(self) -> int | None:
        return self.machine.mtu if self.machine is not None else None

    @property
    def route_kind(self) -> str | None:
        """``"direct"``, ``"relay"``, ``"relay-tcp"``, or None (no path yet)."""
        return self._route[0] if self._route is not None else None

    def packet_size(self) -> int:
        """The stream packet size the path allows now."""
        if self.machine is None:
            return self._fixed_size
        return pmtu.plaintext_size(self.machine.mtu, self._family, self._framing)

    def path_changed(self, endpoint, via) -> None:
        """The path is direct to ``endpoint`` from socket ``via``, or (endpoint None) on the relay."""
        if endpoint is None:
            self._relay_path()
            return
        route = (DIRECT, endpoint, id(via))
        if route == self._route and self.machine is not None:
            return
        self.stop()
        self._route = route
        ceiling = self._route_mtu(endpoint.host, endpoint.port) or UNKNOWN_ROUTE_MTU

        def send_probe(size, nonce):
            self._owner.send_direct(self._probe(size, nonce), endpoint, via)

        self._search(pmtu.family_of(endpoint.host), 0, ceiling, send_probe)

    def _relay_route(self):
        """The route key of the relay as it carries our packets now."""
        owner = self._owner
        if owner.relay_kind() == RELAY:
            return (RELAY, owner.relay_beacon())
        return (RELAY_TCP, owner.peer_relays_by_tcp())

    def _relay_path(self) -> None:
        route = self._relay_route()
        if route == self._route:
            return
        self.stop()
        self._route = route
        kind, detail = route
        if kind == RELAY_TCP:
            # No IP path of ours to search: both legs TCP carry the beacon's
            # largest frame; a UDP leg from the beacon keeps the size that fits any path.
            self._fixed_size = TLS_RELAY_PACKET if detail else MAX_PACKET
            self._owner.set_packet_size(self._fixed_size)
            return
        if detail is None:
            # The relay does not name one beacon (several may carry our
            # frames): the usual ceiling, IPv4 headers, and the probes decide
            # (on a narrower or IPv6 route the larger sizes are lost, not fragmented).
            family, ceiling = 4, UNKNOWN_ROUTE_MTU
        else:
            family, ceiling = pmtu.family_of(detail.host), self._route_mtu(detail.host, detail.port) or UNKNOWN_ROUTE_MTU

        def send_probe(size, nonce):
            self._owner.send_relayed(self._probe(size, nonce))

        self._search(family, relay.TO_BEACON_OVERHEAD, ceiling, send_probe)

    def _probe(self, size: int, nonce: int) -> bytes:
        return smsg.encode(smsg.MtuProbe(nonce, pmtu.plaintext_size(size, self._family, self._framing)))

    def _search(self, family: int, framing: int, ceiling: int, send_probe) -> None:
        self._family, self._framing = family, framing
        self.machine = pmtu.PathMtu(self._clock, send_probe, self._changed, ceiling=ceiling,
                                    probe_timeout=self._probe_timeout, random_bytes=self._random_bytes)
        self._owner.set_packet_size(self.packet_size())
        self.machine.start()

    def _changed(self, mtu: int) -> None:
        self.log.debug("path MTU now {mtu} ({kind})", mtu=mtu, kind=self.route_kind)
        self._owner.set_packet_size(pmtu.plaintext_size(mtu, self._family, self._framing))

    def probe_received(self, msg: smsg.MtuProbe, source) -> None:
        """Answer a probe back the way it came: straight to its endpoint, or through the relay."""
        ack = smsg.encode(smsg.MtuAck(msg.nonce, min(msg.size, 0xFFFF)))
        if isinstance(source, Direct):
            self.probes_answered += 1
            self._owner.send_direct(ack, source.endpoint, via_of(source))
        elif isinstance(source, Relayed):
            self.probes_answered += 1
            self._owner.send_relayed(ack)

    def ack_received(self, msg: smsg.MtuAck, source) -> None:
        """An ack counts only if it came the way this search's probes go."""
        if self.machine is None:
            return
        expected = Direct if self._route[0] == DIRECT else Relayed
        if isinstance(source, expected):
            self.machine.acked(msg.nonce)

    def black_hole(self) -> None:
        """The streams layer saw full-size packets vanish while small ones arrive."""
        kind = self.route_kind
        if kind in (RELAY, RELAY_TCP) and self._relay_route() != self._route:
            # The relay carries our frames another way now (UDP <-> TLS): size for that way.
            self._relay_path()
        elif self.machine is not None:
            self.machine.black_hole()

    def stop(self) -> None:
        machine, self.machine, self._route = self.machine, None, None
        self._fixed_size = MAX_PACKET
        if machine is not None:
            machine.stop()

    def describe(self) -> dict:
        machine = self.machine
        if machine is None:
            return {"pmtu": None, "pmtu_path": self.route_kind}
        return {"pmtu": machine.mtu, "pmtu_path": self.route_kind, "pmtu_state": machine.state, "pmtu_ceiling": machine.ceiling}
