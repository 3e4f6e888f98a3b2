"""
A stream across two real kernel NATs that lose and reorder packets: it
arrives byte-exact, in bounded time.  24 MiB is enough to see hundreds of
losses, retransmissions and reorderings; ``benchmarks/stream_throughput.py``
moves 100 MiB and more the same way and prints the rates.

Each node is a worker process in its lab host that embeds a PilotNode (see
``benchmarks/stream_throughput.py``, whose worker modes this test runs):
trust is set up through the nodes' control sockets with the operator's
commands (``handshake``/``approve``), then the sender streams 24 MiB of
distinct chunks and the receiver reports their SHA-256.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

needs_lab = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip"),
    reason="the lab needs root, ip and nft",
)

MiB = 1024 * 1024
SIZE = 24 * MiB
TIME_LIMIT = 120.0
BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "stream_throughput.py"


def _benchmark():
    spec = importlib.util.spec_from_file_location("stream_throughput", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def workdir():
    # Short: the nodes' control sockets live here, and a UNIX socket path has ~100 bytes.
    path = tempfile.mkdtemp(prefix="pst-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@needs_lab
def test_a_stream_across_lossy_reordering_nats_arrives_intact(workdir):
    from pilotproto.lab import Lab
    from pilotproto.lab.pilot import LabBeacon

    bench = _benchmark()
    with Lab() as lab:
        beacon = LabBeacon(lab, workdir).start()
        # 10 % loss on each router, each way: about 19 % end to end; 10 % of packets
        # held back by each site's reorder box so that later ones overtake them.
        sites = [lab.add_site("port-restricted-cone", loss=0.10, reorder=0.1) for _ in range(2)]
        hosts = [site.hosts[0] for site in sites]
        started = time.monotonic()
        result = bench.pilot_transfer(lab, beacon, hosts, workdir, SIZE, seed=11, timeout=TIME_LIMIT, want_direct=False)
        wall = time.monotonic() - started
        beacon.kill()
    print(
        f"\n{SIZE // MiB} MiB over 2x(10 % loss + 10 % reorder) NATs: {result['seconds']:.1f} s "
        f"({SIZE * 8 / result['seconds'] / 1e6:.1f} Mbit/s) on path {result['path']}; sender {result['sender']}; "
        f"{wall:.1f} s with setup"
    )
    assert result["size"] == SIZE
    assert result["sha256"] == bench.expected_digest(SIZE, 11)
    assert result["seconds"] <= TIME_LIMIT
    assert result["sender"]["stats"]["stream_bytes_retransmitted"] > 0  # the routers really lost packets
