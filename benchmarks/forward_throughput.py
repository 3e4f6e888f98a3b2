"""
``pilotctl forward`` -> overlay -> ``pilotctl expose`` throughput on this machine,
against a direct TCP baseline: a beacon and two daemons on loopback, a
``python -m http.server`` serving a file of ``--size-mb`` MiB (default 100),
fetched once directly and once through the forward; prints Mbit/s for both
and checks the SHA-256.  Everything stays on 127.0.0.1 and is cleaned up.

    python benchmarks/forward_throughput.py [--size-mb 100]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]
PILOTCTL = [sys.executable, "-m", "pilotproto.cli"]
MiB = 1024 * 1024


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pilotctl(home: str, *args) -> dict:
    proc = subprocess.run(PILOTCTL + ["--home", home, "--json", *args], capture_output=True, text=True, timeout=60)
    doc = json.loads(proc.stdout)
    if proc.returncode != 0:
        raise SystemExit(f"pilotctl {' '.join(args)} failed: {doc}")
    return doc["data"]


def timed_fetch(url: str) -> tuple[float, str, int]:
    digest, size = hashlib.sha256(), 0
    started = time.monotonic()
    with urllib.request.urlopen(url, timeout=120) as r:
        while chunk := r.read(MiB):
            digest.update(chunk)
            size += len(chunk)
    return time.monotonic() - started, digest.hexdigest(), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=100)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="pfw-")
    procs = []
    homes = [os.path.join(work, name) for name in ("agent-a", "agent-b")]
    try:
        beacon_port = free_port(socket.SOCK_DGRAM)
        procs.append(subprocess.Popen(TWISTD + ["-n", "--pidfile=", "--logfile", os.path.join(work, "beacon.log"), "pilot",
                                                "beacon", "--interface", "127.0.0.1", "--port", str(beacon_port)]))
        time.sleep(1.5)
        for home in homes:
            pilotctl(home, "daemon", "start", "--hostname", os.path.basename(home), "--beacon", f"127.0.0.1:{beacon_port}")
        pilotctl(homes[0], "handshake", "agent-b", "benchmark")
        for _ in range(50):
            if pilotctl(homes[1], "pending")["pending"]:
                break
            time.sleep(0.1)
        pilotctl(homes[1], "approve", "agent-a")
        site = os.path.join(work, "site")
        os.makedirs(site)
        with open(os.path.join(site, "blob.bin"), "wb") as f:
            for _ in range(args.size_mb):
                f.write(os.urandom(MiB))
        http_port = free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "http.server", str(http_port), "--bind", "127.0.0.1",
                                       "--directory", site], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1.0)
        pilotctl(homes[1], "expose", "80", str(http_port))
        local = pilotctl(homes[0], "forward", "0", "agent-b:80")["local_port"]

        direct_s, direct_hash, size = timed_fetch(f"http://127.0.0.1:{http_port}/blob.bin")
        overlay_s, overlay_hash, overlay_size = timed_fetch(f"http://127.0.0.1:{local}/blob.bin")
        bits = size * 8
        print(f"{size // MiB} MiB from python -m http.server on loopback")
        print(f"  direct TCP:                  {bits / direct_s / 1e6:9.1f} Mbit/s ({direct_s:.2f} s)")
        print(f"  forward -> overlay -> expose: {bits / overlay_s / 1e6:8.1f} Mbit/s ({overlay_s:.2f} s)")
        print(f"  SHA-256 {'identical' if overlay_hash == direct_hash and overlay_size == size else 'DIFFERS'}")
    finally:
        for home in homes:
            subprocess.run(PILOTCTL + ["--home", home, "daemon", "stop"], capture_output=True, timeout=30)
        for proc in procs:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
