"""
The bounded slice of the fuzzing (issue 9); ``benchmarks/fuzz.py`` is the long run.

Every decoder gets random bytes and mutated valid encodings (hypothesis,
so a failure shrinks to a small input) and may raise only its own errors;
the session and stream targets seal each input with a real tunnel
session's keys, so the fuzzing reaches past the AEAD into the session
handlers and the stream connection.  One pass per target checks that no
input costs more than a bounded time and allocation.  The last tests are
the crashes the long run found, each reproduced through a real tunnel pair.
"""

from __future__ import annotations

import random
import time
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzz_targets
from pilotproto.streams import frames

_TARGETS: dict = {}
_SEEDS: dict = {}


def target(name: str):
    """One runner per target for the whole module (the tunnel pair is made once, and remade when an input ends it)."""
    if not _TARGETS:
        _TARGETS.update((t.name, t) for t in fuzz_targets.targets())
    return _TARGETS[name]


def seeds(name: str) -> list:
    if name not in _SEEDS:
        _SEEDS[name] = target(name).seeds(random.Random(0))
    return _SEEDS[name]


@pytest.fixture(scope="module", autouse=True)
def close_runners():
    yield
    for t in _TARGETS.values():
        close = getattr(t.run, "close", None)
        if close is not None:
            close()


NAMES = [t.name for t in fuzz_targets.targets()]
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def run(name: str, data: bytes) -> None:
    t = target(name)
    try:
        t.run(data)
    except t.expected:
        pass


def apply(seed: bytes, edits) -> bytes:
    """``seed`` with hypothesis's edits: (what, where, value) triples."""
    d = bytearray(seed)
    for what, where, value in edits:
        i = where % (len(d) + 1)
        if what == 0 and d:
            d[i % len(d)] = value & 0xFF
        elif what == 1:
            width = (2, 4, 8)[value % 3]
            d[i : i + width] = ((value >> 8) & (2**64 - 1)).to_bytes(8, "big")[-width:]
        elif what == 2:
            del d[i : i + 1 + value % 16]
        elif what == 3:
            d[i:i] = (value & (2**64 - 1)).to_bytes(8, "big")[: 1 + value % 8]
        else:
            del d[i:]
    return bytes(d)


edits = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 5000), st.integers(0, 2**72)), min_size=1, max_size=4)


# (hypothesis runs inside each parametrized test, as in test_stun_codec:
# @given stacked on @parametrize does not mix with pytest-twisted.)


@pytest.mark.parametrize("name", NAMES)
def test_random_bytes_raise_only_the_codecs_errors(name):
    @FUZZ
    @given(data=st.binary(max_size=600))
    def check(data):
        run(name, data)

    check()


@pytest.mark.parametrize("name", NAMES)
def test_mutated_valid_inputs_raise_only_the_codecs_errors(name):
    pool = seeds(name)

    @FUZZ
    @given(choice=st.integers(min_value=0), edits=edits)
    def check(choice, edits):
        run(name, apply(pool[choice % len(pool)], edits))

    check()


@pytest.mark.parametrize("name", NAMES)
def test_every_input_costs_bounded_time_and_memory(name):
    """The seeds and 60 mutations of them: each input under 0.25 s and 4 MiB of allocation."""
    rng = random.Random(name)
    pool = seeds(name)
    inputs = list(pool) + [apply(rng.choice(pool), [(rng.randrange(5), rng.randrange(2000), rng.randrange(2**72))]) for _ in range(60)]
    inputs.append(b"\xff" * 3000)
    worst_time = worst_memory = 0
    ready = getattr(target(name).run, "ready", lambda: None)  # a new tunnel pair is not the input's cost
    tracemalloc.start()
    try:
        for data in inputs:
            ready()
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            started = time.perf_counter()
            run(name, data)
            worst_time = max(worst_time, time.perf_counter() - started)
            worst_memory = max(worst_memory, tracemalloc.get_traced_memory()[1] - base)
    finally:
        tracemalloc.stop()
    assert worst_time < 0.25 and worst_memory < 4 << 20, (worst_time, worst_memory)


def test_the_seeds_are_valid_so_mutations_start_deep():
    from pilotproto.wire import DecodeError, beacon, session, stun, tunnel

    decoders = {"beacon": beacon.decode, "stun": stun.decode, "tunnel": tunnel.decode_tunnel_packet,
                "session": session.decode, "stream_frames": frames.decode_packet}
    for name, decode in decoders.items():
        pool = seeds(name)
        assert len(pool) >= 5, name
        decoded = 0
        for data in pool:
            try:
                decode(data)
                decoded += 1
            except DecodeError:
                pass
        assert decoded == len(pool), name


# -- crashes the long run found, reproduced past the AEAD ------------------------------------


def stream_packet(number, *frame_list):
    return frames.encode_packet(frames.Packet(fuzz_targets.FUZZ_TAG, 0, number, frame_list))


@pytest.fixture
def pair():
    p = fuzz_targets.SessionPair(seed=3)
    yield p
    p.close()


def test_a_peer_skipping_2_32_packet_numbers_cannot_break_our_acks(pair):
    # Gaps in an ACK are 32-bit fields: acknowledging packets 0 and 2**40 used
    # to raise struct.error on every ACK the receiver built.
    pair.inject(stream_packet(0, frames.Ping()))
    pair.inject(stream_packet(2**40, frames.Ping()))
    pair.clock.advance(1)
    assert pair.errors == [] and pair.usable()
    # B acknowledged both, and the ACK reached A (it made A's stream connection).
    assert not pair.b.peers[pair.a_id.public_key].streams.received.ack_pending
    a_stats = pair.a.peers[pair.b_id.public_key].streams.stats
    assert a_stats["packets_received"] + a_stats["packets_stale"] >= 1


def test_a_reset_beyond_the_granted_credit_is_a_flow_control_error_not_a_crash(pair):
    # A RESET_STREAM with a final size of 2**64 - 1 counted 2**64 bytes
    # against the connection; its next MAX_DATA could not be encoded.
    for number, stream_id in enumerate((0, 1, 2, 3)):
        pair.inject(stream_packet(number, frames.ResetStream(stream_id, 1, 2**64 - 1)))
        pair.clock.advance(1)
    assert pair.errors == []
    streams = pair.b.peers[pair.a_id.public_key].streams
    assert streams.window.highest < 2**32


def test_a_peer_cannot_make_us_hold_unbounded_streams(pair):
    # Frames that open streams without naming a port (MAX_STREAM_DATA here)
    # made a Stream each, with no limit: 3000 packets held 485 MB.
    pair.inject(stream_packet(0, frames.Ping()))
    streams = pair.b.peers[pair.a_id.public_key].streams
    streams.max_incoming_streams = 32
    parity = 0 if pair.a_id.public_key < pair.b_id.public_key else 1
    for number in range(1, 51):
        opening = tuple(frames.MaxStreamData(((number * 40 + i) << 1) | parity, 100) for i in range(40))
        pair.inject(stream_packet(number, *opening))
    assert pair.errors == [] and pair.usable()
    assert len(streams.streams) <= 2 * 32 and len(streams._peer_opened) <= 2 * 32
    assert streams.stats["streams_dropped_too_many"] > 0


def test_a_peer_cannot_make_us_keep_or_probe_unbounded_addresses(pair):
    # Each CallMeMaybe may list 255 public and 255 LAN endpoints; they
    # accumulated, and every punch burst probed them all.
    from pilotproto.session.paths import MAX_CANDIDATES
    from pilotproto.wire import Endpoint
    from pilotproto.wire import session as smsg

    for round_ in range(4):
        public = tuple(Endpoint(f"198.18.{round_}.{i}", 4000) for i in range(1, 255))
        lan = tuple(Endpoint(f"10.{round_}.0.{i}", 4000) for i in range(1, 255))
        pair.inject(smsg.encode(smsg.CallMeMaybe(True, "full-cone", public, lan)))
    path = pair.b.peers[pair.a_id.public_key].path
    assert len(path.candidates) <= MAX_CANDIDATES and path.lan_candidates <= path.candidates
    before = len(pair.wire_log)
    pair.clock.advance(5)
    assert len(pair.wire_log) - before < 20 * MAX_CANDIDATES
    assert pair.errors == []
