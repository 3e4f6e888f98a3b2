"""
STUN (RFC 8489) messages with the RFC 5780 behaviour-discovery attributes.

The beacon answers Binding requests on its UDP ports so that any standard
STUN client learns its reflexive address; our node also sends CHANGE-REQUEST
and reads OTHER-ADDRESS / RESPONSE-ORIGIN to classify its NAT (see
``docs/stun.md``).  Only messages carrying the magic cookie are understood:
RFC 3489 clients are not served, but RFC 5389 clients that only read
MAPPED-ADDRESS are, because responses carry both address attributes.

Nothing here does I/O.  :func:`decode` raises only :class:`StunDecodeError`.
Attributes this module does not model (USERNAME, MESSAGE-INTEGRITY, ICE's
PRIORITY, ...) are kept as :class:`RawAttribute` so nothing is lost; the
beacon offers no STUN credentials, so MESSAGE-INTEGRITY is carried, never
checked.
"""

from __future__ import annotations

import enum
import ipaddress
import zlib
from typing import ClassVar, NamedTuple, Sequence

import attrs

from ..errors import InvalidArgument, ProtocolError
from . import is_stun
from .codec import DecodeError, Endpoint, Reader, Writer

MAGIC_COOKIE = 0x2112A442
_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
_FINGERPRINT_XOR = 0x5354554E
HEADER_LENGTH = 20
BINDING = 0x001

# RFC 8489 §14: text attributes hold under 128 characters and 763 bytes.
_MAX_TEXT_CHARS = 127
_MAX_TEXT_BYTES = 763


class StunDecodeError(DecodeError):
    """A datagram is not a well-formed STUN message."""


class StunErrorResponse(ProtocolError):
    """The STUN server answered the Binding request with an error."""

    code = "stun_error"

    def __init__(self, transaction_id: bytes, error_code: int, reason: str):
        super().__init__(
            f"STUN server answered {error_code} {reason!r}",
            hint="420 means the server does not do RFC 5780 CHANGE-REQUEST; "
            "treat the NAT behaviour as unknown.",
        )
        self.transaction_id = transaction_id
        self.error_code = error_code
        self.reason = reason


class StunClass(enum.IntEnum):
    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


def _within(low: int, high: int):
    return attrs.validators.and_(attrs.validators.ge(low), attrs.validators.le(high))


def _check_text(instance, attribute, value: str) -> None:
    if len(value) > _MAX_TEXT_CHARS or len(value.encode("utf-8")) > _MAX_TEXT_BYTES:
        raise InvalidArgument(f"{attribute.name} too long for STUN: {len(value)} characters")


# --- attributes -----------------------------------------------------------
#
# Each attribute class knows its TYPE and turns its value to and from bytes.
# The transaction id is passed to both because the XOR address attributes
# mix it into IPv6 addresses.


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
        raise StunDecodeError(f"unknown address family {family:#04x}")
    raw = bytes(a ^ b for a, b in zip(r.take(size), mask))
    r.end()
    return Endpoint(str(ipaddress.ip_address(raw)), port ^ int.from_bytes(mask[:2], "big"))


def _xor_mask(transaction_id: bytes) -> bytes:
    # IPv4 uses the first four bytes, IPv6 all sixteen (RFC 8489 §14.2).
    return _COOKIE_BYTES + transaction_id


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
            raise StunDecodeError(f"ERROR-CODE number {rest} is over 99")
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
            raise StunDecodeError("UNKNOWN-ATTRIBUTES has an odd length")
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
        if not 0 <= value <= 0xFFFF or value in _ATTRIBUTE_CLASSES or value == FINGERPRINT:
            raise InvalidArgument(f"{value:#06x} cannot be a raw STUN attribute")

    @property
    def TYPE(self) -> int:
        return self.type

    def encode_value(self, transaction_id: bytes) -> bytes:
        return self.value


_ATTRIBUTE_CLASSES = {
    klass.TYPE: klass
    for klass in (
        MappedAddress,
        XorMappedAddress,
        ResponseOrigin,
        OtherAddress,
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

# Comprehension-required types a request may carry without a 420: the ones we
# model, plus the authentication attributes, which a server without
# credentials (like the beacon) accepts and does not check, as public STUN
# servers do.
UNDERSTOOD_TYPES = frozenset(_ATTRIBUTE_CLASSES) | {MESSAGE_INTEGRITY, MESSAGE_INTEGRITY_SHA256, USERNAME}


# --- messages ---------------------------------------------------------------


def _check_transaction_id(instance, attribute, value: bytes) -> None:
    if len(value) != 12:
        raise InvalidArgument(f"a STUN transaction id is 12 bytes, not {len(value)}")


@attrs.frozen
class Message:
    """One STUN message; ``fingerprint`` says whether FINGERPRINT ends it."""

    message_class: StunClass = attrs.field(converter=StunClass)
    transaction_id: bytes = attrs.field(converter=bytes, validator=_check_transaction_id)
    attributes: tuple = attrs.field(default=(), converter=tuple)
    # RFC 7983 demultiplexing (first byte 0-3) leaves room for methods below
    # 0x100 only; every registered STUN/TURN method fits.
    method: int = attrs.field(default=BINDING, validator=_within(0, 0xFF))
    fingerprint: bool = False

    def find(self, klass):
        """The first attribute of this class (later duplicates are ignored, §14)."""
        for attribute in self.attributes:
            if type(attribute) is klass:
                return attribute
        return None

    def encode(self) -> bytes:
        body = Writer()
        for attribute in self.attributes:
            value = attribute.encode_value(self.transaction_id)
            if len(value) > 0xFFFF:
                raise InvalidArgument(f"STUN attribute {attribute.TYPE:#06x} is longer than 65535 bytes")
            body.u16(attribute.TYPE).u16(len(value)).raw(value).raw(bytes(-len(value) % 4))
        attrs_bytes = body.bytes()
        length = len(attrs_bytes) + (8 if self.fingerprint else 0)
        if length > 0xFFFF:
            raise InvalidArgument("STUN message longer than 65535 bytes")
        data = _header(self.message_class, self.method, length, self.transaction_id) + attrs_bytes
        if self.fingerprint:
            data += Writer().u16(FINGERPRINT).u16(4).u32(fingerprint_value(data)).bytes()
        return data


def _header(message_class: StunClass, method: int, length: int, transaction_id: bytes) -> bytes:
    # The two class bits are interleaved into the method bits (RFC 8489 §5).
    c = int(message_class)
    message_type = (method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2)
    message_type |= ((c & 0b01) << 4) | ((c & 0b10) << 7)
    return Writer().u16(message_type).u16(length).u32(MAGIC_COOKIE).raw(transaction_id).bytes()


def fingerprint_value(message_prefix: bytes) -> int:
    """FINGERPRINT over the bytes before it, whose header length already counts it."""
    return zlib.crc32(message_prefix) ^ _FINGERPRINT_XOR


def decode(data: bytes) -> Message:
    """Decode one STUN message; raises only :class:`StunDecodeError`."""
    try:
        return _decode(bytes(data))
    except StunDecodeError:
        raise
    except DecodeError as e:
        raise StunDecodeError(f"bad STUN message: {e.message}") from None


def _decode(data: bytes) -> Message:
    if not is_stun(data):
        raise StunDecodeError("not a STUN message: too short, or no magic cookie")
    r = Reader(data)
    message_type, length = r.u16(), r.u16()
    r.u32()
    transaction_id = r.take(12)
    if length % 4 or length != r.remaining():
        raise StunDecodeError(f"STUN length {length} does not match the {r.remaining()} bytes that follow")
    method = (message_type & 0x000F) | ((message_type >> 1) & 0x0070) | ((message_type >> 2) & 0x0F80)
    message_class = StunClass(((message_type >> 4) & 0b01) | ((message_type >> 7) & 0b10))
    attributes = []
    fingerprint = False
    while r.remaining():
        offset = len(data) - r.remaining()
        attr_type, attr_length = r.u16(), r.u16()
        value = r.take(attr_length)
        r.take(-attr_length % 4)
        if attr_type == FINGERPRINT:
            if r.remaining():
                raise StunDecodeError("FINGERPRINT is not the last STUN attribute")
            if attr_length != 4 or int.from_bytes(value, "big") != fingerprint_value(data[:offset]):
                raise StunDecodeError("STUN FINGERPRINT does not match: corrupted, or not STUN")
            fingerprint = True
        else:
            attributes.append(_decode_attribute(attr_type, value, transaction_id))
    return Message(message_class, transaction_id, attributes, method, fingerprint)


def _decode_attribute(attr_type: int, value: bytes, transaction_id: bytes):
    klass = _ATTRIBUTE_CLASSES.get(attr_type)
    if klass is None:
        return RawAttribute(attr_type, value)
    try:
        return klass.decode_value(value, transaction_id)
    except (DecodeError, ValueError) as e:
        # ValueError covers bad UTF-8 and the attrs validators (InvalidArgument).
        raise StunDecodeError(f"bad STUN attribute {attr_type:#06x}: {e}") from None


def unknown_comprehension_required(message: Message) -> tuple[int, ...]:
    """Types a server must refuse with 420 (RFC 8489 §6.3.1), in order, once each."""
    found: list[int] = []
    for attribute in message.attributes:
        t = attribute.TYPE
        if t < 0x8000 and t not in UNDERSTOOD_TYPES and t not in found:
            found.append(t)
    return tuple(found)


# --- Binding helpers ------------------------------------------------------


def binding_request(transaction_id: bytes, change_ip: bool = False, change_port: bool = False) -> bytes:
    """A Binding request; CHANGE-REQUEST only when asked, so plain servers do not 420."""
    attributes = [ChangeRequest(change_ip, change_port)] if (change_ip or change_port) else []
    return Message(StunClass.REQUEST, transaction_id, attributes, fingerprint=True).encode()


def _check_binding_request(request: Message) -> None:
    if request.message_class is not StunClass.REQUEST or request.method != BINDING:
        raise InvalidArgument("only a Binding request can be answered with a Binding response")


def binding_response(
    request: Message,
    observed: Endpoint,
    response_origin: Endpoint | None = None,
    other_address: Endpoint | None = None,
    software: str | None = None,
) -> bytes:
    """The success response telling a client the address we saw it at."""
    _check_binding_request(request)
    attributes: list = [XorMappedAddress(observed), MappedAddress(observed)]
    if response_origin is not None:
        attributes.append(ResponseOrigin(response_origin))
    if other_address is not None:
        attributes.append(OtherAddress(other_address))
    if software is not None:
        attributes.append(Software(software))
    return Message(StunClass.SUCCESS, request.transaction_id, attributes, fingerprint=True).encode()


def binding_error(
    request: Message,
    code: int,
    reason: str,
    unknown_attributes: Sequence[int] | None = None,
    software: str | None = None,
) -> bytes:
    """An error response; a 420 lists the request's unknown required attributes by default."""
    _check_binding_request(request)
    attributes: list = [ErrorCode(code, reason)]
    if unknown_attributes is None and code == 420:
        unknown_attributes = unknown_comprehension_required(request)
    if unknown_attributes:
        attributes.append(UnknownAttributes(unknown_attributes))
    if software is not None:
        attributes.append(Software(software))
    return Message(StunClass.ERROR, request.transaction_id, attributes, fingerprint=True).encode()


class BindingResult(NamedTuple):
    transaction_id: bytes
    xor_mapped: Endpoint
    other_address: Endpoint | None
    response_origin: Endpoint | None


def parse_binding_response(data: bytes) -> BindingResult:
    """
    Read a Binding success response.

    Raises :class:`StunDecodeError` for anything that is not one, and
    :class:`StunErrorResponse` when the server answered with an error.
    The caller matches ``transaction_id`` against what it sent.
    """
    message = decode(data)
    if message.method != BINDING or message.message_class not in (StunClass.SUCCESS, StunClass.ERROR):
        raise StunDecodeError("not a Binding response")
    if message.message_class is StunClass.ERROR:
        error = message.find(ErrorCode)
        if error is None:
            raise StunDecodeError("Binding error response without ERROR-CODE")
        raise StunErrorResponse(message.transaction_id, error.code, error.reason)
    mapped = message.find(XorMappedAddress)
    if mapped is None:
        raise StunDecodeError("Binding response without XOR-MAPPED-ADDRESS")
    other = message.find(OtherAddress)
    origin = message.find(ResponseOrigin)
    return BindingResult(
        message.transaction_id,
        mapped.endpoint,
        other.endpoint if other else None,
        origin.endpoint if origin else None,
    )
