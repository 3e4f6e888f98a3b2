"""
Memory per idle session: one node's session layer holding sessions with many peers.

A hub and ``--sessions`` peers, each a real :class:`~pilotproto.session.sessions.Sessions`
(Noise IK handshake, record keys, path, stream connection) joined by an
in-memory network on one simulated clock, no sockets.  The hub pings every
peer (a session comes up and its path goes direct), opens one stream to it
and closes it (so the session has its stream connection), and then lets
everything go idle.  What the hub's Python heap grew by, divided by the
number of peers, is the memory one idle session costs (tracemalloc: the
Python objects, not the interpreter's own overhead).

    python benchmarks/perf_memory.py [--sessions 1000]
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import os
import random
import sys
import tracemalloc

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def measure(count: int) -> dict:
    from twisted.internet import defer
    from zope.interface import implementer

    from pilotproto.common.ids import RandomIds
    from pilotproto.identity import Identity
    from pilotproto.interfaces import (
        IDatagramSender,
        ILocalCandidates,
        IPeerDirectory,
        IRelay,
        IStreamAcceptor,
        ITrustPolicy,
    )  # fmt: skip
    from pilotproto.session.sessions import Sessions
    from pilotproto.streams.simlink import SimClock
    from pilotproto.wire import Endpoint
    from pilotproto.wire.sources import Direct, Relayed

    clock = SimClock()
    nodes: dict = {}  # name -> (sessions, endpoint, identity)
    by_endpoint: dict = {}
    by_address: dict = {}

    @implementer(ITrustPolicy)
    class Trust:
        def is_trusted(self, public_key):
            return True

        def hostname_of(self, public_key):
            return None

        def trust_established(self, public_key):
            "not used here"

        def trust_revoked(self, public_key):
            "not used here"

    @implementer(IDatagramSender)
    class UDP:
        def __init__(self, endpoint):
            self.endpoint = endpoint

        def send(self, data, destination, ttl=None):
            other = by_endpoint.get(destination)
            if other is not None and (ttl is None or ttl >= 3):
                clock.callLater(0.001, other.tunnel_packet_received, data, Direct(self.endpoint))

        def send_many(self, packets, destination):
            for packet in packets:
                self.send(packet, destination)

        def flush(self):
            "nothing is held"

    @implementer(IRelay)
    class Relay:
        def __init__(self, identity):
            self.source = Relayed(identity.address.to_bytes())

        def send_relay(self, destination, payload):
            other = by_address.get(destination)
            if other is not None:
                clock.callLater(0.002, other.tunnel_packet_received, payload, self.source)

        def relay_kind(self):
            return "relay"

    @implementer(IPeerDirectory)
    class Directory:
        def lookup(self, target):
            _, endpoint, identity = nodes[target]
            return defer.succeed({"hostname": target, "address": str(identity.address),
                                  "public_key": base64.b64encode(identity.public_key).decode(),
                                  "endpoints": [str(endpoint)]})  # fmt: skip

    @implementer(ILocalCandidates)
    class Candidates:
        def __init__(self, endpoint):
            self.endpoint = endpoint

        def local_candidates(self):
            return "none", (self.endpoint,), ()

    @implementer(IStreamAcceptor)
    class Acceptor:
        def stream_opened(self, peer, stream, port):
            from pilotproto.streams.simlink import Collector

            stream.set_handler(Collector(keep=False, close_on_eof=stream))
            return True

        def datagram_received(self, peer, port, data):
            "not used here"

    def add(name, seed):
        identity = Identity.from_seed(seed.to_bytes(32, "big"))
        endpoint = Endpoint(f"10.{seed >> 16 & 255}.{seed >> 8 & 255}.{seed & 255}", 4000)
        sessions = Sessions(clock, identity, trust=Trust(), udp=UDP(endpoint), relay=Relay(identity),
                            directory=Directory(), candidates=Candidates(endpoint), acceptor=Acceptor(),
                            ids=RandomIds(random.Random(seed).randbytes))  # fmt: skip
        nodes[name] = (sessions, endpoint, identity)
        by_endpoint[endpoint] = sessions
        by_address[identity.address.to_bytes()] = sessions
        return sessions

    peers = [add(f"peer-{i}", i + 2) for i in range(count)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    hub = add("hub", 1)

    def settle(d, limit=10.0):
        results = []
        d.addBoth(results.append)
        clock.run_until(lambda: bool(results), limit)
        return results[0] if results else None

    for i in range(count):
        settle(hub.ping(f"peer-{i}", count=1))
        peer = hub.peers[nodes[f"peer-{i}"][2].public_key]
        stream = peer.stream_connection().open_stream(7)
        from pilotproto.streams.simlink import Collector

        stream.set_handler(Collector(keep=False))
        stream.write(b"hello")
        stream.close_write()
    clock.advance(5.0)  # every stream finishes; the sessions go idle (keepalives run)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    # Everything allocated since the peers were made: the hub and each peer
    # hold one record of each session, so a session costs half of it per side.
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    up = sum(1 for s in peers if s.peers)
    return {
        "sessions": up,
        "direct": sum(1 for record in hub.peers.values() if record.path.using_direct()),
        "heap_growth_bytes": grown,
        # Both ends of every session live in this process (the hub's and each peer's record): halve it.
        "bytes_per_idle_session": round(grown / max(1, up) / 2),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.sessions)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
