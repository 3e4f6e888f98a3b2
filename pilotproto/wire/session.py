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
0x07   Birthday      ``flags u8`` (bit 0: this is the reply), ``attempt u32``,
                     ``sockets u16``, ``host text8``, ``observed`` u8 count
                     then that many ``u16`` ports
0x08   MtuProbe      ``nonce u64``, then zero padding to the probed size
0x09   MtuAck        ``nonce u64``, ``size u16`` (the probe's plaintext length)
=====  ============  ==============================================

``MtuProbe`` and ``MtuAck`` are path MTU discovery
(:mod:`pilotproto.session.pmtu`): the probe is padded so that its whole IP
packet is exactly the size being tried, is sent on the direct path only,
and the peer answers with a small ``MtuAck`` echoing the nonce and the
plaintext length it received (padding is never interpreted).

``Birthday`` coordinates a birthday punch (:mod:`pilotproto.session.birthday`):
the side behind a symmetric NAT has opened ``sockets`` sockets and primed
them towards the other side; the other side answers (reply) and probes
ports of ``host``, which must be the host of an endpoint the sender gave in
its ``CallMeMaybe`` (never any other address).  ``observed`` are the public
ports the sender's NAT gave its recent mappings, oldest first: a NAT that
allocates sequentially shows it there, and the prober tries the next ports
first.

Type 0x10 is a stream packet (:mod:`pilotproto.streams`); the sessions layer
hands it to the stream connection before this codec sees it.
"""

from __future__ import annotations

import attrs

from .codec import DecodeError, Reader, Writer

PING, PONG, PATH_PROBE, PATH_ACK, CLOSE, CALL_ME_MAYBE, BIRTHDAY = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
MTU_PROBE, MTU_ACK = 0x08, 0x09
#: an MtuProbe's type byte and nonce: its smallest plaintext (padding fills the rest)
MTU_PROBE_HEAD = 9
#: observed ports a Birthday message may carry
MAX_OBSERVED = 8
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


@attrs.frozen
class Birthday:
    """I opened ``sockets`` sockets towards you: probe ports of ``host`` (or: I am probing)."""

    reply: bool
    attempt: int
    sockets: int = 0
    host: str = ""
    observed: tuple = ()


@attrs.frozen
class MtuProbe:
    """Is a packet this big carried?  ``size`` is the whole plaintext length (padded with zeros)."""

    nonce: int
    size: int = MTU_PROBE_HEAD


@attrs.frozen
class MtuAck:
    """Your probe ``nonce`` arrived, with ``size`` bytes of plaintext."""

    nonce: int
    size: int


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
    elif isinstance(msg, Birthday):
        if len(msg.observed) > MAX_OBSERVED:
            raise ValueError(f"a Birthday message carries at most {MAX_OBSERVED} observed ports")
        w.u8(BIRTHDAY).u8(1 if msg.reply else 0).u32(msg.attempt).u16(msg.sockets).text8(msg.host).u8(len(msg.observed))
        for port in msg.observed:
            w.u16(port)
    elif isinstance(msg, MtuProbe):
        if not MTU_PROBE_HEAD <= msg.size <= 0xFFFF:
            raise ValueError(f"an MtuProbe is {MTU_PROBE_HEAD} to 65535 bytes, not {msg.size}")
        w.u8(MTU_PROBE).u64(msg.nonce)
        return w.bytes() + bytes(msg.size - MTU_PROBE_HEAD)
    elif isinstance(msg, MtuAck):
        w.u8(MTU_ACK).u64(msg.nonce).u16(msg.size)
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
    elif kind == BIRTHDAY:
        flags = r.u8()
        if flags > 1:
            raise DecodeError("unknown Birthday flags")
        attempt, sockets, host, count = r.u32(), r.u16(), r.text8(), r.u8()
        if count > MAX_OBSERVED:
            raise DecodeError("too many observed ports in a Birthday message")
        msg = Birthday(bool(flags), attempt, sockets, host, tuple(r.u16() for _ in range(count)))
    elif kind == MTU_PROBE:
        # Padding is whatever follows the nonce: never interpreted, only counted.
        return MtuProbe(r.u64(), len(data))
    elif kind == MTU_ACK:
        msg = MtuAck(r.u64(), r.u16())
    else:
        raise DecodeError(f"unknown session message type {kind}")
    r.end()
    return msg
