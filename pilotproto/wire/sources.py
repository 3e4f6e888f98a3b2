"""
Where a datagram came from, as a typed value passed down the data path.

A tunnel packet reaches a node either straight from a peer's UDP endpoint
(:class:`Direct`) or through the beacon's relay, which names the sending
node's address (:class:`Relayed`).  A beacon message or relay frame may also
arrive over the TLS link to the beacon (:class:`BeaconStream`).  The session
layer learns paths from sources (a packet authenticated from a new direct
endpoint means the peer roamed), and the tunnel's cookie gate binds cookies
to :meth:`key`, the source's stable byte form.
"""

from __future__ import annotations

import attrs

from .codec import Endpoint, Writer


@attrs.frozen
class Direct:
    """Straight from ``endpoint`` over UDP."""

    endpoint: Endpoint

    def key(self) -> bytes:
        return b"D" + Writer().endpoint(self.endpoint).bytes()

    def __str__(self) -> str:
        return str(self.endpoint)


@attrs.frozen
class Relayed:
    """Through the beacon's relay, from the node whose 6-byte address is ``sender``."""

    sender: bytes

    def key(self) -> bytes:
        return b"R" + self.sender

    def __str__(self) -> str:
        return "relay"


@attrs.frozen
class BeaconStream:
    """Over the TCP/TLS link to the beacon (used when UDP is blocked)."""

    def key(self) -> bytes:
        return b"T"

    def __str__(self) -> str:
        return "beacon-tls"


Source = Direct | Relayed | BeaconStream


class DirectSources:
    """Socket addresses to :class:`Direct` sources, made once per address.

    The UDP socket reads packets from a handful of peers: parsing and
    validating each packet's address (``ipaddress``, attrs validators) would
    cost more than the read.  A packet from an address seen before gets the
    same ``Direct`` object back.  At most ``size`` addresses are kept; when
    full the cache starts over (a flood of spoofed sources cannot grow it).
    """

    def __init__(self, size: int = 4096):
        self._size = size
        self._known: dict = {}

    def get(self, addr: tuple) -> Direct:
        """The source for ``addr`` (``(host, port)``, or IPv6's four-tuple); ValueError if malformed."""
        source = self._known.get(addr)
        if source is None:
            source = Direct(Endpoint(addr[0], addr[1]))
            if len(self._known) >= self._size:
                self._known.clear()
            self._known[addr] = source
        return source
