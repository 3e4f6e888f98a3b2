"""
Flow control: the credit a receiver grants and the credit a sender holds
(RFC 9000 §4), for one stream or for the whole connection.

A receiver's limit moves only when its application *consumes* data, so a
slow reader stops granting credit and the sender stops sending: memory on
both sides stays bounded by the window, whatever the sender's speed.

Window auto-tuning (as quic-go and quinn do): a window starts small and
doubles, up to its maximum, whenever the application consumed a window's
worth of data in less than about two round trips, i.e. when the window, not
the path, limits the sender (window < 2 x the bandwidth-delay product as the
receiver measures it).  So a slow or idle stream never holds a large
window's worth of credit, and a fast one on a long path grows to what its
path needs.  A connection window is kept at least 1.5 x its largest stream
window, so one stream is never limited by its connection.
"""

from __future__ import annotations

#: credit every side grants a new stream / the connection before any MAX_* frame
INITIAL_STREAM_CREDIT = 256 * 1024
INITIAL_CONNECTION_CREDIT = 1024 * 1024


class WindowTuner:
    """What auto-tuning reads: the time, and the connection's smoothed RTT (None before a sample)."""

    def __init__(self, clock, recovery):
        self._clock = clock
        self._recovery = recovery

    def now(self) -> float:
        return self._clock.seconds()

    def rtt(self) -> float | None:
        recovery = self._recovery
        return recovery.smoothed_rtt if recovery.first_rtt_sample is not None else None


class ReceiveWindow:
    def __init__(self, window: int, initial_limit: int, max_window: int | None = None,
                 tuner: WindowTuner | None = None):
        #: the window now: how far past the bytes consumed the peer may send
        self.window = window
        #: how far auto-tuning may grow it (no tuner: the window stays as it is)
        self.max_window = max(window, max_window or window)
        self._tuner = tuner
        self._epoch_time: float | None = None
        self._epoch_consumed = 0
        #: the limit the peer was last told (or assumes by protocol)
        self.limit = initial_limit
        #: highest byte offset (exclusive) the peer has sent
        self.highest = 0
        #: bytes handed to the application (or thrown away for it)
        self.consumed = 0

    def allows(self, end: int) -> bool:
        return end <= self.limit

    def receive(self, end: int) -> int:
        """The peer sent up to ``end``; returns by how much the highest offset grew."""
        grew = end - self.highest
        if grew > 0:
            self.highest = end
            return grew
        return 0

    def consume(self, n: int) -> None:
        self.consumed += n

    def update_due(self) -> bool:
        # (StreamConnection.stream_consumed and Stream.receive inline this test.)
        # Re-advertise once a quarter of the window has been consumed, so the
        # sender never idles waiting for credit on a path with a long RTT.
        return self.consumed + self.window - self.limit >= self.window // 4

    def advertise(self) -> int:
        if self._tuner is not None and self.window < self.max_window:
            self._autotune()
        self.limit = max(self.limit, self.consumed + self.window)
        return self.limit

    def ensure_at_least(self, window: int) -> None:
        """Grow to ``window`` (within the maximum): a connection window keeps ahead of its streams'."""
        if window > self.window:
            self.window = min(window, self.max_window)

    def _autotune(self) -> None:
        # quic-go's rule: the epoch ends once half a window was consumed; if
        # that took less than 4 x fraction x RTT (a whole window in under two
        # round trips), the window is what holds the sender back: double it.
        now, rtt = self._tuner.now(), self._tuner.rtt()
        if self._epoch_time is None:
            self._epoch_time, self._epoch_consumed = now, self.consumed
            return
        in_epoch = self.consumed - self._epoch_consumed
        if in_epoch <= self.window // 2 or rtt is None:
            return
        if now - self._epoch_time < 4 * (in_epoch / self.window) * rtt:
            self.window = min(2 * self.window, self.max_window)
        self._epoch_time, self._epoch_consumed = now, self.consumed


class SendCredit:
    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    def available(self) -> int:
        return self.limit - self.used

    def raise_to(self, limit: int) -> bool:
        """A MAX_* frame arrived; True when it granted more credit (limits never shrink)."""
        if limit > self.limit:
            self.limit = limit
            return True
        return False
