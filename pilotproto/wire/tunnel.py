"""
Tunnel packets: handshake initiation, response, cookie reply, transport data.

Modelled on WireGuard's four messages.  Every packet starts with the kind
byte and the protocol version; all sizes are fixed except the data packet's
ciphertext, so a packet of the wrong length is refused before any crypto.

Initiation (0xC1), 246 bytes::

    kind u8 | version u8 | sender_index u32 | ephemeral 32
    | encrypted_static 48 | encrypted_payload 128 | mac1 16 | mac2 16

Response (0xC2), 94 bytes::

    kind u8 | version u8 | sender_index u32 | receiver_index u32
    | ephemeral 32 | encrypted_payload 20 | mac1 16 | mac2 16

Cookie reply (0xC3), 62 bytes::

    kind u8 | version u8 | receiver_index u32 | nonce 24 | encrypted_cookie 32

Transport data (0xC4), 14-byte header then at least a 16-byte tag::

    kind u8 | version u8 | receiver_index u32 | counter u64 | ciphertext

The data header is the AEAD's associated data and the counter is its nonce.
The 32-bit indices are random and chosen by the receiver of the packet, so a
node finds the session for a packet with one table lookup and no address
of either node appears in clear.
"""

from __future__ import annotations

import struct

import attrs

from . import (
    KIND_TUNNEL_COOKIE,
    KIND_TUNNEL_DATA,
    KIND_TUNNEL_INIT,
    KIND_TUNNEL_RESPONSE,
    PROTOCOL_VERSION,
)
from .codec import DecodeError, Reader, Writer

KEY_LEN = 32
TAG_LEN = 16
MAC_LEN = 16
COOKIE_NONCE_LEN = 24
ENCRYPTED_STATIC_LEN = KEY_LEN + TAG_LEN
# Initiator's payload: Ed25519 public key 32, signature 64, timestamp 12,
# session index 4; the responder's: its session index.
INIT_PAYLOAD_LEN = 32 + 64 + 12 + 4
RESPONSE_PAYLOAD_LEN = 4
ENCRYPTED_INIT_PAYLOAD_LEN = INIT_PAYLOAD_LEN + TAG_LEN
ENCRYPTED_RESPONSE_PAYLOAD_LEN = RESPONSE_PAYLOAD_LEN + TAG_LEN
ENCRYPTED_COOKIE_LEN = MAC_LEN + TAG_LEN
DATA_HEADER_LEN = 14

INIT_LEN = 2 + 4 + KEY_LEN + ENCRYPTED_STATIC_LEN + ENCRYPTED_INIT_PAYLOAD_LEN + 2 * MAC_LEN
RESPONSE_LEN = 2 + 4 + 4 + KEY_LEN + ENCRYPTED_RESPONSE_PAYLOAD_LEN + 2 * MAC_LEN
COOKIE_REPLY_LEN = 2 + 4 + COOKIE_NONCE_LEN + ENCRYPTED_COOKIE_LEN

ZERO_MAC = bytes(MAC_LEN)


def _u32(instance, attribute, value):
    if not (isinstance(value, int) and 0 <= value <= 0xFFFFFFFF):
        raise ValueError(f"{attribute.name} must be a 32-bit unsigned integer, not {value!r}")


def _u64(instance, attribute, value):
    if not (isinstance(value, int) and 0 <= value <= 0xFFFFFFFFFFFFFFFF):
        raise ValueError(f"{attribute.name} must be a 64-bit unsigned integer, not {value!r}")


def _length(n):
    def check(instance, attribute, value):
        if not isinstance(value, bytes) or len(value) != n:
            raise ValueError(f"{attribute.name} must be {n} bytes")

    return check


def _at_least(n):
    def check(instance, attribute, value):
        if not isinstance(value, bytes) or len(value) < n:
            raise ValueError(f"{attribute.name} must be at least {n} bytes")

    return check


def _header(r: Reader, kind: int) -> None:
    got_kind = r.u8()
    if got_kind != kind:
        raise DecodeError(f"not a tunnel packet of kind {kind:#x} (first byte {got_kind:#x})")
    version = r.u8()
    if version != PROTOCOL_VERSION:
        raise DecodeError(f"unsupported tunnel protocol version {version}")


def _exact(data: bytes, size: int, what: str) -> None:
    if len(data) != size:
        raise DecodeError(f"{what} must be {size} bytes, got {len(data)}")


@attrs.frozen
class TunnelInit:
    """Handshake initiation: Noise IK message 1 plus WireGuard-style MACs."""

    sender_index: int = attrs.field(validator=_u32)
    ephemeral: bytes = attrs.field(validator=_length(KEY_LEN))
    encrypted_static: bytes = attrs.field(validator=_length(ENCRYPTED_STATIC_LEN))
    encrypted_payload: bytes = attrs.field(validator=_length(ENCRYPTED_INIT_PAYLOAD_LEN))
    mac1: bytes = attrs.field(default=ZERO_MAC, validator=_length(MAC_LEN))
    mac2: bytes = attrs.field(default=ZERO_MAC, validator=_length(MAC_LEN))

    kind = KIND_TUNNEL_INIT

    @property
    def noise_message(self) -> bytes:
        return self.ephemeral + self.encrypted_static + self.encrypted_payload

    def encode(self) -> bytes:
        return (
            Writer()
            .u8(KIND_TUNNEL_INIT)
            .u8(PROTOCOL_VERSION)
            .u32(self.sender_index)
            .raw(self.ephemeral)
            .raw(self.encrypted_static)
            .raw(self.encrypted_payload)
            .raw(self.mac1)
            .raw(self.mac2)
            .bytes()
        )

    @classmethod
    def decode(cls, data: bytes) -> "TunnelInit":
        _exact(data, INIT_LEN, "a tunnel initiation")
        r = Reader(data)
        _header(r, KIND_TUNNEL_INIT)
        packet = cls(
            sender_index=r.u32(),
            ephemeral=r.take(KEY_LEN),
            encrypted_static=r.take(ENCRYPTED_STATIC_LEN),
            encrypted_payload=r.take(ENCRYPTED_INIT_PAYLOAD_LEN),
            mac1=r.take(MAC_LEN),
            mac2=r.take(MAC_LEN),
        )
        r.end()
        return packet


@attrs.frozen
class TunnelResponse:
    """Handshake response: Noise IK message 2 plus WireGuard-style MACs."""

    sender_index: int = attrs.field(validator=_u32)
    receiver_index: int = attrs.field(validator=_u32)
    ephemeral: bytes = attrs.field(validator=_length(KEY_LEN))
    encrypted_payload: bytes = attrs.field(validator=_length(ENCRYPTED_RESPONSE_PAYLOAD_LEN))
    mac1: bytes = attrs.field(default=ZERO_MAC, validator=_length(MAC_LEN))
    mac2: bytes = attrs.field(default=ZERO_MAC, validator=_length(MAC_LEN))

    kind = KIND_TUNNEL_RESPONSE

    @property
    def noise_message(self) -> bytes:
        return self.ephemeral + self.encrypted_payload

    def encode(self) -> bytes:
        return (
            Writer()
            .u8(KIND_TUNNEL_RESPONSE)
            .u8(PROTOCOL_VERSION)
            .u32(self.sender_index)
            .u32(self.receiver_index)
            .raw(self.ephemeral)
            .raw(self.encrypted_payload)
            .raw(self.mac1)
            .raw(self.mac2)
            .bytes()
        )

    @classmethod
    def decode(cls, data: bytes) -> "TunnelResponse":
        _exact(data, RESPONSE_LEN, "a tunnel response")
        r = Reader(data)
        _header(r, KIND_TUNNEL_RESPONSE)
        packet = cls(
            sender_index=r.u32(),
            receiver_index=r.u32(),
            ephemeral=r.take(KEY_LEN),
            encrypted_payload=r.take(ENCRYPTED_RESPONSE_PAYLOAD_LEN),
            mac1=r.take(MAC_LEN),
            mac2=r.take(MAC_LEN),
        )
        r.end()
        return packet


@attrs.frozen
class TunnelCookieReply:
    """Sent instead of a response when the responder is under load."""

    receiver_index: int = attrs.field(validator=_u32)
    nonce: bytes = attrs.field(validator=_length(COOKIE_NONCE_LEN))
    encrypted_cookie: bytes = attrs.field(validator=_length(ENCRYPTED_COOKIE_LEN))

    kind = KIND_TUNNEL_COOKIE

    def encode(self) -> bytes:
        return (
            Writer()
            .u8(KIND_TUNNEL_COOKIE)
            .u8(PROTOCOL_VERSION)
            .u32(self.receiver_index)
            .raw(self.nonce)
            .raw(self.encrypted_cookie)
            .bytes()
        )

    @classmethod
    def decode(cls, data: bytes) -> "TunnelCookieReply":
        _exact(data, COOKIE_REPLY_LEN, "a tunnel cookie reply")
        r = Reader(data)
        _header(r, KIND_TUNNEL_COOKIE)
        packet = cls(
            receiver_index=r.u32(),
            nonce=r.take(COOKIE_NONCE_LEN),
            encrypted_cookie=r.take(ENCRYPTED_COOKIE_LEN),
        )
        r.end()
        return packet


@attrs.frozen
class TunnelData:
    """Transport data sealed under a session key; an empty plaintext is a keepalive."""

    receiver_index: int = attrs.field(validator=_u32)
    counter: int = attrs.field(validator=_u64)
    ciphertext: bytes = attrs.field(validator=_at_least(TAG_LEN))

    kind = KIND_TUNNEL_DATA

    @staticmethod
    def header(receiver_index: int, counter: int) -> bytes:
        # One struct call: this runs for every packet sent and received.
        return _DATA_HEADER.pack(KIND_TUNNEL_DATA, PROTOCOL_VERSION, receiver_index, counter)

    def encode(self) -> bytes:
        return self.header(self.receiver_index, self.counter) + self.ciphertext

    @classmethod
    def decode(cls, data: bytes) -> "TunnelData":
        if len(data) < DATA_HEADER_LEN + TAG_LEN:
            raise DecodeError(f"a tunnel data packet needs at least {DATA_HEADER_LEN + TAG_LEN} bytes, got {len(data)}")
        kind, version, receiver_index, counter = _DATA_HEADER.unpack_from(data)
        if kind != KIND_TUNNEL_DATA:
            raise DecodeError(f"not a tunnel packet of kind {KIND_TUNNEL_DATA:#x} (first byte {kind:#x})")
        if version != PROTOCOL_VERSION:
            raise DecodeError(f"unsupported tunnel protocol version {version}")
        # The struct already bounds both integers and the length was checked:
        # skip the validators (a per-packet cost) and set the fields directly.
        packet = object.__new__(cls)
        _set(packet, "receiver_index", receiver_index)
        _set(packet, "counter", counter)
        _set(packet, "ciphertext", bytes(data[DATA_HEADER_LEN:]))
        return packet


#: kind, version, receiver index, counter: a data packet's header, the one struct the data path reads and writes
DATA_HEADER = _DATA_HEADER = struct.Struct("!BBIQ")
_set = object.__setattr__


_BY_KIND = {
    KIND_TUNNEL_INIT: TunnelInit,
    KIND_TUNNEL_RESPONSE: TunnelResponse,
    KIND_TUNNEL_COOKIE: TunnelCookieReply,
    KIND_TUNNEL_DATA: TunnelData,
}

TUNNEL_KINDS = frozenset(_BY_KIND)

TunnelPacket = TunnelInit | TunnelResponse | TunnelCookieReply | TunnelData


def decode_tunnel_packet(data: bytes) -> TunnelPacket:
    """Decode any tunnel packet by its first byte; raises only DecodeError."""
    if not data:
        raise DecodeError("empty tunnel packet")
    klass = _BY_KIND.get(data[0])
    if klass is None:
        raise DecodeError(f"not a tunnel packet (first byte {data[0]:#x})")
    return klass.decode(data)


def before_mac1(encoded: bytes) -> bytes:
    """The bytes of an encoded initiation or response that mac1 covers."""
    return encoded[: -2 * MAC_LEN]


def before_mac2(encoded: bytes) -> bytes:
    """The bytes of an encoded initiation or response that mac2 covers."""
    return encoded[:-MAC_LEN]
