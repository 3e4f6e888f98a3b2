"""
A BBR-style congestion controller: a model of the path, not a reaction to loss.

NewReno reads every lost packet as congestion and halves its window, so a
path that merely drops packets at random (a bad radio link, a lossy relay)
never gets more than a few packets per round trip.  BBR (Cardwell et al.,
"BBR: Congestion-Based Congestion Control", ACM Queue 2016, and the IETF
``draft-cardwell-iccrg-bbr-congestion-control`` drafts) instead measures the
two numbers that bound a path:

* the bottleneck bandwidth ``btl_bw``: the largest delivery rate seen over
  the last :data:`BW_WINDOW_ROUNDS` round trips (rate samples as in
  ``draft-cheng-iccrg-delivery-rate-estimation``: every packet remembers how
  much had been delivered, and when, at the moment it was sent);
* the round-trip propagation time ``min_rtt``: the smallest RTT seen over
  :data:`MIN_RTT_WINDOW` seconds;

and sends at ``pacing_gain × btl_bw`` with at most ``cwnd_gain × btl_bw ×
min_rtt`` (the bandwidth-delay product, BDP) in flight.  The gains follow a
small state machine (STARTUP → DRAIN → PROBE_BW ⇄ PROBE_RTT, see
:class:`_Modes`).

Loss is a congestion signal only when it comes with a queue, as in BBRv2: a
round trip that lost more than :data:`LOSS_THRESHOLD` of its data *and* whose
smallest RTT stood above ``QUEUE_RTT_FACTOR × min_rtt`` lowers an upper bound
on data in flight (``inflight_hi``) to :data:`INFLIGHT_BETA` of what the path
held; the bound then grows back exponentially while probing.  Random loss on
an unqueued path changes nothing but the retransmissions.

The interface is :class:`~pilotproto.streams.recovery.NewReno`'s, plus the
hooks :class:`~pilotproto.streams.recovery.Recovery` and the connection call
for every controller: ``on_packet_sent``, ``on_ack_finished``,
``on_app_limited`` and ``pacing_rate``.
"""

from __future__ import annotations

import math
from collections import deque

from automat import MethodicalMachine

from .recovery import GRANULARITY

STARTUP_GAIN = 2 / math.log(2)  # the smallest gain that doubles the delivery rate each round
DRAIN_GAIN = 1 / STARTUP_GAIN
CWND_GAIN = 2.0
#: PROBE_BW's pacing gains, one per phase of about one min_rtt: probe up, drain what that queued, cruise
PROBE_BW_GAINS = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
#: where PROBE_BW starts its cycle: cruising, so a fresh DRAIN is not followed by another probe at once
PROBE_BW_FIRST_PHASE = 2
BW_WINDOW_ROUNDS = 10
MIN_RTT_WINDOW = 10.0
PROBE_RTT_DURATION = 0.2
PROBE_RTT_PACKETS = 4
MIN_CWND_PACKETS = 4
#: room above cwnd_gain × BDP for delayed and aggregated acknowledgements
EXTRA_CWND_PACKETS = 3
FULL_BW_GROWTH = 1.25
FULL_BW_ROUNDS = 3
LOSS_THRESHOLD = 0.02
QUEUE_RTT_FACTOR = 1.25
INFLIGHT_BETA = 0.7
#: in PROBE_BW, a round whose *smallest* RTT is this far above min_rtt cannot be our own queue (cwnd
#: caps that at about one BDP): the path got longer, so min_rtt is stale long before MIN_RTT_WINDOW
PATH_CHANGE_RTT_FACTOR = 2.5
PATH_CHANGE_ROUNDS = 3
#: ... and this much above it in absolute terms: on a sub-millisecond path a Python reactor's own
#: latency under load (and the peer's ack delay, at least 1 ms) is more than 2.5 x min_rtt, which
#: is no path change; taking it for one ran PROBE_RTT (4 packets for 200 ms) over and over
PATH_CHANGE_MARGIN = 0.005
#: ACK aggregation: how many rounds the extra-acked estimate remembers, and its cap in time at btl_bw
EXTRA_ACKED_ROUNDS = 10
EXTRA_ACKED_MAX_TIME = 0.1


class WindowedMax:
    """The largest value seen over the last ``window`` rounds (a monotonic deque: O(1) amortised)."""

    def __init__(self, window: int):
        self.window = window
        self._samples: deque = deque()  # (round, value), values strictly decreasing

    @property
    def value(self) -> float:
        return self._samples[0][1] if self._samples else 0.0

    def update(self, value: float, round_count: int) -> None:
        samples = self._samples
        while samples and samples[-1][1] <= value:
            samples.pop()
        samples.append((round_count, value))
        oldest = round_count - self.window
        while samples[0][0] <= oldest:
            samples.popleft()


class _Modes:
    """STARTUP / DRAIN / PROBE_BW / PROBE_RTT.  Inputs are fed only on a
    transition's condition (checked per ACK by :class:`BBR`), so the
    per-ACK path never pays for the machine."""

    _machine = MethodicalMachine()

    def __init__(self, bbr: "BBR"):
        self._bbr = bbr

    @_machine.state(initial=True)
    def startup(self):
        "doubling the sending rate each round until the bandwidth stops growing"

    @_machine.state()
    def drain(self):
        "pacing below the bandwidth until the queue STARTUP built is gone"

    @_machine.state()
    def probe_bw(self):
        "cruising at the bandwidth, probing above it one round in eight"

    @_machine.state()
    def probe_rtt(self):
        "holding 4 packets in flight for 200 ms to measure the empty-queue RTT"

    @_machine.input()
    def pipe_filled(self):
        "the bandwidth stopped growing for 3 rounds, or a round was congested"

    @_machine.input()
    def queue_drained(self):
        "no more than one BDP is in flight"

    @_machine.input()
    def min_rtt_expired(self):
        "min_rtt has not been seen again for MIN_RTT_WINDOW seconds"

    @_machine.input()
    def min_rtt_probed(self):
        "PROBE_RTT lasted long enough, and the pipe had been filled before"

    @_machine.input()
    def min_rtt_probed_early(self):
        "PROBE_RTT lasted long enough, but STARTUP had not finished"

    @_machine.output()
    def _fill(self):
        self._bbr.filled_pipe = True

    @_machine.output()
    def _enter_startup(self):
        self._bbr.set_mode("startup", STARTUP_GAIN, STARTUP_GAIN)

    @_machine.output()
    def _enter_drain(self):
        self._bbr.set_mode("drain", DRAIN_GAIN, STARTUP_GAIN)

    @_machine.output()
    def _enter_probe_bw(self):
        self._bbr.set_mode("probe_bw", PROBE_BW_GAINS[PROBE_BW_FIRST_PHASE], CWND_GAIN)
        self._bbr.start_cycle()

    @_machine.output()
    def _enter_probe_rtt(self):
        self._bbr.set_mode("probe_rtt", 1.0, 1.0)
        self._bbr.start_probe_rtt()

    @_machine.output()
    def _leave_probe_rtt(self):
        self._bbr.finish_probe_rtt()

    startup.upon(pipe_filled, enter=drain, outputs=[_fill, _enter_drain])
    startup.upon(queue_drained, enter=startup, outputs=[])
    startup.upon(min_rtt_expired, enter=probe_rtt, outputs=[_enter_probe_rtt])
    startup.upon(min_rtt_probed, enter=startup, outputs=[])
    startup.upon(min_rtt_probed_early, enter=startup, outputs=[])

    drain.upon(pipe_filled, enter=drain, outputs=[])
    drain.upon(queue_drained, enter=probe_bw, outputs=[_enter_probe_bw])
    drain.upon(min_rtt_expired, enter=probe_rtt, outputs=[_enter_probe_rtt])
    drain.upon(min_rtt_probed, enter=drain, outputs=[])
    drain.upon(min_rtt_probed_early, enter=drain, outputs=[])

    probe_bw.upon(pipe_filled, enter=probe_bw, outputs=[])
    probe_bw.upon(queue_drained, enter=probe_bw, outputs=[])
    probe_bw.upon(min_rtt_expired, enter=probe_rtt, outputs=[_enter_probe_rtt])
    probe_bw.upon(min_rtt_probed, enter=probe_bw, outputs=[])
    probe_bw.upon(min_rtt_probed_early, enter=probe_bw, outputs=[])

    probe_rtt.upon(pipe_filled, enter=probe_rtt, outputs=[])
    probe_rtt.upon(queue_drained, enter=probe_rtt, outputs=[])
    probe_rtt.upon(min_rtt_expired, enter=probe_rtt, outputs=[])
    probe_rtt.upon(min_rtt_probed, enter=probe_bw, outputs=[_leave_probe_rtt, _enter_probe_bw])
    probe_rtt.upon(min_rtt_probed_early, enter=startup, outputs=[_leave_probe_rtt, _enter_startup])


class BBR:
    """The controller: ``BBR(max_packet)``, handed to ``StreamConnection(congestion_control=BBR)``."""

    name = "bbr"

    def __init__(self, max_packet: int):
        self.max_packet = max_packet
        self.min_window = MIN_CWND_PACKETS * max_packet
        self.initial_window = min(10 * max_packet, max(14720, 2 * max_packet))
        self.cwnd = float(self.initial_window)
        self.bytes_in_flight = 0
        # delivery-rate sampling
        self.delivered = 0
        self.delivered_time = 0.0
        self.first_sent_time = 0.0
        self.app_limited_until = 0
        self._ack_reset()
        # the model
        self.bw = WindowedMax(BW_WINDOW_ROUNDS)
        self.extra_acked = WindowedMax(EXTRA_ACKED_ROUNDS)
        self._ack_epoch_start = 0.0
        self._ack_epoch_acked = 0
        self.min_rtt = math.inf
        self.min_rtt_stamp = 0.0
        self.round_count = 0
        self._next_round_delivered = 0
        self._round_reset(0)
        self.filled_pipe = False
        self._full_bw = 0.0
        self._full_bw_rounds = 0
        self.inflight_hi = math.inf
        self._probe_up_packets = 1
        self.congested_rounds = 0
        self._rounds_above = 0
        self._pacing_rate = 0.0
        # the state machine's outputs set these
        self.mode = "startup"
        self.pacing_gain = STARTUP_GAIN
        self.cwnd_gain = STARTUP_GAIN
        self.phase = PROBE_BW_FIRST_PHASE
        self._phase_start = 0.0
        self._probe_rtt_done_at: float | None = None
        self._probe_rtt_round = 0
        self._prior_cwnd = 0.0
        self._modes = _Modes(self)

    # -- what the state machine calls ----------------------------------------

    def set_mode(self, mode: str, pacing_gain: float, cwnd_gain: float) -> None:
        self.mode = mode
        self.pacing_gain = pacing_gain
        self.cwnd_gain = cwnd_gain

    def start_cycle(self) -> None:
        self.phase = PROBE_BW_FIRST_PHASE
        self._phase_start = self.delivered_time

    def start_probe_rtt(self) -> None:
        self._prior_cwnd = max(self._prior_cwnd, self.cwnd)
        self._probe_rtt_done_at = None

    def finish_probe_rtt(self) -> None:
        self.min_rtt_stamp = self.delivered_time
        self.cwnd = max(self.cwnd, self._prior_cwnd)
        self._prior_cwnd = 0.0

    # -- the controller interface ------------------------------------------------

    @property
    def btl_bw(self) -> float:
        return self.bw.value

    def bdp(self) -> float:
        bw = self.bw.value
        if not bw or self.min_rtt == math.inf:
            return float(self.initial_window)
        return bw * self.min_rtt

    def can_send(self, size: int) -> bool:
        return self.bytes_in_flight + size <= self.cwnd

    def pacing_rate(self, smoothed_rtt: float) -> float:
        if not self._pacing_rate:
            # No rate sample yet: spread the initial window over the RTT estimate.
            return STARTUP_GAIN * self.cwnd / max(smoothed_rtt, GRANULARITY)
        return self._pacing_rate

    def on_packet_sent(self, packet, now: float) -> None:
        packet.rate = self.rate_snapshot(now)
        self.on_burst_sent(packet.size)

    def rate_snapshot(self, now: float) -> tuple:
        """What a packet leaving now remembers for its rate sample (``SentPacket.rate``).

        Nothing is acknowledged between the packets of one burst, so they all share it."""
        if self.bytes_in_flight == 0:
            # Nothing in flight: a rate sample must not span the idle time.
            self.first_sent_time = self.delivered_time = now
        return (self.delivered, self.delivered_time, self.first_sent_time, self.app_limited_until > 0)

    def on_burst_sent(self, size: int) -> None:
        """Packets made with ``rate_snapshot`` left, ``size`` bytes in all."""
        self.bytes_in_flight += size
        if self.bytes_in_flight > self._round_max_inflight:
            self._round_max_inflight = self.bytes_in_flight

    def on_sent(self, size: int) -> None:
        self.bytes_in_flight += size

    def on_app_limited(self) -> None:
        """The sender ran out of data (or flow credit) with window to spare."""
        self.app_limited_until = max(self.delivered + self.bytes_in_flight, 1)

    def on_acked(self, packet, limited: bool) -> None:
        self.on_acked_packets((packet,), limited)

    def on_acked_packets(self, packets, limited: bool) -> None:
        """``packets`` (in the order they were sent) were acknowledged by one ACK frame."""
        size = 0
        for packet in packets:
            size += packet.size
        self.bytes_in_flight -= size
        self.delivered += size
        self._acked += size
        # The newest packet acknowledged gives the rate sample: packets are acked in send order,
        # and what each remembers as delivered never falls from one packet to the next.
        newest = packets[-1]
        delivered, delivered_time, first_sent_time, app_limited = newest.rate
        if delivered >= self._rs_prior_delivered:
            self._rs_prior_delivered = delivered
            self._rs_prior_time = delivered_time
            self._rs_send_elapsed = newest.time_sent - first_sent_time
            self._rs_app_limited = app_limited
            self._rs_newest_sent = newest.time_sent
            self.first_sent_time = newest.time_sent

    def on_lost(self, lost: list, now: float, persistent: bool) -> None:
        for packet in lost:
            self.bytes_in_flight -= packet.size
            self._round_lost += packet.size
        self._lost_this_ack = True
        if persistent:
            # Everything sent for several PTOs vanished: start again from a small window, keep the model.
            self.cwnd = float(self.min_window)

    def discard(self, packet) -> None:
        self.bytes_in_flight -= packet.size

    def on_ack_finished(self, now: float) -> None:
        """One ACK frame's packets were all reported: update the model, then the gains and the window."""
        acked = self._acked
        if not acked:
            self._ack_reset()
            return
        self.delivered_time = now
        if self.app_limited_until and self.delivered > self.app_limited_until:
            self.app_limited_until = 0
        round_start = self._rs_prior_delivered >= self._next_round_delivered
        if round_start:
            self._next_round_delivered = self.delivered
            self.round_count += 1
        self._update_min_rtt(now, now - self._rs_newest_sent)
        self._update_bw(now)
        self._update_ack_aggregation(now, acked)
        if round_start:
            self._end_round()
        self._update_mode(now)
        self._update_cwnd(acked)
        rate = self.pacing_gain * self.bw.value
        if self.filled_pipe or rate > self._pacing_rate:
            self._pacing_rate = rate
        self._ack_reset()

    # -- the model -----------------------------------------------------------

    def _ack_reset(self) -> None:
        self._acked = 0
        self._rs_prior_delivered = -1
        self._rs_prior_time = 0.0
        self._rs_send_elapsed = 0.0
        self._rs_app_limited = False
        self._rs_newest_sent = 0.0
        self._lost_this_ack = False

    def _round_reset(self, delivered: int) -> None:
        self._round_lost = 0
        self._round_delivered_from = delivered
        self._round_min_rtt = math.inf
        self._round_max_inflight = self.bytes_in_flight

    def _update_min_rtt(self, now: float, rtt: float) -> None:
        if rtt < self._round_min_rtt:
            self._round_min_rtt = rtt
        expired = self.min_rtt != math.inf and now - self.min_rtt_stamp > MIN_RTT_WINDOW
        if rtt <= self.min_rtt or expired:
            self.min_rtt = rtt
            self.min_rtt_stamp = now
        if expired and self.mode != "probe_rtt":
            self._modes.min_rtt_expired()

    def _update_bw(self, now: float) -> None:
        interval = max(self._rs_send_elapsed, now - self._rs_prior_time)
        # A sample shorter than min_rtt reflects ACK compression, not the path.
        if interval <= 0 or interval < self.min_rtt:
            return
        rate = (self.delivered - self._rs_prior_delivered) / interval
        if not self._rs_app_limited or rate >= self.bw.value:
            self.bw.update(rate, self.round_count)

    def _update_ack_aggregation(self, now: float, acked: int) -> None:
        """How far ACKs run ahead of ``btl_bw`` (a receiver or reactor that acknowledges in bursts).

        A window of ``cwnd_gain × BDP`` assumes ACKs arrive smoothly; when they come in bursts the
        sender sits idle between them.  Like BBR's ``extra_acked``, the most data acknowledged
        beyond what the bandwidth explains, within one epoch, is added to the window.
        """
        bw = self.bw.value
        expected = bw * (now - self._ack_epoch_start)
        if self._ack_epoch_acked <= expected:
            # ACKs are not ahead of the model: start a new epoch here.
            self._ack_epoch_acked = 0
            self._ack_epoch_start = now
            expected = 0.0
        self._ack_epoch_acked += acked
        extra = min(self._ack_epoch_acked - expected, self.cwnd, bw * EXTRA_ACKED_MAX_TIME)
        self.extra_acked.update(extra, self.round_count)

    def _end_round(self) -> None:
        lost = self._round_lost
        delivered = self.delivered - self._round_delivered_from
        congested = lost > LOSS_THRESHOLD * (lost + delivered) and (
            self._round_min_rtt > QUEUE_RTT_FACTOR * self.min_rtt + GRANULARITY
        )
        if congested:
            self.congested_rounds += 1
            self.inflight_hi = max(float(self.min_window), INFLIGHT_BETA * self._round_max_inflight)
            self._probe_up_packets = 1
        elif self.inflight_hi != math.inf and self._round_max_inflight + self.max_packet >= self.inflight_hi:
            # Pressing against the bound without congestion: raise it, faster each round.
            self.inflight_hi += self._probe_up_packets * self.max_packet
            self._probe_up_packets *= 2
            if self.inflight_hi > 4 * CWND_GAIN * self.bdp():
                self.inflight_hi = math.inf
        if self.mode == "probe_bw" and self._round_min_rtt > PATH_CHANGE_RTT_FACTOR * self.min_rtt + PATH_CHANGE_MARGIN:
            self._rounds_above += 1
            if self._rounds_above >= PATH_CHANGE_ROUNDS and self.mode != "probe_rtt":
                # Re-measure now, in PROBE_RTT, instead of crawling at the old BDP for seconds.
                self._rounds_above = 0
                self.min_rtt = self._round_min_rtt
                self.min_rtt_stamp = self.delivered_time
                self._modes.min_rtt_expired()
        else:
            self._rounds_above = 0
        if self.mode == "startup":
            if congested:
                self._modes.pipe_filled()
            elif not self._rs_app_limited:
                bw = self.bw.value
                if bw >= self._full_bw * FULL_BW_GROWTH:
                    self._full_bw = bw
                    self._full_bw_rounds = 0
                else:
                    self._full_bw_rounds += 1
                    if self._full_bw_rounds >= FULL_BW_ROUNDS:
                        self._modes.pipe_filled()
        self._round_reset(self.delivered)

    def _update_mode(self, now: float) -> None:
        mode = self.mode
        if mode == "drain":
            if self.bytes_in_flight <= self.bdp():
                self._modes.queue_drained()
        elif mode == "probe_bw":
            self._advance_cycle(now)
        elif mode == "probe_rtt":
            # Four packets in flight says nothing about the bandwidth: keep those samples out of the filter.
            self.on_app_limited()
            if self._probe_rtt_done_at is None:
                if self.bytes_in_flight <= PROBE_RTT_PACKETS * self.max_packet:
                    self._probe_rtt_done_at = now + PROBE_RTT_DURATION
                    self._probe_rtt_round = self.round_count
            elif now >= self._probe_rtt_done_at and self.round_count > self._probe_rtt_round:
                if self.filled_pipe:
                    self._modes.min_rtt_probed()
                else:
                    self._modes.min_rtt_probed_early()

    def _advance_cycle(self, now: float) -> None:
        elapsed = now - self._phase_start
        min_rtt = self.min_rtt
        gain = self.pacing_gain
        if gain > 1.0:
            # Probe until the extra data is really in flight, loss says stop, or it has gone on too long.
            done = elapsed > min_rtt and (
                self._lost_this_ack or self.bytes_in_flight >= gain * self.bdp() or elapsed > 2 * min_rtt
            )
        elif gain < 1.0:
            done = elapsed > min_rtt or self.bytes_in_flight <= self.bdp()
        else:
            done = elapsed > min_rtt
        if done:
            self.phase = (self.phase + 1) % len(PROBE_BW_GAINS)
            self._phase_start = now
            self.pacing_gain = PROBE_BW_GAINS[self.phase]

    def _update_cwnd(self, acked: int) -> None:
        target = self.cwnd_gain * self.bdp() + EXTRA_CWND_PACKETS * self.max_packet
        if self.filled_pipe:
            target += self.extra_acked.value
        if target > self.inflight_hi:
            target = self.inflight_hi
        cwnd = self.cwnd
        if self.filled_pipe:
            cwnd = min(cwnd + acked, target)
        elif cwnd < target or self.delivered < self.initial_window:
            cwnd += acked
        if cwnd < self.min_window:
            cwnd = self.min_window
        if self.mode == "probe_rtt":
            cwnd = min(cwnd, PROBE_RTT_PACKETS * self.max_packet)
        self.cwnd = cwnd
