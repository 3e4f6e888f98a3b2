"""
One stream one way through two daemons: what ``send-file`` and a ``pilot:``
client in another process get (used by ``perf.py``'s ``daemons`` part).

A reader process listens on daemon b's control socket (``listen`` then
``accept``) and hashes what arrives; this process opens a stream through
daemon a's control socket (``connect``) and writes ``size`` bytes of
deterministic data.  Both clients are plain blocking sockets, as
``pilotctl`` is, each in its own process as users' clients are (two threads
of one process would share one GIL, which no user's pair of clients does):
the daemons do the work.  Goodput is first write → last byte read (both
``time.monotonic()``, one clock for every process on Linux), the bytes
hash-checked.

    python benchmarks/perf_daemon.py read HOME_B TIMEOUT    # the reader (started by one_way)
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MiB = 1024 * 1024
PORT = 4077
READ = 256 * 1024


def read(home_b: str, timeout: float) -> dict:
    """Listen on daemon b, accept one stream and hash it to its end (prints ``listening`` once ready)."""
    from pilotproto.control.client import ControlClient

    listener = ControlClient(home_b).listen(PORT)
    print("listening", flush=True)
    event = json.loads(listener.read_line(timeout))
    stream = ControlClient(home_b).accept(event["stream_id"])
    digest, n = hashlib.sha256(stream.early), len(stream.early)
    stream.sock.settimeout(timeout)
    while True:
        data = stream.sock.recv(READ)
        if not data:
            break
        n += len(data)
        digest.update(data)
    done = time.monotonic()
    stream.close()
    listener.close()
    return {"n": n, "sha256": digest.hexdigest(), "t": done}


def one_way(home_a: str, home_b: str, peer_b: str, size: int, timeout: float = 120.0) -> dict:
    """``size`` bytes from a client of daemon a to a client of daemon b: Mbit/s and whether they arrived intact."""
    from pilotproto.control.client import ControlClient

    reader = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "read", home_b, str(timeout)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        ready = reader.stdout.readline()
        if ready.strip() != "listening":
            raise RuntimeError(f"the reader did not start listening: {ready}{reader.stderr.read()}")
        block = hashlib.shake_256(b"perf-daemon").digest(MiB)
        sent_digest = hashlib.sha256()
        stream = ControlClient(home_a).open_stream(peer_b, PORT)
        t0 = time.monotonic()
        sent = 0
        while sent < size:
            piece = block[: min(MiB, size - sent)]
            stream.sock.sendall(piece)
            sent_digest.update(piece)
            sent += len(piece)
        stream.sock.shutdown(socket.SHUT_WR)
        out, err = reader.communicate(timeout=timeout)
        stream.close()
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    lines = out.strip().splitlines()
    if reader.returncode != 0 or not lines:
        raise RuntimeError(f"the one-way transfer through the daemons failed: {err.strip()[-2000:] or 'no result'}")
    got = json.loads(lines[-1])
    return {
        "mbit_s": round(size * 8 / (got["t"] - t0) / 1e6, 1),
        "intact": got["n"] == size and got["sha256"] == sent_digest.hexdigest(),
    }


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "read":
        raise SystemExit(__doc__.rsplit("\n\n", 1)[1])
    print(json.dumps(read(sys.argv[2], float(sys.argv[3]))), flush=True)
