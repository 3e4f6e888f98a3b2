"""Property tests for the stream packet codec and the received-packet ranges."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from pilotproto.streams import frames
from pilotproto.streams.packets import ReceivedPackets
from pilotproto.wire import DecodeError

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 2**64 - 1)


@st.composite
def ack_ranges(draw):
    """Valid ACK ranges: highest first, at least one missing number between ranges."""
    top = draw(st.integers(0, 2**40))
    ranges = []
    hi = top
    for _ in range(draw(st.integers(1, 6))):
        lo = hi - draw(st.integers(0, min(hi, 1000)))
        ranges.append((lo, hi))
        if lo < 2:
            break
        hi = lo - 2 - draw(st.integers(0, min(lo - 2, 1000)))
    return tuple(ranges)


stream_frames = st.builds(
    lambda sid, off, data, fin, port: frames.StreamFrame(sid, off, data, fin, port),
    u32,
    st.integers(0, 2**50),
    st.binary(max_size=300),
    st.booleans(),
    st.none() | u16,
)
frame = st.one_of(
    stream_frames,
    st.builds(frames.Ack, u32, ack_ranges()),
    st.builds(frames.Ping),
    st.builds(frames.ResetStream, u32, u16, u64),
    st.builds(frames.StopSending, u32, u16),
    st.builds(frames.MaxData, u64),
    st.builds(frames.MaxStreamData, u32, u64),
    st.builds(frames.Datagram, u16, st.binary(max_size=300)),
)


@st.composite
def packets(draw):
    body = draw(st.lists(frame, max_size=5))
    if draw(st.booleans()):
        body.append(frames.Padding(draw(st.integers(1, 40))))
    return frames.Packet(draw(u32), draw(u32), draw(st.integers(0, frames.MAX_PACKET_NUMBER)), tuple(body))


@given(packets())
def test_packet_round_trip(packet):
    assert frames.decode_packet(frames.encode_packet(packet)) == packet


@given(packets(), st.data())
def test_truncated_packets_raise_decode_error_or_decode_a_prefix(packet, data):
    raw = frames.encode_packet(packet)
    cut = data.draw(st.integers(0, len(raw) - 1))
    try:
        decoded = frames.decode_packet(raw[:cut])
    except DecodeError:
        return
    # A cut exactly between frames (or inside padding) is a valid shorter packet.
    assert len(decoded.frames) <= len(packet.frames)


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_random_bytes_raise_decode_error_only(raw):
    try:
        frames.decode_packet(raw)
    except DecodeError:
        pass


@given(packets(), st.binary(min_size=1, max_size=60))
def test_random_frame_bytes_after_a_valid_header_raise_decode_error_only(packet, junk):
    raw = frames.encode_header(packet.src_tag, packet.dst_tag, packet.number) + junk
    try:
        frames.decode_packet(raw)
    except DecodeError:
        pass


def test_stream_frame_layout_is_as_documented():
    raw = frames.encode_frame(frames.StreamFrame(5, 7, b"hi", fin=True, port=80))
    assert raw == bytes([0x0B]) + (5).to_bytes(4, "big") + (80).to_bytes(2, "big") + (7).to_bytes(8, "big") + b"\x00\x02hi"
    raw = frames.encode_frame(frames.StreamFrame(5, 7, b"hi"))
    assert raw == bytes([0x08]) + (5).to_bytes(4, "big") + (7).to_bytes(8, "big") + b"\x00\x02hi"
    assert len(frames.encode_header(1, 2, 3)) == frames.HEADER_SIZE == 17


def test_ack_below_zero_is_rejected():
    raw = frames.encode_header(1, 2, 3) + bytes([frames.ACK]) + (5).to_bytes(8, "big") + bytes(4) + b"\x00" + (6).to_bytes(4, "big")
    try:
        frames.decode_packet(raw)
    except DecodeError:
        return
    raise AssertionError("an ACK range below zero decoded")


def _runs(numbers):
    out = []
    for n in sorted(numbers):
        if out and out[-1][1] + 1 == n:
            out[-1][1] = n
        else:
            out.append([n, n])
    return [tuple(r) for r in reversed(out)]


@given(st.lists(st.integers(0, 400), unique=True, max_size=200))
def test_received_ranges_match_the_numbers_seen(numbers):
    received = ReceivedPackets(max_ranges=1000)
    for n in numbers:
        assert not received.is_duplicate(n)
        received.record(n, True, 0.0)
        assert received.is_duplicate(n)
    assert received.ranges(10_000) == _runs(numbers)


@given(st.lists(st.integers(0, 400), unique=True, min_size=1, max_size=200))
def test_acks_built_from_received_ranges_decode_to_them(numbers):
    received = ReceivedPackets(max_ranges=1000)
    for n in numbers:
        received.record(n, True, 0.0)
    ack = received.build_ack(0.001, 1000)
    decoded = frames.decode_packet(frames.encode_header(1, 1, 1) + ack).frames[0]
    assert decoded.ranges == tuple(_runs(numbers))[: len(decoded.ranges)]
    assert decoded.delay_us == 1000


def test_only_the_newest_ranges_are_kept_and_older_numbers_count_as_seen():
    received = ReceivedPackets(max_ranges=4)
    for n in range(0, 40, 2):
        received.record(n, True, 0.0)
    assert len(received.ranges(100)) == 4
    assert received.is_duplicate(1)  # below the floor: treated as already seen
    assert not received.is_duplicate(39)


def test_ack_policy_every_second_packet_or_at_once_on_reordering():
    received = ReceivedPackets(ack_every=2)
    received.record(0, True, 0.0)
    assert received.ack_pending and not received.ack_now
    received.record(1, True, 0.0)
    assert received.ack_now
    received.ack_sent()
    received.record(3, True, 0.0)  # a gap: 2 is missing
    assert received.ack_now
    received.ack_sent()
    received.record(4, False, 0.0)  # ack-only packets elicit nothing
    assert not received.ack_pending


def test_reordered_arrivals_are_tracked_exactly():
    rng = random.Random(7)
    numbers = list(range(3000))
    rng.shuffle(numbers)
    received = ReceivedPackets(max_ranges=10_000)
    for n in numbers:
        received.record(n, True, 0.0)
    assert received.ranges(5) == [(0, 2999)]
