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

    Linear in the bytes fed: frames are cut from the chunk by offset (each
    byte is copied once, into its datagram), and only a partial frame at the
    end is kept, in a buffer that is joined once the frame is whole.
    """

    def __init__(self, max_frame: int = MAX_FRAME):
        self.max_frame = max_frame
        #: the start of an unfinished frame: chunks received, not yet joined
        self._parts: list[bytes] = []
        self._pending = 0
        #: the unfinished frame's total size with its prefix, once known
        self._needed = 0
        self._broken = False

    @property
    def pending(self) -> int:
        """Bytes received that are not yet part of a whole datagram."""
        return self._pending

    def feed(self, data: bytes) -> list[bytes]:
        if self._broken:
            raise DecodeError("the stream's framing is already broken")
        if type(data) is not bytes:
            data = bytes(data)
        frames: list[bytes] = []
        at = self._complete(data, frames) if self._parts else 0
        if at is None:
            return frames
        unpack = _LENGTH.unpack_from
        size = len(data)
        limit = self.max_frame
        while size - at >= 2:
            (length,) = unpack(data, at)
            if not 0 < length <= limit:
                self._break(length)
            end = at + 2 + length
            if end > size:
                break
            frames.append(data[at + 2 : end])
            at = end
        if at < size:
            self._keep(data[at:] if at else data)
        return frames

    def _complete(self, data: bytes, frames: list) -> int | None:
        """Finish the kept partial frame from the start of ``data``: the offset
        where the rest of ``data`` begins, or None when all of it was used."""
        if not data:
            return None
        at = 0
        if self._needed == 0:
            # Not even the length was whole: one byte kept, one more needed.
            head = self._parts[0] + data[:1]
            (length,) = _LENGTH.unpack(head)
            if not 0 < length <= self.max_frame:
                self._break(length)
            self._parts = [head]
            self._pending = 2
            self._needed = 2 + length
            at = 1
        missing = self._needed - self._pending
        if len(data) - at < missing:
            if len(data) > at:
                self._parts.append(data[at:])
                self._pending += len(data) - at
            return None
        self._parts.append(data[at : at + missing])
        frames.append(b"".join(self._parts)[2:])
        self._parts = []
        self._pending = self._needed = 0
        return at + missing

    def _keep(self, tail: bytes) -> None:
        self._parts = [bytes(tail)]
        self._pending = len(tail)
        if len(tail) >= 2:
            (length,) = _LENGTH.unpack_from(tail)
            self._needed = 2 + length
        else:
            self._needed = 0

    def _break(self, length: int):
        self._broken = True
        raise DecodeError(f"bad frame length {length} (limit {self.max_frame})")


#: a batch is written as soon as it holds this much (a TLS record carries 16 KiB)
FLUSH_AT = 16384


class FrameWriter:
    """Frames datagrams and hands them to ``write`` in few, large writes.

    The first datagram after a quiet spell is written at once (no added
    latency); datagrams that follow it in the same reactor turn are batched
    and written together when ``call_soon`` (e.g. ``lambda f: reactor.callLater(0, f)``)
    runs, or as soon as ``flush_at`` bytes are waiting.  Without
    ``call_soon`` every datagram is written at once.  Each write is then one
    TLS ``SSL_write`` of many frames instead of one per frame.
    """

    def __init__(self, write, call_soon=None, flush_at: int = FLUSH_AT):
        self._write = write
        self._call_soon = call_soon
        self.flush_at = flush_at
        self._parts: list[bytes] = []
        self._size = 0
        #: a turn is open: the first write went out and a flush is scheduled
        self._open = False
        self._scheduled = None
        #: writes made, and frames written (frames / writes is the batching)
        self.writes = 0
        self.frames = 0

    @property
    def pending(self) -> int:
        """Framed bytes waiting for the next write."""
        return self._size

    def send(self, datagram: bytes) -> None:
        length = len(datagram)
        if not 0 < length <= MAX_FRAME:
            raise ValueError(f"a framed datagram is 1 to {MAX_FRAME} bytes, not {length}")
        self.frames += 1
        if self._call_soon is None:
            self.writes += 1
            self._write(_LENGTH.pack(length) + datagram)
            return
        if not self._open:
            self._open = True
            self._scheduled = self._call_soon(self._end_turn)
            self.writes += 1
            self._write(_LENGTH.pack(length) + datagram)
            return
        self._parts.append(_LENGTH.pack(length))
        self._parts.append(datagram)
        self._size += 2 + length
        if self._size >= self.flush_at:
            self.flush()

    def flush(self) -> None:
        """Write whatever is waiting, now."""
        if self._parts:
            data = b"".join(self._parts)
            self._parts = []
            self._size = 0
            self.writes += 1
            self._write(data)

    def _end_turn(self) -> None:
        self._scheduled = None
        self._open = False
        self.flush()

    def close(self) -> None:
        """Drop what is waiting and cancel the scheduled flush (the stream is gone)."""
        scheduled, self._scheduled = self._scheduled, None
        if scheduled is not None and getattr(scheduled, "active", lambda: False)():
            scheduled.cancel()
        self._parts = []
        self._size = 0
        self._open = False
