#!/usr/bin/env python3
"""
Fuzz every decoder for a long time: >= 1 M inputs each by default.

    python benchmarks/fuzz.py [--inputs N] [--only NAME ...] [--seed S]
                              [--coverage-every K] [--memory-every M]
                              [--slow-ms MS] [--memory-limit BYTES] [--save DIR] [--list]

The targets are ``tests/fuzz_targets.py``'s (the suite runs a bounded
slice of the same ones with hypothesis, ``tests/test_fuzz.py``): every wire
decoder (beacon, STUN, relay, tunnel, session, the node's datagram
classifier, the TLS link's framing, stream packets), the control socket's
codec and a whole control connection, and two targets past the signatures
and the AEAD, whose inputs are sealed with a real tunnel session's keys and
decrypted and handled by the peer's sessions and stream connection.

The engine is a mutator guided by line coverage: it starts from valid
encodings (each target's seeds), mutates them (bit flips, boundary values
written over length fields, insertions, deletions, splices of two inputs),
and keeps an input in its corpus when it reached a line of ``pilotproto``
no input had reached before.  Coverage is traced on every K-th input (the
tracer costs ~7x), allocation on every M-th (tracemalloc, ~8x; every input
by default).

For each target it reports inputs run, rate, corpus size, lines reached,
crashes (any exception but the codec's own errors, deduplicated by type and
the innermost ``pilotproto`` frame), inputs slower than --slow-ms (timed
again three times, so a pause of the machine is not counted), the peak
allocation of one input, inputs that allocated more than --memory-limit,
and what the target still holds after all its inputs (state that grows
from input to input, such as a peer's streams, over --retained-limit is
reported too).  It exits 1 when any target had a crash, a slow input or an
allocation over the limit.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import tracemalloc
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import fuzz_targets  # noqa: E402

PACKAGE = os.path.join(ROOT, "pilotproto") + os.sep
INTERESTING_8 = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)
MAX_CORPUS = 4000


def interesting(width: int, size: int, rng: random.Random) -> int:
    top = (1 << (8 * width)) - 1
    return rng.choice((0, 1, 2, top, top - 1, top >> 1, (top >> 1) + 1, size, size + 1, max(size - 1, 0), rng.randrange(top + 1)))


def mutate(data: bytes, corpus: list, rng: random.Random, limit: int) -> bytes:
    """One to four stacked mutations of ``data``."""
    d = bytearray(data)
    for _ in range(rng.randrange(1, 5)):
        op = rng.randrange(9)
        n = len(d)
        if op == 0 and n:
            i = rng.randrange(n)
            d[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            d[rng.randrange(n)] = rng.choice(INTERESTING_8)
        elif op == 2 and n >= 2:
            width = rng.choice((2, 4, 8))
            if n >= width:
                i = rng.randrange(n - width + 1)
                d[i : i + width] = interesting(width, n, rng).to_bytes(width, "big")
        elif op == 3:
            i = rng.randrange(n + 1)
            d[i:i] = rng.randbytes(rng.randrange(1, 17))
        elif op == 4 and n:
            i = rng.randrange(n)
            del d[i : i + rng.randrange(1, 17)]
        elif op == 5 and n:
            i = rng.randrange(n)
            span = d[i : i + rng.randrange(1, 33)]
            d[i:i] = span * rng.randrange(1, 4)
        elif op == 6 and n:
            del d[rng.randrange(n) :]
        elif op == 7 and corpus:
            other = rng.choice(corpus)
            d = d[: rng.randrange(n + 1)] + other[rng.randrange(len(other) + 1) :]
        else:
            d += rng.randbytes(rng.randrange(1, 9))
    return bytes(d[:limit])


class Coverage:
    """Lines of ``pilotproto`` reached, through sys.settrace (only our frames are traced)."""

    def __init__(self):
        self.seen: set = set()
        self.new = 0

    def _global(self, frame, event, arg):
        if frame.f_code.co_filename.startswith(PACKAGE):
            return self._local
        return None

    def _local(self, frame, event, arg):
        if event == "line":
            key = (frame.f_code.co_filename, frame.f_lineno)
            if key not in self.seen:
                self.seen.add(key)
                self.new += 1
        return self._local

    def start(self):
        self.new = 0
        sys.settrace(self._global)

    def stop(self) -> int:
        sys.settrace(None)
        return self.new


class Findings:
    def __init__(self):
        self.crashes: dict = {}  # key -> (count, example input, message)
        self.slow: list = []
        self.allocations: list = []

    def crash(self, error: BaseException, data: bytes) -> None:
        frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename.startswith(PACKAGE)]
        where = f"{os.path.relpath(frames[-1].filename, ROOT)}:{frames[-1].lineno}" if frames else "?"
        key = (type(error).__name__, where)
        count, example, message = self.crashes.get(key, (0, data, str(error)[:200]))
        self.crashes[key] = (count + 1, example, message)

    @property
    def bad(self) -> bool:
        return bool(self.crashes or self.slow or self.allocations)


def _timed(target, data: bytes) -> float:
    ready = getattr(target.run, "ready", None)
    if ready is not None:
        ready()
    started = time.perf_counter()
    try:
        target.run(data)
    except Exception:  # already counted (or expected) on the first run
        pass
    return time.perf_counter() - started


def fuzz(target, count: int, rng: random.Random, args) -> dict:
    corpus = [bytes(s) for s in target.seeds(random.Random(rng.random()))]
    before = tracemalloc.get_traced_memory()[0]
    coverage = Coverage()
    findings = Findings()
    peak = peak_size = 0
    slow_s = args.slow_ms / 1000.0
    ready = getattr(target.run, "ready", None)
    started = time.perf_counter()
    for n in range(count):
        if corpus and rng.random() > 0.05:
            data = mutate(rng.choice(corpus), corpus, rng, 2 * target.max_size)
        else:
            data = rng.randbytes(rng.choice((rng.randrange(32), rng.randrange(target.max_size + 1))))
        traced = n % args.coverage_every == 0
        measured = n % args.memory_every == 0
        if ready is not None:
            ready()  # a new tunnel pair (after an input ended the last one) is not this input's cost
        if measured:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
        if traced:
            coverage.start()
        t0 = time.perf_counter()
        try:
            target.run(data)
        except target.expected:
            pass
        except Exception as e:  # a crash: anything but the codec's own errors
            findings.crash(e, data)
        finally:
            elapsed = time.perf_counter() - t0
            if traced and coverage.stop() and len(corpus) < MAX_CORPUS:
                corpus.append(data)
        if measured:
            used = tracemalloc.get_traced_memory()[1] - base
            if used > peak:
                peak, peak_size = used, len(data)
            if used > args.memory_limit:
                findings.allocations.append((used, data))
        if elapsed > slow_s and not traced:
            # Timed again: a pause of the machine (another process, a GC) is not the input's.
            elapsed = min(elapsed, *(_timed(target, data) for _ in range(3)))
            if elapsed > slow_s:
                findings.slow.append((elapsed, data))
        if args.progress and n and n % 100_000 == 0:
            print(f"  {target.name}: {n} inputs, {len(corpus)} in corpus, {len(coverage.seen)} lines", flush=True)
    # What the inputs left behind (a target's state across inputs: the
    # tunnel pair's peer records, streams and candidates), corpus included.
    retained = tracemalloc.get_traced_memory()[0] - before
    if retained > args.retained_limit:
        findings.allocations.append((retained, b"(state retained across all inputs)"))
    close = getattr(target.run, "close", None)
    if close is not None:
        close()
    return {
        "retained": retained,
        "target": target.name,
        "inputs": count,
        "seconds": time.perf_counter() - started,
        "corpus": len(corpus),
        "lines": len(coverage.seen),
        "findings": findings,
        "peak": peak,
        "peak_input": peak_size,
    }


def report(results, args) -> bool:
    print()
    print(f"{'target':<20} {'inputs':>9} {'per s':>8} {'corpus':>7} {'lines':>6} {'crashes':>8} {'slow':>5} {'peak alloc':>11} {'retained':>10} {'over limit':>10}")
    bad = False
    for r in results:
        f = r["findings"]
        bad = bad or f.bad
        crashes = sum(c for c, _, _ in f.crashes.values())
        print(
            f"{r['target']:<20} {r['inputs']:>9} {r['inputs'] / r['seconds']:>8.0f} {r['corpus']:>7} {r['lines']:>6} "
            f"{crashes:>8} {len(f.slow):>5} {r['peak'] / 1024:>7.1f} KiB {r['retained'] / 1048576:>6.1f} MiB {len(f.allocations):>10}"
        )
    for r in results:
        f = r["findings"]
        for (kind, where), (count, example, message) in f.crashes.items():
            print(f"\nCRASH {r['target']}: {kind} at {where} ({count}x): {message}\n  input: {example[:200].hex()}")
            _save(args, r["target"], "crash", example)
        for elapsed, example in sorted(f.slow, reverse=True)[:3]:
            print(f"\nSLOW {r['target']}: {elapsed * 1000:.0f} ms for {len(example)} bytes: {example[:100].hex()}")
            _save(args, r["target"], "slow", example)
        for used, example in sorted(f.allocations, key=lambda a: -a[0])[:3]:
            print(f"\nALLOCATION {r['target']}: {used} bytes for a {len(example)}-byte input: {example[:100].hex()}")
            _save(args, r["target"], "alloc", example)
    total = sum(r["inputs"] for r in results)
    print(f"\n{total} inputs; {'FAILED: see above' if bad else '0 crashes, 0 slow inputs, 0 allocations over the limit'}")
    return bad


def _save(args, target: str, kind: str, data: bytes) -> None:
    if args.save:
        os.makedirs(args.save, exist_ok=True)
        path = os.path.join(args.save, f"{target}-{kind}-{abs(hash(data)):x}.bin")
        with open(path, "wb") as f:
            f.write(data)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--inputs", type=int, default=1_000_000, help="inputs per target (default 1,000,000)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="fuzz only these targets")
    parser.add_argument("--seed", type=int, default=1, help="random seed (a run is reproducible)")
    parser.add_argument("--coverage-every", type=int, default=8, metavar="K", help="trace coverage on every K-th input")
    parser.add_argument("--memory-every", type=int, default=1, metavar="M", help="measure allocation on every M-th input")
    parser.add_argument("--slow-ms", type=float, default=100.0, help="an input taking longer is reported (default 100)")
    parser.add_argument("--memory-limit", type=int, default=4 << 20, help="bytes one input may allocate (default 4 MiB)")
    parser.add_argument("--retained-limit", type=int, default=64 << 20,
                        help="bytes a target may hold after all its inputs (default 64 MiB)")
    parser.add_argument("--save", metavar="DIR", help="write each reported input to DIR")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    parser.add_argument("--quiet", dest="progress", action="store_false", help="no progress lines")
    args = parser.parse_args(argv)
    targets = fuzz_targets.targets()
    if args.list:
        for t in targets:
            print(t.name)
        return 0
    if args.only:
        unknown = set(args.only) - {t.name for t in targets}
        if unknown:
            parser.error(f"unknown targets: {', '.join(sorted(unknown))} (see --list)")
        targets = [t for t in targets if t.name in args.only]
    if args.inputs < 1 or args.coverage_every < 1 or args.memory_every < 1:
        parser.error("--inputs, --coverage-every and --memory-every must be positive")
    rng = random.Random(args.seed)
    random.seed(args.seed)  # the tunnel pairs' keys, so that a run is reproducible
    tracemalloc.start()
    results = []
    for target in targets:
        print(f"{target.name}: {args.inputs} inputs", flush=True)
        results.append(fuzz(target, args.inputs, random.Random(rng.random()), args))
    tracemalloc.stop()
    return 1 if report(results, args) else 0


if __name__ == "__main__":
    sys.exit(main())
