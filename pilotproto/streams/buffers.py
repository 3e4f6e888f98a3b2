"""
The byte bookkeeping of a stream's two parts: which sent bytes the peer
acknowledged, and how received bytes are put back in order.

Both keep ranges, never copies: an acknowledgement costs an interval merge,
and a frame that arrives out of order waits whole in a heap keyed by its
offset until the gap before it fills, so no reordering within the flow
control window is ever dropped.
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque


def _first(interval):
    return interval[0]


class AckedRanges:
    """The bytes of a sending part the peer acknowledged: a prefix, and the intervals above it."""

    def __init__(self):
        #: every byte below this offset is acknowledged
        self.prefix = 0
        self._above: list[list[int]] = []

    def add(self, start: int, end: int) -> None:
        if start <= self.prefix:
            if end > self.prefix:
                self.prefix = end
                above = self._above
                while above and above[0][0] <= self.prefix:
                    self.prefix = max(self.prefix, above.pop(0)[1])
        elif end > start:
            self._add_above(start, end)

    def covers(self, start: int, end: int) -> bool:
        """Every byte in ``[start, end)`` is acknowledged."""
        if end <= self.prefix:
            return True
        above = self._above
        i = bisect.bisect_right(above, start, key=_first) - 1
        return i >= 0 and end <= above[i][1]

    def _add_above(self, start: int, end: int) -> None:
        above = self._above
        if above and above[-1][0] <= start <= above[-1][1]:
            # Acks mostly arrive in offset order: extend the newest interval.
            above[-1][1] = max(above[-1][1], end)
            return
        i = 0
        while i < len(above) and above[i][1] < start:
            i += 1
        j = i
        while j < len(above) and above[j][0] <= end:
            start = min(start, above[j][0])
            end = max(end, above[j][1])
            j += 1
        above[i:j] = [[start, end]]


class Reassembly:
    """Bytes of a receiving part put back in order for the application."""

    def __init__(self):
        #: every byte below this offset arrived, and is in ``pending`` or was handed over
        self.offset = 0
        #: in-order chunks not yet handed to the application
        self.pending: deque = deque()
        #: offsets of the chunks that wait for a gap before them, and the chunk at each
        self._heap: list[int] = []
        self._chunks: dict[int, bytes] = {}

    def add(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        if end <= self.offset:
            return  # a duplicate
        if offset <= self.offset:
            self._in_order(data[self.offset - offset :] if offset < self.offset else data)
            heap, chunks = self._heap, self._chunks
            while heap and heap[0] <= self.offset:
                off = heapq.heappop(heap)
                chunk = chunks.pop(off)
                if off + len(chunk) > self.offset:
                    self._in_order(chunk[self.offset - off :])
            return
        waiting = self._chunks.get(offset)
        if waiting is None:
            self._chunks[offset] = data
            heapq.heappush(self._heap, offset)
        elif len(data) > len(waiting):
            # A retransmission may split the bytes differently from the
            # original (the room left beside an ACK frame varies): keep the
            # longer chunk, never drop bytes the sender counts as delivered.
            self._chunks[offset] = data

    @property
    def waiting(self) -> bool:
        """Chunks wait for a gap before them to fill."""
        return bool(self._heap)

    def _in_order(self, chunk: bytes) -> None:
        self.offset += len(chunk)
        self.pending.append(chunk)

    def clear(self) -> None:
        self._heap.clear()
        self._chunks.clear()
        self.pending.clear()
