"""
The receiver's half of the packet-number space: which packets arrived, and
when to acknowledge them (RFC 9000 §13.2).

Received numbers are kept as a short sorted list of ``[smallest, largest]``
ranges.  Packets nearly always arrive in order, so the common case extends
the last range in O(1); reordering inserts with :mod:`bisect`.  Only the
newest :attr:`max_ranges` ranges are kept and reported: anything older is
treated as already seen, which is safe because the sender never reuses a
packet number and retransmits data in new packets.

How often to acknowledge follows draft-ietf-quic-ack-frequency: at first
after every ``ack_every`` ack-eliciting packets, or within
``max_ack_delay``; then as the peer asks in its ACK_FREQUENCY frames (it
knows its congestion window and RTT, so it can ask for fewer ACKs, each
costing a packet both ways, without starving its clock).  A gap or a
packet out of order is always acknowledged at once (unless the peer asked
for no immediate ACK on reordering), and so is a PING (probes carry one).
"""

from __future__ import annotations

import bisect

from . import frames


class ReceivedPackets:
    def __init__(self, max_ranges: int = 32, ack_every: int = 2, max_ack_delay: float = 0.025):
        self.max_ranges = max_ranges
        #: acknowledge at once when this many ack-eliciting packets wait (the peer may change it)
        self.ack_every = ack_every
        #: acknowledge at the latest this long after the first unacknowledged packet (the peer may change it)
        self.max_ack_delay = max_ack_delay
        #: acknowledge at once on a gap or reordering
        self.ack_on_reorder = True
        self._frequency_sequence = -1
        self._lo: list[int] = []  # range starts, ascending
        self._hi: list[int] = []  # range ends, same index
        self.floor = 0  # numbers below this count as already received
        self.largest_received_at: float | None = None
        self.unacked_eliciting = 0
        self.ack_pending = False  # an ACK frame is owed (now or by the ack deadline)
        self.ack_now = False  # owed without waiting for the ack-delay timer

    def is_duplicate(self, number: int) -> bool:
        if number < self.floor:
            return True
        i = bisect.bisect_right(self._lo, number) - 1
        return i >= 0 and number <= self._hi[i]

    def receive(self, number: int, ack_eliciting: bool, now: float) -> bool:
        """:meth:`record` a packet unless it is a duplicate (False then)."""
        hi = self._hi
        if hi and number == hi[-1] + 1:
            # The next packet in order, the common case: extend the newest range.
            hi[-1] = number
            self.largest_received_at = now
            if ack_eliciting:
                self.ack_pending = True
                self.unacked_eliciting += 1
                if self.unacked_eliciting >= self.ack_every:
                    self.ack_now = True
            return True
        if self.is_duplicate(number):
            return False
        self.record(number, ack_eliciting, now)
        return True

    def record(self, number: int, ack_eliciting: bool, now: float) -> None:
        """Note a new (non-duplicate) packet and decide how soon to acknowledge it."""
        lo, hi = self._lo, self._hi
        in_order = number == hi[-1] + 1 if hi else number == self.floor
        if in_order and hi:
            hi[-1] = number
        elif not hi or number > hi[-1]:
            lo.append(number)
            hi.append(number)
        else:
            self._insert(number)
        if hi[-1] == number:
            self.largest_received_at = now
        if len(lo) > self.max_ranges:
            drop = len(lo) - self.max_ranges
            self.floor = hi[drop - 1] + 1
            del lo[:drop], hi[:drop]
        if ack_eliciting:
            self.ack_pending = True
            self.unacked_eliciting += 1
            # Reordering or a gap: tell the sender at once so it can detect loss early.
            if (not in_order and self.ack_on_reorder) or self.unacked_eliciting >= self.ack_every:
                self.ack_now = True

    def frequency_requested(self, sequence: int, threshold: int, max_ack_delay_us: int, reordering: int,
                            local_max_delay: float) -> bool:
        """Apply an ACK_FREQUENCY frame (unless an older one); True when it changed something.

        ``threshold`` ack-eliciting packets may wait, the next one is
        acknowledged at once.  The requested delay is honoured up to
        ``local_max_delay``, the most this side ever waits."""
        if sequence <= self._frequency_sequence:
            return False
        self._frequency_sequence = sequence
        self.ack_every = threshold + 1
        self.max_ack_delay = min(max(max_ack_delay_us / 1e6, 0.0005), local_max_delay)
        self.ack_on_reorder = reordering != 0
        if self.unacked_eliciting >= self.ack_every:
            self.ack_now = True
        return True

    def _insert(self, number: int) -> None:
        lo, hi = self._lo, self._hi
        i = bisect.bisect_right(lo, number) - 1  # range starting at or below number
        joins_left = i >= 0 and hi[i] + 1 == number
        joins_right = i + 1 < len(lo) and lo[i + 1] - 1 == number
        if joins_left and joins_right:
            hi[i] = hi[i + 1]
            del lo[i + 1], hi[i + 1]
        elif joins_left:
            hi[i] = number
        elif joins_right:
            lo[i + 1] = number
        else:
            lo.insert(i + 1, number)
            hi.insert(i + 1, number)

    def ranges(self, limit: int) -> list[tuple[int, int]]:
        """Up to ``limit`` ranges, highest first, as an ACK frame lists them."""
        n = len(self._lo)
        return [(self._lo[i], self._hi[i]) for i in range(n - 1, max(-1, n - 1 - limit), -1)]

    def build_ack(self, now: float, room: int) -> bytes | None:
        """An ACK frame that fits in ``room`` bytes, or None."""
        if not self._lo or room < frames.ACK_HEAD_SIZE:
            return None
        limit = min(
            1 + (room - frames.ACK_HEAD_SIZE) // frames.ACK_RANGE_SIZE, frames.MAX_ACK_RANGES + 1, len(self._lo)
        )
        delay_us = int((now - self.largest_received_at) * 1_000_000) if self.largest_received_at is not None else 0
        return frames.encode_ack(self.ranges(limit), max(0, delay_us))

    def ack_sent(self) -> None:
        self.ack_pending = False
        self.ack_now = False
        self.unacked_eliciting = 0
