"""
STUN (RFC 8489) messages with the RFC 5780 behaviour-discovery attributes,
and the RFC 3489 ("classic STUN") header and attributes a server needs to
answer old clients.

The beacon answers Binding requests on its UDP ports so that any standard
STUN client learns its reflexive address; our node also sends CHANGE-REQUEST
and reads OTHER-ADDRESS / RESPONSE-ORIGIN to classify its NAT (see
``docs/stun.md``).  What the beacon does with a request is
:mod:`pilotproto.beacon.stun`'s business; this module only turns messages
into bytes and back.

An RFC 3489 message has no magic cookie: its 16-byte transaction id starts
where the cookie would be.  :class:`Message` keeps those four bytes as
``cookie`` (the magic cookie by default), so an answer can copy them back
as RFC 8489 §12.2 asks.  :func:`decode` accepts such messages only when
asked (``rfc3489=True``): without the cookie, a datagram is STUN only by
its shape.

Nothing here does I/O.  :func:`decode` raises only :class:`StunDecodeError`.
Attributes this module does not model (USERNAME, MESSAGE-INTEGRITY, ICE's
PRIORITY, ...) are kept as :class:`RawAttribute` so nothing is lost; the
beacon offers no STUN credentials, so MESSAGE-INTEGRITY is carried, never
checked.
"""

from __future__ import annotations

import enum
import zlib
from typing import Collection, NamedTuple, Sequence

import attrs

from ..errors import InvalidArgument, ProtocolError
from . import is_stun
from .codec import DecodeError, Endpoint, Reader, Writer

# The attributes live next door (this module would be too long with them);
# every name is re-exported, so callers use ``stun.MappedAddress`` etc.
from .stun_attributes import (  # noqa: F401
    ATTRIBUTE_CLASSES,
    COOKIE_BYTES as _COOKIE_BYTES,
    FINGERPRINT,
    MAGIC_COOKIE,
    MESSAGE_INTEGRITY,
    MESSAGE_INTEGRITY_SHA256,
    RESPONSE_ADDRESS,
    USERNAME,
    ChangedAddress,
    ChangeRequest,
    ErrorCode,
    MappedAddress,
    OtherAddress,
    Padding,
    RawAttribute,
    ResponseOrigin,
    ResponsePort,
    Software,
    SourceAddress,
    UnknownAttributes,
    XorMappedAddress,
    attribute_size,
)

_FINGERPRINT_XOR = 0x5354554E
HEADER_LENGTH = 20
BINDING = 0x001


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


# --- messages ---------------------------------------------------------------


def _within(low: int, high: int):
    return attrs.validators.and_(attrs.validators.ge(low), attrs.validators.le(high))


def _check_transaction_id(instance, attribute, value: bytes) -> None:
    if len(value) != 12:
        raise InvalidArgument(f"a STUN transaction id is 12 bytes, not {len(value)}")


def _check_cookie(instance, attribute, value: bytes) -> None:
    if len(value) != 4:
        raise InvalidArgument(f"the STUN cookie field is 4 bytes, not {len(value)}")


@attrs.frozen
class Message:
    """
    One STUN message; ``fingerprint`` says whether FINGERPRINT ends it.

    ``cookie`` is the magic cookie, or for an RFC 3489 message the first
    four bytes of its 16-byte transaction id (``transaction_id`` is the
    other twelve).
    """

    message_class: StunClass = attrs.field(converter=StunClass)
    transaction_id: bytes = attrs.field(converter=bytes, validator=_check_transaction_id)
    attributes: tuple = attrs.field(default=(), converter=tuple)
    # RFC 7983 demultiplexing (first byte 0-3) leaves room for methods below
    # 0x100 only; every registered STUN/TURN method fits.
    method: int = attrs.field(default=BINDING, validator=_within(0, 0xFF))
    fingerprint: bool = False
    cookie: bytes = attrs.field(default=_COOKIE_BYTES, converter=bytes, validator=_check_cookie)

    @property
    def rfc3489(self) -> bool:
        """True for a classic STUN message (no magic cookie)."""
        return self.cookie != _COOKIE_BYTES

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
        data = _header(self.message_class, self.method, length, self.cookie, self.transaction_id) + attrs_bytes
        if self.fingerprint:
            data += Writer().u16(FINGERPRINT).u16(4).u32(fingerprint_value(data)).bytes()
        return data


def _header(message_class: StunClass, method: int, length: int, cookie: bytes, transaction_id: bytes) -> bytes:
    # The two class bits are interleaved into the method bits (RFC 8489 §5).
    c = int(message_class)
    message_type = (method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2)
    message_type |= ((c & 0b01) << 4) | ((c & 0b10) << 7)
    return Writer().u16(message_type).u16(length).raw(cookie).raw(transaction_id).bytes()


def fingerprint_value(message_prefix: bytes) -> int:
    """FINGERPRINT over the bytes before it, whose header length already counts it."""
    return zlib.crc32(message_prefix) ^ _FINGERPRINT_XOR


def is_rfc3489(datagram: bytes) -> bool:
    """
    True when a datagram is shaped like an RFC 3489 message: no magic cookie,
    first byte 0-3 (RFC 7983), and a length field that matches, in 4-byte
    units.  Without the cookie that shape is all there is to go by.
    """
    return (
        len(datagram) >= HEADER_LENGTH
        and datagram[0] < 4
        and datagram[4:8] != _COOKIE_BYTES
        and int.from_bytes(datagram[2:4], "big") == len(datagram) - HEADER_LENGTH
        and len(datagram) % 4 == 0
    )


def decode(data: bytes, rfc3489: bool = False) -> Message:
    """
    Decode one STUN message; raises only :class:`StunDecodeError`.

    With ``rfc3489``, a message without the magic cookie is accepted too
    (see :func:`is_rfc3489`); its ``cookie`` field then says so.
    """
    try:
        return _decode(bytes(data), rfc3489)
    except StunDecodeError:
        raise
    except DecodeError as e:
        raise StunDecodeError(f"bad STUN message: {e.message}") from None


def _decode(data: bytes, rfc3489: bool) -> Message:
    if not (is_stun(data) or (rfc3489 and is_rfc3489(data))):
        raise StunDecodeError("not a STUN message: too short, or no magic cookie")
    r = Reader(data)
    message_type, length = r.u16(), r.u16()
    cookie = r.take(4)
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
    return Message(message_class, transaction_id, attributes, method, fingerprint, cookie)


def _decode_attribute(attr_type: int, value: bytes, transaction_id: bytes):
    klass = ATTRIBUTE_CLASSES.get(attr_type)
    if klass is None:
        return RawAttribute(attr_type, value)
    try:
        return klass.decode_value(value, transaction_id)
    except (DecodeError, ValueError) as e:
        # ValueError covers bad UTF-8 and the attrs validators (InvalidArgument).
        raise StunDecodeError(f"bad STUN attribute {attr_type:#06x}: {e}") from None


def unknown_comprehension_required(message: Message, understood: Collection[int]) -> tuple[int, ...]:
    """
    The types in ``message`` a server must refuse with 420 (RFC 8489 §6.3.1),
    in order, once each: comprehension-required (below 0x8000) and not in
    ``understood``.  What a server understands is its own decision, so it
    names the set (the codec parsing an attribute does not make it honoured).
    """
    found: list[int] = []
    for attribute in message.attributes:
        t = attribute.TYPE
        if t < 0x8000 and t not in understood and t not in found:
            found.append(t)
    return tuple(found)


# --- Binding helpers ------------------------------------------------------
#
# A client's request, and the full answers a test or a simple server builds.
# The beacon builds its own (pilotproto.beacon.stun): it fits each answer
# within three times the request, and answers RFC 3489 clients in their
# format.


def binding_request(transaction_id: bytes, change_ip: bool = False, change_port: bool = False) -> bytes:
    """A Binding request; CHANGE-REQUEST only when asked, so plain servers do not 420."""
    attributes = [ChangeRequest(change_ip, change_port)] if (change_ip or change_port) else []
    return Message(StunClass.REQUEST, transaction_id, attributes, fingerprint=True).encode()


def _check_binding_request(request: Message) -> None:
    if request.message_class is not StunClass.REQUEST or request.method != BINDING:
        raise InvalidArgument("only a Binding request can be answered with a Binding response")
    if request.rfc3489:
        raise InvalidArgument("these helpers answer RFC 5389/8489 requests; an RFC 3489 one has no magic cookie")


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
    unknown_attributes: Sequence[int] = (),
    software: str | None = None,
) -> bytes:
    """An error response; a 420 names the refused types in ``unknown_attributes``."""
    _check_binding_request(request)
    attributes: list = [ErrorCode(code, reason)]
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
