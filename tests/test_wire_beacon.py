"""Property tests for the beacon message codec."""

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from pilotproto.identity import Identity
from pilotproto.wire import DecodeError, Endpoint
from pilotproto.wire import beacon as msgs

u64 = st.integers(0, 2**64 - 1)
endpoints = st.one_of(
    st.builds(Endpoint, st.ip_addresses(v=4).map(str), st.integers(0, 65535)),
    st.builds(Endpoint, st.ip_addresses(v=6).map(str), st.integers(0, 65535)),
)
short_text = st.text(max_size=40).filter(lambda t: len(t.encode()) <= 255)
key = st.binary(min_size=32, max_size=32)
sig = st.binary(min_size=64, max_size=64)

messages = st.one_of(
    st.builds(msgs.Hello, u64, st.integers(0, 300)),
    st.builds(msgs.Challenge, u64, st.binary(min_size=32, max_size=32), key, endpoints),
    st.builds(msgs.Error, u64, short_text, short_text),
    st.builds(
        msgs.Register,
        u64,
        st.binary(min_size=32, max_size=32),
        short_text,
        st.integers(0, 255),
        st.lists(endpoints, max_size=4).map(tuple),
        key,
        u64,
        sig,
    ),
    st.builds(msgs.Keepalive, u64, key, u64, sig),
    st.builds(msgs.Lookup, u64, st.booleans(), st.binary(max_size=255), key, u64, sig),
    st.builds(msgs.Unregister, u64, key, u64, sig),
    st.builds(msgs.Registered, u64, st.binary(min_size=8, max_size=8), endpoints, st.integers(0, 65535), st.integers(0, 65535)),
    st.builds(msgs.KeepaliveAck, u64, endpoints),
    st.builds(msgs.LookupResult, u64, short_text, st.binary(min_size=8, max_size=8), key, st.integers(0, 255), st.lists(endpoints, max_size=4).map(tuple)),
    st.builds(msgs.Ok, u64),
)


@given(messages)
def test_round_trip(msg):
    assert msgs.decode(msgs.encode(msg)) == msg


@given(messages, st.data())
def test_truncation_raises_decode_error_only(msg, data):
    raw = msgs.encode(msg)
    cut = data.draw(st.integers(0, len(raw) - 1))
    try:
        msgs.decode(raw[:cut])
    except DecodeError:
        return
    # A truncated message may still decode only if it is itself well formed
    # (e.g. a Hello with less padding): then it must re-encode to the same bytes.
    assert msgs.encode(msgs.decode(raw[:cut])) == raw[:cut]


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_random_bytes_raise_decode_error_only(raw):
    try:
        msgs.decode(raw)
    except DecodeError:
        pass


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_random_bytes_behind_a_valid_header(raw):
    for type_code in range(16):
        try:
            msgs.decode(bytes([msgs.KIND, msgs.VERSION, type_code]) + raw)
        except DecodeError:
            pass


def test_signature_covers_every_byte():
    identity = Identity.generate()
    msg = msgs.sign(msgs.Lookup(1, False, b"agent-b"), identity, 42)
    from pilotproto.identity import verify_signature

    assert verify_signature(identity.public_key, msgs.signed_bytes(msg), msg.signature)
    raw = bytearray(msgs.encode(msg))
    for i in range(len(raw) - msgs.SIG_SIZE):
        tampered = bytearray(raw)
        tampered[i] ^= 0x01
        try:
            m = msgs.decode(bytes(tampered))
        except DecodeError:
            continue
        assert not verify_signature(m.public_key, msgs.signed_bytes(m), m.signature)


def test_hello_is_padded_so_the_challenge_is_smaller():
    hello = msgs.encode(msgs.Hello(1))
    challenge = msgs.encode(msgs.Challenge(1, os.urandom(32), os.urandom(32), Endpoint("2001:db8::1", 65535)))
    assert len(hello) == msgs.HELLO_MIN_SIZE
    assert len(challenge) <= len(hello)


def test_unknown_version_is_refused():
    raw = bytearray(msgs.encode(msgs.Ok(5)))
    raw[1] = 2
    try:
        msgs.decode(bytes(raw))
    except DecodeError as e:
        assert "version" in str(e)
    else:
        raise AssertionError("version 2 accepted")
