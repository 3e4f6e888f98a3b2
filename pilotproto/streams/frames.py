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
ACK_FREQUENCY = 0x0C
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
_STREAM_WITH_FIN = STREAM | STREAM_FIN
#: a packet header and a STREAM frame header without a port: the bulk data packet (see outgoing.py)
_HEADER_STREAM = struct.Struct("!BIIQBIQH")
_ACK_FREQUENCY = struct.Struct("!BIHIB")  # type, sequence, threshold, max ack delay (µs), reordering threshold

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
class AckFrequency:
    """draft-ietf-quic-ack-frequency: how often the receiver of this frame should acknowledge.

    Acknowledge at once when more than ``threshold`` ack-eliciting packets
    are unacknowledged, else within ``max_ack_delay_us``; ``reordering`` 0
    asks for no immediate ACK on a gap, any other value for one.  Only the
    highest ``sequence`` seen counts (frames may arrive out of order)."""

    sequence: int
    threshold: int
    max_ack_delay_us: int
    reordering: int = 1


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
    if kind is AckFrequency:
        return _ACK_FREQUENCY.pack(ACK_FREQUENCY, frame.sequence, frame.threshold, frame.max_ack_delay_us,
                                   frame.reordering)  # fmt: skip
    raise TypeError(f"not a stream frame: {frame!r}")


def encode_packet(packet: Packet) -> bytes:
    return encode_header(packet.src_tag, packet.dst_tag, packet.number) + b"".join(
        encode_frame(f) for f in packet.frames
    )


# -- decoding ---------------------------------------------------------------


#: the frame classes by type, to turn the parser's tuples into frame objects
_CLASSES = {
    STREAM: StreamFrame, ACK: Ack, MAX_STREAM_DATA: MaxStreamData, MAX_DATA: MaxData, DATAGRAM: Datagram,
    RESET_STREAM: ResetStream, STOP_SENDING: StopSending, PING: Ping, PADDING: Padding, ACK_FREQUENCY: AckFrequency,
}  # fmt: skip


def decode_packet(data: bytes) -> Packet:
    """Decode a whole packet; any defect raises :class:`DecodeError` and nothing is half-applied."""
    src, dst, number, _, parsed = parse_packet(data)
    return Packet(src, dst, number, tuple(_CLASSES[f[0]](*f[1:]) for f in parsed))


def parse_packet(data: bytes):
    """Decode a whole packet into plain tuples, for the per-packet path.

    Returns ``(src_tag, dst_tag, number, ack_eliciting, frames)``; each frame
    is a tuple whose first item is its type (``STREAM`` for all four STREAM
    types) and whose other items are its frame class's fields, in order.
    No attrs object is made per frame: this runs for every packet received.
    Any defect raises :class:`DecodeError`.
    """
    size = len(data)
    if size >= _HEADER_STREAM.size and data[HEADER_SIZE] & 0xFE == STREAM:
        # The bulk data packet: one STREAM frame (no port) that ends the packet; one unpack.
        kind, src, dst, number, ftype, sid, offset, length = _HEADER_STREAM.unpack_from(data, 0)
        if (
            kind == PACKET_TYPE and number <= MAX_PACKET_NUMBER and _HEADER_STREAM.size + length == size
            and offset + length <= MAX_U64
        ):  # fmt: skip
            return src, dst, number, True, [(STREAM, sid, offset, data[_HEADER_STREAM.size :], ftype == _STREAM_WITH_FIN, None)]
    if size < HEADER_SIZE:
        raise DecodeError(f"stream packet of {size} bytes is shorter than its header")
    kind, src, dst, number = HEADER.unpack_from(data, 0)
    if kind != PACKET_TYPE:
        raise DecodeError(f"not a stream packet (type {kind:#x})")
    if number > MAX_PACKET_NUMBER:
        raise DecodeError("packet number beyond 2**62")
    frames = []
    append = frames.append
    eliciting = False
    pos = HEADER_SIZE
    try:
        while pos < size:
            ftype = data[pos]
            if ftype & 0xFC == STREAM:
                if ftype & STREAM_PORT:
                    _, sid, port, offset, length = _STREAM_PORT.unpack_from(data, pos)
                    pos += 17
                else:
                    _, sid, offset, length = _STREAM.unpack_from(data, pos)
                    port = None
                    pos += 15
                end = pos + length
                if end > size:
                    raise DecodeError("stream frame runs past the packet")
                if offset + length > MAX_U64:
                    raise DecodeError("stream frame beyond 2**64")
                append((STREAM, sid, offset, data[pos:end], bool(ftype & STREAM_FIN), port))
                eliciting = True
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
                append((ACK, delay, tuple(ranges)))
            elif ftype == MAX_STREAM_DATA:
                append((MAX_STREAM_DATA, *_MAX_STREAM_DATA.unpack_from(data, pos)[1:]))
                pos += _MAX_STREAM_DATA.size
                eliciting = True
            elif ftype == MAX_DATA:
                append((MAX_DATA, _MAX_DATA.unpack_from(data, pos)[1]))
                pos += _MAX_DATA.size
                eliciting = True
            elif ftype == DATAGRAM:
                _, port, length = _DATAGRAM.unpack_from(data, pos)
                pos += _DATAGRAM.size
                end = pos + length
                if end > size:
                    raise DecodeError("datagram frame runs past the packet")
                append((DATAGRAM, port, data[pos:end]))
                eliciting = True
                pos = end
            elif ftype == RESET_STREAM:
                append((RESET_STREAM, *_RESET.unpack_from(data, pos)[1:]))
                pos += _RESET.size
                eliciting = True
            elif ftype == STOP_SENDING:
                append((STOP_SENDING, *_STOP.unpack_from(data, pos)[1:]))
                pos += _STOP.size
                eliciting = True
            elif ftype == ACK_FREQUENCY:
                append((ACK_FREQUENCY, *_ACK_FREQUENCY.unpack_from(data, pos)[1:]))
                pos += _ACK_FREQUENCY.size
                eliciting = True
            elif ftype == PING:
                pos += 1
                append((PING,))
                eliciting = True
            elif ftype == PADDING:
                if data.count(0, pos) != size - pos:
                    raise DecodeError("padding holds non-zero bytes")
                append((PADDING, size - pos))
                pos = size
            else:
                raise DecodeError(f"unknown stream frame type {ftype:#x}")
    except struct.error:
        raise DecodeError("truncated stream frame") from None
    return src, dst, number, eliciting, frames
