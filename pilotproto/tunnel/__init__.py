"""
End-to-end encrypted tunnels between nodes (layer 3 of the spec).

``Noise_IK_25519_AESGCM_SHA256`` with the Noise static keys derived from the
nodes' Ed25519 identities, WireGuard-style session indices, timers, replay
window and cookies.  Nothing here does I/O: the session layer hands
datagrams (with their typed source) to a :class:`TunnelEndpoint`, and is its
:class:`ITunnelOwner`: it moves the tunnels' packets and hears what they
carry.  See ``docs/tunnel.md``.
"""

from .endpoint import IndexTable, MonotonicTimestamps, TunnelEndpoint
from .errors import HandshakeError, KeyExpired, ReplayError, TunnelAuthError, TunnelClosed, TunnelError
from .events import ITunnelOwner
from .handshake import HandshakeTimers, PeerTunnel
from .ik import PROLOGUE, LocalKeys
from .record import Limits, Session, TransportKeys
from ..common.replay import ReplayWindow

__all__ = [
    "HandshakeError",
    "HandshakeTimers",
    "ITunnelOwner",
    "IndexTable",
    "KeyExpired",
    "Limits",
    "LocalKeys",
    "MonotonicTimestamps",
    "PROLOGUE",
    "PeerTunnel",
    "ReplayError",
    "ReplayWindow",
    "Session",
    "TransportKeys",
    "TunnelAuthError",
    "TunnelClosed",
    "TunnelEndpoint",
    "TunnelError",
]
