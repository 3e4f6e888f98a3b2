"""
One stream's goodput across a lab path, against an aioquic stream on the same path.

    pip install aioquic          # the baseline; without it only pilot is measured
    sudo python3 benchmarks/stream_throughput.py [--size-mb 100] [--profile-mb 25] [--json]

It builds a lab (needs root, ``ip`` and ``nft``): a beacon and two sites
behind port-restricted-cone NAT routers (MTU 1500, no loss unless
``--loss``/``--reorder``).  On each site host it runs this same file as a
*worker*: a process that embeds its own :class:`~pilotproto.node.service.PilotNode`
(with its control socket, so trust is set up with the operator's commands)
and sends or receives one stream of deterministic data, hashed on arrival.
Then, on the same two hosts and through the same NATs, an aioquic client
sends the same amount on one QUIC stream to an aioquic server (the NATs are
punched by hand: each side first sends from its QUIC port to the other's
public address, and cone NATs keep the inside port).  It prints both
goodputs in Mbit/s, their ratio, and a cProfile of the pilot sender (a
second, shorter run, so the profiler's overhead does not touch the figure).

The worker modes (``pilot-send``, ``pilot-recv``, ``pilot-dial``,
``quic-send``, ``quic-recv``) are also used by ``tests/lab/test_streams_lab.py``
and ``benchmarks/perf.py``.  Every worker prints JSON lines on stdout:
``{"event": ...}``.  ``--stream-options '{"pacing": false}'`` passes keyword
arguments to every ``StreamConnection`` of the pilot workers, for A/B runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.abspath(__file__)
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

CHUNK = 64 * 1024
STREAM_PORT = 9000
QUIC_PORT = 4433
MiB = 1024 * 1024
PROGRESS_INTERVAL = 5.0


# -- the data: distinct 64 KiB chunks, cheap to make on both sides ----------------


def chunks(size: int, seed: int):
    """``size`` bytes in 64 KiB chunks; each chunk differs (its index leads), so misordered chunks show."""
    import random

    base = random.Random(seed).randbytes(CHUNK)
    sent = 0
    index = 0
    while sent < size:
        chunk = (index.to_bytes(8, "big") + base[8:])[: size - sent]
        yield chunk
        sent += len(chunk)
        index += 1


def expected_digest(size: int, seed: int) -> str:
    digest = hashlib.sha256()
    for chunk in chunks(size, seed):
        digest.update(chunk)
    return digest.hexdigest()


def emit(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


# -- pilot workers (inside a lab host) -------------------------------------------------


def pilot_worker(args) -> None:
    from twisted.internet import reactor, stdio, task
    from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
    from twisted.internet.protocol import Factory, Protocol
    from twisted.protocols.basic import LineReceiver
    from zope.interface import implementer

    from pilotproto.control.service import ControlService
    from pilotproto.node.service import PilotNode

    options = json.loads(args.stream_options or "{}")
    if args.controller == "newreno" or options:
        # For A/B comparisons only: the node builds its StreamConnection with the defaults.
        import functools

        from pilotproto.session import peer
        from pilotproto.streams import NewReno, StreamConnection

        if args.controller == "newreno":
            options["congestion_control"] = NewReno
        peer.StreamConnection = functools.partial(StreamConnection, **options)
    node = PilotNode(
        home=args.home, hostname=args.hostname, beacon=args.beacon, beacon_ca=args.beacon_ca, reactor=reactor
    )
    # The driver sets up trust with the operator's commands, through the control socket.
    ControlService(node).setServiceParent(node)

    @implementer(IHalfCloseableProtocol)
    class Sink(Protocol):
        def connectionMade(self):
            self.digest = hashlib.sha256()
            self.size = 0
            self.started = time.monotonic()
            self.cpu = time.process_time()
            self.next_report = self.started + PROGRESS_INTERVAL

        def dataReceived(self, data):
            self.digest.update(data)
            self.size += len(data)
            now = time.monotonic()
            if now >= self.next_report:
                self.next_report = now + PROGRESS_INTERVAL
                emit("progress", size=self.size, seconds=now - self.started)

        def readConnectionLost(self):
            seconds = time.monotonic() - self.started
            cpu = time.process_time() - self.cpu
            emit("received", size=self.size, sha256=self.digest.hexdigest(), seconds=seconds, cpu_seconds=cpu)
            self.transport.loseConnection()

        def writeConnectionLost(self):
            pass

    @implementer(IPushProducer)
    class Source(Protocol):
        def connectionMade(self):
            self.connection = self.transport.stream._conn
            self.data = chunks(args.size, args.seed)
            self.paused = False
            self.started = time.monotonic()
            self.cpu = time.process_time()
            self.profile = None
            if args.profile:
                import cProfile

                self.profile = cProfile.Profile()
                self.profile.enable()
            self.transport.registerProducer(self, True)
            self.reporter = task.LoopingCall(lambda: emit("sender", **self.stats()))
            self.reporter.start(PROGRESS_INTERVAL, now=False)
            self.resumeProducing()

        def stats(self):
            conn, cc = self.connection, self.connection.cc
            stats = {k: conn.stats[k] for k in ("packets_sent", "packets_lost", "stream_bytes_retransmitted",
                                                "probe_timeouts", "srtt_us")}  # fmt: skip
            stats.update(controller=cc.name, cwnd=int(cc.cwnd), mode=getattr(cc, "mode", "-"),
                         btl_bw_mbit_s=round(getattr(cc, "btl_bw", 0.0) * 8 / 1e6, 1),
                         min_rtt_ms=round(getattr(cc, "min_rtt", 0.0) * 1e3, 2))  # fmt: skip
            return stats

        def resumeProducing(self):
            self.paused = False
            for chunk in self.data:
                self.transport.write(chunk)
                if self.paused:
                    return
            if self.transport.producer is self:
                self.transport.unregisterProducer()
                self.transport.loseConnection()

        def pauseProducing(self):
            self.paused = True

        def stopProducing(self):
            self.paused = True

        def connectionLost(self, reason):
            if self.profile is not None:
                self.profile.disable()
                self.profile.dump_stats(args.profile)
            self.reporter.stop()
            emit("sent", seconds=time.monotonic() - self.started, cpu_seconds=time.process_time() - self.cpu,
                 reason=reason.getErrorMessage(), stats=self.stats())  # fmt: skip

    class Probe(Protocol):
        """pilot-dial: one byte to the peer's echo port; when it is back, wait for a verified direct path."""

        def connectionMade(self):
            self.first = None
            self.transport.write(b"x")

        def dataReceived(self, data):
            if self.first is not None:
                return
            self.first = time.monotonic()
            emit("first-byte", ms=round((self.first - self.factory.dialled) * 1e3, 2))
            self.poll = task.LoopingCall(self.check_path)
            self.poll.start(0.001)

        def check_path(self):
            from pilotproto.lab.matrix import DIRECT_KINDS

            elapsed = time.monotonic() - self.factory.dialled
            for entry in node.sessions.describe():
                if entry["hostname"] == args.peer and entry["path"] in DIRECT_KINDS:
                    self.poll.stop()
                    emit("direct", ms=round(elapsed * 1e3, 2), path=entry["path"])
                    self.transport.loseConnection()
                    return
            if elapsed > 30:
                self.poll.stop()
                emit("direct", ms=None, path="never")

    class Commands(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line):
            if line.strip() == b"go":
                if args.role == "pilot-dial":
                    factory = Factory.forProtocol(Probe)
                    factory.dialled = time.monotonic()
                    d = node.dial(args.peer, 7, factory)
                else:
                    d = node.dial(args.peer, args.port, Factory.forProtocol(Source))
                d.addErrback(lambda f: emit("error", message=f.getErrorMessage()))

        def connectionLost(self, reason):
            if reactor.running:
                reactor.stop()

    def registered(_):
        emit("registered", address=str(node.address))

    node.startService()
    node.when_registered().addCallback(registered)
    if args.role == "pilot-recv":
        node.listen(args.port, Factory.forProtocol(Sink))
    stdio.StandardIO(Commands())  # the driver says "go"; closing stdin stops the worker
    reactor.run()


# -- aioquic workers -----------------------------------------------------------------------


def quic_worker(args) -> None:
    import asyncio
    import socket
    import ssl

    from aioquic.asyncio import connect, serve
    from aioquic.quic.configuration import QuicConfiguration

    def rendezvous():
        """Learn this side's public endpoint from the lab beacon's STUN port, swap it with the peer's
        through the driver, and open this side's NAT for the peer (the lab's cone NATs keep one
        public port per inside port, whatever the destination)."""
        import secrets

        from pilotproto.wire import stun

        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", QUIC_PORT))
        sock.settimeout(1.0)
        host, port = args.stun.rsplit(":", 1)
        mapped = None
        for _ in range(10):
            transaction = secrets.token_bytes(12)
            sock.sendto(stun.binding_request(transaction), (host, int(port)))
            try:
                mapped = stun.parse_binding_response(sock.recv(2048)).xor_mapped
                break
            except (OSError, stun.StunDecodeError):
                continue
        if mapped is None:
            raise SystemExit(f"no STUN answer from {args.stun}")
        emit("mapped", endpoint=f"{mapped.host}:{mapped.port}")
        peer_host, peer_port = sys.stdin.readline().split()
        for _ in range(3):
            sock.sendto(b"punch", (peer_host, int(peer_port)))
        sock.close()
        return peer_host, int(peer_port)

    async def server():
        config = QuicConfiguration(is_client=False, alpn_protocols=["bench"], max_datagram_frame_size=None)
        config.load_cert_chain(args.cert, args.key)
        done = asyncio.get_running_loop().create_future()

        def handle(reader, writer):
            async def run():
                digest, size, started, cpu = hashlib.sha256(), 0, time.monotonic(), time.process_time()
                while True:
                    data = await reader.read(1 << 20)
                    if not data:
                        break
                    digest.update(data)
                    size += len(data)
                seconds = time.monotonic() - started
                emit("received", size=size, sha256=digest.hexdigest(), seconds=seconds,
                     cpu_seconds=time.process_time() - cpu)  # fmt: skip
                writer.write(b"ok")
                writer.write_eof()
                await asyncio.sleep(0.5)
                done.set_result(None)

            asyncio.ensure_future(run())

        rendezvous()
        await serve("0.0.0.0", QUIC_PORT, configuration=config, stream_handler=handle)
        emit("listening")
        await done

    async def client():
        peer_host, peer_port = rendezvous()
        await asyncio.sleep(0.2)
        config = QuicConfiguration(is_client=True, alpn_protocols=["bench"], verify_mode=ssl.CERT_NONE)
        async with connect(peer_host, peer_port, configuration=config, local_port=QUIC_PORT) as conn:
            reader, writer = await conn.create_stream()
            started, cpu = time.monotonic(), time.process_time()
            for chunk in chunks(args.size, args.seed):
                writer.write(chunk)
                await writer.drain()
            writer.write_eof()
            await reader.read()
            emit("sent", seconds=time.monotonic() - started, cpu_seconds=time.process_time() - cpu)

    if os.environ.get("BENCH_DEBUG"):
        import logging

        logging.basicConfig(level=logging.DEBUG, stream=sys.stdout)
    asyncio.run(server() if args.role == "quic-recv" else client())


# -- the driver (root namespace) ---------------------------------------------------------------------


class Worker:
    """A worker process in a lab host, with its JSON events on a queue."""

    def __init__(self, lab, host, argv):
        self.process = lab.popen(
            host, [sys.executable, HERE, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )
        self.events: queue.Queue = queue.Queue()
        self.lines: list[str] = []
        #: the first error event this worker printed, if any (its partner's wait stops on it)
        self.error: dict | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            if os.environ.get("BENCH_VERBOSE"):
                print(f"[{self.process.pid}] {line}", end="", file=sys.stderr, flush=True)
            self.lines.append(line)
            if line.startswith("{"):
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("event") == "error" and self.error is None:
                    self.error = event
                self.events.put(event)
        self.events.put({"event": "exited"})

    def expect(self, event: str, timeout: float, partner: "Worker | None" = None) -> dict:
        """The next ``event``; fails early if this worker, or its ``partner``, exits or reports an error."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                got = self.events.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if partner is not None and partner.process.poll() is not None:
                    raise RuntimeError(f"the other worker exited early; its output:\n{''.join(partner.lines)[-3000:]}")
                if partner is not None and partner.error is not None:
                    raise RuntimeError(f"the other worker failed: {partner.error}; its output:\n{''.join(partner.lines)[-3000:]}")
                continue
            if got["event"] == event:
                return got
            if got["event"] in ("error", "exited"):
                raise RuntimeError(f"worker said {got}; output:\n{''.join(self.lines)[-3000:]}")
        others = f"\nthe other worker's output:\n{''.join(partner.lines)[-3000:]}" if partner is not None else ""
        raise TimeoutError(f"no {event!r} within {timeout} s; output:\n{''.join(self.lines)[-3000:]}{others}")

    def send(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        try:
            self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


class ControlledNode:
    """What :func:`pilotproto.lab.matrix.establish_trust` needs of a node: its name and its control socket."""

    def __init__(self, home: str, hostname: str):
        self.home = home
        self.hostname = hostname

    def ctl(self, cmd: str, timeout: float = 10.0, **args):
        from pilotproto.control.client import ControlClient

        return ControlClient(self.home).call(cmd, timeout=timeout, **args)


def pilot_transfer(lab, beacon, hosts, workdir, size, seed=7, timeout=300.0, profile=None, want_direct=True,
                   controller="bbr", stream_options=None):
    """Run a pilot stream of ``size`` bytes from ``hosts[0]`` to ``hosts[1]``; returns the receiver's result."""
    from pilotproto.lab.matrix import DIRECT_KINDS, establish_trust

    tag = f"{os.getpid()}-{time.monotonic_ns() % 10**9}"
    names = (f"tx-{tag}", f"rx-{tag}")
    homes = [os.path.join(workdir, name) for name in names]
    common = ["--beacon", beacon.address, "--beacon-ca", beacon.pki.ca_file, "--size", str(size), "--seed", str(seed),
              "--controller", controller]  # fmt: skip
    if stream_options:
        common += ["--stream-options", json.dumps(stream_options)]
    receiver = Worker(lab, hosts[1], ["pilot-recv", "--home", homes[1], "--hostname", names[1], *common])
    sender_argv = ["pilot-send", "--home", homes[0], "--hostname", names[0], "--peer", names[1], *common]
    if profile:
        sender_argv += ["--profile", profile]
    sender = Worker(lab, hosts[0], sender_argv)
    try:
        for worker in (receiver, sender):
            worker.expect("registered", 30)
        tx, rx = ControlledNode(homes[0], names[0]), ControlledNode(homes[1], names[1])
        establish_trust(tx, rx, timeout=30)
        path = _settle_path(tx, names[1], DIRECT_KINDS if want_direct else (), deadline=time.monotonic() + 30)
        sender.send("go")
        result = receiver.expect("received", timeout, partner=sender)
        sent = sender.expect("sent", 30)
        result["path"] = path
        result["sender"] = sent
        return result
    finally:
        sender.stop()
        receiver.stop()


def _settle_path(tx, peer: str, wanted, deadline: float) -> str:
    """Ping until the session is up (and, if ``wanted``, on one of those paths); the path it is on."""
    path = "-"
    while time.monotonic() < deadline:
        try:
            tx.ctl("ping", timeout=15, target=peer, count=1, reply_timeout=2.0)
            for entry in tx.ctl("peers")["peers"]:
                if entry["hostname"] == peer:
                    path = entry["path"]
        except Exception as e:  # a ping may time out while the path is being punched
            path = f"error: {e}"
        if not wanted and not path.startswith("error") and path != "-":
            return path
        if path in wanted:
            return path
        time.sleep(0.3)
    return path


def quic_transfer(lab, hosts, workdir, size, seed=7, timeout=300.0):
    from pilotproto.lab.pilot import BEACON_PORT
    from pilotproto.lab.pki import make_beacon_pki

    pki = make_beacon_pki(os.path.join(workdir, "quic-pki"), [hosts[1].site.public_address])
    common = ["--stun", f"{lab.beacon.address}:{BEACON_PORT}", "--size", str(size), "--seed", str(seed)]
    server = Worker(lab, hosts[1], ["quic-recv", "--cert", pki.cert_file, "--key", pki.key_file, *common])
    try:
        client = Worker(lab, hosts[0], ["quic-send", *common])
        try:
            server_mapped = server.expect("mapped", 15)["endpoint"]
            client_mapped = client.expect("mapped", 15)["endpoint"]
            server.send(client_mapped.replace(":", " "))
            server.expect("listening", 15)
            client.send(server_mapped.replace(":", " "))
            result = server.expect("received", timeout, partner=client)
            result["sender"] = client.expect("sent", 30)
            return result
        finally:
            client.stop()
    finally:
        server.stop()


def mbit(result: dict) -> float:
    return result["size"] * 8 / result["seconds"] / 1e6


def profile_table(path: str, top: int = 15) -> str:
    import io
    import pstats

    out = io.StringIO()
    pstats.Stats(path, stream=out).strip_dirs().sort_stats("tottime").print_stats(top)
    return out.getvalue()


def run(options) -> dict:
    from pilotproto.lab import Lab
    from pilotproto.lab.pilot import LabBeacon

    size = int(options.size_mb * MiB)
    report: dict = {"controller": options.controller, "size_bytes": size, "nat": "port-restricted-cone", "loss": options.loss, "reorder": options.reorder}
    workdir = tempfile.mkdtemp(prefix="pilot-bench-")
    with Lab() as lab:
        beacon = LabBeacon(lab, workdir).start()
        sites = [lab.add_site("port-restricted-cone", loss=options.loss, reorder=options.reorder) for _ in range(2)]
        hosts = [site.hosts[0] for site in sites]
        expected = expected_digest(size, 7)
        pilot = pilot_transfer(lab, beacon, hosts, workdir, size, want_direct=True, controller=options.controller,
                               stream_options=json.loads(options.stream_options or "{}"))
        report["pilot"] = {"mbit_s": round(mbit(pilot), 1), "seconds": round(pilot["seconds"], 2),
                           "path": pilot["path"], "intact": pilot["sha256"] == expected and pilot["size"] == size,
                           "sender_cpu_s": round(pilot["sender"]["cpu_seconds"], 2),
                           "receiver_cpu_s": round(pilot["cpu_seconds"], 2),
                           "sender_stats": pilot["sender"]["stats"]}  # fmt: skip
        try:
            import aioquic  # noqa: F401
        except ImportError:
            aioquic = None
            print("aioquic is not installed (pip install aioquic): skipping the baseline", file=sys.stderr)
        if aioquic is None or options.no_baseline:
            report["aioquic"] = None
        else:
            quic = quic_transfer(lab, hosts, workdir, size)
            report["aioquic"] = {"mbit_s": round(mbit(quic), 1), "seconds": round(quic["seconds"], 2),
                                 "intact": quic["sha256"] == expected and quic["size"] == size}  # fmt: skip
            report["ratio"] = round(report["pilot"]["mbit_s"] / report["aioquic"]["mbit_s"], 2)
        if options.profile_mb:
            profile = os.path.join(workdir, "sender.prof")
            profile_size = int(options.profile_mb * MiB)
            profiled = pilot_transfer(lab, beacon, hosts, workdir, profile_size, profile=profile,
                                      controller=options.controller)  # fmt: skip
            report["profiled_mbit_s"] = round(mbit(profiled), 1)
            report["profile"] = profile_table(profile)
        beacon.kill()
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="role")
    bench = sub.add_parser("run", help="build a lab and measure (the default)")
    for p in (parser, bench):
        p.add_argument("--size-mb", type=float, default=100.0)
        p.add_argument("--profile-mb", type=float, default=25.0, help="size of the profiled run (0: none)")
        p.add_argument("--loss", type=float, default=0.0)
        p.add_argument("--reorder", type=float, default=0.0)
        p.add_argument("--json", action="store_true")
        p.add_argument("--controller", choices=("bbr", "newreno"), default="bbr", help="pilot's congestion control")
        p.add_argument("--no-baseline", action="store_true", help="skip the aioquic run")
        p.add_argument("--stream-options", help='JSON: StreamConnection keyword arguments, e.g. {"pacing": false}')
    for role in ("pilot-send", "pilot-recv", "pilot-dial"):
        w = sub.add_parser(role)
        w.add_argument("--home", required=True)
        w.add_argument("--hostname", required=True)
        w.add_argument("--beacon", required=True)
        w.add_argument("--beacon-ca")
        w.add_argument("--peer")
        w.add_argument("--port", type=int, default=STREAM_PORT)
        w.add_argument("--size", type=int, required=True)
        w.add_argument("--seed", type=int, default=7)
        w.add_argument("--profile")
        w.add_argument("--controller", choices=("bbr", "newreno"), default="bbr")
        w.add_argument("--stream-options", help="JSON: StreamConnection keyword arguments (A/B experiments)")
    for role in ("quic-send", "quic-recv"):
        w = sub.add_parser(role)
        w.add_argument("--stun", required=True, help="the lab beacon's STUN endpoint, HOST:PORT")
        w.add_argument("--cert")
        w.add_argument("--key")
        w.add_argument("--size", type=int, required=True)
        w.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.role in ("pilot-send", "pilot-recv", "pilot-dial"):
        pilot_worker(args)
        return 0
    if args.role in ("quic-send", "quic-recv"):
        quic_worker(args)
        return 0
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        print("the lab needs root (network namespaces and nftables)", file=sys.stderr)
        return 2
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    pilot, quic = report["pilot"], report.get("aioquic")
    print(f"one stream, {args.size_mb:g} MiB, two nodes behind port-restricted-cone NATs, MTU 1500,"
          f" loss {args.loss:g}, reorder {args.reorder:g}, pilot with {args.controller}")  # fmt: skip
    print(f"  pilot:   {pilot['mbit_s']:8.1f} Mbit/s  ({pilot['seconds']} s, path {pilot['path']}, intact {pilot['intact']})")
    print(f"           CPU seconds: sender {pilot['sender_cpu_s']}, receiver {pilot['receiver_cpu_s']}")
    print(f"           sender: {json.dumps(pilot['sender_stats'])}")
    if quic:
        print(f"  aioquic: {quic['mbit_s']:8.1f} Mbit/s  ({quic['seconds']} s, intact {quic['intact']})")
        print(f"  ratio:   {report['ratio']:8.2f} x")
    if "profile" in report:
        print(f"\nprofile of the pilot sender ({args.profile_mb:g} MiB at {report['profiled_mbit_s']} Mbit/s"
              " under cProfile), top 15 by tottime:")  # fmt: skip
        print(report["profile"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
