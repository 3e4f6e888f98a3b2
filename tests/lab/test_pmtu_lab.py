"""
Path MTU discovery across real kernel NATs: links of MTU 1280, 1500 and
9000 each carry a 4 MiB stream hash-exact, and each side's search settles
on the link's MTU (within the 8-byte granularity).  A path narrower than
the hosts' interfaces (1500-byte LANs, a 1400-byte uplink) is found by the
probes alone: the node's socket sets PMTUDISC_PROBE, so the router's ICMP
"fragmentation needed" does not shrink anything for us.
``benchmarks/pmtu.py`` runs the same with 64 MiB and prints the goodput.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

needs_lab = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip"),
    reason="the lab needs root, ip and nft",
)

MiB = 1024 * 1024
SIZE = 4 * MiB
GRANULARITY = 8
BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "pmtu.py"


def _benchmark():
    spec = importlib.util.spec_from_file_location("pmtu_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_lab
def test_each_link_mtu_is_discovered_and_carries_a_stream_intact():
    from pilotproto.lab import Lab
    from pilotproto.lab.pilot import LabBeacon

    bench = _benchmark()
    workdir = tempfile.mkdtemp(prefix="pmt-")
    try:
        with Lab() as lab:
            beacon = LabBeacon(lab, workdir).start()
            for mtu, uplink, expected in ((1280, None, 1280), (1500, None, 1500), (9000, None, 9000), (1500, 1400, 1400)):
                r = bench.pmtu_transfer(lab, beacon, mtu, workdir, SIZE, timeout=60, uplink_mtu=uplink)
                print(f"\nlink {mtu} (uplink {uplink}): pmtu {r['pmtu']}/{r['peer_pmtu']} on {r['path']}, "
                      f"{SIZE * 8 / r['seconds'] / 1e6:.1f} Mbit/s")
                assert r["size"] == SIZE and r["sha256"] == r["expected_sha256"], (mtu, uplink)
                assert r["path"] != "relay", r["path"]
                for found in (r["pmtu"], r["peer_pmtu"]):
                    assert expected - GRANULARITY <= found <= expected, (mtu, uplink, found)
            beacon.kill()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
