"""
The beacon message codec: the header, the signature, the type registry.

The message records live in :mod:`pilotproto.wire.beacon`, which registers
each with :func:`message` and re-exports everything here; use the codec
through that module (``from pilotproto.wire import beacon as msgs``), so
that every type is registered before :func:`decode` looks one up.

Encoding is pure; :func:`decode` raises only :class:`DecodeError`.
"""

from __future__ import annotations

import attrs

from .codec import DecodeError, Reader, Writer

KIND = 0xB0
VERSION = 1
HEADER_SIZE = 11
SIGNING_CONTEXT = b"pilotproto beacon request v1\x00"
NONCE_SIZE = 32
KEY_SIZE = 32
SIG_SIZE = 64

#: type code -> record class, filled by :func:`message`
TYPES: dict[int, type] = {}


def message(type_code: int, signed: bool = False):
    """Class decorator: register a message type and mark it signed or not."""

    def deco(cls):
        if type_code in TYPES:
            raise ValueError(f"beacon message type {type_code} is taken by {TYPES[type_code].__name__}")
        cls.TYPE = type_code
        cls.SIGNED = signed
        TYPES[type_code] = cls
        return cls

    return deco


def _encode_unsigned_part(msg) -> bytes:
    w = Writer().u8(KIND).u8(VERSION).u8(msg.TYPE).u64(msg.request_id)
    if msg.SIGNED:
        if len(msg.public_key) != KEY_SIZE:
            raise ValueError("public key must be 32 bytes")
        w.raw(msg.public_key).u64(msg.seq)
    msg.write_body(w)
    return w.bytes()


def signed_bytes(msg) -> bytes:
    """The exact bytes a signed request's signature covers."""
    return SIGNING_CONTEXT + _encode_unsigned_part(msg)


def sign(msg, identity, seq: int):
    """Return ``msg`` with ``identity``'s key, ``seq`` and signature filled in."""
    msg = attrs.evolve(msg, public_key=identity.public_key, seq=seq)
    return attrs.evolve(msg, signature=identity.sign(signed_bytes(msg)))


def encode(msg) -> bytes:
    data = _encode_unsigned_part(msg)
    if msg.SIGNED:
        if len(msg.signature) != SIG_SIZE:
            raise ValueError("signature must be 64 bytes")
        data += msg.signature
    return data


def decode(data: bytes):
    """Decode one beacon message; raise DecodeError for anything malformed."""
    r = Reader(data)
    if r.u8() != KIND:
        raise DecodeError("not a beacon message")
    version = r.u8()
    if version != VERSION:
        raise DecodeError(f"unsupported beacon protocol version {version}")
    type_code = r.u8()
    cls = TYPES.get(type_code)
    if cls is None:
        raise DecodeError(f"unknown beacon message type {type_code}")
    kw = {"request_id": r.u64()}
    if cls.SIGNED:
        kw["public_key"] = r.take(KEY_SIZE)
        kw["seq"] = r.u64()
        body = Reader(r.take(r.remaining() - SIG_SIZE) if r.remaining() >= SIG_SIZE else r.take(SIG_SIZE))
        kw["signature"] = r.take(SIG_SIZE)
        msg = cls.read_body(body, **kw)
        body.end()
    else:
        msg = cls.read_body(r, **kw)
    r.end()
    return msg
