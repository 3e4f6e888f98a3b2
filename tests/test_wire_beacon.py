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
    st.builds(
        msgs.HandshakeRequest,
        u64,
        u64,
        st.booleans(),
        st.binary(max_size=255),
        short_text,
        st.text(max_size=200).filter(lambda t: len(t.encode()) <= msgs.MAX_REASON),
        u64,
        key,
        u64,
        sig,
    ),
    st.builds(msgs.HandshakeAnswer, u64, u64, key, st.booleans(), short_text, key, u64, sig),
    st.builds(msgs.Revoke, u64, key, key, u64, sig),
    st.integers(1, 65535).flatmap(
        lambda chunks: st.builds(
            msgs.SetVisibility,
            u64,
            u64,
            st.integers(0, chunks - 1),
            st.just(chunks),
            st.lists(key, max_size=msgs.VISIBILITY_CHUNK_KEYS).map(tuple),
            key,
            u64,
            sig,
        )
    ),
    st.builds(msgs.MailAck, u64, u64, key, u64, sig),
    st.builds(msgs.Deliver, u64, u64, st.binary(max_size=msgs.MAX_DELIVERED)),
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
    for type_code in range(40):
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


def test_trust_messages_fit_one_datagram():
    identity = Identity.generate()
    biggest_request = msgs.sign(
        msgs.HandshakeRequest(1, 2, False, b"a" * 63, "b" * 63, "\u00e9" * (msgs.MAX_REASON // 2), 2**64 - 1), identity, 3
    )
    raw = msgs.encode(biggest_request)
    assert len(msgs.encode(msgs.Deliver(1, 2, raw))) <= 1200
    chunk = msgs.sign(msgs.SetVisibility(1, 2, 0, 1, tuple(os.urandom(32) for _ in range(msgs.VISIBILITY_CHUNK_KEYS))), identity, 3)
    assert len(msgs.encode(chunk)) <= 1200


def test_overlong_reason_is_refused_both_ways():
    import pytest

    with pytest.raises(ValueError):
        msgs.encode(msgs.HandshakeRequest(1, 2, False, b"b", "a", "x" * (msgs.MAX_REASON + 1)))
    ok = msgs.encode(msgs.HandshakeRequest(1, 2, False, b"b", "a", "x" * msgs.MAX_REASON))
    # Hand-build the same message with one more byte of reason.
    at = ok.index(b"x" * msgs.MAX_REASON) - 2
    bad = ok[:at] + (msgs.MAX_REASON + 1).to_bytes(2, "big") + b"x" * (msgs.MAX_REASON + 1) + ok[at + 2 + msgs.MAX_REASON :]
    with pytest.raises(DecodeError):
        msgs.decode(bad)
