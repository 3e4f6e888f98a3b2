"""
The BBR-style congestion controller, alone (rate sampling, the windowed
filters, the mode machine) and on a simulated link against NewReno: random
loss, a clean link, a bandwidth change, a deep buffer, a longer path.
"""

import random

from hypothesis import given, strategies as st

from pilotproto.streams import StreamConnection
from pilotproto.streams.bbr import BBR, PROBE_RTT_PACKETS, WindowedMax
from pilotproto.streams.recovery import NewReno, SentPacket
from pilotproto.streams.simlink import Collector, SimClock, connected_pair

RTT = 0.010
LINK = 25e6  # bytes per second: 200 Mbit/s
PAYLOAD = 1118 / 1150  # stream bytes per byte on the wire


class Bulk:
    """One stream that always has data to send, from a to b over a simulated link."""

    def __init__(self, cc, seed=1, **link):
        link.setdefault("delay", RTT / 2)
        link.setdefault("bandwidth", LINK)
        self.clock = SimClock()
        self.sink = Collector(keep=False)

        def opened(stream, port):
            stream.set_handler(self.sink)
            return True

        self.a, self.b, self.ab, self.ba = connected_pair(
            self.clock, random.Random(seed), link=link, on_stream_opened_b=opened, congestion_control=cc
        )
        self.stream = self.a.open_stream(80)
        self.stream.set_handler(Collector(keep=False))
        self.stream.handler.resume_writing = self._pump
        self._chunk = bytes(64 * 1024)
        self._pump()

    def _pump(self):
        while not self.stream.writing_paused:
            self.stream.write(self._chunk)

    @property
    def cc(self):
        return self.a.cc

    def goodput(self, seconds: float) -> float:
        """Stream bytes per second delivered over the next ``seconds`` of simulated time."""
        before = self.sink.received
        self.clock.advance(seconds)
        return (self.sink.received - before) / seconds

    def sample_rtts(self, seconds: float, step: float = 0.005) -> list:
        rtts = []
        for _ in range(int(seconds / step)):
            self.clock.advance(step)
            rtts.append(self.a.recovery.latest_rtt)
        return rtts

    def set_bandwidth(self, bandwidth: float) -> None:
        self.ab.bandwidth = self.ba.bandwidth = bandwidth


LOSSY = dict(loss=0.10, reorder=0.10, reorder_delay=0.004)


def test_random_loss_does_not_collapse_the_rate():
    bbr = Bulk(BBR, **LOSSY).goodput(1.5)
    newreno = Bulk(NewReno, **LOSSY).goodput(1.5)
    assert bbr >= 20 * newreno, (bbr, newreno)
    assert bbr >= 0.5 * LINK * PAYLOAD  # most of the link, although one packet in ten is lost each way


def test_a_clean_link_is_used_at_least_as_well_as_newreno():
    bbr = Bulk(BBR).goodput(1.0)
    newreno = Bulk(NewReno).goodput(1.0)
    assert bbr >= 0.99 * newreno  # both fill the link; BBR without the losses (below)
    assert bbr >= 0.9 * LINK * PAYLOAD


def test_the_default_controller_is_bbr():
    conn = StreamConnection(SimClock(), lambda packet: None, True)
    assert isinstance(conn.cc, BBR)


def test_it_follows_the_bandwidth_down_and_back_up():
    flow = Bulk(BBR, queue_bytes=4 << 20)
    flow.clock.advance(1.0)
    slow = LINK / 5
    flow.set_bandwidth(slow)
    flow.clock.advance(2.0)  # the old estimate ages out of the 10-round filter
    assert flow.goodput(1.0) >= 0.85 * slow * PAYLOAD
    assert flow.cc.btl_bw < 1.3 * slow
    assert max(flow.sample_rtts(0.5)) < 4 * RTT  # the queue the old rate built has drained
    flow.set_bandwidth(LINK)
    flow.clock.advance(1.5)  # gain cycling finds the new bandwidth, 1.25x per cycle
    assert flow.goodput(1.0) >= 0.85 * LINK * PAYLOAD
    assert flow.cc.btl_bw > 0.9 * LINK


def test_a_deep_buffer_is_not_filled():
    deep = dict(queue_bytes=16 << 20)
    bbr = Bulk(BBR, **deep)
    bbr.clock.advance(1.0)
    rtts = bbr.sample_rtts(2.0)
    assert max(rtts) < 2.5 * RTT and bbr.ab.overflowed == 0
    newreno = Bulk(NewReno, **deep)  # the contrast: loss-based control fills whatever queue there is
    newreno.clock.advance(1.0)
    assert max(newreno.sample_rtts(2.0)) > 10 * RTT


def test_a_longer_path_is_measured_within_a_second():
    flow = Bulk(BBR, bandwidth=2e6)
    flow.clock.advance(1.0)
    assert abs(flow.cc.min_rtt - RTT) < 0.003
    flow.ab.delay = flow.ba.delay = 0.020  # moved from a direct path to a relay: 40 ms
    flow.clock.advance(1.0)
    assert 0.039 < flow.cc.min_rtt < 0.045
    # Not stuck at the old (4x smaller) BDP until the 10 s min_rtt window runs out.
    assert flow.goodput(1.0) >= 0.85 * 2e6 * PAYLOAD


def test_probe_rtt_drains_to_four_packets_every_ten_seconds():
    flow = Bulk(BBR, bandwidth=2e6)
    trace = []
    for _ in range(1200):
        flow.clock.advance(0.01)
        trace.append((flow.clock.now, flow.cc.mode, flow.cc.cwnd))
    probing = [(t, cwnd) for t, mode, cwnd in trace if mode == "probe_rtt"]
    assert probing, "never entered PROBE_RTT"
    start, end = probing[0][0], probing[-1][0]
    assert 9.5 < start < 11.0
    assert 0.19 <= end - start + 0.01 < 0.4  # 200 ms and a round
    assert max(cwnd for _, cwnd in probing) <= PROBE_RTT_PACKETS * flow.cc.max_packet
    assert trace[-1][1] == "probe_bw" and flow.cc.min_rtt_stamp >= start
    assert flow.goodput(0.5) >= 0.85 * 2e6 * PAYLOAD


def test_congestion_loss_with_a_queue_lowers_inflight_hi():
    # A buffer of ~2 BDP that a NewReno-like overshoot in STARTUP overflows.
    flow = Bulk(BBR, queue_bytes=400_000)
    flow.clock.advance(0.5)
    assert flow.cc.congested_rounds >= 1
    assert flow.cc.mode == "probe_bw" and flow.cc.filled_pipe
    assert flow.goodput(1.0) >= 0.9 * LINK * PAYLOAD


# -- the model, without a link ----------------------------------------------------


def _ack_clocked(cc, count, spacing, rtt, size=1000):
    """Send a packet every ``spacing`` seconds, each acknowledged ``rtt`` later, events in time order."""
    events = []
    for n in range(count):
        events.append((n * spacing, 0, SentPacket(n, n * spacing, size, [], n)))
        events.append((n * spacing + rtt, 1, events[-1][2]))
    for now, kind, packet in sorted(events, key=lambda e: (e[0], e[1])):
        if kind == 0:
            cc.on_packet_sent(packet, now)
        else:
            cc.on_acked(packet, limited=False)
            cc.on_ack_finished(now)


def _packets(cc, count, start, spacing, size=1000):
    out = []
    for n in range(count):
        packet = SentPacket(n, start + n * spacing, size, [], n)
        cc.on_packet_sent(packet, packet.time_sent)
        out.append(packet)
    return out


def test_the_delivery_rate_is_bytes_acked_over_the_sampled_interval():
    cc = BBR(1000)
    _ack_clocked(cc, 100, spacing=0.001, rtt=0.020)
    # 1000 bytes every millisecond, whatever the RTT
    assert abs(cc.btl_bw - 1e6) / 1e6 < 0.02
    assert abs(cc.min_rtt - 0.020) < 1e-9
    assert cc.bytes_in_flight == 0 and cc.delivered == 100_000


def test_app_limited_samples_do_not_lower_the_estimate():
    cc = BBR(1000)
    _ack_clocked(cc, 100, spacing=0.001, rtt=0.020)
    estimate = cc.btl_bw
    slow = [SentPacket(100 + n, 2.0 + 0.1 * n, 1000, [], 100 + n) for n in range(5)]
    for packet in slow:
        cc.on_app_limited()  # what the connection says when it sent all it had with window to spare
        cc.on_packet_sent(packet, packet.time_sent)
        cc.on_acked(packet, limited=True)
        cc.on_ack_finished(packet.time_sent + 0.020)
    assert cc.btl_bw == estimate


def test_random_loss_without_a_queue_leaves_the_window_alone():
    cc = BBR(1000)
    cc.min_rtt = 0.010
    cc.min_rtt_stamp = 0.0
    packets = _packets(cc, 20, start=0.0, spacing=0.0005)
    cwnd = cc.cwnd
    cc.on_lost(packets[:4], now=0.011, persistent=False)  # 20 % lost, RTT at its minimum
    for packet in packets[4:]:
        cc.on_acked(packet, limited=False)
    cc.on_ack_finished(0.0101 + packets[-1].time_sent)
    assert cc.congested_rounds == 0 and cc.inflight_hi == float("inf")
    assert cc.cwnd >= cwnd


def test_persistent_congestion_shrinks_the_window_but_keeps_the_model():
    cc = BBR(1000)
    _ack_clocked(cc, 100, spacing=0.001, rtt=0.020)
    bw, min_rtt = cc.btl_bw, cc.min_rtt
    lost = _packets(cc, 10, start=2.0, spacing=0.01)
    cc.on_lost(lost, now=3.0, persistent=True)
    assert cc.cwnd == cc.min_window and cc.bytes_in_flight == 0
    assert (cc.btl_bw, cc.min_rtt) == (bw, min_rtt)


def test_late_inputs_to_the_mode_machine_change_nothing():
    cc = BBR(1000)
    modes = cc._modes
    modes.queue_drained()
    modes.min_rtt_probed()
    assert cc.mode == "startup"
    modes.pipe_filled()
    assert cc.mode == "drain" and cc.filled_pipe
    modes.pipe_filled()
    modes.min_rtt_probed_early()
    modes.queue_drained()
    assert cc.mode == "probe_bw" and cc.cwnd_gain == 2.0
    modes.pipe_filled()
    modes.queue_drained()
    modes.min_rtt_expired()
    assert cc.mode == "probe_rtt"
    modes.min_rtt_expired()
    modes.pipe_filled()
    modes.min_rtt_probed()
    assert cc.mode == "probe_bw"


@given(st.lists(st.tuples(st.integers(0, 3), st.floats(0, 1e9)), max_size=60), st.integers(1, 12))
def test_windowed_max_is_the_max_of_the_last_window_rounds(steps, window):
    filt = WindowedMax(window)
    history = []
    round_count = 0
    for advance, value in steps:
        round_count += advance
        filt.update(value, round_count)
        history.append((round_count, value))
        recent = [v for r, v in history if r > round_count - window]
        assert filt.value == max(recent)
