"""
Pure codecs for every packet pilotproto sends.  No I/O lives here.

A node has one UDP socket for everything (so that the NAT mapping the beacon
sees is the one peers punch to), and so does the beacon.  The first byte of a
datagram says what it is, in ranges that do not overlap STUN (RFC 7983
reserves 0-3 for STUN):

=========  ====================================================
first byte meaning
=========  ====================================================
0x00-0x03  STUN (RFC 8489), see :mod:`pilotproto.wire.stun`
0xB0       beacon control message, see :mod:`pilotproto.wire.beacon`
0xC1-0xC4  tunnel packets (handshake, cookie, transport data)
0xD0       relay envelope (node -> beacon -> node)
=========  ====================================================

The second byte of every pilot packet is the protocol version (1).
"""

from .codec import DecodeError, Endpoint, Reader, Writer

PROTOCOL_VERSION = 1

KIND_BEACON = 0xB0
KIND_TUNNEL_INIT = 0xC1
KIND_TUNNEL_RESPONSE = 0xC2
KIND_TUNNEL_COOKIE = 0xC3
KIND_TUNNEL_DATA = 0xC4
KIND_RELAY = 0xD0


def is_stun(datagram: bytes) -> bool:
    """True when a datagram looks like STUN (RFC 7983 demultiplexing)."""
    return len(datagram) >= 20 and datagram[0] < 4 and datagram[4:8] == b"\x21\x12\xa4\x42"


__all__ = [
    "DecodeError",
    "Endpoint",
    "Reader",
    "Writer",
    "PROTOCOL_VERSION",
    "KIND_BEACON",
    "KIND_TUNNEL_INIT",
    "KIND_TUNNEL_RESPONSE",
    "KIND_TUNNEL_COOKIE",
    "KIND_TUNNEL_DATA",
    "KIND_RELAY",
    "is_stun",
]
