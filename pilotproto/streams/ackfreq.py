"""
How often the peer should acknowledge our packets (draft-ietf-quic-ack-frequency).

Every ACK costs a packet each way: built, sealed, sent, received, opened and
parsed, all in Python.  Acking every 2nd packet (RFC 9000's default) spends
a third of the packets on a bulk transfer on ACKs; the sender, which knows
its congestion window and RTT, asks for fewer, while keeping enough of them
to clock its window: at least 4 ACKs per window, and one at least every
quarter RTT.  As quic-go, quinn and picoquic do, the request starts dense
(every 2nd packet, the receiver's default, during start-up while the window
is small) and thins as the window grows.

The receiver's side (applying a request) is
:meth:`pilotproto.streams.packets.ReceivedPackets.frequency_requested`.
"""

from __future__ import annotations

from . import frames

#: the receiver acknowledges at least every (MAX_THRESHOLD + 1)th ack-eliciting packet
MAX_THRESHOLD = 9
#: ACKs per congestion window (at least)
ACKS_PER_WINDOW = 4
#: the shortest delay we ask for: finer than this, reactor timers cannot keep it anyway
MIN_ACK_DELAY = 0.001


class AckFrequency:
    """The sender's side: what to ask the peer for, and when to ask again."""

    def __init__(self, max_packet: int, max_ack_delay: float, ack_every: int):
        self.max_packet = max_packet
        #: the most we ever ask the peer to wait (and what it waits before our first request)
        self.max_ack_delay = max_ack_delay
        #: what the peer does now, as far as we know (its defaults until a request is acknowledged)
        self.threshold = ack_every - 1
        self.delay = max_ack_delay
        self._sequence = -1
        self._asked_at: float | None = None
        #: a request to send: ``(threshold, delay)``, or None
        self.due: tuple[int, float] | None = None

    def target(self, cwnd: float, smoothed_rtt: float) -> tuple[int, float]:
        """``(threshold, delay)`` for a window of ``cwnd`` bytes and this RTT."""
        packets = int(cwnd // self.max_packet)
        threshold = max(1, min(MAX_THRESHOLD, packets // ACKS_PER_WINDOW - 1))
        delay = min(self.max_ack_delay, max(MIN_ACK_DELAY, smoothed_rtt / 4))
        return threshold, delay

    def on_ack(self, now: float, cwnd: float, smoothed_rtt: float) -> bool:
        """After an ACK updated the window and RTT: True when a new request became due.

        At most one request per RTT, and only for a real change (the
        threshold moved, or the delay by more than a quarter), so the
        frames cost nothing on a steady transfer."""
        if self._asked_at is not None and now - self._asked_at < smoothed_rtt:
            return False
        threshold, delay = self.target(cwnd, smoothed_rtt)
        current_threshold, current_delay = self.due or (self.threshold, self.delay)
        if threshold == current_threshold and abs(delay - current_delay) <= current_delay / 4:
            return False
        self.due = (threshold, delay)
        self._asked_at = now
        return True

    def frame(self) -> tuple[bytes, tuple]:
        """The ACK_FREQUENCY frame owed, and the item its packet carries (``due`` is cleared)."""
        threshold, delay = self.due
        self.due = None
        self._sequence += 1
        delay_us = int(delay * 1e6)
        frame = frames.encode_frame(frames.AckFrequency(self._sequence, threshold, delay_us, 1))
        return frame, (self._sequence, threshold, delay_us / 1e6)

    def acked(self, request: tuple) -> float | None:
        """A request was acknowledged: the peer follows it now.  The new ack delay, if it is the latest."""
        sequence, threshold, delay = request
        if sequence != self._sequence:
            return None
        self.threshold, self.delay = threshold, delay
        return delay

    def lost(self, request: tuple) -> None:
        """A request was lost: ask again (with a new sequence number) unless a newer one went out."""
        sequence, threshold, delay = request
        if sequence == self._sequence and self.due is None:
            self.due = (threshold, delay)
