"""
Datagrams over a byte stream: the framing of the beacon's TCP/TLS transport.

Each datagram (a beacon message or a relay frame, exactly the bytes that
would otherwise be one UDP datagram) is sent as::

    length u16 | datagram (length bytes, 1..65535)

A zero length is not a datagram; a receiver treats it, like a length above
its limit, as a broken stream and closes it.  Nothing here does I/O.
"""

from __future__ import annotations

import struct

from .codec import DecodeError

MAX_FRAME = 0xFFFF
_LENGTH = struct.Struct("!H")


def encode_frame(datagram: bytes) -> bytes:
    """``datagram`` with its length prefix; ValueError if it cannot be framed."""
    if not 0 < len(datagram) <= MAX_FRAME:
        raise ValueError(f"a framed datagram is 1 to {MAX_FRAME} bytes, not {len(datagram)}")
    return _LENGTH.pack(len(datagram)) + datagram


class FrameDecoder:
    """Split a byte stream into datagrams, however the stream was cut up.

    ``feed`` returns every datagram completed by the new bytes; the rest is
    kept for the next call.  A bad length raises DecodeError, and the decoder
    is then unusable: the stream has lost its framing for good.
    """

    def __init__(self, max_frame: int = MAX_FRAME):
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._broken = False

    @property
    def pending(self) -> int:
        """Bytes received that are not yet part of a whole datagram."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        if self._broken:
            raise DecodeError("the stream's framing is already broken")
        self._buffer += data
        frames = []
        while len(self._buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer)
            if not 0 < length <= self.max_frame:
                self._broken = True
                raise DecodeError(f"bad frame length {length} (limit {self.max_frame})")
            end = _LENGTH.size + length
            if len(self._buffer) < end:
                break
            frames.append(bytes(self._buffer[_LENGTH.size : end]))
            del self._buffer[:end]
        return frames
