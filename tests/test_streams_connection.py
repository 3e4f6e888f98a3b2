"""
The stream connection over a simulated link: byte-exact transfers under loss
and reordering, flow control, stream lifecycle, datagrams, loss recovery and
congestion control.  No reactor: a heap clock drives everything.
"""

import hashlib
import random

import pytest
from twisted.internet.task import Clock

from pilotproto.streams import (
    CODE_PROTOCOL,
    ConnectionClosed,
    ConnectionRefused,
    DatagramTooLarge,
    StreamConnection,
    StreamReset,
)
from pilotproto.streams import frames
from pilotproto.streams.recovery import NewReno, SentPacket
from pilotproto.streams.simlink import Collector, SimClock, connected_pair

MiB = 1024 * 1024


class Harness:
    def __init__(self, link=None, listening=(80,), seed=1, **options):
        self.clock = SimClock()
        self.rng = random.Random(seed)
        self.incoming = {}  # stream id -> (stream, Collector)
        self.datagrams = []
        self.listening = set(listening)
        self.a, self.b, self.ab, self.ba = connected_pair(
            self.clock, self.rng, link=link or {}, on_stream_opened_b=self._opened,
            on_datagram_b=lambda port, data: self.datagrams.append((port, data)), **options,
        )

    def _opened(self, stream, port):
        if port not in self.listening:
            return False
        collector = Collector(keep=False, close_on_eof=stream)
        self.incoming[stream.id] = (stream, collector)
        stream.set_handler(collector)
        return True

    def open(self, port=80):
        stream = self.a.open_stream(port)
        collector = Collector()
        stream.set_handler(collector)
        return stream, collector

    def run(self, done, limit=600.0):
        return self.clock.run_until(done, limit)


def send_all(stream, data, chunk=64 * 1024, close=True):
    """Write ``data`` as a well-behaved producer: stop while paused, go on when resumed."""
    state = {"pos": 0, "max_buffered": 0}

    def pump():
        while state["pos"] < len(data) and not stream.writing_paused:
            stream.write(data[state["pos"] : state["pos"] + chunk])
            state["pos"] += chunk
            state["max_buffered"] = max(state["max_buffered"], stream.buffered_send_bytes)
        if state["pos"] >= len(data) and close and stream.send_state == "open":
            stream.close_write()

    stream.handler.resume_writing = pump
    pump()
    return state


def transfer(h, size, seed=2):
    data = random.Random(seed).randbytes(size)
    stream, _ = h.open()
    send_all(stream, data)
    assert h.run(lambda: stream.send_state == "done" and not h.b.streams, limit=3600)
    _, sink = h.incoming[stream.id]
    assert sink.received == size
    assert sink.hash.digest() == hashlib.sha256(data).digest()
    assert sink.events == ["eof", "send_finished", "closed"]
    return stream


def test_100_mib_over_a_clean_link_is_byte_exact():
    h = Harness(link=dict(delay=0.005, bandwidth=100e6))
    transfer(h, 100 * MiB)
    assert h.a.streams == {} and h.b.streams == {}


def test_100_mib_over_a_lossy_reordering_link_is_byte_exact():
    h = Harness(link=dict(delay=0.005, bandwidth=100e6, loss=0.10, reorder=0.10, reorder_delay=0.004))
    transfer(h, 100 * MiB)
    assert h.ab.dropped > 5000 and h.ba.dropped > 2000  # the link really lost packets both ways
    assert h.a.stats["stream_bytes_retransmitted"] > 0


def test_a_slow_reader_bounds_the_senders_buffered_bytes():
    window, send_buffer = 512 * 1024, 256 * 1024
    h = Harness(link=dict(delay=0.01, bandwidth=50e6), stream_window=window, connection_window=4 * window,
                send_buffer=send_buffer)
    data = random.Random(3).randbytes(20 * MiB)
    stream, collector = h.open()
    state = send_all(stream, data, chunk=16 * 1024)
    h.run(lambda: h.incoming, 1.0)
    reader, sink = h.incoming[stream.id]
    reader.pause_reading()
    h.clock.advance(5.0)  # a long time: the writer would have sent everything by now
    assert "pause" in collector.events
    assert state["pos"] <= window + send_buffer + 16 * 1024
    assert stream.buffered_send_bytes <= send_buffer + 16 * 1024
    assert reader.buffered_receive_bytes <= window
    assert state["max_buffered"] <= send_buffer + 16 * 1024
    # a trickle: read a little at a time, memory stays bounded throughout
    for _ in range(20):
        reader.resume_reading()
        h.clock.advance(0.001)
        reader.pause_reading()
        h.clock.advance(0.2)
        assert stream.buffered_send_bytes <= send_buffer + 16 * 1024
        assert reader.buffered_receive_bytes <= window
    reader.resume_reading()
    assert h.run(lambda: stream.send_state == "done")
    assert sink.hash.digest() == hashlib.sha256(data).digest()


def test_100_concurrent_streams_each_deliver_intact():
    h = Harness(link=dict(delay=0.005, bandwidth=50e6, loss=0.02, reorder=0.05))
    rng = random.Random(4)
    sent = {}
    for _ in range(100):
        data = rng.randbytes(rng.randrange(0, 300_000))
        stream, _ = h.open()
        send_all(stream, data)
        sent[stream.id] = (stream, hashlib.sha256(data).digest(), len(data))
    assert h.run(lambda: all(s.send_state == "done" for s, _, _ in sent.values()) and not h.b.streams)
    assert len(h.incoming) == 100
    for stream_id, (_, digest, size) in sent.items():
        _, sink = h.incoming[stream_id]
        assert (sink.received, sink.hash.digest()) == (size, digest)
        assert sink.events == ["eof", "send_finished", "closed"]


def test_fin_never_overtakes_data_under_heavy_reordering():
    h = Harness(link=dict(delay=0.005, reorder=0.5, reorder_delay=0.02, loss=0.05))
    seen_at_eof = {}
    sizes = {}
    for i in range(30):
        stream, _ = h.open()
        data = bytes([i]) * (i * 3000)
        stream.write(data)
        stream.close_write()
        sizes[stream.id] = len(data)

    real_opened = h._opened

    def opened(stream, port):
        real_opened(stream, port)
        sink = h.incoming[stream.id][1]
        sink.eof_received = lambda: seen_at_eof.setdefault(stream.id, sink.received)
        return True

    h.b.on_stream_opened = opened
    assert h.run(lambda: len(seen_at_eof) == 30)
    assert seen_at_eof == sizes


def _packet(conn_from_tag, number, *body):
    return frames.encode_packet(frames.Packet(conn_from_tag, 0, number, tuple(body)))


def test_a_fin_that_arrives_first_waits_for_the_missing_bytes():
    clock = Clock()
    opened = []
    b = StreamConnection(clock, lambda p: None, False, lambda s, port: opened.append(s) or True)
    b.packet_received(_packet(9, 0, frames.StreamFrame(0, 10, b"world", fin=True)))
    b.packet_received(_packet(9, 1, frames.StreamFrame(0, 5, b" and ")))
    assert opened == []  # the port travels on the frame at offset 0: not announced yet
    b.packet_received(_packet(9, 2, frames.StreamFrame(0, 0, b"hello", port=80)))
    sink = Collector()
    opened[0].set_handler(sink)
    assert sink.data == b"hello and world"
    assert sink.events == ["eof"]


def test_reset_fails_the_peers_stream_with_the_code():
    h = Harness(link=dict(delay=0.005))
    stream, collector = h.open()
    stream.write(b"x" * 50_000)
    h.run(lambda: h.incoming and h.incoming[stream.id][1].received > 0)
    stream.reset(7)
    _, sink = h.incoming[stream.id]
    assert h.run(lambda: sink.failure is not None)
    assert isinstance(sink.failure, StreamReset) and sink.failure.reset_code == 7
    assert h.run(lambda: not h.a.streams and not h.b.streams)
    assert collector.failure is None  # the side that reset is not called back


def test_a_port_nobody_listens_on_is_refused():
    h = Harness(link=dict(delay=0.005), listening=())
    stream, collector = h.open(port=4242)
    stream.write(b"hello?")
    assert h.run(lambda: collector.failure is not None)
    assert isinstance(collector.failure, ConnectionRefused)
    assert "accepted" not in collector.events
    assert h.b.stats["streams_refused"] == 1
    assert h.run(lambda: not h.a.streams and not h.b.streams)


def test_opening_takes_no_round_trip_and_acceptance_arrives_after_one():
    h = Harness(link=dict(delay=0.01))
    stream, collector = h.open()
    stream.write(b"first bytes")
    h.clock.advance(0.0105)  # one way: the data arrived with the open
    _, sink = h.incoming[stream.id]
    assert sink.data == b"" and sink.received == len(b"first bytes")
    assert collector.events == []
    h.clock.advance(0.011)
    assert collector.events == ["accepted"]


def test_a_lost_accepting_frame_is_sent_again():
    # The opener writes nothing until it hears the stream was accepted (a
    # Twisted client does), so the acceptor's empty frame at offset 0 is the
    # only thing it waits for: losing it must not leave the opener waiting forever.
    h = Harness(link=dict(delay=0.01))
    h.ba.loss = 1.0  # everything b sends, its accepting frame included, is lost for a while
    stream, collector = h.open()
    h.clock.advance(0.05)
    assert h.incoming and collector.events == []
    h.ba.loss = 0.0
    assert h.run(lambda: collector.events == ["accepted"], limit=10.0)


def test_datagrams_arrive_by_port_and_are_not_retransmitted():
    h = Harness(link=dict(delay=0.005))
    h.a.send_datagram(53, b"query")
    h.clock.advance(0.1)
    assert h.datagrams == [(53, b"query")]
    with pytest.raises(DatagramTooLarge):
        h.a.send_datagram(53, bytes(h.a.max_datagram + 1))
    h.ab.loss = 0.5
    for i in range(200):
        h.a.send_datagram(9, i.to_bytes(2, "big"))
        h.clock.advance(0.002)
    h.clock.advance(2.0)
    arrived = [d for p, d in h.datagrams if p == 9]
    assert 50 < len(arrived) < 150
    assert len(set(arrived)) == len(arrived)  # lost datagrams are not sent again
    assert h.a.stats["datagrams_sent"] == 201


def test_packet_numbers_are_never_reused_even_when_data_is_retransmitted():
    h = Harness(link=dict(delay=0.005, bandwidth=20e6, loss=0.1, reorder=0.1))
    numbers = []
    h.ab.tap = lambda packet: numbers.append(frames.decode_packet(packet).number)
    transfer(h, 2 * MiB)
    assert h.a.stats["stream_bytes_retransmitted"] > 0
    assert numbers == list(range(len(numbers)))


def test_congestion_window_grows_in_slow_start_and_drops_on_loss():
    h = Harness(link=dict(delay=0.01, bandwidth=20e6, queue_bytes=200_000), congestion_control=NewReno)
    samples = []
    h.ab.tap = lambda packet: samples.append((h.a.stats["packets_lost"], h.a.cc.cwnd))
    initial = h.a.cc.cwnd
    transfer(h, 8 * MiB)
    before_loss = [cwnd for lost, cwnd in samples if lost == 0]
    assert max(before_loss) >= 8 * initial  # slow start doubles per round trip
    drops = [i for i in range(1, len(samples)) if samples[i][0] > samples[i - 1][0] and samples[i][1] < samples[i - 1][1]]
    assert drops, "the window never shrank on loss"
    assert h.ab.overflowed > 0 and h.a.cc.ssthresh < float("inf")


def test_newreno_halves_once_per_loss_event_and_collapses_on_persistent_congestion():
    cc = NewReno(1000)
    start = cc.cwnd
    packets = [SentPacket(n, 0.1 * n, 1000, [], n) for n in range(10)]
    for p in packets:
        cc.on_sent(p.size)
    cc.on_acked(packets[0], limited=False)
    assert cc.cwnd == start + 1000  # slow start
    cc.on_lost([packets[1]], now=2.0, persistent=False)
    halved = cc.cwnd
    assert halved == (start + 1000) / 2
    cc.on_lost([packets[2]], now=2.1, persistent=False)  # sent before recovery began: same event
    assert cc.cwnd == halved
    cc.on_acked(packets[3], limited=False)  # sent during... before recovery: no growth
    assert cc.cwnd == halved
    later = SentPacket(11, 3.0, 1000, [], 11)
    cc.on_sent(1000)
    cc.on_acked(later, limited=False)
    assert halved < cc.cwnd < halved + 1000  # congestion avoidance: about one packet per window
    cc.on_lost([SentPacket(12, 4.0, 1000, [], 12)], now=5.0, persistent=True)
    cc.on_sent(0)
    assert cc.cwnd == cc.min_window


def test_probe_timeout_fires_with_backoff_when_everything_is_lost():
    h = Harness(link=dict(delay=0.01))
    sends = []
    h.ab.tap = lambda packet: sends.append(h.clock.now)
    h.ab.loss = 1.0
    stream, _ = h.open()
    stream.write(b"lost in the void" * 100)
    h.clock.advance(10.0)
    assert h.a.stats["probe_timeouts"] >= 3
    probe_times = sends[1:]  # after the first flight
    gaps = [b - a for a, b in zip(probe_times, probe_times[1:]) if b - a > 0.05]
    assert gaps == sorted(gaps) and gaps[-1] >= 4 * gaps[0]  # exponential backoff
    h.ab.loss = 0.0
    stream.close_write()
    assert h.run(lambda: stream.send_state == "done", limit=60)
    assert h.incoming[stream.id][1].received == 1600


def test_a_slow_path_change_does_not_break_the_stream():
    h = Harness(link=dict(delay=0.002, bandwidth=50e6))
    data = random.Random(5).randbytes(4 * MiB)
    stream, _ = h.open()
    send_all(stream, data)
    h.clock.advance(0.2)
    h.ab.delay = h.ba.delay = 0.08  # moved from a direct path to a far relay mid-transfer
    assert h.run(lambda: stream.send_state == "done")
    assert h.incoming[stream.id][1].hash.digest() == hashlib.sha256(data).digest()


def test_close_fails_every_stream_and_refuses_new_ones():
    h = Harness(link=dict(delay=0.005))
    stream, collector = h.open()
    stream.write(b"data")
    h.a.close(ConnectionClosed("trust revoked"))
    assert isinstance(collector.failure, ConnectionClosed) and "trust revoked" in str(collector.failure)
    with pytest.raises(ConnectionClosed):
        h.a.open_stream(80)
    assert (h.a._flush_call, h.a._loss_call, h.a._ack_call, h.a._pace_call) == (None, None, None, None)
    h.clock.advance(5.0)
    assert h.a.stats["packets_sent"] == 0  # nothing left the closed connection


def test_a_restarted_peer_fails_old_streams_and_new_ones_work():
    h = Harness(link=dict(delay=0.005))
    old, old_collector = h.open()
    old.write(b"before")
    h.clock.advance(0.1)
    opened = []
    b2 = StreamConnection(h.clock, h.ba.send, False, lambda s, port: opened.append(s) or True, random=random.Random(99))
    h.ab.deliver = b2.packet_received
    new_from_b = b2.open_stream(80)
    new_from_b.write(b"after")
    a_opened = []
    h.a.on_stream_opened = lambda s, port: a_opened.append(s) or True
    h.clock.advance(0.1)
    assert isinstance(old_collector.failure, ConnectionClosed)
    assert h.a.stats["peer_restarts"] == 1
    sink = Collector()
    a_opened[0].set_handler(sink)
    assert sink.data == b"after"


def test_sending_beyond_the_flow_control_window_resets_the_stream():
    clock = Clock()
    out = []
    b = StreamConnection(clock, out.append, False, lambda s, port: True)
    sid = 0
    b.packet_received(_packet(9, 0, frames.StreamFrame(sid, 0, b"x", port=80)))
    b.packet_received(_packet(9, 1, frames.StreamFrame(sid, 5 * 1024 * 1024, b"too far")))
    assert b.stats["stream_protocol_violations"] == 1
    clock.advance(0.1)
    sent = [frames.decode_packet(p) for p in out]
    resets = [f for p in sent for f in p.frames if isinstance(f, frames.ResetStream)]
    assert resets and resets[0].code == CODE_PROTOCOL


def test_malformed_and_stale_packets_are_dropped_and_counted():
    clock = Clock()
    b = StreamConnection(clock, lambda p: None, False, lambda s, port: True, random=random.Random(1))
    b.packet_received(b"\x10garbage")
    b.packet_received(frames.encode_packet(frames.Packet(5, b.local_tag ^ 1, 0, (frames.Ping(),))))
    b.packet_received(frames.encode_packet(frames.Packet(5, 0, 0, (frames.Ack(0, ((0, 0),)),))))
    assert b.stats["packets_malformed"] == 1
    assert b.stats["packets_stale"] == 1
    assert b.stats["acks_invalid"] == 1  # acknowledges a packet never sent
