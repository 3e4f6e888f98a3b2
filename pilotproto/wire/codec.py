"""
Primitives shared by every codec: a bounds-checked reader, a writer, and the
one error that decoding may raise.

All integers are big-endian (network order).  Variable-length fields are
prefixed by their length.  Nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
import struct

import attrs

from ..errors import ProtocolError


class DecodeError(ProtocolError):
    """A packet could not be decoded."""

    code = "decode_error"


@attrs.frozen(order=True)
class Endpoint:
    """A UDP/TCP endpoint: an IPv4 or IPv6 address and a port."""

    host: str = attrs.field(converter=lambda h: str(ipaddress.ip_address(h)))
    port: int = attrs.field()

    @port.validator
    def _check_port(self, attribute, value):
        if not (0 <= value <= 0xFFFF):
            raise ValueError(f"port out of range: {value}")

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    def as_tuple(self) -> tuple[str, int]:
        return (self.host, self.port)


class Reader:
    """Consume a byte string field by field; every overrun is a DecodeError."""

    def __init__(self, data: bytes):
        self._data = memoryview(data)
        self._pos = 0

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise DecodeError(f"truncated: wanted {n} bytes, have {self.remaining()}")
        chunk = bytes(self._data[self._pos : self._pos + n])
        self._pos += n
        return chunk

    def rest(self) -> bytes:
        return self.take(self.remaining())

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("!H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("!I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("!Q", self.take(8))[0]

    def blob8(self) -> bytes:
        return self.take(self.u8())

    def blob16(self) -> bytes:
        return self.take(self.u16())

    def text8(self) -> str:
        raw = self.blob8()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DecodeError(f"bad utf-8 text: {e}") from None

    def endpoint(self) -> Endpoint:
        family = self.u8()
        if family == 4:
            host = ipaddress.IPv4Address(self.take(4))
        elif family == 6:
            host = ipaddress.IPv6Address(self.take(16))
        else:
            raise DecodeError(f"unknown address family {family}")
        return Endpoint(str(host), self.u16())

    def endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(self.endpoint() for _ in range(self.u8()))

    def end(self) -> None:
        if self.remaining():
            raise DecodeError(f"{self.remaining()} unexpected trailing bytes")


class Writer:
    """Build a byte string field by field."""

    def __init__(self):
        self._parts: list[bytes] = []

    def raw(self, data: bytes) -> "Writer":
        self._parts.append(bytes(data))
        return self

    def u8(self, v: int) -> "Writer":
        return self.raw(struct.pack("!B", v))

    def u16(self, v: int) -> "Writer":
        return self.raw(struct.pack("!H", v))

    def u32(self, v: int) -> "Writer":
        return self.raw(struct.pack("!I", v))

    def u64(self, v: int) -> "Writer":
        return self.raw(struct.pack("!Q", v))

    def blob8(self, data: bytes) -> "Writer":
        if len(data) > 0xFF:
            raise ValueError("field longer than 255 bytes")
        return self.u8(len(data)).raw(data)

    def blob16(self, data: bytes) -> "Writer":
        if len(data) > 0xFFFF:
            raise ValueError("field longer than 65535 bytes")
        return self.u16(len(data)).raw(data)

    def text8(self, text: str) -> "Writer":
        return self.blob8(text.encode("utf-8"))

    def endpoint(self, ep: Endpoint) -> "Writer":
        ip = ipaddress.ip_address(ep.host)
        self.u8(4 if ip.version == 4 else 6).raw(ip.packed)
        return self.u16(ep.port)

    def endpoints(self, eps) -> "Writer":
        eps = tuple(eps)
        if len(eps) > 0xFF:
            raise ValueError("too many endpoints")
        self.u8(len(eps))
        for ep in eps:
            self.endpoint(ep)
        return self

    def bytes(self) -> bytes:
        return b"".join(self._parts)
