"""
CPU per packet of the layers under the streams: tunnel, session, node socket.

Two nodes' real :class:`~pilotproto.session.sessions.Sessions` (Noise IK
handshake, AES-256-GCM record layer, peer records, paths) on a simulated
clock, joined by an in-memory network until their path is direct; then the
measured part, with no reactor and no kernel:

* **send**: the sender's stream connection's own send callback (the batch
  ``send_packets`` when the tree wires it, else ``send_packet`` once per
  packet) is given bursts of ``--burst`` stream packets of ``--packet``
  bytes, as one flush of the stream layer hands them down; what reaches the
  node's socket (``send``/``send_many``) is kept, not sent.
* **receive**: those sealed packets go into the receiver's datagram protocol
  (the socket's ``deliver``: a GRO burst at a time when the tree has
  ``packets_received``, else one ``packet_received`` per packet), through the
  router, the tunnel endpoint, the record layer and the peer record, to a
  stream connection whose ``packet_received`` only counts.

CPU time (``time.process_time``) per packet, best of ``--rounds``.  Run it
for this tree and for a copy of an older one (``PYTHONPATH=/tmp/old``)
alternately to compare on a busy machine::

    python benchmarks/perf_tunnel.py [--packets 20000] [--rounds 5] [--profile]
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import os
import random
import sys
import time

if __name__ == "__main__" and not os.environ.get("PYTHONPATH"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_pair():
    """Two nodes with a live session and a direct path: ``(sender peer, receiver protocol, sink, counter)``."""
    from twisted.internet import defer
    from zope.interface import implementer

    from pilotproto.common.ids import RandomIds
    from pilotproto.identity import Identity
    from pilotproto.interfaces import (
        IDatagramSender,
        ILocalCandidates,
        INatDiscovery,
        IPeerDirectory,
        IRelay,
        IRendezvous,
        IStreamAcceptor,
        ITrustPolicy,
    )  # fmt: skip
    from pilotproto.node.router import DatagramRouter
    from pilotproto.node.udp import NodeDatagramProtocol
    from pilotproto.session.sessions import Sessions
    from pilotproto.streams.simlink import SimClock
    from pilotproto.wire import Endpoint
    from pilotproto.wire.sources import Direct, Relayed

    clock = SimClock()
    nodes: dict = {}
    by_endpoint: dict = {}

    @implementer(ITrustPolicy)
    class Trust:
        def is_trusted(self, public_key):
            return True

        def hostname_of(self, public_key):
            return None

    @implementer(IDatagramSender)
    class UDP:
        """Delivers on the simulated network until ``sink`` is set; then keeps what is sent."""

        def __init__(self, endpoint):
            self.endpoint = endpoint
            self.sink: list | None = None

        def send(self, data, destination, ttl=None):
            if self.sink is not None:
                self.sink.append(data)
                return
            other = by_endpoint.get(destination)
            if other is not None and (ttl is None or ttl >= 3):
                clock.callLater(0.001, other.tunnel_packet_received, data, Direct(self.endpoint))

        def send_many(self, packets, destination):
            if self.sink is not None:
                self.sink.extend(packets)
                return
            for packet in packets:
                self.send(packet, destination)

        def flush(self):
            "nothing is held"

    by_address: dict = {}

    @implementer(IRelay)
    class Relay:
        """The beacon's relay: every session starts on it (the handshake, the candidates)."""

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
            _, endpoint, identity, _ = nodes[target]
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
            return False

        def datagram_received(self, peer, port, data):
            "not used here"

    @implementer(IRendezvous)
    class Link:
        def is_beacon(self, source):
            return False

        def beacon_message_received(self, message, source):
            return False

    @implementer(INatDiscovery)
    class Nat:
        def stun_received(self, data, endpoint):
            return False

    def add(name, seed):
        identity = Identity.from_seed(seed.to_bytes(32, "big"))
        endpoint = Endpoint(f"10.0.0.{seed}", 4000)
        udp = UDP(endpoint)
        sessions = Sessions(clock, identity, trust=Trust(), udp=udp, relay=Relay(identity),
                            directory=Directory(), candidates=Candidates(endpoint), acceptor=Acceptor(),
                            ids=RandomIds(random.Random(seed).randbytes))  # fmt: skip
        nodes[name] = (sessions, endpoint, identity, udp)
        by_endpoint[endpoint] = sessions
        by_address[identity.address.to_bytes()] = sessions
        return sessions

    a, b = add("a", 1), add("b", 2)
    done = []
    a.ping("b", count=1).addBoth(done.append)
    clock.run_until(lambda: bool(done), 10.0)
    peer_a = a.peers[nodes["b"][2].public_key]
    clock.run_until(lambda: peer_a.path.using_direct(), 30.0)
    if not peer_a.path.using_direct():
        raise RuntimeError("the benchmark's path did not go direct")
    peer_b = b.peers[nodes["a"][2].public_key]
    peer_a.stream_connection()
    received = collections.Counter()

    def count(plaintext):
        received["packets"] += 1

    peer_b.stream_connection().packet_received = count
    router = DatagramRouter(Link(), Nat(), b)
    protocol = NodeDatagramProtocol(router, collections.Counter())
    sink: list = []
    nodes["a"][3].sink = sink
    # Only what the benchmark sends from now on: no timers fire (the clock stands still).
    return peer_a, protocol, sink, received, (nodes["a"][1].host, nodes["a"][1].port)


def measure(packets: int, rounds: int, burst: int, size: int, profile: bool = False) -> dict:
    peer, protocol, sink, received, addr = build_pair()
    streams = peer.streams
    batch_send = getattr(streams, "_send_packets", None)
    single_send = streams._send_packet
    deliver_many = getattr(protocol, "packets_received", None)
    deliver = protocol.packet_received
    plaintexts = [bytes([0x10]) + random.Random(i).randbytes(size - 1) for i in range(burst)]
    bursts = packets // burst
    best_send = best_receive = float("inf")
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
    for _ in range(rounds):
        sink.clear()
        if profiler:
            profiler.enable()
        start = time.process_time()
        if batch_send is not None:
            for _ in range(bursts):
                batch_send(plaintexts)
        else:
            for _ in range(bursts):
                for plaintext in plaintexts:
                    single_send(plaintext)
        best_send = min(best_send, time.process_time() - start)
        sent = list(sink)
        before = received["packets"]
        start = time.process_time()
        if deliver_many is not None:
            for i in range(0, len(sent), burst):
                deliver_many(sent[i:i + burst], addr)
        else:
            for packet in sent:
                deliver(packet, addr)
        best_receive = min(best_receive, time.process_time() - start)
        if profiler:
            profiler.disable()
        if received["packets"] - before != len(sent) or len(sent) != bursts * burst:
            raise RuntimeError(f"sent {len(sent)} of {bursts * burst}, {received['packets'] - before} arrived")
    if profiler:
        import pstats

        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    n = bursts * burst
    return {
        "packets": n,
        "batch_send": batch_send is not None,
        "batch_receive": deliver_many is not None,
        "send_us_per_packet": round(best_send / n * 1e6, 3),
        "receive_us_per_packet": round(best_receive / n * 1e6, 3),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--burst", type=int, default=40, help="packets per stream flush / GRO read")
    parser.add_argument("--packet", type=int, default=1412, help="stream packet (plaintext) size")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.packets, args.rounds, args.burst, args.packet, args.profile)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
