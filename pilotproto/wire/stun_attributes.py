"""
STUN attributes (RFC 8489 §14, RFC 5780 §7, RFC 3489 §11.2): each class
knows its TYPE and turns its value to and from bytes.

Part of :mod:`pilotproto.wire.stun`, which re-exports every name here;
use them from there.  The transaction id is passed to both directions
because the XOR address attributes mix it into IPv6 addresses.  Decoders
raise :class:`~pilotproto.wire.codec.DecodeError` or ``ValueError``;
:func:`pilotproto.wire.stun.decode` turns either into ``StunDecodeError``.
"""

from __future__ import annotations

import ipaddress
from typing import ClassVar

import attrs

from ..errors import InvalidArgument
from .codec import DecodeError, Endpoint, Reader, Writer

MAGIC_COOKIE = 0x2112A442
COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")

# RFC 8489 §14: text attributes hold under 128 characters and 763 bytes.
_MAX_TEXT_CHARS = 127
_MAX_TEXT_BYTES = 763


def _within(low: int, high: int):
    return attrs.validators.and_(attrs.validators.ge(low), attrs.validators.le(high))


def _check_text(instance, attribute, value: str) -> None:
    if len(value) > _MAX_TEXT_CHARS or len(value.encode("utf-8")) > _MAX_TEXT_BYTES:
        raise InvalidArgument(f"{attribute.name} too long for STUN: {len(value)} characters")


def _pack_address(ep: Endpoint, mask: bytes) -> bytes:
    ip = ipaddress.ip_address(ep.host)
    packed = bytes(a ^ b for a, b in zip(ip.packed, mask))
    port = ep.port ^ int.from_bytes(mask[:2], "big")
    family = 0x01 if ip.version == 4 else 0x02
    return Writer().u8(0).u8(family).u16(port).raw(packed).bytes()


def _unpack_address(value: bytes, mask: bytes) -> Endpoint:
    r = Reader(value)
    r.u8()  # reserved; senders should zero it, receivers ignore it
    family, port = r.u8(), r.u16()
    size = {0x01: 4, 0x02: 16}.get(family)
    if size is None:
        raise DecodeError(f"unknown address family {family:#04x}")
    raw = bytes(a ^ b for a, b in zip(r.take(size), mask))
    r.end()
    return Endpoint(str(ipaddress.ip_address(raw)), port ^ int.from_bytes(mask[:2], "big"))


def _xor_mask(transaction_id: bytes) -> bytes:
    # IPv4 uses the first four bytes, IPv6 all sixteen (RFC 8489 §14.2).
    return COOKIE_BYTES + transaction_id


_PLAIN_MASK = bytes(16)


@attrs.frozen
class MappedAddress:
    TYPE: ClassVar[int] = 0x0001
    endpoint: Endpoint

    def encode_value(self, transaction_id: bytes) -> bytes:
        return _pack_address(self.endpoint, _PLAIN_MASK)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes):
        return cls(_unpack_address(value, _PLAIN_MASK))


@attrs.frozen
class XorMappedAddress(MappedAddress):
    TYPE: ClassVar[int] = 0x0020

    def encode_value(self, transaction_id: bytes) -> bytes:
        return _pack_address(self.endpoint, _xor_mask(transaction_id))

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes):
        return cls(_unpack_address(value, _xor_mask(transaction_id)))


@attrs.frozen
class ResponseOrigin(MappedAddress):
    """RFC 5780 §7.3: the address and port the response was sent from."""

    TYPE: ClassVar[int] = 0x802B


@attrs.frozen
class OtherAddress(MappedAddress):
    """RFC 5780 §7.4: the server's alternate address and port."""

    TYPE: ClassVar[int] = 0x802C


@attrs.frozen
class SourceAddress(MappedAddress):
    """RFC 3489 §11.2.5: where the response was sent from (RESPONSE-ORIGIN's ancestor)."""

    TYPE: ClassVar[int] = 0x0004


@attrs.frozen
class ChangedAddress(MappedAddress):
    """RFC 3489 §11.2.3: the server's other address and port (OTHER-ADDRESS's ancestor)."""

    TYPE: ClassVar[int] = 0x0005


@attrs.frozen
class ChangeRequest:
    """RFC 5780 §7.2: ask the server to answer from its other IP and/or port."""

    TYPE: ClassVar[int] = 0x0003
    change_ip: bool = False
    change_port: bool = False

    def encode_value(self, transaction_id: bytes) -> bytes:
        return Writer().u32((0x04 if self.change_ip else 0) | (0x02 if self.change_port else 0)).bytes()

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes):
        r = Reader(value)
        flags = r.u32()
        r.end()
        return cls(bool(flags & 0x04), bool(flags & 0x02))


@attrs.frozen
class ResponsePort:
    """RFC 5780 §7.5: the port the server should send the response to."""

    TYPE: ClassVar[int] = 0x0027
    port: int = attrs.field(validator=_within(0, 0xFFFF))

    def encode_value(self, transaction_id: bytes) -> bytes:
        return Writer().u16(self.port).u16(0).bytes()

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes):
        r = Reader(value)
        port = r.u16()
        r.u16()
        r.end()
        return cls(port)


@attrs.frozen
class Padding:
    """RFC 5780 §7.6: filler that makes the response larger; contents are ignored."""

    TYPE: ClassVar[int] = 0x0026
    length: int = attrs.field(validator=_within(0, 0xFFFF))

    def encode_value(self, transaction_id: bytes) -> bytes:
        return bytes(self.length)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes):
        return cls(len(value))


@attrs.frozen
class Software:
    TYPE: ClassVar[int] = 0x8022
    text: str = attrs.field(validator=_check_text)

    def encode_value(self, transaction_id: bytes) -> bytes:
        return self.text.encode("utf-8")

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes):
        return cls(value.decode("utf-8"))


@attrs.frozen
class ErrorCode:
    TYPE: ClassVar[int] = 0x0009
    code: int = attrs.field(validator=_within(300, 699))
    reason: str = attrs.field(default="", validator=_check_text)

    def encode_value(self, transaction_id: bytes) -> bytes:
        hundreds, rest = divmod(self.code, 100)
        return Writer().u16(0).u8(hundreds).u8(rest).raw(self.reason.encode("utf-8")).bytes()

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes):
        r = Reader(value)
        r.u16()
        hundreds, rest = r.u8() & 0x07, r.u8()
        if rest > 99:
            raise DecodeError(f"ERROR-CODE number {rest} is over 99")
        return cls(hundreds * 100 + rest, r.rest().decode("utf-8"))


@attrs.frozen
class UnknownAttributes:
    """The comprehension-required attribute types a 420 answer refuses."""

    TYPE: ClassVar[int] = 0x000A
    types: tuple[int, ...] = attrs.field(converter=tuple)

    @types.validator
    def _check(self, attribute, value):
        if any(not 0 <= t <= 0xFFFF for t in value):
            raise InvalidArgument("attribute types are 16-bit numbers")

    def encode_value(self, transaction_id: bytes) -> bytes:
        w = Writer()
        for t in self.types:
            w.u16(t)
        return w.bytes()

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes):
        if len(value) % 2:
            raise DecodeError("UNKNOWN-ATTRIBUTES has an odd length")
        r = Reader(value)
        return cls(tuple(r.u16() for _ in range(len(value) // 2)))


@attrs.frozen
class RawAttribute:
    """An attribute this module does not model, kept byte for byte."""

    type: int = attrs.field()
    value: bytes = attrs.field(converter=bytes)

    @type.validator
    def _check(self, attribute, value):
        # A modelled type here would decode as its own class, and FINGERPRINT
        # is the Message.fingerprint flag: either way it would not round-trip.
        if not 0 <= value <= 0xFFFF or value in ATTRIBUTE_CLASSES or value == FINGERPRINT:
            raise InvalidArgument(f"{value:#06x} cannot be a raw STUN attribute")

    @property
    def TYPE(self) -> int:
        return self.type

    def encode_value(self, transaction_id: bytes) -> bytes:
        return self.value


ATTRIBUTE_CLASSES = {
    klass.TYPE: klass
    for klass in (
        MappedAddress,
        XorMappedAddress,
        ResponseOrigin,
        OtherAddress,
        SourceAddress,
        ChangedAddress,
        ChangeRequest,
        ResponsePort,
        Padding,
        Software,
        ErrorCode,
        UnknownAttributes,
    )
}
FINGERPRINT = 0x8028
MESSAGE_INTEGRITY = 0x0008
MESSAGE_INTEGRITY_SHA256 = 0x001C
USERNAME = 0x0006

#: RFC 3489's RESPONSE-ADDRESS: "send the answer to this address", which
#: RFC 5780 replaced by RESPONSE-PORT; kept raw, and refused by the beacon
RESPONSE_ADDRESS = 0x0002


def attribute_size(attribute) -> int:
    """The bytes an attribute takes in a message: type, length, value and padding."""
    value = attribute.encode_value(bytes(12))
    return 4 + len(value) + (-len(value) % 4)
