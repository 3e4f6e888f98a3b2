"""
One stream one way through two daemons: what ``send-file`` and a ``pilot:``
client in another process get (used by ``perf.py``'s ``daemons`` part).

A reader thread listens on daemon b's control socket (``listen`` then
``accept``) and hashes what arrives; this thread opens a stream through
daemon a's control socket (``connect``) and writes ``size`` bytes of
deterministic data.  Both clients are plain blocking sockets in this
process, as ``pilotctl`` is: the daemons do the work.  Goodput is
first write → last byte read, the bytes hash-checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MiB = 1024 * 1024
PORT = 4077
READ = 256 * 1024


def one_way(home_a: str, home_b: str, peer_b: str, size: int, timeout: float = 120.0) -> dict:
    """``size`` bytes from a client of daemon a to a client of daemon b: Mbit/s and whether they arrived intact."""
    from pilotproto.control.client import ControlClient

    listener = ControlClient(home_b).listen(PORT)
    got: dict = {}

    def read():
        try:
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
            got.update(n=n, sha256=digest.hexdigest(), t=time.monotonic())
            stream.close()
        except Exception as e:  # reported below, with the figures
            got["error"] = repr(e)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
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
    reader.join(timeout)
    stream.close()
    listener.close()
    if "error" in got or "t" not in got:
        raise RuntimeError(f"the one-way transfer through the daemons failed: {got.get('error', 'timed out')}")
    return {
        "mbit_s": round(size * 8 / (got["t"] - t0) / 1e6, 1),
        "intact": got["n"] == size and got["sha256"] == sent_digest.hexdigest(),
    }
