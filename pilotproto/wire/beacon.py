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
#: A node may advertise at most this many LAN endpoints: a lookup's answer
#: stays small (and encodable) whatever a node registered.
MAX_LAN_ENDPOINTS = 8
#: Bytes of an unpredictable path challenge (RFC 9000 §8.2 uses 8; 16 is cheap).
PATH_TOKEN_SIZE = 16


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
    """beacon -> node: the request was refused; ``code`` is a PilotError code.

    ``retry_after`` (seconds, 0 = not said) tells a ``rate_limited`` node
    when to try again.  Text longer than a ``text8`` is cut (at a character
    boundary), so no error the beacon makes fails to encode.
    """

    request_id: int
    code: str
    message: str
    retry_after: int = 0

    def write_body(self, w: Writer) -> None:
        w.raw(_text8_clipped(self.code)).raw(_text8_clipped(self.message)).u32(min(max(int(self.retry_after), 0), 0xFFFFFFFF))

    @classmethod
    def read_body(cls, r: Reader, **kw):
        code, message = r.text8(), r.text8()
        # Tolerated absent: an Error from before retry_after existed.
        retry_after = r.u32() if r.remaining() else 0
        return cls(code=code, message=message, retry_after=retry_after, **kw)


def _text8_clipped(text: str) -> bytes:
    raw = text.encode("utf-8")[:255]
    return Writer().text8(raw.decode("utf-8", "ignore")).bytes()


@_message(12)
@attrs.frozen
class PathChallenge:
    """beacon -> node: echo ``token`` (in a signed PathResponse) from the
    address this came to, and the beacon will send there (RFC 9000 §8.2)."""

    request_id: int
    token: bytes

    def write_body(self, w: Writer) -> None:
        if len(self.token) != PATH_TOKEN_SIZE:
            raise ValueError(f"a path token is {PATH_TOKEN_SIZE} bytes")
        w.raw(self.token)

    @classmethod
    def read_body(cls, r: Reader, **kw):
        return cls(token=r.take(PATH_TOKEN_SIZE), **kw)


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


@_message(11, signed=True)
@attrs.frozen
class ReleaseName:
    """node -> beacon: free ``hostname``, which my key holds, now (not after the hold time).

    Carries a nonce from a Challenge, as Register does, so that a recorded
    release cannot be replayed after the owner registers the name again.
    """

    request_id: int
    nonce: bytes
    hostname: str
    public_key: bytes = b"\x00" * KEY_SIZE
    seq: int = 0
    signature: bytes = attrs.field(default=b"\x00" * SIG_SIZE, repr=False)

    def write_body(self, w: Writer) -> None:
        w.raw(self.nonce).text8(self.hostname)

    @classmethod
    def read_body(cls, r: Reader, **kw):
        return cls(nonce=r.take(NONCE_SIZE), hostname=r.text8(), **kw)


@_message(13, signed=True)
@attrs.frozen
class PathResponse:
    """node -> beacon: the ``token`` of a PathChallenge, sent from where it arrived."""

    request_id: int
    token: bytes
    public_key: bytes = b"\x00" * KEY_SIZE
    seq: int = 0
    signature: bytes = attrs.field(default=b"\x00" * SIG_SIZE, repr=False)

    def write_body(self, w: Writer) -> None:
        if len(self.token) != PATH_TOKEN_SIZE:
            raise ValueError(f"a path token is {PATH_TOKEN_SIZE} bytes")
        w.raw(self.token)

    @classmethod
    def read_body(cls, r: Reader, **kw):
        return cls(token=r.take(PATH_TOKEN_SIZE), **kw)


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

from .beacon_trust import (  # noqa: E402  (registers types 20-39)
    MAX_DELIVERED,
    MAX_REASON,
    VISIBILITY_CHUNK_KEYS,
    Deliver,
    HandshakeAnswer,
    HandshakeRequest,
    MailAck,
    Revoke,
    SetVisibility,
)
from .beacon_cards import (  # noqa: E402  (registers types 40-49: agent cards)
    CardEntry,
    DeleteCard,
    FindCards,
    FindResult,
    SetCard,
)
from .beacon_sealed import MAX_SEALED, MAX_SEALED_BODY, SealedMail, SealedPart  # noqa: E402  (types 60, 61: store-and-forward)

MESSAGE_TYPES = tuple(TYPES.values())

__all__ = [
    "DecodeError", "Endpoint", "HEADER_SIZE", "KEY_SIZE", "KIND", "NONCE_SIZE", "SIG_SIZE",
    "SIGNING_CONTEXT", "VERSION", "HELLO_MIN_SIZE", "FLAG_PUBLIC", "MAX_REASON", "MAX_LAN_ENDPOINTS", "PATH_TOKEN_SIZE",
    "VISIBILITY_CHUNK_KEYS", "MAX_DELIVERED", "MAX_SEALED", "MAX_SEALED_BODY", "MESSAGE_TYPES",
    "decode", "encode", "sign", "signed_bytes",
] + [cls.__name__ for cls in MESSAGE_TYPES]
