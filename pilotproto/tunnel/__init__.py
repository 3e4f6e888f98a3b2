"""
End-to-end encrypted tunnels between nodes (layer 3 of the spec).

``Noise_IK_25519_AESGCM_SHA256`` with the Noise static keys derived from the
nodes' Ed25519 identities, WireGuard-style session indices, timers, replay
window and cookies.  Nothing here does I/O: the node hands datagrams to a
:class:`TunnelEndpoint` and gives each peer a ``send`` callable.  See
``docs/tunnel.md``.
"""

from .endpoint import IndexTable, MonotonicTimestamps, TunnelEndpoint
from .errors import HandshakeError, KeyExpired, ReplayError, TunnelAuthError, TunnelClosed, TunnelError
from .handshake import HandshakeTimers, PeerTunnel
from .ik import PROLOGUE, LocalKeys
from .record import Limits, Session, TransportKeys
from ..common.replay import ReplayWindow

__all__ = [
    "HandshakeError",
    "HandshakeTimers",
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
