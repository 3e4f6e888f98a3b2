"""
Messages between a node and its beacon (first byte 0xB0).

Every message starts with the same 11-byte header::

    kind (0xB0) | version (1) | type (u8) | request_id (u64)

A reply echoes the request's ``request_id`` so that an off-path attacker
cannot inject answers without guessing 64 random bits.

Requests from a node that the beacon must attribute to a key (everything but
``Hello``) are *signed*: after the header come the node's Ed25519 public key
(32 bytes) and a sequence number (u64), then the message body, then a 64-byte
Ed25519 signature over ``SIGNING_CONTEXT`` followed by every byte before the
signature.  ``Register`` proves freshness with a nonce the beacon issued in
a ``Challenge``; every other signed request with a sequence number the
beacon has not seen from that key (see :mod:`pilotproto.beacon.registry`).

This module holds the records; the header, signing and the type registry
are in :mod:`pilotproto.wire.beacon_codec` and re-exported here.  Encoding
is pure; :func:`decode` raises only :class:`DecodeError`.
"""

from __future__ import annotations

import attrs

from .beacon_codec import (
    HEADER_SIZE,
    KEY_SIZE,
    KIND,
    NONCE_SIZE,
    SIG_SIZE,
    SIGNING_CONTEXT,
    TYPES,
    VERSION,
    decode,
    encode,
    sign,
    signed_bytes,
)
from .beacon_codec import message as _message
from .codec import DecodeError, Endpoint, Reader, Writer

#: A Hello is padded to at least this size so that the Challenge it earns is
#: smaller than it: the beacon never amplifies an unauthenticated request.
HELLO_MIN_SIZE = 128

FLAG_PUBLIC = 0x01


# --- unauthenticated ----------------------------------------------------


@_message(1)
@attrs.frozen
class Hello:
    """node -> beacon: "tell me who I am and give me a nonce to sign"."""

    request_id: int
    padding: int = HELLO_MIN_SIZE - HEADER_SIZE - 2

    def write_body(self, w: Writer) -> None:
        w.u16(self.padding).raw(b"\x00" * self.padding)

    @classmethod
    def read_body(cls, r: Reader, **kw):
        n = r.u16()
        pad = r.take(n)
        if pad.count(0) != n:
            raise DecodeError("hello padding must be zero")
        return cls(padding=n, **kw)


@_message(2)
@attrs.frozen
class Challenge:
    """beacon -> node: a nonce to sign, the beacon's relay key, the address it saw."""

    request_id: int
    nonce: bytes
    beacon_key: bytes
    observed: Endpoint

    def write_body(self, w: Writer) -> None:
        w.raw(self.nonce).raw(self.beacon_key).endpoint(self.observed)

    @classmethod
    def read_body(cls, r: Reader, **kw):
        return cls(nonce=r.take(NONCE_SIZE), beacon_key=r.take(KEY_SIZE), observed=r.endpoint(), **kw)


@_message(15)
@attrs.frozen
class Error:
    """beacon -> node: the request was refused; ``code`` is a PilotError code."""

    request_id: int
    code: str
    message: str

    def write_body(self, w: Writer) -> None:
        w.text8(self.code).text8(self.message)

    @classmethod
    def read_body(cls, r: Reader, **kw):
        return cls(code=r.text8(), message=r.text8(), **kw)


# --- signed requests ------------------------------------------------------


@_message(3, signed=True)
@attrs.frozen
class Register:
    """node -> beacon: claim ``hostname`` for my key at the source address."""

    request_id: int
    nonce: bytes
    hostname: str
    flags: int = 0
    lan_endpoints: tuple = ()
    public_key: bytes = b"\x00" * KEY_SIZE
    seq: int = 0
    signature: bytes = attrs.field(default=b"\x00" * SIG_SIZE, repr=False)

    def write_body(self, w: Writer) -> None:
        w.raw(self.nonce).text8(self.hostname).u8(self.flags).endpoints(self.lan_endpoints)

    @classmethod
    def read_body(cls, r: Reader, **kw):
        return cls(
            nonce=r.take(NONCE_SIZE),
            hostname=r.text8(),
            flags=r.u8(),
            lan_endpoints=r.endpoints(),
            **kw,
        )


@_message(5, signed=True)
@attrs.frozen
class Keepalive:
    """node -> beacon: I am still here (also refreshes the NAT mapping)."""

    request_id: int
    public_key: bytes = b"\x00" * KEY_SIZE
    seq: int = 0
    signature: bytes = attrs.field(default=b"\x00" * SIG_SIZE, repr=False)

    def write_body(self, w: Writer) -> None:
        """No body: the header (and signature) say it all."""

    @classmethod
    def read_body(cls, r: Reader, **kw):
        return cls(**kw)


@_message(7, signed=True)
@attrs.frozen
class Lookup:
    """node -> beacon: who is ``target`` (a hostname or an 8-byte address)?"""

    request_id: int
    by_address: bool
    target: bytes
    public_key: bytes = b"\x00" * KEY_SIZE
    seq: int = 0
    signature: bytes = attrs.field(default=b"\x00" * SIG_SIZE, repr=False)

    def write_body(self, w: Writer) -> None:
        w.u8(1 if self.by_address else 0).blob8(self.target)

    @classmethod
    def read_body(cls, r: Reader, **kw):
        by_address = r.u8()
        if by_address not in (0, 1):
            raise DecodeError("bad lookup kind")
        return cls(by_address=bool(by_address), target=r.blob8(), **kw)


@_message(9, signed=True)
@attrs.frozen
class Unregister:
    """node -> beacon: I am going away; forget my endpoint now."""

    request_id: int
    public_key: bytes = b"\x00" * KEY_SIZE
    seq: int = 0
    signature: bytes = attrs.field(default=b"\x00" * SIG_SIZE, repr=False)

    def write_body(self, w: Writer) -> None:
        """No body: the header (and signature) say it all."""

    @classmethod
    def read_body(cls, r: Reader, **kw):
        return cls(**kw)


# --- replies to signed requests -----------------------------------------


@_message(4)
@attrs.frozen
class Registered:
    """beacon -> node: you are registered; keep alive every N seconds."""

    request_id: int
    address: bytes
    observed: Endpoint
    keepalive_interval: int
    ttl: int

    def write_body(self, w: Writer) -> None:
        w.raw(self.address).endpoint(self.observed).u16(self.keepalive_interval).u16(self.ttl)

    @classmethod
    def read_body(cls, r: Reader, **kw):
        return cls(address=r.take(8), observed=r.endpoint(), keepalive_interval=r.u16(), ttl=r.u16(), **kw)


@_message(6)
@attrs.frozen
class KeepaliveAck:
    """beacon -> node: still registered, and this is the address I saw."""

    request_id: int
    observed: Endpoint

    def write_body(self, w: Writer) -> None:
        w.endpoint(self.observed)

    @classmethod
    def read_body(cls, r: Reader, **kw):
        return cls(observed=r.endpoint(), **kw)


@_message(8)
@attrs.frozen
class LookupResult:
    """beacon -> node: the node asked about, as registered."""

    request_id: int
    hostname: str
    address: bytes
    public_key: bytes
    flags: int
    endpoints: tuple

    def write_body(self, w: Writer) -> None:
        w.text8(self.hostname).raw(self.address).raw(self.public_key).u8(self.flags).endpoints(self.endpoints)

    @classmethod
    def read_body(cls, r: Reader, **kw):
        return cls(
            hostname=r.text8(),
            address=r.take(8),
            public_key=r.take(KEY_SIZE),
            flags=r.u8(),
            endpoints=r.endpoints(),
            **kw,
        )


@_message(10)
@attrs.frozen
class Ok:
    """beacon -> node: done."""

    request_id: int

    def write_body(self, w: Writer) -> None:
        """No body: the header (and signature) say it all."""

    @classmethod
    def read_body(cls, r: Reader, **kw):
        return cls(**kw)


# --- trust: requests carried by the beacon's mailbox (types 20-39) -------

#: A handshake reason is at most this many bytes of UTF-8.
MAX_REASON = 500
#: Keys per SetVisibility chunk, so that no chunk is larger than ~1100 bytes.
VISIBILITY_CHUNK_KEYS = 30
#: A Deliver carries another node's whole signed datagram (at most ~800 bytes).
MAX_DELIVERED = 1100


def _reason(r: Reader) -> str:
    raw = r.blob16()
    if len(raw) > MAX_REASON:
        raise DecodeError("handshake reason longer than 500 bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DecodeError(f"bad utf-8 text: {e}") from None


def _keys(r: Reader) -> tuple:
    count = r.u8()
    if count > VISIBILITY_CHUNK_KEYS:
        raise DecodeError("too many keys in one visibility chunk")
    return tuple(r.take(KEY_SIZE) for _ in range(count))


@_message(20, signed=True)
@attrs.frozen
class HandshakeRequest:
    """node -> beacon -> node: "please trust me", addressed by name or address.

    ``hostname`` is the requester's own registered name (the beacon checks
    it); ``handshake_id`` is echoed by the answer; ``expires_at`` (unix
    seconds, 0 = the beacon's default) bounds how long the beacon keeps it.
    """

    request_id: int
    handshake_id: int
    by_address: bool
    target: bytes
    hostname: str
    reason: str
    expires_at: int = 0
    public_key: bytes = b"\x00" * KEY_SIZE
    seq: int = 0
    signature: bytes = attrs.field(default=b"\x00" * SIG_SIZE, repr=False)

    def write_body(self, w: Writer) -> None:
        reason = self.reason.encode("utf-8")
        if len(reason) > MAX_REASON:
            raise ValueError("handshake reason longer than 500 bytes")
        w.u64(self.handshake_id).u8(1 if self.by_address else 0).blob8(self.target)
        w.text8(self.hostname).blob16(reason).u64(self.expires_at)

    @classmethod
    def read_body(cls, r: Reader, **kw):
        handshake_id = r.u64()
        by_address = r.u8()
        if by_address not in (0, 1):
            raise DecodeError("bad handshake target kind")
        return cls(
            handshake_id=handshake_id,
            by_address=bool(by_address),
            target=r.blob8(),
            hostname=r.text8(),
            reason=_reason(r),
            expires_at=r.u64(),
            **kw,
        )


@_message(21, signed=True)
@attrs.frozen
class HandshakeAnswer:
    """node -> beacon -> node: the answer to ``handshake_id`` from ``requester_key``."""

    request_id: int
    handshake_id: int
    requester_key: bytes
    approved: bool
    hostname: str
    public_key: bytes = b"\x00" * KEY_SIZE
    seq: int = 0
    signature: bytes = attrs.field(default=b"\x00" * SIG_SIZE, repr=False)

    def write_body(self, w: Writer) -> None:
        if len(self.requester_key) != KEY_SIZE:
            raise ValueError("requester key must be 32 bytes")
        w.u64(self.handshake_id).raw(self.requester_key).u8(1 if self.approved else 0).text8(self.hostname)

    @classmethod
    def read_body(cls, r: Reader, **kw):
        handshake_id = r.u64()
        requester_key = r.take(KEY_SIZE)
        approved = r.u8()
        if approved not in (0, 1):
            raise DecodeError("bad handshake answer")
        return cls(handshake_id=handshake_id, requester_key=requester_key, approved=bool(approved), hostname=r.text8(), **kw)


@_message(22, signed=True)
@attrs.frozen
class Revoke:
    """node -> beacon -> node: I no longer trust ``peer_key``."""

    request_id: int
    peer_key: bytes
    public_key: bytes = b"\x00" * KEY_SIZE
    seq: int = 0
    signature: bytes = attrs.field(default=b"\x00" * SIG_SIZE, repr=False)

    def write_body(self, w: Writer) -> None:
        if len(self.peer_key) != KEY_SIZE:
            raise ValueError("peer key must be 32 bytes")
        w.raw(self.peer_key)

    @classmethod
    def read_body(cls, r: Reader, **kw):
        return cls(peer_key=r.take(KEY_SIZE), **kw)


@_message(23, signed=True)
@attrs.frozen
class SetVisibility:
    """node -> beacon: chunk ``chunk`` of ``chunks`` of my visibility list ``version``."""

    request_id: int
    version: int
    chunk: int
    chunks: int
    keys: tuple = ()
    public_key: bytes = b"\x00" * KEY_SIZE
    seq: int = 0
    signature: bytes = attrs.field(default=b"\x00" * SIG_SIZE, repr=False)

    def write_body(self, w: Writer) -> None:
        if len(self.keys) > VISIBILITY_CHUNK_KEYS or any(len(k) != KEY_SIZE for k in self.keys):
            raise ValueError(f"a visibility chunk holds at most {VISIBILITY_CHUNK_KEYS} 32-byte keys")
        w.u64(self.version).u16(self.chunk).u16(self.chunks).u8(len(self.keys))
        for k in self.keys:
            w.raw(k)

    @classmethod
    def read_body(cls, r: Reader, **kw):
        version, chunk, chunks = r.u64(), r.u16(), r.u16()
        if chunks == 0 or chunk >= chunks:
            raise DecodeError("visibility chunk number out of range")
        return cls(version=version, chunk=chunk, chunks=chunks, keys=_keys(r), **kw)


@_message(24, signed=True)
@attrs.frozen
class MailAck:
    """node -> beacon: I have mail ``mail_id``; stop pushing it and forget it."""

    request_id: int
    mail_id: int
    public_key: bytes = b"\x00" * KEY_SIZE
    seq: int = 0
    signature: bytes = attrs.field(default=b"\x00" * SIG_SIZE, repr=False)

    def write_body(self, w: Writer) -> None:
        w.u64(self.mail_id)

    @classmethod
    def read_body(cls, r: Reader, **kw):
        return cls(mail_id=r.u64(), **kw)


@_message(30)
@attrs.frozen
class Deliver:
    """beacon -> node: mail ``mail_id``: another node's signed datagram, byte for byte.

    The receiver checks the inner signature itself, so the beacon can
    withhold mail but cannot forge it.
    """

    request_id: int
    mail_id: int
    datagram: bytes

    def write_body(self, w: Writer) -> None:
        if len(self.datagram) > MAX_DELIVERED:
            raise ValueError("delivered datagram too large")
        w.u64(self.mail_id).blob16(self.datagram)

    @classmethod
    def read_body(cls, r: Reader, **kw):
        mail_id = r.u64()
        datagram = r.blob16()
        if len(datagram) > MAX_DELIVERED:
            raise DecodeError("delivered datagram too large")
        return cls(mail_id=mail_id, datagram=datagram, **kw)


MESSAGE_TYPES = tuple(TYPES.values())

__all__ = [
    "DecodeError", "Endpoint", "HEADER_SIZE", "KEY_SIZE", "KIND", "NONCE_SIZE", "SIG_SIZE",
    "SIGNING_CONTEXT", "VERSION", "HELLO_MIN_SIZE", "FLAG_PUBLIC", "MAX_REASON",
    "VISIBILITY_CHUNK_KEYS", "MAX_DELIVERED", "MESSAGE_TYPES",
    "decode", "encode", "sign", "signed_bytes",
] + [cls.__name__ for cls in MESSAGE_TYPES]
