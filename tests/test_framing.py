"""The 2-byte length framing of datagrams over the beacon's TLS stream."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pilotproto.wire import DecodeError
from pilotproto.wire.framing import MAX_FRAME, FrameDecoder, encode_frame

datagrams = st.binary(min_size=1, max_size=3000)


@given(st.lists(datagrams, max_size=8), st.data())
def test_decode_of_encode_is_identity_however_the_stream_is_cut(frames, data):
    stream = b"".join(encode_frame(f) for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder, out, start = FrameDecoder(), [], 0
    for cut in cuts + [len(stream)]:
        out += decoder.feed(stream[start:cut])
        start = cut
    assert out == frames
    assert decoder.pending == 0


@given(st.binary(max_size=200))
def test_random_bytes_raise_only_decode_error(junk):
    decoder = FrameDecoder(max_frame=100)
    try:
        frames = decoder.feed(junk)
    except DecodeError:
        return
    assert all(0 < len(f) <= 100 for f in frames)


@given(datagrams)
def test_a_truncated_frame_waits_for_the_rest(datagram):
    framed = encode_frame(datagram)
    decoder = FrameDecoder()
    assert decoder.feed(framed[:-1]) == []
    assert decoder.feed(framed[-1:]) == [datagram]


def test_zero_length_and_oversized_frames_break_the_stream_for_good():
    with pytest.raises(DecodeError):
        FrameDecoder().feed(b"\x00\x00")
    decoder = FrameDecoder(max_frame=10)
    with pytest.raises(DecodeError, match="limit 10"):
        decoder.feed(b"\x00\x0b" + b"x" * 11)
    with pytest.raises(DecodeError):
        decoder.feed(encode_frame(b"ok"))


def test_encode_refuses_what_cannot_be_framed():
    for bad in (b"", b"x" * (MAX_FRAME + 1)):
        with pytest.raises(ValueError):
            encode_frame(bad)
    assert encode_frame(b"\x01\x02") == b"\x00\x02\x01\x02"
