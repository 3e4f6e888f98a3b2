"""Property tests for the tunnel packet codec."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pilotproto.wire import DecodeError, KIND_TUNNEL_DATA, KIND_TUNNEL_INIT
from pilotproto.wire.tunnel import (
    COOKIE_REPLY_LEN,
    INIT_LEN,
    RESPONSE_LEN,
    TunnelCookieReply,
    TunnelData,
    TunnelInit,
    TunnelResponse,
    decode_tunnel_packet,
)

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)


def blob(n):
    return st.binary(min_size=n, max_size=n)


inits = st.builds(TunnelInit, u32, blob(32), blob(48), blob(128), blob(16), blob(16))
responses = st.builds(TunnelResponse, u32, u32, blob(32), blob(20), blob(16), blob(16))
cookies = st.builds(TunnelCookieReply, u32, blob(24), blob(32))
datas = st.builds(TunnelData, u32, u64, st.binary(min_size=16, max_size=300))
packets = st.one_of(inits, responses, cookies, datas)


@given(packets)
def test_round_trip(packet):
    encoded = packet.encode()
    assert decode_tunnel_packet(encoded) == packet
    assert type(packet).decode(encoded) == packet
    assert encoded[1] == 1


@given(packets, st.data())
def test_truncated_packets_raise_only_decode_error(packet, data):
    encoded = packet.encode()
    cut = data.draw(st.integers(0, len(encoded) - 1))
    if isinstance(packet, TunnelData) and cut >= 30:
        # A shorter data packet is still a data packet (with less ciphertext).
        assert decode_tunnel_packet(encoded[:cut]).ciphertext == packet.ciphertext[: cut - 14]
        return
    with pytest.raises(DecodeError):
        decode_tunnel_packet(encoded[:cut])


@given(st.binary(max_size=400))
def test_random_bytes_raise_only_decode_error(data):
    try:
        packet = decode_tunnel_packet(data)
    except DecodeError:
        return
    assert packet.encode() == data


@given(inits)
def test_fixed_length_packets_refuse_extra_bytes(packet):
    with pytest.raises(DecodeError):
        TunnelInit.decode(packet.encode() + b"\x00")


def test_sizes():
    assert (INIT_LEN, RESPONSE_LEN, COOKIE_REPLY_LEN) == (246, 94, 62)
    assert len(TunnelData.header(1, 2)) == 14


def test_wrong_version_and_kind_are_refused():
    packet = TunnelData(5, 6, b"t" * 16).encode()
    with pytest.raises(DecodeError, match="version"):
        decode_tunnel_packet(packet[:1] + b"\x02" + packet[2:])
    with pytest.raises(DecodeError):
        TunnelInit.decode(bytes([KIND_TUNNEL_DATA]) + bytes(INIT_LEN - 1))
    with pytest.raises(DecodeError):
        decode_tunnel_packet(b"\xb0\x01")
    with pytest.raises(DecodeError):
        decode_tunnel_packet(b"")
    assert KIND_TUNNEL_INIT == 0xC1


def test_constructors_validate_fields():
    with pytest.raises(ValueError):
        TunnelData(2**32, 0, b"t" * 16)
    with pytest.raises(ValueError):
        TunnelData(0, 0, b"short")
    with pytest.raises(ValueError):
        TunnelCookieReply(0, b"n" * 23, b"c" * 32)
