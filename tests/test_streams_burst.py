"""
The bulk fast paths (``outgoing.py``'s bursts and the receiver's in-order path) change the
CPU per packet, never the bytes or the state: the same packets as the
general path, one range per ACK for consecutive frames, no flush for a
data packet that owes nothing.  No reactor: a heap clock drives everything.
"""

import random

from pilotproto.streams import StreamConnection, frames
from pilotproto.streams.simlink import Collector, SimClock

DATA = random.Random(5).randbytes(9 * 1100 + 321)


def _sender(general_only: bool):
    clock = SimClock()
    sent = []
    connection = StreamConnection(clock, sent.append, True, random=random.Random(3))
    if general_only:
        connection._scheduler.bulk_stream = lambda: None
    stream = connection.open_stream(80)
    stream.write(DATA)
    stream.close_write()
    clock.advance(0)
    return connection, stream, sent, clock


def _recovery_state(connection):
    return [(p.number, p.size, p.items[0][2:], p.rate, p.seq) for p in connection.recovery.sent]


def test_a_burst_is_the_packets_and_state_the_general_path_makes():
    burst, burst_stream, burst_packets, _ = _sender(general_only=False)
    general, general_stream, general_packets, _ = _sender(general_only=True)
    assert len(burst_packets) == 10  # the initial window; the last one carries the FIN
    assert burst_packets == general_packets
    assert _recovery_state(burst) == _recovery_state(general)
    assert burst.stats == general.stats
    assert burst.cc.bytes_in_flight == general.cc.bytes_in_flight
    assert burst.pacer.tokens == general.pacer.tokens
    assert (burst_stream.sent_offset, burst_stream.fin_sent) == (len(DATA), True)
    assert (general_stream.sent_offset, general_stream.fin_sent) == (len(DATA), True)
    decoded = [frames.decode_packet(p).frames[-1] for p in burst_packets]  # the first also has MAX_STREAM_DATA
    assert b"".join(f.data for f in decoded) == DATA
    assert [f.fin for f in decoded] == [False] * 9 + [True]


def test_consecutive_frames_of_one_ack_are_one_range_for_the_stream():
    connection, stream, packets, clock = _sender(general_only=False)
    calls = []
    on_frame_acked = stream.on_frame_acked
    stream.on_frame_acked = lambda *args: calls.append(args) or on_frame_acked(*args)
    clock.advance(0.01)
    burst = len(packets)
    ack = frames.encode_header(7, connection.local_tag, 0) + frames.encode_ack([(0, burst - 1)], 0)
    connection.packet_received(ack)
    assert calls == [(0, len(DATA), True)]
    assert stream.send_state == "done" and stream.buffered_send_bytes == 0
    # Only what the ACK made due is in flight now (the sender's first ACK_FREQUENCY request).
    assert [p.number for p in connection.recovery.sent] == [burst]
    assert connection.cc.bytes_in_flight == connection.recovery.sent[0].size


def test_in_order_data_that_owes_nothing_makes_no_flush():
    _, _, packets, _ = _sender(general_only=False)
    clock = SimClock()
    sink = Collector()

    def opened(stream, port):
        stream.set_handler(sink)
        return True

    receiver = StreamConnection(clock, lambda packet: None, False, opened, random=random.Random(4))
    flushes = []
    flush = receiver._flush
    receiver._flush = lambda: flushes.append(1) or flush()
    for packet in packets:
        receiver.packet_received(packet)
    assert sink.data == DATA and sink.events == ["eof"]
    # The first packet owes credit (the receive window starts above the initial credit), and
    # then every second packet owes an ACK (the default until the sender asks for fewer): the
    # 3rd, 5th, 7th and 9th.  The others (and the last, whose FIN owes nothing) make no flush.
    assert len(flushes) == 5


def test_packets_read_together_are_acknowledged_together():
    _, _, packets, _ = _sender(general_only=False)
    sent = []
    sink = Collector()

    def opened(stream, port):
        stream.set_handler(sink)
        return True

    receiver = StreamConnection(SimClock(), sent.append, False, opened, random=random.Random(4))
    receiver.packets_received(packets)
    assert sink.data == DATA and sink.events == ["eof"]
    assert len(sent) == 1  # one packet: the ACK of all ten, with the credit the first one made due
    ack = [f for f in frames.decode_packet(sent[0]).frames if isinstance(f, frames.Ack)]
    assert ack[0].ranges == ((0, len(packets) - 1),)
