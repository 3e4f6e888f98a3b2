"""Path MTU discovery (DPLPMTUD): the search, losses, black holes, the raise timer."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from pilotproto.session import pmtu
from pilotproto.session.pmtu import BASE_MTU, GRANULARITY, MAX_PROBES, PROBE_TIMEOUT, RAISE_INTERVAL, PathMtu


class Path:
    """A simulated path: probes up to ``mtu`` bytes arrive and are acked at once."""

    def __init__(self, mtu, clock):
        self.mtu = mtu
        self.clock = clock
        self.sent = []
        self.changes = []
        counter = itertools.count(1)
        self.machine = PathMtu(clock, self.send, self.changes.append, ceiling=9000, random_bytes=lambda n: next(counter).to_bytes(n, "big"))

    def send(self, size, nonce):
        self.sent.append(size)
        if size <= self.mtu:
            self.clock.callLater(0.01, self.machine.acked, nonce)

    def run(self, seconds=120.0):
        for _ in range(int(seconds / 0.05)):
            self.clock.advance(0.05)


def test_a_usual_path_is_settled_by_one_probe():
    clock = Clock()
    machine_changes, sent = [], []
    m = PathMtu(clock, lambda size, nonce: sent.append((size, nonce)), machine_changes.append, ceiling=1500, random_bytes=lambda n: b"\0" * 7 + b"\x05")
    m.start()
    assert sent == [(1500, 5)]
    m.acked(5)
    assert m.mtu == 1500 and machine_changes == [1500] and m.state == "complete"
    assert not clock.getDelayedCalls()  # at the ceiling: nothing to raise


def test_a_lost_size_is_given_max_probes_then_the_search_narrows():
    clock = Clock()
    sent = []
    m = PathMtu(clock, lambda size, nonce: sent.append(size), lambda mtu: None, ceiling=1500)
    m.start()
    for _ in range(MAX_PROBES):
        clock.advance(PROBE_TIMEOUT)
    assert sent[:MAX_PROBES] == [1500] * MAX_PROBES
    assert sent[MAX_PROBES] == (BASE_MTU + 1500) // 2


def test_an_ack_for_another_probe_is_ignored():
    clock = Clock()
    m = PathMtu(clock, lambda size, nonce: None, lambda mtu: None, ceiling=1500, random_bytes=lambda n: b"\0" * 7 + b"\x01")
    m.start()
    m.acked(2)
    assert m.mtu == BASE_MTU and m.state == "searching"


@settings(max_examples=40, deadline=None)
@given(st.integers(BASE_MTU, 9000))
def test_the_search_converges_within_granularity_of_the_true_mtu(true_mtu):
    path = Path(true_mtu, Clock())
    path.machine.start()
    path.run()
    assert path.machine.state == "complete"
    assert true_mtu - GRANULARITY <= path.machine.mtu <= true_mtu
    assert max(path.sent) <= 9000 and len(path.sent) < 60  # bounded
    assert path.changes == sorted(path.changes)  # only ever raised while searching


def test_jumbo_and_small_paths():
    for true_mtu in (9000, 1500, 1492, 1280):
        path = Path(true_mtu, Clock())
        path.machine.start()
        path.run()
        assert true_mtu - GRANULARITY <= path.machine.mtu <= true_mtu, true_mtu


def test_black_hole_drops_to_the_base_and_searches_again():
    path = Path(1500, Clock())
    path.machine.start()
    path.run()
    assert path.machine.mtu >= 1500 - GRANULARITY
    path.mtu = 1400  # a tunnel appeared on the way
    path.machine.black_hole()
    assert path.changes[-1] == BASE_MTU or path.machine.mtu == BASE_MTU
    path.run()
    assert 1400 - GRANULARITY <= path.machine.mtu <= 1400
    assert BASE_MTU in path.changes


def test_a_complete_search_tries_the_ceiling_again_later():
    path = Path(1500, Clock())
    path.machine.start()
    path.run()
    probes = len(path.sent)
    path.mtu = 9000  # the path grew
    path.clock.advance(RAISE_INTERVAL)
    path.run()
    assert len(path.sent) > probes and path.machine.mtu == 9000


def test_stop_cancels_everything():
    clock = Clock()
    m = PathMtu(clock, lambda size, nonce: None, lambda mtu: None, ceiling=9000)
    m.start()
    m.stop()
    assert not clock.getDelayedCalls() and m.state == "stopped"
    m.start()
    assert not clock.getDelayedCalls()


def test_the_ceiling_is_clamped():
    clock = Clock()
    assert PathMtu(clock, None, None, ceiling=65535).ceiling == pmtu.MAX_MTU
    assert PathMtu(clock, None, None, ceiling=576).ceiling == BASE_MTU
