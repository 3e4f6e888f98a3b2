"""
Loss detection and congestion control for stream packets (RFC 9002).

:class:`Recovery` tracks ack-eliciting packets in flight, estimates the
round-trip time, declares packets lost by packet threshold (3) or time
threshold (9/8 of the RTT), and computes the probe timeout.  It knows
nothing about frames: each :class:`SentPacket` carries an opaque ``items``
list that the connection interprets when the packet is acked or lost.

Reordering is not loss (RACK, RFC 8985 §6.2, and what quinn and Linux do):
a packet declared lost and then acknowledged after all was only late.  Each
such spurious loss raises the packet threshold to the reordering distance
seen (up to :data:`MAX_PACKET_THRESHOLD`) and the time threshold by an
eighth of the RTT (up to 2 RTTs), so a path that reorders stops costing
retransmissions and congestion responses; after
:data:`REORDER_DECAY_ROUNDS` RTTs (at least :data:`REORDER_DECAY_MIN` s)
without one, both fall back to RFC 9002's 3 packets and 9/8.

The congestion controller is pluggable: :class:`NewReno` here, a BBR-style
model in :mod:`pilotproto.streams.bbr`; :class:`Pacer` spreads sending at the
controller's ``pacing_rate``.  A controller provides ``cwnd``,
``bytes_in_flight``, ``can_send(size)``, ``on_packet_sent(packet, now)``,
``on_acked(packet, limited)``, ``on_lost(lost, now, persistent)``,
``on_ack_finished(now)``, ``on_app_limited()``, ``discard(packet)`` and
``pacing_rate(smoothed_rtt)``; and, for the bulk path, which handles a burst
of packets or the packets of one ACK at once, ``rate_snapshot(now)`` (the
``SentPacket.rate`` of the packets about to leave), ``on_burst_sent(size)``
and ``on_acked_packets(packets, limited)``.
"""

from __future__ import annotations

from collections import deque

PACKET_THRESHOLD = 3
TIME_THRESHOLD = 9 / 8
GRANULARITY = 0.001
INITIAL_RTT = 0.333
PERSISTENT_CONGESTION_THRESHOLD = 3
MAX_PACKET_THRESHOLD = 256
MAX_TIME_THRESHOLD = 2.0
#: lost packets remembered, to notice a late ACK of one (bounded; the oldest go first)
RECENT_LOST = 256
REORDER_DECAY_ROUNDS = 16
REORDER_DECAY_MIN = 2.0

IN_FLIGHT, ACKED, LOST = 0, 1, 2


class SentPacket:
    __slots__ = ("number", "time_sent", "size", "items", "state", "seq", "rate", "seq_gap")

    def __init__(self, number: int, time_sent: float, size: int, items, seq: int, rate: tuple | None = None):
        self.number = number
        self.time_sent = time_sent
        self.size = size
        #: what the packet's frames carried (a list or tuple of the connection's items)
        self.items = items
        self.state = IN_FLIGHT
        #: position among ack-eliciting packets: consecutive lost packets have consecutive seq
        self.seq = seq
        #: delivery-rate sampling (set by a controller that samples, see bbr.py): how much the
        #: connection had delivered, when, when the sending that led to it started, and whether
        #: the sender was app-limited, as this packet left; one tuple, shared by a burst's packets
        self.rate = (0, time_sent, time_sent, False) if rate is None else rate
        #: when declared lost: how many packet numbers past it were acknowledged
        self.seq_gap = 0


class NewReno:
    """RFC 9002 §7: slow start, congestion avoidance, one recovery period per loss event, persistent congestion."""

    name = "newreno"
    loss_reduction = 0.5

    def __init__(self, max_packet: int):
        self.max_packet = max_packet
        self.min_window = 2 * max_packet
        self.cwnd = min(10 * max_packet, max(14720, 2 * max_packet))
        self.ssthresh = float("inf")
        self.bytes_in_flight = 0
        self.recovery_start: float | None = None

    def on_sent(self, size: int) -> None:
        self.bytes_in_flight += size

    def on_packet_sent(self, packet: SentPacket, now: float) -> None:
        self.bytes_in_flight += packet.size

    def rate_snapshot(self, now: float) -> tuple:
        """NewReno samples no delivery rate: every packet of a burst gets the default."""
        return (0, now, now, False)

    def on_burst_sent(self, size: int) -> None:
        """Packets made with ``rate_snapshot`` left, ``size`` bytes in all."""
        self.bytes_in_flight += size

    def on_acked_packets(self, packets: list, limited: bool) -> None:
        for packet in packets:
            self.on_acked(packet, limited)

    def on_ack_finished(self, now: float) -> None:
        """Every packet of one ACK frame has been through ``on_lost``/``on_acked``."""

    def on_app_limited(self) -> None:
        """The sender ran out of data with window to spare (NewReno reads ``limited`` per ACK instead)."""

    def pacing_rate(self, smoothed_rtt: float) -> float:
        """Bytes per second: RFC 9002 §7.7's ``1.25 · cwnd / srtt``."""
        return 1.25 * self.cwnd / max(smoothed_rtt, 1e-4)

    def can_send(self, size: int) -> bool:
        return self.bytes_in_flight + size <= self.cwnd

    def on_acked(self, packet: SentPacket, limited: bool) -> None:
        self.bytes_in_flight -= packet.size
        if self.recovery_start is not None and packet.time_sent <= self.recovery_start:
            return
        if limited:
            # RFC 9002 §7.8: an under-used window says nothing about the path.
            return
        if self.cwnd < self.ssthresh:
            self.cwnd += packet.size
        else:
            self.cwnd += self.max_packet * packet.size / self.cwnd

    def on_lost(self, lost: list, now: float, persistent: bool) -> None:
        newest = 0.0
        for packet in lost:
            self.bytes_in_flight -= packet.size
            newest = max(newest, packet.time_sent)
        if self.recovery_start is None or newest > self.recovery_start:
            self.recovery_start = now
            self.ssthresh = max(self.cwnd * self.loss_reduction, self.min_window)
            self.cwnd = self.ssthresh
        if persistent:
            self.cwnd = self.min_window

    def discard(self, packet: SentPacket) -> None:
        self.bytes_in_flight -= packet.size


class Pacer:
    """A token bucket refilled at ``rate`` bytes/s; bursts up to ``capacity`` bytes.

    The bucket holds what may go in one ``granularity`` (2 ms; a Python
    reactor's timers fire no finer, and often later): at least
    ``rate x granularity``, and, as quinn sizes its bursts, the share of the
    window that one granularity is of the RTT, ``cwnd x granularity / srtt``;
    between 10 and 64 packets (more could overflow a small receive buffer).
    On a path whose RTT is below the timer granularity that is most of the
    window: pacing finer than the reactor can wake only starves the window
    and costs a wake-up per few packets."""

    def __init__(self, max_packet: int, burst_packets: int = 10, granularity: float = 0.002, gso_burst: int = 8,
                 max_burst_packets: int = 64):
        self.max_packet = max_packet
        self.max_burst_packets = max_burst_packets
        self.gso_burst = gso_burst
        self.burst_packets = burst_packets
        self.granularity = granularity
        self.capacity = burst_packets * max_packet
        self.tokens = float(self.capacity)
        self.rate = 0.0
        self.last: float | None = None

    def refill(self, now: float, rate: float, cwnd: float = 0.0, smoothed_rtt: float = 1.0) -> None:
        # Timers fire no finer than ``granularity``: let a bucket hold that much.
        self.rate = rate
        granularity = self.granularity
        share = cwnd * granularity / max(smoothed_rtt, 1e-6)
        self.capacity = max(
            self.burst_packets * self.max_packet,
            min(max(rate * granularity, share), self.max_burst_packets * self.max_packet),
        )
        if self.last is not None:
            self.tokens = min(self.capacity, self.tokens + (now - self.last) * rate)
        self.last = now

    def ready(self, size: int) -> bool:
        return self.tokens >= size

    def on_sent(self, size: int) -> None:
        self.tokens -= size

    def wait(self, size: int) -> float:
        """How long until a burst may go: enough tokens for ``gso_burst`` packets (or ``size``, if more).

        Waiting for a burst rather than one packet wakes the reactor less
        often, and hands the socket equal-size packets it can send with one
        segmentation-offload call."""
        if self.rate <= 0:
            return self.granularity
        want = max(size, min(self.capacity, self.gso_burst * self.max_packet))
        return max((want - self.tokens) / self.rate, 0.0005)


class Recovery:
    def __init__(self, controller, max_ack_delay: float = 0.025, initial_rtt: float = INITIAL_RTT):
        self.cc = controller
        self.max_ack_delay = max_ack_delay
        self.sent: deque[SentPacket] = deque()
        self.largest_acked = -1
        self.loss_time: float | None = None
        self.pto_count = 0
        self.last_eliciting_sent: float | None = None
        self.eliciting_in_flight = 0
        self.latest_rtt = 0.0
        self.smoothed_rtt = initial_rtt
        self.rttvar = initial_rtt / 2
        self.min_rtt = float("inf")
        self.first_rtt_sample: float | None = None
        self._seq = 0
        #: RACK-style adaptive thresholds (raised by spurious losses)
        self.packet_threshold = PACKET_THRESHOLD
        self.time_threshold = TIME_THRESHOLD
        self.spurious_losses = 0
        self._recent_lost: deque[SentPacket] = deque()
        self._reordering_at: float | None = None

    # -- sending -------------------------------------------------------------

    def on_sent(self, number: int, now: float, size: int, items: list) -> SentPacket:
        packet = SentPacket(number, now, size, items, self._seq)
        self._seq += 1
        self.sent.append(packet)
        self.eliciting_in_flight += 1
        self.last_eliciting_sent = now
        self.cc.on_packet_sent(packet, now)
        return packet

    def next_seq(self) -> int:
        """The ``seq`` of the next ack-eliciting packet (for a burst made outside :meth:`on_sent`)."""
        return self._seq

    def on_burst_sent(self, packets: list, now: float, size: int) -> None:
        """``packets`` (made with ``next_seq()`` onwards and the controller's ``rate_snapshot(now)``)
        left at ``now``, ``size`` bytes in all: :meth:`on_sent` for each, in one call."""
        self._seq += len(packets)
        self.sent.extend(packets)
        self.eliciting_in_flight += len(packets)
        self.last_eliciting_sent = now
        self.cc.on_burst_sent(size)

    # -- acknowledgements ----------------------------------------------------

    def on_ack(self, ranges: tuple, delay: float, now: float, limited: bool):
        """Apply one ACK frame; returns ``(newly_acked, lost)`` packet lists."""
        largest = ranges[0][1]
        if largest > self.largest_acked:
            self.largest_acked = largest
        ascending = ranges[::-1]
        acked = []
        sent = self.sent
        if len(ranges) == 1 and sent and sent[0].number >= ranges[0][0]:
            # The common ACK: one range from at or below the oldest packet kept.  Every packet up to
            # its top is acknowledged (or was declared lost): drop them now, which spares _trim.
            popleft = sent.popleft
            while sent and sent[0].number <= largest:
                packet = popleft()
                if packet.state == IN_FLIGHT:
                    packet.state = ACKED
                    acked.append(packet)
        else:
            j = 0
            last = len(ascending) - 1
            for packet in sent:
                number = packet.number
                if number > largest:
                    break
                while ascending[j][1] < number and j < last:
                    j += 1
                lo, hi = ascending[j]
                if lo <= number <= hi and packet.state == IN_FLIGHT:
                    packet.state = ACKED
                    acked.append(packet)
        late = self._late(ascending, now) if self._recent_lost else ()
        if not acked:
            return list(late), []
        self.eliciting_in_flight -= len(acked)
        newest = acked[-1]
        if newest.number == largest:
            self._update_rtt(now - newest.time_sent, delay, now)
        lost = self._detect_lost(now)
        cc = self.cc
        cc.on_acked_packets(acked, limited)
        cc.on_ack_finished(now)
        self._trim()
        self.pto_count = 0
        if late:
            acked.extend(late)  # their frames are acknowledged; the controller already counted them as lost
        return acked, lost

    def _late(self, ascending: list, now: float) -> list:
        """Packets declared lost that this ACK acknowledges: reordered, not lost.  Raises the thresholds."""
        late = []
        keep = deque()
        recent = self._recent_lost
        # A packet only late arrives within a few RTTs of being sent: forget older ones.
        horizon = now - 4 * max(self.smoothed_rtt, self.latest_rtt) - 4 * GRANULARITY
        while recent and recent[0].time_sent < horizon:
            recent.popleft()
        for packet in recent:
            number = packet.number
            for lo, hi in ascending:
                if lo <= number <= hi:
                    late.append(packet)
                    break
            else:
                keep.append(packet)
        if late:
            self._recent_lost = keep
            self.spurious_losses += len(late)
            self._reordering_at = now
            for packet in late:
                # How far behind it arrived: the largest acknowledged when it was declared lost.
                self.packet_threshold = min(MAX_PACKET_THRESHOLD, max(self.packet_threshold, packet.seq_gap + 1))
            self.time_threshold = min(MAX_TIME_THRESHOLD, self.time_threshold + 1 / 8)
        return late

    def _update_rtt(self, latest: float, ack_delay: float, now: float) -> None:
        self.latest_rtt = latest
        if self.first_rtt_sample is None:
            self.first_rtt_sample = now
            self.min_rtt = latest
            self.smoothed_rtt = latest
            self.rttvar = latest / 2
            return
        self.min_rtt = min(self.min_rtt, latest)
        ack_delay = min(ack_delay, self.max_ack_delay)
        adjusted = latest - ack_delay if latest >= self.min_rtt + ack_delay else latest
        self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.smoothed_rtt - adjusted)
        self.smoothed_rtt = 0.875 * self.smoothed_rtt + 0.125 * adjusted

    def _detect_lost(self, now: float) -> list:
        self.loss_time = None
        if self._reordering_at is not None and now - self._reordering_at > max(
            REORDER_DECAY_MIN, REORDER_DECAY_ROUNDS * self.smoothed_rtt
        ):
            self._reordering_at = None
            self.packet_threshold, self.time_threshold = PACKET_THRESHOLD, TIME_THRESHOLD
        delay = max(self.time_threshold * max(self.latest_rtt, self.smoothed_rtt), GRANULARITY)
        largest = self.largest_acked
        threshold = self.packet_threshold
        lost = []
        for packet in self.sent:
            if packet.number > largest:
                break
            if packet.state != IN_FLIGHT:
                continue
            # The same sum decides "lost" and sets the timer, so a timer never fires early by rounding.
            deadline = packet.time_sent + delay
            if deadline <= now or largest >= packet.number + threshold:
                packet.state = LOST
                packet.seq_gap = largest - packet.number
                lost.append(packet)
            else:
                if self.loss_time is None or deadline < self.loss_time:
                    self.loss_time = deadline
        if lost:
            self.eliciting_in_flight -= len(lost)
            self.cc.on_lost(lost, now, self._persistent(lost))
            recent = self._recent_lost
            recent.extend(lost)
            while len(recent) > RECENT_LOST:
                recent.popleft()
        return lost

    def _persistent(self, lost: list) -> bool:
        """RFC 9002 §7.6: a run of consecutive losses longer than the congestion period."""
        if self.first_rtt_sample is None:
            return False
        period = (
            self.smoothed_rtt + max(4 * self.rttvar, GRANULARITY) + self.max_ack_delay
        ) * PERSISTENT_CONGESTION_THRESHOLD
        start = None
        previous = None
        for packet in lost:
            if packet.time_sent < self.first_rtt_sample:
                start = None
                continue
            if start is None or packet.seq != previous.seq + 1:
                start = packet
            previous = packet
            if packet.time_sent - start.time_sent > period:
                return True
        return False

    def _trim(self) -> None:
        sent = self.sent
        while sent and sent[0].state != IN_FLIGHT:
            sent.popleft()

    # -- timers --------------------------------------------------------------

    def pto_interval(self) -> float:
        return (self.smoothed_rtt + max(4 * self.rttvar, GRANULARITY) + self.max_ack_delay) * (2**self.pto_count)

    def deadline(self) -> float | None:
        """When :meth:`on_timeout` should run next, or None."""
        if self.loss_time is not None:
            return self.loss_time
        if not self.eliciting_in_flight or self.last_eliciting_sent is None:
            return None
        return self.last_eliciting_sent + self.pto_interval()

    def on_timeout(self, now: float):
        """The loss timer fired: returns ``(lost, probe)``; ``probe`` asks for probe packets."""
        if self.loss_time is not None:
            lost = self._detect_lost(now)
            self._trim()
            return lost, False
        self.pto_count += 1
        return [], True

    def oldest_in_flight(self, count: int) -> list:
        out = []
        for packet in self.sent:
            if packet.state == IN_FLIGHT:
                out.append(packet)
                if len(out) == count:
                    break
        return out

    def discard_all(self) -> list:
        """Forget every packet in flight (the connection is closing)."""
        pending = [p for p in self.sent if p.state == IN_FLIGHT]
        for packet in pending:
            self.cc.discard(packet)
        self.sent.clear()
        self._recent_lost.clear()
        self.eliciting_in_flight = 0
        self.loss_time = None
        return pending
