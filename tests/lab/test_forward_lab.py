"""
curl behind one lab NAT fetches a file hash-exact from ``python -m
http.server`` exposed by an agent behind another NAT, through ``forward``
(issue 11's acceptance at 8 MiB; ``benchmarks/forward_throughput.py`` moves
100 MiB and prints the rates).  The http.server and curl run inside the
site hosts' namespaces, on their loopback, as a user's programs would.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.lab

needs_lab = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip"),
    reason="the lab needs root, ip and nft",
)
needs_curl = pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed (.ci/run installs it)")

MiB = 1024 * 1024
SIZE = 8 * MiB
HTTP_PORT = 8000
LOCAL_PORT = 8080


@needs_lab
@needs_curl
def test_curl_through_forward_and_expose_across_two_nats(tmp_path):
    from pilotproto.lab import Lab
    from pilotproto.lab.matrix import establish_trust
    from pilotproto.lab.pilot import LabBeacon, LabNode

    site_dir = tmp_path / "site"
    site_dir.mkdir()
    blob = os.urandom(SIZE)
    (site_dir / "blob.bin").write_bytes(blob)
    with Lab() as lab:
        beacon = LabBeacon(lab, str(tmp_path)).start()
        sites = [lab.add_site("port-restricted-cone") for _ in range(2)]
        a = LabNode(lab, sites[0].hosts[0], str(tmp_path), "agent-a", beacon).start()
        b = LabNode(lab, sites[1].hosts[0], str(tmp_path), "agent-b", beacon).start()
        server = lab.popen(sites[1].hosts[0], [sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind",
                                               "127.0.0.1", "--directory", str(site_dir)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            establish_trust(a, b)
            # http.server may still be starting (a busy CI machine): an expose whose
            # local service refuses resets the stream, which curl does not retry.
            deadline = time.monotonic() + 20
            while lab.run(sites[1].hosts[0], ["curl", "-sS", "-o", "/dev/null", f"http://127.0.0.1:{HTTP_PORT}/"],
                          capture_output=True, timeout=10).returncode != 0:
                assert time.monotonic() < deadline, "http.server did not start in the lab host"
                time.sleep(0.2)
            b.ctl("expose", port=80, host="127.0.0.1", tcp_port=HTTP_PORT, allow=[])
            a.ctl("forward", bind="127.0.0.1", local_port=LOCAL_PORT, target="agent-b", port=80)
            started = time.monotonic()
            fetched = lab.run(sites[0].hosts[0], ["curl", "-sS", "--max-time", "90", "--retry", "5",
                                                  "--retry-connrefused", "--retry-delay", "1",
                                                  f"http://127.0.0.1:{LOCAL_PORT}/blob.bin"],
                              capture_output=True, timeout=120)
            seconds = time.monotonic() - started
            assert fetched.returncode == 0, (fetched.stderr, a.ctl("forwards"), b.ctl("exposes"))
            assert hashlib.sha256(fetched.stdout).hexdigest() == hashlib.sha256(blob).hexdigest()
            print(f"\n{SIZE // MiB} MiB through forward -> two NATs -> expose in {seconds:.1f} s "
                  f"({SIZE * 8 / seconds / 1e6:.1f} Mbit/s)")
            forwards = a.ctl("forwards")["forwards"]
            assert forwards[0]["bytes_received"] >= SIZE and forwards[0]["failed"] == 0
        finally:
            server.kill()
            server.wait(5)
            for node in (a, b):
                node.stop()
            beacon.kill()
