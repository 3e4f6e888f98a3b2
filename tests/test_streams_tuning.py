"""
Transport tuning: acknowledgement frequency (draft-ietf-quic-ack-frequency),
the RACK-style adaptive reordering threshold, receive windows that grow
with the bandwidth-delay product, probes acknowledged at once, and bursts
handed to a batch sender.  No reactor: a heap clock drives everything.
"""

import hashlib
import random

from pilotproto.streams import StreamConnection, frames
from pilotproto.streams.ackfreq import MAX_THRESHOLD, AckFrequency
from pilotproto.streams.connection import STREAM_WINDOW_START
from pilotproto.streams.flow import ReceiveWindow
from pilotproto.streams.packets import ReceivedPackets
from pilotproto.streams.recovery import (
    PACKET_THRESHOLD,
    REORDER_DECAY_MIN,
    TIME_THRESHOLD,
    NewReno,
    Recovery,
)
from pilotproto.streams.simlink import Collector, SimClock, SimPipe, connected_pair

MiB = 1024 * 1024


def transfer(size, link, seed=1, **options):
    """One stream of ``size`` bytes a -> b over a simulated link; returns (a, b, receiving stream, collector)."""
    clock = SimClock()
    rng = random.Random(seed)
    got = {}

    def opened(stream, port):
        got["stream"] = stream
        got["sink"] = Collector(keep=False)
        stream.set_handler(got["sink"])
        return True

    a, b, _, _ = connected_pair(clock, rng, link=link, on_stream_opened_b=opened, **options)
    stream = a.open_stream(80)
    stream.set_handler(Collector(keep=False))
    data = random.Random(seed).randbytes(size)
    stream.write(data)
    stream.close_write()
    assert clock.run_until(lambda: "sink" in got and got["sink"].received == size, 120.0)
    assert got["sink"].hash.digest() == hashlib.sha256(data).digest()
    return a, b, got["stream"], got["sink"]


# -- acknowledgement frequency ----------------------------------------------------------


def test_the_receiver_acks_every_2nd_packet_until_asked_otherwise():
    received = ReceivedPackets(ack_every=2, max_ack_delay=0.025)
    received.record(0, True, 0.0)
    assert not received.ack_now
    received.record(1, True, 0.0)
    assert received.ack_now


def test_an_ack_frequency_request_sets_the_threshold_and_the_delay():
    received = ReceivedPackets(ack_every=2, max_ack_delay=0.025)
    assert received.frequency_requested(0, 7, 2000, 1, local_max_delay=0.025)
    assert received.max_ack_delay == 0.002
    for number in range(7):
        received.record(number, True, 0.0)
        assert not received.ack_now, number
    received.record(7, True, 0.0)  # the 8th: acknowledged at once
    assert received.ack_now
    received.ack_sent()
    # An older request (reordered) changes nothing; a delay above our own maximum is capped.
    assert not received.frequency_requested(0, 1, 2000, 1, local_max_delay=0.025)
    assert received.frequency_requested(1, 3, 90_000, 1, local_max_delay=0.025)
    assert received.ack_every == 4 and received.max_ack_delay == 0.025


def test_a_gap_is_acknowledged_at_once_whatever_the_threshold():
    received = ReceivedPackets(ack_every=2)
    received.frequency_requested(0, 9, 5000, 1, local_max_delay=0.025)
    received.record(0, True, 0.0)
    received.record(2, True, 0.0)  # 1 is missing
    assert received.ack_now
    # ... unless the peer asked for no immediate ACK on reordering
    quiet = ReceivedPackets(ack_every=2)
    quiet.frequency_requested(0, 9, 5000, 0, local_max_delay=0.025)
    quiet.record(0, True, 0.0)
    quiet.record(2, True, 0.0)
    assert not quiet.ack_now


def test_the_sender_asks_for_4_acks_per_window_at_most_every_10th_packet_and_a_quarter_rtt():
    policy = AckFrequency(max_packet=1000, max_ack_delay=0.025, ack_every=2)
    assert policy.target(cwnd=10_000, smoothed_rtt=0.040) == (1, 0.010)  # small window: every 2nd packet
    assert policy.target(cwnd=24_000, smoothed_rtt=0.040) == (5, 0.010)  # 24 packets: every 6th
    assert policy.target(cwnd=1_000_000, smoothed_rtt=0.400) == (MAX_THRESHOLD, 0.025)
    assert policy.target(cwnd=1_000_000, smoothed_rtt=0.0001)[1] == 0.001
    # Asked once per RTT at most, and only for a real change.
    assert policy.on_ack(0.0, 100_000, 0.040)
    frame, request = policy.frame()
    assert frames.decode_packet(frames.encode_header(1, 2, 3) + frame).frames == (
        frames.AckFrequency(0, MAX_THRESHOLD, 10_000, 1),
    )
    assert not policy.on_ack(0.010, 10_000, 0.040)  # within an RTT of the last request
    assert policy.acked(request) == 0.010
    assert not policy.on_ack(0.100, 100_000, 0.041)  # nothing changed enough
    # A lost request is asked again (with a new sequence number).
    assert policy.on_ack(0.200, 10_000, 0.040)
    _, request = policy.frame()
    policy.lost(request)
    assert policy.due == (1, 0.010)


def test_a_bulk_transfer_sends_far_fewer_acks_than_packets():
    link = dict(delay=0.005, bandwidth=100e6)
    a, b, _, _ = transfer(8 * MiB, link)
    dense_a, dense_b, _, _ = transfer(8 * MiB, link, ack_frequency=False)
    # Every 2nd packet without the extension; with it, at most every ~10th once the window is open.
    assert dense_b.stats["packets_sent"] > 0.4 * dense_a.stats["packets_sent"]
    assert b.stats["packets_sent"] < 0.2 * a.stats["packets_sent"]
    assert b.received.ack_every == MAX_THRESHOLD + 1
    assert b.received.max_ack_delay < 0.025  # a quarter RTT (10 ms), not the 25 ms default
    assert a.recovery.max_ack_delay == b.received.max_ack_delay


def test_a_probe_carries_a_ping_and_is_acknowledged_at_once():
    clock = SimClock()
    sent = []
    conn = StreamConnection(clock, sent.append, True, random=random.Random(1))
    conn.open_stream(80).write(b"x" * 100)
    clock.advance(0)
    assert len(sent) == 1
    clock.advance(2.0)  # no ACK: the probe timeout fires and probes with the data again
    probes = [frames.decode_packet(p) for p in sent[1:]]
    assert probes and all(any(type(f) is frames.Ping for f in p.frames) for p in probes)
    receiver = StreamConnection(clock, lambda p: None, False, on_stream_opened=lambda s, port: True,
                                random=random.Random(2))  # fmt: skip
    receiver.received.frequency_requested(0, 9, 25_000, 1, local_max_delay=0.025)
    receiver.packet_received(sent[-1])
    assert receiver.stats["packets_sent"] == 1  # the ACK left at once, no delayed-ack timer


# -- adaptive reordering threshold ---------------------------------------------------------


def send(recovery, numbers, now=0.0):
    for n in numbers:
        recovery.on_sent(n, now, 1000, [])


def test_a_late_ack_of_a_lost_packet_raises_the_reordering_threshold():
    recovery = Recovery(NewReno(1000))
    send(recovery, range(10))
    acked, lost = recovery.on_ack(((3, 9),), 0.0, 0.010, False)
    assert [p.number for p in lost] == [0, 1, 2]
    assert recovery.packet_threshold == PACKET_THRESHOLD
    acked, lost = recovery.on_ack(((3, 9), (0, 0)), 0.0, 0.011, False)  # 0 was only late
    assert [p.number for p in acked] == [0] and lost == []
    assert recovery.spurious_losses == 1
    assert recovery.packet_threshold == 10  # 9 packets above it were acknowledged when it was declared lost
    assert recovery.time_threshold == TIME_THRESHOLD + 1 / 8
    # The same reordering no longer counts as loss.
    send(recovery, range(10, 20), now=0.011)
    _, lost = recovery.on_ack(((12, 19), (3, 9), (0, 0)), 0.0, 0.0111, False)
    assert lost == []


def test_the_reordering_threshold_falls_back_when_reordering_stops():
    recovery = Recovery(NewReno(1000))
    send(recovery, range(10))
    recovery.on_ack(((3, 9),), 0.0, 0.010, False)
    recovery.on_ack(((3, 9), (0, 0)), 0.0, 0.011, False)
    assert recovery.packet_threshold == 10
    later = 0.011 + REORDER_DECAY_MIN + 0.1
    send(recovery, range(10, 20), now=later)
    _, lost = recovery.on_ack(((15, 19),), 0.0, later + 0.001, False)
    assert recovery.packet_threshold == PACKET_THRESHOLD
    assert [p.number for p in lost][:3] == [10, 11, 12]


def test_a_reordering_link_retransmits_less_than_a_fixed_threshold_would():
    link = dict(delay=0.005, bandwidth=50e6, reorder=0.2, reorder_delay=0.004)
    a, _, _, _ = transfer(8 * MiB, link, seed=3)
    assert a.recovery.spurious_losses > 0
    assert a.recovery.packet_threshold > PACKET_THRESHOLD
    # No real loss on this link: once the threshold adapted, few packets are declared lost.
    assert a.stats["packets_lost"] < 0.05 * a.stats["packets_sent"]


# -- receive windows that grow with the bandwidth-delay product ------------------------------


class FakeTuner:
    def __init__(self, rtt):
        self.time = 0.0
        self._rtt = rtt

    def now(self):
        return self.time

    def rtt(self):
        return self._rtt


def test_a_window_consumed_within_two_rtts_doubles_up_to_its_maximum():
    tuner = FakeTuner(rtt=0.1)
    window = ReceiveWindow(1000, 1000, max_window=3000, tuner=tuner)
    window.advertise()  # the first epoch starts
    window.consume(600)
    tuner.time = 0.1  # 60 % of a window in one RTT: faster than 4 x 0.6 x RTT
    window.advertise()
    assert window.window == 2000
    window.consume(1500)
    tuner.time = 0.2
    window.advertise()
    assert window.window == 3000  # capped
    assert window.limit == 2100 + 3000


def test_a_window_consumed_slowly_stays_as_it_is():
    tuner = FakeTuner(rtt=0.01)
    window = ReceiveWindow(1000, 1000, max_window=8000, tuner=tuner)
    window.advertise()
    for step in range(1, 10):
        window.consume(600)
        tuner.time = step * 1.0  # 600 bytes a second over a 10 ms RTT: the window is not the limit
        window.advertise()
    assert window.window == 1000


def test_stream_windows_grow_on_a_long_fat_path_and_not_on_a_thin_one():
    _, fat, stream, _ = transfer(24 * MiB, dict(delay=0.04, bandwidth=200e6, queue_bytes=8 * MiB))
    assert stream.window.window > 2 * STREAM_WINDOW_START
    assert fat.window.window >= stream.window.window * 3 // 2
    _, _, thin, _ = transfer(2 * MiB, dict(delay=0.002, bandwidth=10e6))
    assert thin.window.window == STREAM_WINDOW_START


# -- bursts -----------------------------------------------------------------------------------


def test_each_flush_hands_its_packets_to_the_batch_sender_at_once():
    clock = SimClock()
    rng = random.Random(1)
    pipe = SimPipe(clock, rng, delay=0.005)
    bursts = []

    def send_packets(packets):
        bursts.append(len(packets))
        for packet in packets:
            pipe.send(packet)

    a = StreamConnection(clock, lambda p: (_ for _ in ()).throw(AssertionError("one at a time")), True,
                         random=rng, send_packets=send_packets)  # fmt: skip
    sink = Collector(keep=False)

    def opened(stream, port):
        stream.set_handler(sink)
        return True

    b = StreamConnection(clock, a.packet_received, False, opened, random=rng)
    pipe.deliver = b.packet_received
    a.open_stream(80).write(b"y" * 200_000)
    assert clock.run_until(lambda: sink.received == 200_000, 10.0)
    assert max(bursts) >= 8 and sum(bursts) == a.stats["packets_sent"]


def test_the_largest_packet_is_a_per_connection_value():
    clock = SimClock()
    sent = []
    conn = StreamConnection(clock, sent.append, True, random=random.Random(1), pacing=False)
    conn.set_max_packet(1400)
    conn.open_stream(80).write(b"z" * 5000)
    clock.advance(0)
    assert max(len(p) for p in sent) == 1400
    assert conn.max_datagram == 1400 - frames.HEADER_SIZE - frames.DATAGRAM_OVERHEAD


def test_reassembly_keeps_the_longer_of_two_chunks_at_one_offset():
    # A late original and its retransmission may start at the same offset
    # with different lengths (the room beside an ACK frame varies).  Once
    # losses can be found spurious, the sender counts the original's bytes
    # as delivered: the receiver must not have dropped them.
    from pilotproto.streams.buffers import Reassembly

    reassembly = Reassembly()
    reassembly.add(100, b"s" * 50)  # the retransmission: shorter
    reassembly.add(100, b"l" * 120)  # the original, late
    reassembly.add(100, b"t" * 10)  # a shorter one changes nothing
    reassembly.add(0, b"a" * 100)
    assert b"".join(reassembly.pending) == b"a" * 100 + b"l" * 120
    assert reassembly.offset == 220


# -- a sub-millisecond path under a Python reactor -------------------------------------------------


def test_a_reactor_slower_than_the_path_is_not_taken_for_a_longer_path():
    # A 0.4 ms path whose RTT under load reads 2.4 ms (the reactor's own
    # latency, the peer's ack delay): 6x min_rtt, but no path change.
    # Taking it for one ran PROBE_RTT (4 packets for 200 ms) again and again.
    from test_streams_bbr import Bulk

    from pilotproto.streams.bbr import BBR

    flow = Bulk(BBR, delay=0.0002, bandwidth=25e6)
    flow.clock.advance(1.0)
    flow.ab.delay = flow.ba.delay = 0.0012
    modes = set()
    for _ in range(200):
        flow.clock.advance(0.005)
        modes.add(flow.cc.mode)
    assert "probe_rtt" not in modes


def test_the_pacer_lets_a_window_go_at_once_when_the_rtt_is_below_its_granularity():
    from pilotproto.streams.recovery import Pacer

    pacer = Pacer(1000)
    pacer.refill(0.0, rate=5e6, cwnd=50_000, smoothed_rtt=0.0005)
    assert pacer.capacity >= 50_000  # 2 ms is four RTTs here: pacing within one would only starve the window
    pacer.refill(0.0, rate=5e6, cwnd=500_000, smoothed_rtt=0.0005)
    assert pacer.capacity == 64 * 1000  # but never more than 64 packets at once
    pacer.refill(0.0, rate=1e6, cwnd=100_000, smoothed_rtt=0.100)
    assert pacer.capacity == 10 * 1000  # a long path: bursts stay small
