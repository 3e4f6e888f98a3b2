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
0x06   CallMeMaybe   ``flags u8`` (bit 0: this is the reply), ``nat_type text8``,
                     ``public`` endpoint list, ``lan`` endpoint list
=====  ============  ==============================================

Type 0x10 is a stream packet (:mod:`pilotproto.streams`); the sessions layer
hands it to the stream connection before this codec sees it.
"""

from __future__ import annotations

import attrs

from .codec import DecodeError, Reader, Writer

PING, PONG, PATH_PROBE, PATH_ACK, CLOSE, CALL_ME_MAYBE = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
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


@attrs.frozen
class CallMeMaybe:
    """My candidate endpoints: probe them now (and so will I)."""

    reply: bool
    nat_type: str
    public: tuple = ()
    lan: tuple = ()


def encode(msg) -> bytes:
    w = Writer()
    if isinstance(msg, (Ping, Pong)):
        w.u8(PING if isinstance(msg, Ping) else PONG).u64(msg.id).blob16(msg.payload)
    elif isinstance(msg, (PathProbe, PathAck)):
        w.u8(PATH_PROBE if isinstance(msg, PathProbe) else PATH_ACK).u64(msg.nonce)
    elif isinstance(msg, Close):
        w.u8(CLOSE).u8(msg.reason).text8(msg.message)
    elif isinstance(msg, CallMeMaybe):
        w.u8(CALL_ME_MAYBE).u8(1 if msg.reply else 0).text8(msg.nat_type).endpoints(msg.public).endpoints(msg.lan)
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
    elif kind == CALL_ME_MAYBE:
        flags = r.u8()
        if flags > 1:
            raise DecodeError("unknown CallMeMaybe flags")
        msg = CallMeMaybe(bool(flags), r.text8(), r.endpoints(), r.endpoints())
    else:
        raise DecodeError(f"unknown session message type {kind}")
    r.end()
    return msg
