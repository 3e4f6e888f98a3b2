"""The record layer and its replay window."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from pilotproto.errors import PilotError
from pilotproto.tunnel.errors import KeyExpired, ReplayError, TunnelAuthError
from pilotproto.tunnel.record import Limits, Session, TransportKeys
from pilotproto.common.replay import ReplayWindow
from pilotproto.wire.tunnel import TunnelData

K1, K2 = b"\x01" * 32, b"\x02" * 32


def pair(clock=None, limits=Limits()):
    clock = clock or Clock()
    a = Session(TransportKeys(K1, K2, local_index=10, remote_index=20, is_initiator=True), clock, limits)
    b = Session(TransportKeys(K2, K1, local_index=20, remote_index=10, is_initiator=False), clock, limits)
    return clock, a, b


# -- replay window ------------------------------------------------------


def test_window_accepts_each_counter_once():
    w = ReplayWindow(2048)
    assert w.accept(0) and not w.accept(0)
    assert w.accept(5) and w.accept(3) and not w.accept(3)
    assert w.newest == 5


def test_window_edges():
    w = ReplayWindow(2048)
    assert w.accept(5000)
    assert w.check(5000 - 2047)  # oldest counter still inside
    assert not w.check(5000 - 2048)  # first one outside
    assert w.accept(5000 - 2047) and not w.accept(5000 - 2047)
    assert w.accept(5001)
    assert not w.check(5001 - 2048)


def test_window_big_jump_forgets_old_bits():
    w = ReplayWindow(128)
    for n in range(100):
        assert w.accept(n)
    assert w.accept(10_000)
    # Counters a whole ring later must not look already seen.
    for n in range(10_000 - 127, 10_000):
        assert w.check(n)


def test_window_reordering_across_block_boundaries():
    w = ReplayWindow(2048)
    for n in [63, 64, 0, 127, 128, 1, 2047, 2048, 65]:
        assert w.accept(n), n
    for n in [63, 64, 0, 127, 128, 1, 2047, 2048, 65]:
        assert not w.check(n), n
    assert not w.check(-1)


def test_window_size_must_be_blocks():
    with pytest.raises(ValueError):
        ReplayWindow(100)


@given(st.lists(st.integers(0, 5000), max_size=300))
def test_window_matches_a_simple_model(counters):
    w = ReplayWindow(256)
    seen, newest = set(), -1
    for c in counters:
        expected = c not in seen and c > newest - 256
        assert w.accept(c) == expected
        if expected:
            seen.add(c)
            newest = max(newest, c)


# -- sessions -----------------------------------------------------------


def test_seal_open_round_trip_and_counters():
    _, a, b = pair()
    first, second = a.seal(b"one"), a.seal(b"")
    assert TunnelData.decode(first).counter == 0 and TunnelData.decode(second).counter == 1
    assert TunnelData.decode(first).receiver_index == 20
    assert b.open(second) == b"" and b.open(first) == b"one"
    assert a.open(b.seal(b"back")) == b"back"


@pytest.mark.parametrize("position", [0, 2, 6, 13, 14, -1])
def test_tampering_anywhere_is_caught(position):
    _, a, b = pair()
    packet = bytearray(a.seal(b"payload"))
    packet[position] ^= 0x40
    with pytest.raises(PilotError):
        b.open(bytes(packet))


def test_tampered_ciphertext_is_auth_error_and_does_not_move_window():
    _, a, b = pair()
    packet = a.seal(b"payload")
    forged = TunnelData(20, 2**40, TunnelData.decode(packet).ciphertext).encode()
    with pytest.raises(TunnelAuthError):
        b.open(forged)
    assert b.open(packet) == b"payload"


def test_replay_is_rejected():
    _, a, b = pair()
    packet = a.seal(b"once")
    b.open(packet)
    with pytest.raises(ReplayError):
        b.open(packet)


def test_other_sessions_packets_are_refused():
    _, a, b = pair()
    with pytest.raises(TunnelAuthError):
        a.open(a.seal(b"to myself?"))


def test_rekey_and_reject_after_time():
    clock, a, b = pair()
    assert not a.needs_rekey()
    clock.advance(120)
    assert a.needs_rekey() and a.can_seal()
    packet = a.seal(b"late but fine")
    clock.advance(60)
    assert a.expired() and not a.can_seal()
    with pytest.raises(KeyExpired):
        a.seal(b"too late")
    with pytest.raises(KeyExpired):
        b.open(packet)


def test_message_limits():
    _, a, b = pair(limits=Limits(rekey_after_messages=3, reject_after_messages=5))
    packets = [a.seal(b"%d" % n) for n in range(4)]
    assert a.needs_rekey()
    a.seal(b"4")
    with pytest.raises(KeyExpired):
        a.seal(b"5")
    for p in packets:
        b.open(p)
    assert b.needs_rekey()
    with pytest.raises(ReplayError):
        b.open(TunnelData(20, 5, b"\x00" * 16).encode())
