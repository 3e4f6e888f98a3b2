#!/usr/bin/env python3
"""
Time to first byte and time to a direct path, for every pair of NAT kinds,
across real Linux NATs in the lab (needs root, ip and nft).

    python benchmarks/traversal.py [--loss PCT] [--rounds N]

The baseline, measured in the same run and for the same pairs, is the
relay: every session's first echo travels through the beacon's relay (the
first byte never waits for a punch), so each pair's first RTT is its relay
RTT, and the ratio relay RTT / settled RTT says what traversal bought.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pilotproto.lab.matrix import format_table, run_matrix  # noqa: E402

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--loss", type=float, default=0.0, help="percent random loss on every router")
    parser.add_argument("--rounds", type=int, default=1, help="how many full matrices to run (each ~20 s)")
    args = parser.parse_args()
    first, direct, relay_first, gains = [], [], [], []
    for n in range(max(1, min(args.rounds, 10))):
        results = run_matrix(loss=args.loss / 100.0)
        print(f"round {n + 1}")
        print(format_table(results))
        for r in results:
            if r.first_byte_ms is not None:
                first.append(r.first_byte_ms)
                if r.expected != "direct":
                    relay_first.append(r.first_byte_ms)
            if r.direct_after_ms is not None:
                direct.append(r.direct_after_ms)
            if r.relay_rtt_ms and r.final_rtt_ms and r.expected == "direct":
                gains.append(r.relay_rtt_ms / r.final_rtt_ms)

    def show(name, values):
        if values:
            print(f"{name:<34} n={len(values):<3} median {statistics.median(values):8.1f} ms   max {max(values):8.1f} ms")

    print()
    show("time to first byte (all pairs)", first)
    show("time to first byte (relay pairs)", relay_first)
    show("time to direct path (direct pairs)", direct)
    if gains:
        print(f"relay RTT / direct RTT, direct pairs (baseline: relay)  median {statistics.median(gains):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
