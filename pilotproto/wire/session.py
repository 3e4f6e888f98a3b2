"""
Messages carried inside an encrypted tunnel (the plaintext of a data packet).

The first byte is the message type.  An empty plaintext is a keepalive and
never reaches this codec.

=====  ============  ==============================================
type   name          body
=====  ============  ==============================================
0x01   Ping          ``id u64``, ``payload blob16``
0x02   Pong          ``id u64``, ``payload blob16`` (echoed)
0x03   PathProbe     ``nonce u64`` (sent straight to a candidate endpoint)
0x04   PathAck       ``nonce u64`` (sent back to where the probe came from)
0x05   Close         ``reason u8`` (1 = trust revoked, 2 = shutting down), ``message text8``
=====  ============  ==============================================

Types from 0x10 up are reserved for the stream layer.
"""

from __future__ import annotations

import attrs

from .codec import DecodeError, Reader, Writer

PING, PONG, PATH_PROBE, PATH_ACK, CLOSE = 0x01, 0x02, 0x03, 0x04, 0x05
CLOSE_REVOKED = 1
CLOSE_SHUTDOWN = 2


@attrs.frozen
class Ping:
    id: int
    payload: bytes = b""


@attrs.frozen
class Pong:
    id: int
    payload: bytes = b""


@attrs.frozen
class PathProbe:
    nonce: int


@attrs.frozen
class PathAck:
    nonce: int


@attrs.frozen
class Close:
    reason: int
    message: str = ""


def encode(msg) -> bytes:
    w = Writer()
    if isinstance(msg, (Ping, Pong)):
        w.u8(PING if isinstance(msg, Ping) else PONG).u64(msg.id).blob16(msg.payload)
    elif isinstance(msg, (PathProbe, PathAck)):
        w.u8(PATH_PROBE if isinstance(msg, PathProbe) else PATH_ACK).u64(msg.nonce)
    elif isinstance(msg, Close):
        w.u8(CLOSE).u8(msg.reason).text8(msg.message)
    else:
        raise TypeError(f"not a session message: {msg!r}")
    return w.bytes()


def decode(data: bytes):
    r = Reader(data)
    kind = r.u8()
    if kind in (PING, PONG):
        msg = (Ping if kind == PING else Pong)(r.u64(), r.blob16())
    elif kind in (PATH_PROBE, PATH_ACK):
        msg = (PathProbe if kind == PATH_PROBE else PathAck)(r.u64())
    elif kind == CLOSE:
        msg = Close(r.u8(), r.text8())
    else:
        raise DecodeError(f"unknown session message type {kind}")
    r.end()
    return msg
