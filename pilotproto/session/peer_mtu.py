"""
Path MTU discovery for one peer: the :class:`~pilotproto.session.pmtu.PathMtu`
search wired to the peer's direct path and its stream connection.

* The search runs only while the path is direct (``path_changed``): a new
  route (endpoint or local socket) starts a fresh search, the relay stops it.
  The relay keeps today's packet size (:data:`~pilotproto.streams.MAX_PACKET`,
  1150 bytes): relayed packets gain the beacon's framing on the way.
* The ceiling is the MTU of the local route towards the peer (the kernel's
  ``IP_MTU`` on a connected socket, capped at 9216): one probe of it settles
  the usual path.
* Probes are ``MtuProbe`` session messages padded so that the whole IP
  packet (IP and UDP headers, tunnel header and tag, plaintext) is exactly the
  size tried, sent to the direct route only (never to an address the peer did
  not prove through the session).  The peer echoes the nonce in a small
  ``MtuAck`` sent straight back where the probe came from.
* Every confirmed size becomes the stream connection's packet size at once
  (``set_packet_size``: the plaintext a stream packet may fill).  The streams
  layer reports black holes (full-size packets lost while small ones get
  through, :mod:`pilotproto.streams.blackhole`): the size drops to the base
  (1280) and the search starts over.
"""

from __future__ import annotations

import os

from twisted.logger import Logger
from zope.interface import Interface

from ..common.wiring import check_provides
from ..streams import MAX_PACKET
from ..wire import session as smsg
from ..wire.sources import Direct
from . import pmtu
from .birthday_schedule import via_of

#: the ceiling when the kernel cannot name the route's MTU (the probes still decide)
UNKNOWN_ROUTE_MTU = 1500


class IMtuOwner(Interface):
    """What one peer's MTU search needs from the peer's record."""

    def send_direct(plaintext, endpoint, via):
        """Seal ``plaintext`` and send it straight to ``endpoint`` from socket ``via`` (None: the node's own)."""

    def set_packet_size(size):
        """Stream packets (the tunnel plaintext) are at most ``size`` bytes from now on."""


class PeerMtu:
    """The MTU search of one peer's direct path; ``pmtu`` is the confirmed IP MTU (None on the relay)."""

    log = Logger()

    def __init__(self, clock, owner, *, route_mtu=pmtu.route_mtu, random_bytes=os.urandom, probe_timeout: float = pmtu.PROBE_TIMEOUT):
        self._clock = clock
        self._owner = check_provides(owner, IMtuOwner, "PeerMtu.owner")
        self._route_mtu = route_mtu
        self._random_bytes = random_bytes
        self._probe_timeout = probe_timeout
        self.machine: pmtu.PathMtu | None = None
        self._route = None
        self._family = 4
        self.probes_answered = 0

    @property
    def pmtu(self) -> int | None:
        return self.machine.mtu if self.machine is not None else None

    def packet_size(self) -> int:
        """The stream packet size the path allows now."""
        if self.machine is None:
            return MAX_PACKET
        return pmtu.plaintext_size(self.machine.mtu, self._family)

    def path_changed(self, endpoint, via) -> None:
        """The path is direct to ``endpoint`` from socket ``via``, or (endpoint None) on the relay."""
        route = None if endpoint is None else (endpoint, id(via))
        if route == self._route and self.machine is not None:
            return
        self.stop()
        if endpoint is None:
            self._owner.set_packet_size(MAX_PACKET)
            return
        self._route = route
        self._family = pmtu.family_of(endpoint.host)
        ceiling = self._route_mtu(endpoint.host, endpoint.port) or UNKNOWN_ROUTE_MTU

        def send_probe(size, nonce):
            plaintext = smsg.encode(smsg.MtuProbe(nonce, pmtu.plaintext_size(size, self._family)))
            self._owner.send_direct(plaintext, endpoint, via)

        self.machine = pmtu.PathMtu(self._clock, send_probe, self._changed, ceiling=ceiling,
                                    probe_timeout=self._probe_timeout, random_bytes=self._random_bytes)
        self._owner.set_packet_size(self.packet_size())
        self.machine.start()

    def _changed(self, mtu: int) -> None:
        self.log.debug("path MTU now {mtu}", mtu=mtu)
        self._owner.set_packet_size(pmtu.plaintext_size(mtu, self._family))

    def probe_received(self, msg: smsg.MtuProbe, source) -> None:
        """Answer a probe that came directly, straight back to where it came from."""
        if isinstance(source, Direct):
            self.probes_answered += 1
            ack = smsg.encode(smsg.MtuAck(msg.nonce, min(msg.size, 0xFFFF)))
            self._owner.send_direct(ack, source.endpoint, via_of(source))

    def ack_received(self, msg: smsg.MtuAck, source) -> None:
        if self.machine is not None and isinstance(source, Direct):
            self.machine.acked(msg.nonce)

    def black_hole(self) -> None:
        """The streams layer saw full-size packets vanish while small ones arrive."""
        if self.machine is not None:
            self.machine.black_hole()

    def stop(self) -> None:
        machine, self.machine, self._route = self.machine, None, None
        if machine is not None:
            machine.stop()

    def describe(self) -> dict:
        machine = self.machine
        if machine is None:
            return {"pmtu": None}
        return {"pmtu": machine.mtu, "pmtu_state": machine.state, "pmtu_ceiling": machine.ceiling}
