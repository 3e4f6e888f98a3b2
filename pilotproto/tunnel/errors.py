"""
Errors raised by the tunnel layer.

They sit under :class:`pilotproto.errors.PilotError` like every other error;
the node counts and drops packets that raise them, it never crashes on them.
"""

from __future__ import annotations

from ..errors import ProtocolError


class TunnelError(ProtocolError):
    """A tunnel packet could not be used."""

    code = "tunnel_error"


class TunnelAuthError(TunnelError):
    """A tunnel packet failed authentication (tampered, forged, or sealed under another key)."""

    code = "tunnel_auth"
    hint = "The packet was dropped; if this keeps happening something on the path is altering traffic."


class ReplayError(TunnelError):
    """A tunnel packet was a replay, or too old for the replay window."""

    code = "tunnel_replay"


class KeyExpired(TunnelError):
    """The session key is too old or has sealed too many packets; a new handshake is needed."""

    code = "tunnel_key_expired"
    hint = "The tunnel rekeys by itself; the packet is queued until the new session is up."


class HandshakeError(TunnelError):
    """A tunnel handshake message was invalid."""

    code = "tunnel_handshake"


class TunnelClosed(TunnelError):
    """The tunnel to this peer was closed."""

    code = "tunnel_closed"
