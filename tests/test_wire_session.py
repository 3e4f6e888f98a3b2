"""Property tests for the in-tunnel session messages."""

from hypothesis import given, settings
from hypothesis import strategies as st

from pilotproto.wire import DecodeError, Endpoint
from pilotproto.wire import session as smsg

u64 = st.integers(0, 2**64 - 1)
endpoints = st.builds(Endpoint, st.ip_addresses().map(str), st.integers(0, 65535))
messages = st.one_of(
    st.builds(smsg.Ping, u64, st.binary(max_size=2000)),
    st.builds(smsg.Pong, u64, st.binary(max_size=2000)),
    st.builds(smsg.PathProbe, u64),
    st.builds(smsg.PathAck, u64),
    st.builds(smsg.Close, st.integers(0, 255), st.text(max_size=60).filter(lambda t: len(t.encode()) <= 255)),
    st.builds(
        smsg.CallMeMaybe,
        st.booleans(),
        st.sampled_from(["none", "full_cone", "symmetric", "unknown"]),
        st.lists(endpoints, max_size=3).map(tuple),
        st.lists(endpoints, max_size=3).map(tuple),
    ),
    st.builds(
        smsg.Birthday,
        st.booleans(),
        st.integers(0, 2**32 - 1),
        st.integers(0, 65535),
        st.sampled_from(["198.51.100.10", "2001:db8::1", ""]),
        st.lists(st.integers(0, 65535), max_size=smsg.MAX_OBSERVED).map(tuple),
    ),
)


@given(messages)
def test_round_trip(msg):
    assert smsg.decode(smsg.encode(msg)) == msg


@given(messages, st.data())
def test_truncated_messages_raise_decode_error(msg, data):
    raw = smsg.encode(msg)
    cut = data.draw(st.integers(0, len(raw) - 1))
    try:
        smsg.decode(raw[:cut])
    except DecodeError:
        pass
    else:
        raise AssertionError("a truncated message decoded")


@given(st.binary(max_size=200))
@settings(max_examples=500)
def test_random_bytes_raise_decode_error_only(raw):
    try:
        smsg.decode(raw)
    except DecodeError:
        pass
