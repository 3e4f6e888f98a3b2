#!/usr/bin/env python3
"""
Birthday punching across real Linux NATs in the lab (needs root, ip and nft):
success rate and time to a direct path for port-restricted <-> symmetric.

    python benchmarks/birthday.py [--trials N] [--pair A,B] [--within S]

Each trial is a fresh pair of sites and nodes (no NAT state carried over);
both nodes have finished NAT discovery before the session starts, and the
clock runs from the first ping (session setup, candidate exchange and the
punch).  The baseline, measured in the same run, is port-restricted <->
port-restricted, which a plain punch opens.  Bounded: at most 40 trials,
each given --within seconds (default 10) to go direct.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pilotproto.lab import Lab  # noqa: E402
from pilotproto.lab.matrix import DIRECT_KINDS, establish_trust  # noqa: E402
from pilotproto.lab.pilot import LabBeacon, LabNode  # noqa: E402

SITES_PER_LAB = 30


def trial(lab, beacon, workdir, n, kind_a, kind_b, within):
    a = LabNode(lab, lab.add_site(kind_a).hosts[0], workdir, f"a{n}", beacon).start()
    b = LabNode(lab, lab.add_site(kind_b).hosts[0], workdir, f"b{n}", beacon).start()
    try:
        for node in (a, b):
            deadline = time.monotonic() + 15
            while node.ctl("info")["nat_type"] == "unknown" and time.monotonic() < deadline:
                time.sleep(0.2)
        establish_trust(a, b)
        started = time.monotonic()
        first = a.ctl("ping", timeout=30, target=b.hostname, count=1)
        direct_after = None
        peer = {}
        while time.monotonic() - started < within:
            peer = a.ctl("peers")["peers"][0]
            if peer["path"] in DIRECT_KINDS:
                direct_after = time.monotonic() - started
                break
            time.sleep(0.05)
        last = a.ctl("ping", target=b.hostname, count=3, interval=0.1)
        return {
            "direct_after_s": direct_after,
            "path": peer.get("path"),
            "relay_rtt_ms": first["replies"][0]["rtt_ms"] if first["received"] else None,
            "final_rtt_ms": last["avg_ms"],
            "birthday_a": peer.get("birthday"),
            "birthday_b": (b.ctl("peers")["peers"] or [{}])[0].get("birthday"),
        }
    finally:
        a.stop(), b.stop()


def run(kind_a, kind_b, trials, within):
    results = []
    done = 0
    while done < trials:
        workdir = tempfile.mkdtemp(prefix="pilot-birthday-")
        with Lab() as lab:
            beacon = LabBeacon(lab, workdir).start()
            for _ in range(min(trials - done, SITES_PER_LAB // 2)):
                r = trial(lab, beacon, workdir, done, kind_a, kind_b, within)
                done += 1
                results.append(r)
                t = f"{r['direct_after_s']:.2f} s" if r["direct_after_s"] is not None else "-"
                print(f"  {kind_a} <-> {kind_b} #{done}: {r['path']:<8} direct after {t:<8} "
                      f"birthday {r['birthday_a'] or ''} / {r['birthday_b'] or ''}", flush=True)
            beacon.kill()
    return results


def summary(name, results, within, goal):
    times = [r["direct_after_s"] for r in results if r["direct_after_s"] is not None]
    ok = [t for t in times if t <= goal]
    line = f"{name:<44} direct {len(times)}/{len(results)}, within {goal:g} s {len(ok)}/{len(results)} ({100 * len(ok) / len(results):.0f} %)"
    if times:
        line += f"; time to direct median {statistics.median(times):.2f} s, max {max(times):.2f} s"
    print(line)
    probes = [r["birthday_a"]["probes"] + r["birthday_b"]["probes"] for r in results if r["birthday_a"] and r["birthday_b"]]
    if probes:
        print(f"{'':<44} probes per pair: median {statistics.median(probes):.0f}, max {max(probes)} "
              f"(~{max(probes) * 67 / 1000:.0f} kB on the wire at most)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--trials", type=int, default=10, help="trials per pair (at most 40)")
    parser.add_argument("--pair", action="append", help="A,B NAT kinds (default: port-restricted-cone,symmetric "
                        "and port-restricted-cone,symmetric-sequential)")
    parser.add_argument("--within", type=float, default=10.0, help="seconds each trial may take to go direct")
    parser.add_argument("--goal", type=float, default=5.0, help="the time to direct a trial should beat")
    args = parser.parse_args()
    trials = max(1, min(args.trials, 40))
    within = max(1.0, min(args.within, 60.0))
    pairs = [tuple(p.split(",", 1)) for p in args.pair] if args.pair else [
        ("port-restricted-cone", "symmetric"),
        ("port-restricted-cone", "symmetric-sequential"),
    ]
    baseline = ("port-restricted-cone", "port-restricted-cone")
    found = {}
    for a, b in [baseline, *pairs]:
        print(f"{a} <-> {b}: {trials} trials")
        found[(a, b)] = run(a, b, trials if (a, b) != baseline else max(1, trials // 2), within)
    print()
    for (a, b), results in found.items():
        summary(f"{a} <-> {b}" + (" (baseline)" if (a, b) == baseline else ""), results, within, args.goal)
    return 0


if __name__ == "__main__":
    sys.exit(main())
