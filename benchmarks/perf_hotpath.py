"""
CPU per packet of the stream layer and the record layer, with no sockets.

Two :class:`~pilotproto.streams.StreamConnection` objects on a simulated
clock, every packet sealed and opened by real record-layer sessions
(AES-256-GCM), one stream of ``size`` bytes one way.  What it measures is the
CPU the Python code spends per packet, the part of the hot path this repo
owns, apart from the kernel and the reactor.  ``benchmarks/perf.py`` runs it
once for the current tree and, with ``--old-tree``, once more for a copy of
an older one (``PYTHONPATH``), in the same run, so the ratio is fair on a
busy machine.

    python benchmarks/perf_hotpath.py [--size-mb 32] [--profile] [--no-split]

A second run splits the CPU between the two ends: every entry into one
side (a packet delivered to it, one of its timers, the application's
writes) is timed, less the timing's own measured cost; the first run, with
no timing inside, gives the totals.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

if __name__ == "__main__" and not os.environ.get("PYTHONPATH"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MiB = 1024 * 1024


class _Side:
    """The CPU one end spends: the sum of its timed entries."""

    def __init__(self):
        self.cpu = 0.0
        self.entries = 0

    def timed(self, func):
        clock = time.process_time

        def entry(*args):
            started = clock()
            try:
                return func(*args)
            finally:
                self.cpu += clock() - started
                self.entries += 1

        return entry


class _SideClock:
    """The shared simulated clock, as one side sees it: its timers are that side's entries."""

    def __init__(self, clock, side: _Side):
        self._clock = clock
        self._side = side
        self.seconds = clock.seconds

    def callLater(self, delay, func, *args):
        return self._clock.callLater(delay, self._side.timed(func), *args)


def _timing_cost(rounds: int = 20_000) -> float:
    """CPU seconds one timed entry adds by itself (its two clock reads and the wrapper)."""
    side = _Side()
    entry = side.timed(int)
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for _ in range(rounds):
            entry()
        best = min(best, (time.process_time() - started) / rounds)
    return best


def run(size: int, profile: bool = False, split: bool = False) -> dict:
    from pilotproto.streams import simlink
    from pilotproto.streams.connection import StreamConnection
    from pilotproto.tunnel.record import Session, TransportKeys

    clock = simlink.SimClock()
    rng = random.Random(1)
    k1, k2 = bytes(range(32)), bytes(range(32, 64))
    sa = Session(TransportKeys(k1, k2, 1, 2, True), clock)
    sb = Session(TransportKeys(k2, k1, 2, 1, False), clock)
    link = dict(delay=0.002, bandwidth=None)
    a_to_b = simlink.SimPipe(clock, rng, **link)
    b_to_a = simlink.SimPipe(clock, rng, **link)
    collector = simlink.Collector(keep=False)

    def opened(stream, port):
        stream.set_handler(collector)
        return True

    sender, receiver = _Side(), _Side()
    clock_a = _SideClock(clock, sender) if split else clock
    clock_b = _SideClock(clock, receiver) if split else clock
    a = StreamConnection(clock_a, lambda p: a_to_b.send(sa.seal(p)), True, random=rng)
    b = StreamConnection(clock_b, lambda p: b_to_a.send(sb.seal(p)), False, opened, random=rng)
    a_to_b.deliver = lambda packet: b.packet_received(sb.open(packet))
    b_to_a.deliver = lambda packet: a.packet_received(sa.open(packet))
    if split:
        a_to_b.deliver = receiver.timed(a_to_b.deliver)
        b_to_a.deliver = sender.timed(b_to_a.deliver)
    stream = a.open_stream(9000)
    stream.set_handler(simlink.Collector(keep=False))
    chunk = random.Random(7).randbytes(64 * 1024)
    written = 0

    def feed():
        nonlocal written
        while written < size and stream.buffered_send_bytes < 2 * MiB:
            stream.write(chunk)
            written += len(chunk)
        if written >= size and stream.send_state == "open":
            stream.close_write()
        return collector.received >= size

    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    cpu0 = time.process_time()
    sim0 = clock.now
    done = False
    if split:
        feed = sender.timed(feed)
    for _ in range(100_000):
        if feed():
            done = True
            break
        if written >= size:
            clock.run_until(lambda: collector.received >= size, 30.0)
        else:
            clock.run_until(lambda: stream.buffered_send_bytes < MiB, 5.0)
    cpu = time.process_time() - cpu0
    if profiler is not None:
        profiler.disable()
    packets = a.stats["packets_sent"] + b.stats["packets_sent"]
    result = {
        "done": done,
        "bytes": collector.received,
        "cpu_s": round(cpu, 3),
        "sim_s": round(clock.now - sim0, 3),
        "packets_a": a.stats["packets_sent"],
        "packets_b": b.stats["packets_sent"],
        "us_per_data_packet": round(cpu / max(1, a.stats["packets_sent"]) * 1e6, 2),
        "us_per_packet": round(cpu / max(1, packets) * 1e6, 2),
        "cpu_s_per_gib": round(cpu * (1 << 30) / max(1, collector.received), 2),
    }
    if split:
        cost = _timing_cost()
        data_packets = max(1, a.stats["packets_sent"])
        for name, side in (("sender", sender), ("receiver", receiver)):
            own = max(0.0, side.cpu - side.entries * cost)
            result[f"{name}_us_per_data_packet"] = round(own / data_packets * 1e6, 2)
    if profiler is not None:
        import io
        import pstats

        out = io.StringIO()
        pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("tottime").print_stats(22)
        result["profile"] = out.getvalue()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=32.0)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--no-split", action="store_true", help="skip the run that splits the CPU by end")
    args = parser.parse_args(argv)
    size = int(args.size_mb * MiB)
    result = run(size, args.profile)
    if not args.no_split:
        ends = run(size, split=True)
        result.update((key, ends[key]) for key in ("sender_us_per_data_packet", "receiver_us_per_data_packet"))
    profile = result.pop("profile", None)
    print(json.dumps(result))
    if profile:
        print(profile, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
