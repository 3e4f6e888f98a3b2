"""
The receive-side replay window (RFC 6479 style).

A datagram network reorders and duplicates packets, so a receiver cannot
insist on strictly increasing counters; it remembers which of the last
``size`` counters it has accepted.  The bitmap is a ring of 64-bit blocks:
moving the window forward clears whole blocks instead of shifting bits, so
the cost of a jump does not depend on how far it jumps (beyond the ring's
length).  One block more than the window needs is kept so that the block the
newest counter lives in never evicts the oldest counters still in range.

Checking and recording are separate steps on purpose: the record layer asks
:meth:`ReplayWindow.check` before decrypting, and only calls
:meth:`ReplayWindow.accept` once the packet has authenticated, so a forged
packet with a huge counter cannot slide the window and make real packets look
old.
"""

from __future__ import annotations

BLOCK_BITS = 64
_BLOCK_MASK = (1 << BLOCK_BITS) - 1
DEFAULT_WINDOW = 2048


class ReplayWindow:
    """Accept each counter at most once, and none older than ``size`` behind the newest."""

    def __init__(self, size: int = DEFAULT_WINDOW):
        if size <= 0 or size % BLOCK_BITS:
            raise ValueError(f"window size must be a positive multiple of {BLOCK_BITS}")
        self.size = size
        self._blocks = [0] * (size // BLOCK_BITS + 1)
        self._newest = -1

    @property
    def newest(self) -> int:
        """The greatest counter accepted so far (-1 before the first)."""
        return self._newest

    def _slot(self, counter: int) -> tuple[int, int]:
        block = (counter // BLOCK_BITS) % len(self._blocks)
        return block, 1 << (counter % BLOCK_BITS)

    def check(self, counter: int) -> bool:
        """True when ``counter`` would be accepted (new, and inside the window)."""
        if counter < 0:
            return False
        if counter > self._newest:
            return True
        if self._newest - counter >= self.size:
            return False
        block, bit = self._slot(counter)
        return not (self._blocks[block] & bit)

    def accept(self, counter: int) -> bool:
        """Record ``counter``; False (and no change) when it is a replay or too old."""
        if not self.check(counter):
            return False
        if counter > self._newest:
            self._advance(counter)
        block, bit = self._slot(counter)
        self._blocks[block] |= bit
        return True

    def mark(self, counter: int) -> None:
        """Record ``counter``, which :meth:`check` has just passed (the record
        layer's per-packet form of :meth:`accept`, without checking twice)."""
        blocks = self._blocks
        if counter > self._newest:
            if counter // BLOCK_BITS != self._newest // BLOCK_BITS:
                self._advance(counter)
            self._newest = counter
        blocks[(counter // BLOCK_BITS) % len(blocks)] |= 1 << (counter % BLOCK_BITS)

    def _advance(self, counter: int) -> None:
        first_new = self._newest // BLOCK_BITS + 1 if self._newest >= 0 else 0
        last_new = counter // BLOCK_BITS
        # Blocks between the old newest and the new one held counters a whole
        # ring ago; clear them, but never more than the ring's length.
        for n in range(first_new, min(last_new + 1, first_new + len(self._blocks))):
            self._blocks[n % len(self._blocks)] = 0
        self._newest = counter
