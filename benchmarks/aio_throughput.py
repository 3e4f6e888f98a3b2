"""
The asyncio SDK's stream throughput: N MiB (default 100) through
``node.open_connection(peer, 7)`` to a peer's echo port and back, hashed.

    python benchmarks/aio_throughput.py [--size-mb 100] [--json]
    python benchmarks/aio_throughput.py --home ~/.pilot --peer agent-b     # your own daemons

Without ``--home`` it starts a beacon and two daemons on loopback in a
temporary directory (agent-a trusts agent-b and back), and stops them after.
It prints the send rate (the stream took the bytes), the echo rate (the
whole round trip, first byte out to last byte back) in Mbit/s, and whether
the echo was hash-exact.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.abspath(__file__)
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, REPO)

import pilotproto.aio  # noqa: E402

CHUNK = 256 * 1024
TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]
PILOTCTL = [sys.executable, "-m", "pilotproto.cli"]


def pilotctl(home: str, *args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("PILOT_HOME", None)
    run = subprocess.run(PILOTCTL + ["--home", home, "--json", *args], capture_output=True, text=True, env=env, timeout=60)
    doc = json.loads(run.stdout)
    if doc.get("status") != "ok":
        raise SystemExit(f"pilotctl {' '.join(args)}: {doc}")
    return doc["data"]


def wait(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except SystemExit:
            pass
        time.sleep(0.2)
    raise SystemExit("timed out setting up the benchmark")


def loopback_pair(workdir: str):
    """A beacon and two daemons that trust each other: (beacon process, home a, home b)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = os.path.join(workdir, "beacon.log")
    beacon = subprocess.Popen(TWISTD + ["-n", "--pidfile=", "--logfile", log, "pilot", "beacon", "--interface",
                                        "127.0.0.1", "--port", str(port)],
                              env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait(lambda: os.path.exists(log) and "starting" in open(log).read(), 15)
    homes = []
    for name in ("agent-a", "agent-b"):
        home = os.path.join(workdir, name)
        pilotctl(home, "daemon", "start", "--hostname", name, "--beacon", f"127.0.0.1:{port}")
        homes.append(home)
    a, b = homes
    pilotctl(a, "handshake", "agent-b", "benchmark")
    wait(lambda: pilotctl(b, "pending")["pending"], 10)
    pilotctl(b, "approve", "agent-a")
    wait(lambda: pilotctl(a, "lookup", "agent-b"), 10)
    return beacon, a, b


async def measure(home: str, peer: str, size: int) -> dict:
    rng = random.Random(1)
    block = rng.randbytes(CHUNK)  # one random block, repeated: the digest is computed as it goes
    sent_digest, echo_digest = hashlib.sha256(), hashlib.sha256()
    async with await pilotproto.aio.connect(home) as node:
        reader, writer = await node.open_connection(peer, 7)
        started = time.monotonic()

        async def send() -> float:
            left = size
            while left:
                part = block[: min(CHUNK, left)]
                sent_digest.update(part)
                writer.write(part)
                await writer.drain()
                left -= len(part)
            writer.write_eof()
            return time.monotonic()

        sending = asyncio.create_task(send())
        received = 0
        while True:
            part = await reader.read(CHUNK)
            if not part:
                break
            echo_digest.update(part)
            received += len(part)
        finished = time.monotonic()
        sent_at = await sending
        writer.close()
    bits = size * 8 / 1e6
    return {"peer": peer, "bytes": size, "received": received, "verified": sent_digest.digest() == echo_digest.digest(),
            "send_mbps": round(bits / (sent_at - started), 1), "echo_mbps": round(bits / (finished - started), 1),
            "seconds": round(finished - started, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--size-mb", type=float, default=100)
    parser.add_argument("--home", help="use this daemon instead of starting two on loopback")
    parser.add_argument("--peer", default="agent-b")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    size = int(args.size_mb * 1024 * 1024)
    if args.home:
        result = asyncio.run(measure(args.home, args.peer, size))
    else:
        with tempfile.TemporaryDirectory(prefix="pilot-aio-") as workdir:
            beacon, a, b = loopback_pair(workdir)
            try:
                result = asyncio.run(measure(a, "agent-b", size))
            finally:
                for home in (a, b):
                    try:
                        pilotctl(home, "daemon", "stop")
                    except SystemExit:
                        pass
                beacon.kill()
                beacon.wait(5)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['bytes'] / 2**20:.0f} MiB to {result['peer']}:7 and back in {result['seconds']} s: "
              f"send {result['send_mbps']} Mbit/s, echo {result['echo_mbps']} Mbit/s, "
              f"{'hash-exact' if result['verified'] else 'CORRUPTED'}")
    return 0 if result["verified"] and result["received"] == size else 1


if __name__ == "__main__":
    raise SystemExit(main())
