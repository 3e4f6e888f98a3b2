"""
Where one peer's packets go: through the beacon's relay, or straight to the
peer over a direct UDP path once one is proven to work both ways.

A session always starts on the relay, so the first byte never waits for a
direct path.  Meanwhile the node sends encrypted ``PathProbe`` messages
straight to the peer's candidate endpoints; a ``PathAck`` coming back
*directly* from an endpoint proves the path works both ways, and traffic
moves there.  Every authenticated packet that arrives directly keeps the
path fresh; if none has arrived for ``stale_after`` seconds, traffic falls
back to the relay while probing goes on.  A packet authenticated from a new
endpoint (the peer's NAT rebound, or it moved) is probed at once, so the
session follows the peer instead of dying.

Sources are passed around as opaque bytes (the tunnel layer binds cookies to
them): ``b"D" + endpoint`` for a direct packet, ``b"R" + address`` for one
that came through the relay.
"""

from __future__ import annotations

import attrs

from ..wire import Endpoint, Reader, Writer

RELAY = "relay"
DIRECT = "direct"


def direct_source(endpoint: Endpoint) -> bytes:
    return b"D" + Writer().endpoint(endpoint).bytes()


def relay_source(address: bytes) -> bytes:
    return b"R" + address


def source_endpoint(source: bytes) -> Endpoint | None:
    """The endpoint a direct source names; None for the relay."""
    if source[:1] != b"D":
        return None
    return Reader(source[1:]).endpoint()


@attrs.frozen
class PathTimers:
    probe_interval: float = 5.0
    #: probes to a direct path in use double as NAT keepalives (< 25 s)
    keepalive_interval: float = 10.0
    stale_after: float = 25.0


class PeerPath:
    """The path to one peer; ``send(packet)`` is what its tunnel calls."""

    def __init__(self, clock, address: bytes, send_datagram, send_relay, allow_direct=True, timers=PathTimers()):
        self._clock = clock
        self.address = address
        self._send_datagram = send_datagram
        self._send_relay = send_relay
        self.allow_direct = allow_direct
        self.timers = timers
        self.candidates: set[Endpoint] = set()
        self.direct: Endpoint | None = None
        self.direct_seen: float | None = None
        self.bytes_sent = 0
        self.bytes_received = 0
        self.switches = 0

    @property
    def kind(self) -> str:
        return DIRECT if self.using_direct() else RELAY

    def using_direct(self) -> bool:
        return (
            self.direct is not None
            and self.direct_seen is not None
            and self._clock.seconds() - self.direct_seen < self.timers.stale_after
        )

    def send(self, packet: bytes) -> None:
        self.bytes_sent += len(packet)
        if self.using_direct():
            self._send_datagram(packet, self.direct)
        else:
            self._send_relay(self.address, packet)

    def send_direct(self, packet: bytes, endpoint: Endpoint) -> None:
        """Send on one particular direct path (probes and their acks)."""
        if self.allow_direct:
            self.bytes_sent += len(packet)
            self._send_datagram(packet, endpoint)

    def add_candidates(self, endpoints) -> None:
        if self.allow_direct:
            self.candidates.update(endpoints)

    def probe_targets(self) -> list[Endpoint]:
        """Where to send probes now: the path in use, else every candidate."""
        if not self.allow_direct:
            return []
        if self.using_direct():
            return [self.direct]
        return sorted(self.candidates | ({self.direct} if self.direct else set()))

    def received(self, source: bytes, size: int) -> Endpoint | None:
        """An authenticated packet arrived; return a new endpoint worth probing."""
        self.bytes_received += size
        endpoint = source_endpoint(source)
        if endpoint is None or not self.allow_direct:
            return None
        if endpoint == self.direct:
            self.direct_seen = self._clock.seconds()
            return None
        if endpoint not in self.candidates:
            self.candidates.add(endpoint)
            return endpoint
        return None

    def acked(self, source: bytes) -> bool:
        """A PathAck arrived; True when it moved traffic to a (new) direct path."""
        endpoint = source_endpoint(source)
        if endpoint is None or not self.allow_direct:
            return False
        was_direct = self.using_direct()
        changed = endpoint != self.direct
        self.direct = endpoint
        self.direct_seen = self._clock.seconds()
        if changed or not was_direct:
            self.switches += 1
            return True
        return False
