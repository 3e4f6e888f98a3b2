"""
The stream packet and its frames: a pure codec, no I/O.

A stream packet is the plaintext of one session message of type ``0x10``
(see docs/streams.md for the exact layout and the reasons behind it)::

    0x10 | src_tag u32 | dst_tag u32 | packet_number u64 | frame...

Every integer is big-endian and fixed-width: fixed fields decode with one
``struct`` call, which in Python is cheaper than QUIC's variable-length
integers, and they cost only a few bytes per 1150-byte packet.
"""

from __future__ import annotations

import struct

import attrs

from ..wire.codec import DecodeError

PACKET_TYPE = 0x10
MAX_PACKET_NUMBER = (1 << 62) - 1

HEADER = struct.Struct("!BIIQ")
HEADER_SIZE = HEADER.size  # 17

# frame types
PADDING = 0x00
PING = 0x01
ACK = 0x02
RESET_STREAM = 0x03
STOP_SENDING = 0x04
MAX_DATA = 0x05
MAX_STREAM_DATA = 0x06
DATAGRAM = 0x07
STREAM = 0x08  # 0x08-0x0B; the low bits are the flags below
STREAM_FIN = 0x01
STREAM_PORT = 0x02

_ACK_HEAD = struct.Struct("!BQIBI")  # type, largest, delay_us, range count, first range
_ACK_RANGE = struct.Struct("!II")
_RESET = struct.Struct("!BIHQ")
_STOP = struct.Struct("!BIH")
_MAX_DATA = struct.Struct("!BQ")
_MAX_STREAM_DATA = struct.Struct("!BIQ")
_DATAGRAM = struct.Struct("!BHH")
_STREAM = struct.Struct("!BIQH")  # type, stream id, offset, length
_STREAM_PORT = struct.Struct("!BIHQH")  # type, stream id, port, offset, length

ACK_HEAD_SIZE = _ACK_HEAD.size
ACK_RANGE_SIZE = _ACK_RANGE.size
STREAM_OVERHEAD = _STREAM.size  # 15
STREAM_PORT_OVERHEAD = _STREAM_PORT.size  # 17
DATAGRAM_OVERHEAD = _DATAGRAM.size  # 5
MAX_ACK_RANGES = 255
MAX_U32 = 0xFFFFFFFF
MAX_U64 = (1 << 64) - 1


@attrs.frozen
class Padding:
    """Zero bytes to the end of the packet."""

    length: int


@attrs.frozen
class Ping:
    """Elicits an acknowledgement and carries nothing else."""


@attrs.frozen
class Ack:
    """Packets received: ``ranges`` are ``(smallest, largest)`` pairs, highest first, with gaps between."""

    delay_us: int
    ranges: tuple

    @property
    def largest(self) -> int:
        return self.ranges[0][1]


@attrs.frozen
class ResetStream:
    stream_id: int
    code: int
    final_size: int


@attrs.frozen
class StopSending:
    stream_id: int
    code: int


@attrs.frozen
class MaxData:
    limit: int


@attrs.frozen
class MaxStreamData:
    stream_id: int
    limit: int


@attrs.frozen
class Datagram:
    port: int
    data: bytes


@attrs.frozen
class StreamFrame:
    """``data`` at ``offset`` of a stream; ``port`` only on the opener's frames at offset 0."""

    stream_id: int
    offset: int
    data: bytes
    fin: bool = False
    port: int | None = None


@attrs.frozen
class Packet:
    src_tag: int
    dst_tag: int
    number: int
    frames: tuple


# -- encoding ---------------------------------------------------------------


def encode_header(src_tag: int, dst_tag: int, number: int) -> bytes:
    return HEADER.pack(PACKET_TYPE, src_tag, dst_tag, number)


def stream_header(stream_id: int, offset: int, length: int, fin: bool, port: int | None) -> bytes:
    kind = STREAM | (STREAM_FIN if fin else 0)
    if port is None:
        return _STREAM.pack(kind, stream_id, offset, length)
    return _STREAM_PORT.pack(kind | STREAM_PORT, stream_id, port, offset, length)


def ack_size(range_count: int) -> int:
    return _ACK_HEAD.size + _ACK_RANGE.size * (range_count - 1)


def encode_ack(ranges, delay_us: int) -> bytes:
    """``ranges``: ``(smallest, largest)`` pairs, highest first.

    Gaps and range lengths are 32-bit fields, but packet numbers run to
    2**62: a peer that skips more than 2**32 numbers (only a hostile one
    does) makes ranges no ACK can carry.  They are left out, with every
    range below them, and the first range is cut to its newest 2**32
    numbers: an ACK may always say less than what arrived, never more."""
    smallest, largest = ranges[0]
    smallest = max(smallest, largest - MAX_U32)
    body = []
    previous = smallest
    for lo, hi in ranges[1:]:
        gap, length = previous - hi - 2, hi - lo
        if gap > MAX_U32 or length > MAX_U32:
            break
        body.append(_ACK_RANGE.pack(gap, length))
        previous = lo
    return _ACK_HEAD.pack(ACK, largest, min(delay_us, MAX_U32), len(body), largest - smallest) + b"".join(body)


def encode_frame(frame) -> bytes:
    kind = type(frame)
    if kind is StreamFrame:
        return stream_header(frame.stream_id, frame.offset, len(frame.data), frame.fin, frame.port) + frame.data
    if kind is Ack:
        return encode_ack(frame.ranges, frame.delay_us)
    if kind is Ping:
        return bytes([PING])
    if kind is Padding:
        return bytes(frame.length)
    if kind is ResetStream:
        return _RESET.pack(RESET_STREAM, frame.stream_id, frame.code, frame.final_size)
    if kind is StopSending:
        return _STOP.pack(STOP_SENDING, frame.stream_id, frame.code)
    if kind is MaxData:
        return _MAX_DATA.pack(MAX_DATA, frame.limit)
    if kind is MaxStreamData:
        return _MAX_STREAM_DATA.pack(MAX_STREAM_DATA, frame.stream_id, frame.limit)
    if kind is Datagram:
        return _DATAGRAM.pack(DATAGRAM, frame.port, len(frame.data)) + frame.data
    raise TypeError(f"not a stream frame: {frame!r}")


def encode_packet(packet: Packet) -> bytes:
    return encode_header(packet.src_tag, packet.dst_tag, packet.number) + b"".join(
        encode_frame(f) for f in packet.frames
    )


# -- decoding ---------------------------------------------------------------


def decode_packet(data: bytes) -> Packet:
    """Decode a whole packet; any defect raises :class:`DecodeError` and nothing is half-applied."""
    size = len(data)
    if size < HEADER_SIZE:
        raise DecodeError(f"stream packet of {size} bytes is shorter than its header")
    kind, src, dst, number = HEADER.unpack_from(data, 0)
    if kind != PACKET_TYPE:
        raise DecodeError(f"not a stream packet (type {kind:#x})")
    if number > MAX_PACKET_NUMBER:
        raise DecodeError("packet number beyond 2**62")
    frames = []
    append = frames.append
    pos = HEADER_SIZE
    try:
        while pos < size:
            ftype = data[pos]
            if ftype & 0xFC == STREAM:
                if ftype & STREAM_PORT:
                    _, sid, port, offset, length = _STREAM_PORT.unpack_from(data, pos)
                    pos += _STREAM_PORT.size
                else:
                    _, sid, offset, length = _STREAM.unpack_from(data, pos)
                    port = None
                    pos += _STREAM.size
                end = pos + length
                if end > size:
                    raise DecodeError("stream frame runs past the packet")
                if offset + length > MAX_U64:
                    raise DecodeError("stream frame beyond 2**64")
                append(StreamFrame(sid, offset, bytes(data[pos:end]), bool(ftype & STREAM_FIN), port))
                pos = end
            elif ftype == ACK:
                _, largest, delay, count, first = _ACK_HEAD.unpack_from(data, pos)
                pos += _ACK_HEAD.size
                smallest = largest - first
                if smallest < 0:
                    raise DecodeError("ack range below packet number 0")
                ranges = [(smallest, largest)]
                for _ in range(count):
                    gap, length = _ACK_RANGE.unpack_from(data, pos)
                    pos += _ACK_RANGE.size
                    hi = smallest - gap - 2
                    smallest = hi - length
                    if smallest < 0:
                        raise DecodeError("ack range below packet number 0")
                    ranges.append((smallest, hi))
                append(Ack(delay, tuple(ranges)))
            elif ftype == MAX_STREAM_DATA:
                _, sid, limit = _MAX_STREAM_DATA.unpack_from(data, pos)
                pos += _MAX_STREAM_DATA.size
                append(MaxStreamData(sid, limit))
            elif ftype == MAX_DATA:
                _, limit = _MAX_DATA.unpack_from(data, pos)
                pos += _MAX_DATA.size
                append(MaxData(limit))
            elif ftype == DATAGRAM:
                _, port, length = _DATAGRAM.unpack_from(data, pos)
                pos += _DATAGRAM.size
                end = pos + length
                if end > size:
                    raise DecodeError("datagram frame runs past the packet")
                append(Datagram(port, bytes(data[pos:end])))
                pos = end
            elif ftype == RESET_STREAM:
                _, sid, code, final = _RESET.unpack_from(data, pos)
                pos += _RESET.size
                append(ResetStream(sid, code, final))
            elif ftype == STOP_SENDING:
                _, sid, code = _STOP.unpack_from(data, pos)
                pos += _STOP.size
                append(StopSending(sid, code))
            elif ftype == PING:
                pos += 1
                append(Ping())
            elif ftype == PADDING:
                if data.count(0, pos) != size - pos:
                    raise DecodeError("padding holds non-zero bytes")
                append(Padding(size - pos))
                pos = size
            else:
                raise DecodeError(f"unknown stream frame type {ftype:#x}")
    except struct.error:
        raise DecodeError("truncated stream frame") from None
    return Packet(src, dst, number, tuple(frames))
