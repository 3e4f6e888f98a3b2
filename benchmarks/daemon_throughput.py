"""
The daemon path against in-process, and the node's UDP socket cost per packet, in one run.

    python benchmarks/daemon_throughput.py [--size-mb 32] [--packets 20000] [--part all|udp|daemon] [--json]

Part ``udp`` measures the node's UDP socket alone on loopback: µs of CPU
per 1,200-byte packet to send (``UDPService.send`` to the kernel) and to
receive (readable socket to the router), three ways in the same process:
Twisted's ``listenUDP`` port with per-datagram address parsing (the node
before kernel batching; still what non-posix reactors get), our socket with
one syscall per packet (``PILOT_UDP_GSO=0``), and our socket with GSO/GRO.

Part ``daemon`` starts a beacon and two daemons (``bench-a``, ``bench-b``)
on loopback and an in-process node (``bench-c``) in this process, all
trusting ``bench-b``; then it echoes ``--size-mb`` through ``bench-b``'s echo
port twice: with ``pilotctl bench`` from another process through
``bench-a``'s control socket (the daemon path), and from ``bench-c``'s own
reactor (in-process).  It prints both goodputs and their ratio (issue 13's
target: the daemon path at >= 70 % of in-process).

Machines are noisy (other work shares the cores): compare the figures of
one run with each other, not with another run's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.abspath(__file__)
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

MiB = 1024 * 1024
TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]
PILOTCTL = [sys.executable, "-m", "pilotproto.cli"]

# -- part 1: the node's UDP socket, µs of CPU per packet -------------------------------


class _CountingRouter:
    """An IDatagramRouter that only counts: the socket's own cost is what is measured."""

    def __init__(self):
        self.count = 0

    def datagram_received(self, data, source):
        self.count += 1


def _twisted_protocol(router, counters):
    """The node's receive path before batching: a Twisted port, each source parsed per datagram."""
    from twisted.internet.protocol import DatagramProtocol

    from pilotproto.wire import Endpoint
    from pilotproto.wire.sources import Direct

    class Before(DatagramProtocol):
        def datagramReceived(self, data, addr):
            counters["datagrams"] += 1
            try:
                source = Direct(Endpoint(addr[0], addr[1]))
            except ValueError:
                return
            router.datagram_received(data, source)

    return Before()


def udp_costs(packets: int, size: int) -> dict:
    """µs of CPU per packet to send and to receive, Twisted's port against ours (GSO and plain)."""
    import collections
    import socket

    from twisted.internet import reactor
    from zope.interface import directlyProvides

    from pilotproto.interfaces import IDatagramRouter
    from pilotproto.node.udp import UDPService
    from pilotproto.node.udpsock import SocketPort
    from pilotproto.wire import Endpoint

    payload = os.urandom(size)
    results = {}

    def sink():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * MiB)
        s.setblocking(False)
        return s

    def drain(s):
        with contextlib.suppress(BlockingIOError):
            while True:
                s.recv(65536)

    # Sending: the whole path a tunnel packet takes from UDPService.send to the kernel.
    for label, batching, twisted_port in (("twisted", False, True), ("plain", False, False), ("gso", True, False)):
        router = _CountingRouter()
        directlyProvides(router, IDatagramRouter)
        service = UDPService(reactor if not twisted_port else _NotPosix(reactor), 0, "127.0.0.1", batching=batching)
        service.wire(router)
        service.startService()
        target = sink()
        destination = Endpoint(*target.getsockname())
        cpu = 0.0
        sent = 0
        while sent < packets:
            burst = min(256, packets - sent)
            start = time.process_time()
            for _ in range(burst):
                service.send(payload, destination)
            service.flush()
            cpu += time.process_time() - start
            sent += burst
            drain(target)
        service.stopService()
        target.close()
        results[f"send_us_{label}"] = round(cpu / packets * 1e6, 2)

    # Receiving: the socket is filled first, then its reads are timed alone.
    for label, batching, twisted_port in (("twisted", False, True), ("plain", False, False), ("gso", True, False)):
        router = _CountingRouter()
        counters = collections.Counter()
        if twisted_port:
            port = reactor.listenUDP(0, _twisted_protocol(router, counters), interface="127.0.0.1")
            port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * MiB)
            address, read, close = port.getHost(), port.doRead, port.stopListening
            address = (address.host, address.port)
        else:
            port = SocketPort.listen(reactor, 0, "127.0.0.1", lambda d, a: router.datagram_received(d, a), counters, batching)
            address, read, close = port.local_address(), port.doRead, port.close
        feeder = SocketPort.listen(reactor, 0, "127.0.0.1", lambda d, a: None, collections.Counter(), batching)
        cpu = 0.0
        while router.count < packets:
            before = router.count
            for _ in range(min(1024, packets - router.count)):
                feeder.enqueue(payload, address)
            feeder.flush()
            start = time.process_time()
            for _ in range(64):
                read()
                if router.count - before >= 1024 or router.count >= packets:
                    break
            cpu += time.process_time() - start
            if router.count == before:
                break  # the kernel dropped them all: stop rather than spin
        received = router.count
        close()
        feeder.close()
        results[f"receive_us_{label}"] = round(cpu / max(received, 1) * 1e6, 2)
    return results


class _NotPosix:
    """The real reactor seen as "not posix": UDPService then uses Twisted's own port (the old path)."""

    def __init__(self, reactor):
        self._reactor = reactor

    def __getattr__(self, name):
        return getattr(self._reactor, name)

# -- part 2: the daemon path against in-process ------------------------------------------


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pilotctl(home, *args, timeout=300) -> dict:
    proc = subprocess.run(PILOTCTL + ["--home", home, "--json", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    doc = json.loads(proc.stdout)
    if proc.returncode != 0:
        raise RuntimeError(f"pilotctl {' '.join(args)}: {doc}")
    return doc["data"]


def _wait(predicate, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if predicate():
                return True
        time.sleep(0.1)
    return False


def _echo_in_process(node, peer: str, total: int):
    """Echo ``total`` bytes through ``peer``'s echo port from ``node``'s reactor: Mbit/s both ways."""
    from twisted.internet import defer
    from twisted.internet.interfaces import IPullProducer
    from twisted.internet.protocol import Factory, Protocol
    from zope.interface import implementer

    from pilotproto.node.services import ECHO_PORT

    block = os.urandom(MiB)
    done = defer.Deferred()

    @implementer(IPullProducer)
    class Echo(Protocol):
        def connectionMade(self):
            self.sent = self.received = 0
            self.t0 = time.monotonic()
            self.transport.registerProducer(self, False)

        def resumeProducing(self):
            piece = block[: min(64 * 1024, total - self.sent)]
            self.transport.write(piece)
            self.sent += len(piece)
            if self.sent >= total:
                self.transport.unregisterProducer()
                self.transport.loseWriteConnection()

        def stopProducing(self):
            """The stream ended under us: the received count says how far it got."""

        def dataReceived(self, data):
            self.received += len(data)
            if self.received >= total and not done.called:
                done.callback(total * 8 / (time.monotonic() - self.t0) / 1e6)
                self.transport.loseConnection()

    d = node.dial(peer, ECHO_PORT, Factory.forProtocol(Echo))
    d.addCallback(lambda _: done)
    return d


def daemon_path(size_mb: int) -> dict:
    from twisted.internet import defer, task, threads

    work = tempfile.mkdtemp(prefix="pilot-daemon-bench-")
    homes = {name: os.path.join(work, name) for name in ("bench-a", "bench-b")}
    procs = []
    result = {}
    try:
        beacon_port = _free_udp_port()
        log = os.path.join(work, "beacon.log")
        procs.append(subprocess.Popen(TWISTD + ["-n", "--pidfile=", "--logfile", log, "pilot", "beacon", "--interface",
                                                "127.0.0.1", "--port", str(beacon_port)], stdin=subprocess.DEVNULL))
        _wait(lambda: "BeaconDatagramProtocol starting" in open(log).read(), 15)
        beacon = f"127.0.0.1:{beacon_port}"
        for name, home in homes.items():
            pilotctl(home, "daemon", "start", "--hostname", name, "--beacon", beacon)
        a, b = homes["bench-a"], homes["bench-b"]
        pilotctl(a, "handshake", "bench-b", "benchmark")
        _wait(lambda: pilotctl(b, "pending")["pending"], 10)
        pilotctl(b, "approve", "bench-a")
        _wait(lambda: pilotctl(a, "lookup", "bench-b"), 10)

        def in_process(reactor):
            from pilotproto.node.service import PilotNode

            node = PilotNode(home=os.path.join(work, "bench-c"), hostname="bench-c", beacon=beacon, reactor=reactor)
            node.startService()

            @defer.inlineCallbacks
            def run():
                yield node.when_registered()
                yield node.trust.handshake("bench-b", "benchmark")
                yield threads.deferToThread(_wait, lambda: pilotctl(b, "pending")["pending"], 10)
                yield threads.deferToThread(pilotctl, b, "approve", "bench-c")
                for _ in range(100):  # until bench-b's approval has reached us
                    try:
                        yield node.lookup("bench-b")
                        break
                    except Exception:
                        yield task.deferLater(reactor, 0.1, lambda: None)
                # Daemon path first, in a thread (pilotctl is a separate process), while this reactor idles.
                daemon = yield threads.deferToThread(pilotctl, a, "bench", "bench-b", "--size-mb", str(size_mb))
                result["daemon_echo_mbps"] = daemon["echo_mbps"]
                result["daemon_send_mbps"] = daemon["send_mbps"]
                result["inprocess_echo_mbps"] = round((yield _echo_in_process(node, "bench-b", size_mb * MiB)), 2)
                yield node.stopService()

            return run()

        _react(in_process)
        result["daemon_vs_inprocess"] = round(result["daemon_echo_mbps"] / result["inprocess_echo_mbps"], 3)
        return result
    finally:
        for home in homes.values():
            subprocess.run(PILOTCTL + ["--home", home, "daemon", "stop"], capture_output=True, timeout=30)
        for proc in procs:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(work, ignore_errors=True)


def _react(main):
    """Run ``main(reactor)`` (a Deferred) on the reactor to its end, without task.react's exit."""
    from twisted.internet import reactor

    failures = []

    def start():
        d = main(reactor)
        d.addErrback(failures.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run(installSignalHandlers=False)
    if failures:
        failures[0].raiseException()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("all", "udp", "daemon"), default="all")
    parser.add_argument("--size-mb", type=int, default=32, help="MiB echoed for the daemon part (default 32)")
    parser.add_argument("--packets", type=int, default=20000, help="packets per UDP measurement (default 20000)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    figures = {}
    if args.part in ("all", "udp"):
        figures["udp"] = udp_costs(args.packets, 1200)
    if args.part in ("all", "daemon"):
        figures["daemon"] = daemon_path(args.size_mb)
    if args.json:
        print(json.dumps(figures))
        return
    if "udp" in figures:
        u = figures["udp"]
        print(f"UDP socket, µs of CPU per 1,200-byte packet ({args.packets} packets, loopback):")
        print(f"  {'':24}{'send':>8}{'receive':>10}")
        for label, name in (("twisted", "Twisted port (before)"), ("plain", "one syscall per packet"), ("gso", "GSO / GRO")):
            print(f"  {name:24}{u[f'send_us_{label}']:8.2f}{u[f'receive_us_{label}']:10.2f}")
    if "daemon" in figures:
        d = figures["daemon"]
        print(f"{args.size_mb} MiB echoed through bench-b's echo port:")
        print(f"  in-process (bench-c):          {d['inprocess_echo_mbps']:8.1f} Mbit/s")
        print(f"  daemon path (pilotctl bench):  {d['daemon_echo_mbps']:8.1f} Mbit/s  (send {d['daemon_send_mbps']:.1f})")
        print(f"  daemon / in-process:           {d['daemon_vs_inprocess']:8.2f}")


if __name__ == "__main__":
    main()
