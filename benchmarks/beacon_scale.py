"""
Beacon capacity: one beacon process against N simulated nodes (issue 14 item 4).

    python benchmarks/beacon_scale.py                      # 2,000 nodes, ~1 minute
    python benchmarks/beacon_scale.py --nodes 100000 --duration 60
    python benchmarks/beacon_scale.py --store redis://127.0.0.1:6379/0   # a fleet's store
    python benchmarks/beacon_scale.py --profile            # where the beacon's time goes
    python benchmarks/beacon_scale.py --fleet 2 --nodes 20000   # 1 beacon, then 2, on one Redis

With ``--fleet N`` (N >= 2) the run is made twice on one Redis (``--store``,
or a redis-server started here in a temporary directory, flushed between
runs): one beacon, then N beacon processes sharing it; the nodes are split
between the beacons (node i on beacon i mod N), so every relay pair (nodes
2k and 2k+1) crosses beacons, and half of the lookups and handshake
requests name a node on another beacon.  RSS and CPU are per beacon.

The beacon runs as ``twistd pilot beacon`` in a subprocess on loopback; this
process is the load: N Ed25519 keys made up front, nodes spread over a few
hundred UDP sockets (each socket a distinct source port, so each node has a
real, validated endpoint), speaking the real wire codec with real
signatures.  Phases, each measured on its own:

1. **register** all N nodes (Hello, Challenge, signed Register), a window of
   requests in flight: registrations/s.
2. **keepalive**: every node keeps alive every 25 s (N/25 a second, evenly
   spread): the beacon's CPU and RSS, CPU per 1,000 nodes.
3. **mixed**: keepalives plus a steady rate of lookups and handshake requests
   (the requests' recipients ack the pushed mail, as nodes do): lookups/s
   answered and the CPU they add.
4. **relay**: payload through the beacon's UDP relay, one pair and 100 pairs
   flat out for a few seconds: goodput in Mbit/s (payload delivered to the
   receivers, counted by a child process).

Quotas that would stop one load generator (new names per address, relay
bytes per node and pair) are raised on the beacon's command line: this
measures the machine, not the policy.  Figures are noisy on a shared
machine: compare runs made back to back.
"""

from __future__ import annotations

import argparse
import collections
import heapq
import json
import multiprocessing
import os
import pstats
import random
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time

from nacl.signing import SigningKey

from pilotproto.identity import Identity
from pilotproto.wire import beacon as msgs
from pilotproto.wire import relay

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]
KEEPALIVE_INTERVAL = 25.0
#: a keepalive not acked within this is sent again, as a node's request layer does
KEEPALIVE_RETRY = 2.0
#: request ids carry the node's index, so replies on a shared socket find their node
KIND_SHIFT, NODE_SHIFT = 16, 20
K_HELLO, K_REGISTER, K_KEEPALIVE, K_LOOKUP, K_HANDSHAKE, K_ACK = range(1, 7)
RELAY_PAYLOAD = 1200


class Key:
    """What ``msgs.sign`` needs of an identity, without deriving X25519 keys for 100,000 nodes."""

    __slots__ = ("_signing", "public_key")

    def __init__(self, seed: bytes):
        self._signing = SigningKey(seed)
        self.public_key = bytes(self._signing.verify_key)

    def sign(self, data: bytes) -> bytes:
        return self._signing.sign(data).signature


class Node:
    __slots__ = ("index", "key", "hostname", "sock", "seq", "registered", "scheduled", "identity", "relay_key", "counter", "address", "beacon")

    def __init__(self, index, key, sock, identity=None, beacon=None):
        self.index = index
        #: the (host, port) of the beacon this node registers with
        self.beacon = beacon
        self.key = key
        self.hostname = f"sim-{index}"
        self.sock = sock
        self.seq = time.time_ns()
        self.registered = False
        #: in the keepalive schedule (from its first registration on)
        self.scheduled = False
        #: a full Identity for relay nodes (their relay key needs X25519)
        self.identity = identity
        self.relay_key = None
        self.counter = 0
        self.address = identity.address.to_bytes() if identity is not None else None

    def signed(self, msg) -> bytes:
        self.seq += 1
        return msgs.encode(msgs.sign(msg, self.identity or self.key, self.seq))

    def rid(self, kind: int, n: int = 0) -> int:
        return (self.index << NODE_SHIFT) | (kind << KIND_SHIFT) | (n & 0xFFFF)


# -- the beacon process -------------------------------------------------------------


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_beacon(args, port: int, workdir: str, profile: str | None) -> subprocess.Popen:
    cmd = list(TWISTD) + ["-n", "--pidfile=", "--logfile", os.path.join(workdir, f"beacon-{port}.log")]
    if profile:
        cmd += ["--profile", profile, "--profiler", "cprofile", "--savestats"]
    cmd += ["pilot", "beacon", "--interface", "127.0.0.1", "--port", str(port)]
    cmd += ["--register-per-address", "1000000/1", "--register-per-prefix", "1000000/1"]
    cmd += ["--relay-per-node", "1G/1", "--relay-per-pair", "1G/1", "--max-names", str(max(200_000, 2 * args.nodes))]
    if args.store:
        cmd += ["--store", args.store]
    cmd += args.beacon_arg
    # The pilot twistd plugin lives in the checkout's twisted/plugins: put the
    # checkout on the path (after any PYTHONPATH given, which may point the
    # beacon at another tree to compare with).
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), REPO) if p)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=workdir)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


# -- the load -----------------------------------------------------------------------------


class Load:
    def __init__(self, args, beacons: list):
        self.args = args
        self.beacons = beacons
        self.socks = []
        for _ in range(min(args.sockets, args.nodes)):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            self.socks.append(s)
        self.by_fd = {s.fileno(): s for s in self.socks}
        rng = random.Random(args.seed)
        t = time.perf_counter()
        relay_nodes = 2 * args.pairs
        self.nodes = []
        for i in range(args.nodes):
            sock = self.socks[i % len(self.socks)]
            identity = Identity.generate() if i < relay_nodes else None
            self.nodes.append(Node(i, Key(rng.randbytes(32)), sock, identity, beacons[i % len(beacons)]))
        self.keygen_seconds = time.perf_counter() - t
        self.beacon_key = None
        #: (host, port) -> that beacon's relay key (a fleet's beacons each have their own)
        self.beacon_keys = {}
        self.counts = {}
        self.rng = rng
        #: a heap of (when, node index): every registered node keeps alive every
        #: 25 s, in every phase (a beacon expires nodes 30 s after their last
        #: request); the first one at random within 25 s, as in a steady state
        self.keepalives: list = []
        self.keepalives_sent = 0
        #: keepalives awaiting their ack: request id -> node index, and the ids in sending order
        self.unacked: dict[int, int] = {}
        self.unacked_order: collections.deque = collections.deque()

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    def send(self, node: Node, data: bytes) -> None:
        try:
            node.sock.sendto(data, node.beacon)
        except BlockingIOError:
            self.count("send_blocked")

    def drain(self, timeout: float) -> None:
        """Read every socket that has data, until none has (or ``timeout`` passed)."""
        ready, _, _ = select.select(self.socks, [], [], timeout)
        for s in ready:
            for _ in range(256):
                try:
                    data, addr = s.recvfrom(4096)
                except BlockingIOError:
                    break
                self.received(data, addr)

    def received(self, data: bytes, source=None) -> None:
        if data[:1] != b"\xb0":
            self.count("rx_other")
            return
        try:
            msg = msgs.decode(data)
        except Exception:
            self.count("rx_undecodable")
            return
        kind = (msg.request_id >> KIND_SHIFT) & 0xF
        index = msg.request_id >> NODE_SHIFT
        name = type(msg).__name__
        if isinstance(msg, msgs.Challenge):
            self.beacon_key = self.beacon_keys[source] = msg.beacon_key
        if isinstance(msg, msgs.Challenge) and index < len(self.nodes):
            node = self.nodes[index]
            if not node.registered:
                register = msgs.Register(node.rid(K_REGISTER), msg.nonce, node.hostname, msgs.FLAG_PUBLIC, ())
                self.send(node, node.signed(register))
        elif isinstance(msg, msgs.Registered) and index < len(self.nodes):
            node = self.nodes[index]
            if not node.registered and node.scheduled:
                node.registered = True
                self.count("reregistered")
            elif not node.registered:
                node.registered = node.scheduled = True
                self.count("registered")
                heapq.heappush(self.keepalives, (time.perf_counter() + self.rng.uniform(0, KEEPALIVE_INTERVAL), index))
        elif name == "Deliver":
            # Mail pushed to one of ours: ack it, as a node does.
            target = self._node_by_socket_guess(msg)
            if target is not None:
                self.send(target, target.signed(msgs.MailAck(target.rid(K_ACK), msg.mail_id)))
            self.count("rx_Deliver")
        elif isinstance(msg, msgs.KeepaliveAck):
            self.unacked.pop(msg.request_id, None)
            self.count("rx_KeepaliveAck")
        elif isinstance(msg, msgs.Error):
            self.count(f"error_{msg.code}_{kind}")
            if msg.code == "not_registered" and index < len(self.nodes) and self.nodes[index].registered:
                # Expired (a keepalive came late): register again, as a node does.
                node = self.nodes[index]
                node.registered = False
                self.count("reregistering")
                self.send(node, msgs.encode(msgs.Hello(node.rid(K_HELLO))))
        else:
            self.count(f"rx_{name}")

    def _node_by_socket_guess(self, msg):
        # A push names no recipient; the handshake request that caused it did.
        inner = msgs.decode(msg.datagram)
        target = getattr(inner, "target", b"")
        try:
            return self.nodes[int(target.decode().rsplit("-", 1)[1])]
        except (ValueError, IndexError, UnicodeDecodeError):
            return None

    # -- phases --------------------------------------------------------------------

    def keep_alive(self, limit: int = 2000) -> None:
        """Send the keepalives that are due (at most ``limit`` at once)."""
        now = time.perf_counter()
        order = self.unacked_order
        while order and order[0][0] < now - KEEPALIVE_RETRY:
            _, rid = order.popleft()
            index = self.unacked.pop(rid, None)
            if index is not None and self.nodes[index].registered:
                self.count("keepalive_retries")
                self._keepalive(self.nodes[index], now)
        heap = self.keepalives
        for _ in range(limit):
            if not heap or heap[0][0] > now:
                return
            due, index = heap[0]
            node = self.nodes[index]
            if node.registered:
                self._keepalive(node, now)
            heapq.heapreplace(heap, (due + KEEPALIVE_INTERVAL, index))

    def _keepalive(self, node: Node, now: float) -> None:
        rid = node.rid(K_KEEPALIVE, self.keepalives_sent)
        self.send(node, node.signed(msgs.Keepalive(rid)))
        self.keepalives_sent += 1
        self.unacked[rid] = node.index
        self.unacked_order.append((now, rid))

    def register_all(self, window: int, deadline: float) -> float:
        pending = list(reversed(self.nodes))
        asked: dict[int, float] = {}
        start = time.perf_counter()
        while time.perf_counter() < deadline:
            now = time.perf_counter()
            done = self.counts.get("registered", 0)
            if done == len(self.nodes):
                break
            for index, when in list(asked.items()):
                node = self.nodes[index]
                if node.registered:
                    del asked[index]
                elif now - when > 3.0:
                    del asked[index]
                    pending.append(node)  # lost or refused: ask again
            while pending and len(asked) < window:
                node = pending.pop()
                if node.registered:
                    continue
                asked[node.index] = now
                self.send(node, msgs.encode(msgs.Hello(node.rid(K_HELLO))))
            self.keep_alive()
            self.drain(0.01)
        return time.perf_counter() - start

    def steady(self, seconds: float, lookups: float, handshakes: float) -> dict:
        """Keepalives every 25 s per node (spread as the nodes registered), plus
        lookups and handshake requests at the given rates, for ``seconds``."""
        before = dict(self.counts)
        start = time.perf_counter()
        sent = {"keepalive": 0, "lookup": 0, "handshake": 0}
        keepalives_before = self.keepalives_sent
        while True:
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
            self.keep_alive()
            for j in range(sent["lookup"], int(elapsed * lookups)):
                node, target = self.rng.choice(self.nodes), self.rng.choice(self.nodes)
                self.send(node, node.signed(msgs.Lookup(node.rid(K_LOOKUP, j), False, target.hostname.encode())))
                sent["lookup"] += 1
            for j in range(sent["handshake"], int(elapsed * handshakes)):
                node, target = self.rng.sample(self.nodes, 2)
                request = msgs.HandshakeRequest(node.rid(K_HANDSHAKE, j), self.rng.getrandbits(63), False, target.hostname.encode(), node.hostname, "benchmark")
                self.send(node, node.signed(request))
                sent["handshake"] += 1
            self.drain(0.005)
        settle = time.perf_counter() + 1.0
        while time.perf_counter() < settle:
            self.keep_alive()
            self.drain(0.05)
        sent["keepalive"] = self.keepalives_sent - keepalives_before
        got = {k: v - before.get(k, 0) for k, v in self.counts.items() if v != before.get(k, 0)}
        return {"sent": sent, "received": got}

    def keep_relay_nodes_alive(self) -> None:
        """Register the relay nodes afresh, so none has expired whatever happened before."""
        nodes = self.nodes[: 2 * self.args.pairs]
        for node in nodes:
            node.registered = False
            self.send(node, msgs.encode(msgs.Hello(node.rid(K_HELLO))))
        deadline = time.perf_counter() + 5
        while time.perf_counter() < deadline and not all(n.registered for n in nodes):
            self.keep_alive()
            self.drain(0.05)

    def relay_goodput(self, pairs: int, seconds: float) -> dict:
        """Payload through the beacon's UDP relay, ``pairs`` senders flat out."""
        senders, receivers = [], []
        for k in range(pairs):
            a, b = self.nodes[2 * k], self.nodes[2 * k + 1]
            for node in (a, b):
                if node.relay_key is None:
                    key = self.beacon_keys[node.beacon]
                    node.relay_key = relay.relay_key(node.identity.x25519_private(), key, node.identity.public_key, key)
            senders.append((a, b))
            receivers.append(b.sock)
        # Receivers count in a child (forked: it shares the sockets), so that
        # sending flat out here cannot starve the reading.
        ctx = multiprocessing.get_context("fork")
        parent_end, child_end = ctx.Pipe()
        child = ctx.Process(target=_count_relayed, args=(child_end, list({s.fileno(): s for s in receivers}.values()), seconds + 1.5))
        child.start()
        payload = os.urandom(RELAY_PAYLOAD)
        sent = 0
        start = time.perf_counter()
        end = start + seconds
        while time.perf_counter() < end:
            for a, b in senders:
                a.counter += 1
                frame = relay.seal_to_beacon(a.relay_key, a.address, b.address, a.counter, payload)
                try:
                    a.sock.sendto(frame, a.beacon)
                    sent += 1
                except BlockingIOError:
                    select.select([], [a.sock], [], 0.001)
        received_bytes, frames = parent_end.recv()
        child.join()
        return {
            "pairs": pairs,
            "frames_sent": sent,
            "frames_delivered": frames,
            "mbit_s": received_bytes * 8 / seconds / 1e6,
            "offered_mbit_s": sent * RELAY_PAYLOAD * 8 / seconds / 1e6,
        }


def _count_relayed(conn, socks, seconds: float) -> None:
    end = time.perf_counter() + seconds
    total = frames = 0
    while time.perf_counter() < end:
        ready, _, _ = select.select(socks, [], [], 0.05)
        for s in ready:
            for _ in range(512):
                try:
                    data = s.recv(4096)
                except BlockingIOError:
                    break
                if data[:1] == b"\xd1":
                    total += len(data) - relay.FROM_BEACON_OVERHEAD
                    frames += 1
    conn.send((total, frames))


# -- the run --------------------------------------------------------------------------------


def measure(pids, action):
    """``action()``, and the CPU seconds each of ``pids`` spent meanwhile (summed, and each)."""
    cpu0, t0 = [cpu_seconds(p) for p in pids], time.perf_counter()
    result = action()
    each = [cpu_seconds(p) - c for p, c in zip(pids, cpu0)]
    return result, sum(each), time.perf_counter() - t0, each


def run(args, fleet: int = 1) -> dict:
    workdir = tempfile.mkdtemp(prefix="beacon-scale-")
    ports = [free_udp_port() for _ in range(fleet)]
    profile = os.path.join(workdir, "beacon.prof") if args.profile else None
    load = Load(args, [("127.0.0.1", p) for p in ports])
    beacons = [start_beacon(args, port, workdir, profile if i == 0 else None) for i, port in enumerate(ports)]
    pids = [b.pid for b in beacons]
    extra = [args.redis_pid] if getattr(args, "redis_pid", None) else []
    figures = {"nodes": args.nodes, "beacons": fleet, "sockets": len(load.socks), "keygen_s": round(load.keygen_seconds, 1)}

    def rss():
        return [rss_bytes(p) / 2**20 for p in pids]

    try:
        for beacon, port in zip(beacons, ports):
            wait_for_beacon(load, beacon, ("127.0.0.1", port))
        figures["rss_idle_mib"] = rss()
        _, cpu, wall, _ = measure(pids, lambda: time.sleep(3))
        figures["idle_cpu_pct"] = 100 * cpu / wall
        elapsed, cpu, _, _ = measure(pids, lambda: load.register_all(args.window, time.perf_counter() + args.register_timeout))
        registered = load.counts.get("registered", 0)
        figures.update(registered=registered, registrations_per_s=registered / elapsed, register_cpu_s=cpu)
        figures["rss_registered_mib"] = rss()
        steady, cpu, wall, each = measure(pids + extra, lambda: load.steady(args.duration, 0, 0))
        cpu -= sum(each[len(pids):])
        figures["keepalive"] = dict(
            steady,
            beacon_cpu_pct=100 * cpu / wall,
            cpu_pct_each=[100 * c / wall for c in each[: len(pids)]],
            redis_cpu_pct=100 * sum(each[len(pids):]) / wall,
            cpu_pct_per_1000_nodes=100 * cpu / wall / (args.nodes / 1000),
            keepalives_per_s=steady["sent"]["keepalive"] / args.duration,
        )
        mixed, cpu, wall, each = measure(pids + extra, lambda: load.steady(args.duration, args.lookups, args.handshakes))
        cpu -= sum(each[len(pids):])
        figures["mixed"] = dict(
            mixed,
            beacon_cpu_pct=100 * cpu / wall,
            cpu_pct_each=[100 * c / wall for c in each[: len(pids)]],
            redis_cpu_pct=100 * sum(each[len(pids):]) / wall,
            lookups_per_s=mixed["received"].get("rx_LookupResult", 0) / args.duration,
        )
        figures["rss_mib"] = rss()
        figures["relay"] = []
        for pairs in (1, args.pairs):
            load.keep_relay_nodes_alive()
            result, cpu, wall, each = measure(pids + extra, lambda p=pairs: load.relay_goodput(p, args.relay_seconds))
            cpu -= sum(each[len(pids):])
            result["beacon_cpu_pct"] = 100 * cpu / wall
            result["cpu_pct_each"] = [100 * c / wall for c in each[: len(pids)]]
            result["redis_cpu_pct"] = 100 * sum(each[len(pids):]) / wall
            # On a shared machine the beacon may not get a core: goodput per
            # CPU-second it did get is its capacity, whatever the contention.
            result["mbit_per_beacon_cpu_s"] = result["mbit_s"] * wall / cpu if cpu else 0.0
            figures["relay"].append(result)
        figures["errors"] = {k: v for k, v in load.counts.items() if k.startswith("error_") or k == "send_blocked"}
    finally:
        for beacon in beacons:
            beacon.send_signal(signal.SIGINT)
        for beacon in beacons:
            try:
                beacon.wait(30)
            except subprocess.TimeoutExpired:
                beacon.kill()
                beacon.wait()
        for s in load.socks:
            s.close()
    if profile and os.path.exists(profile):
        figures["profile_file"] = profile
    return figures


def wait_for_beacon(load: Load, beacon: subprocess.Popen, address) -> None:
    # A request id naming no node: the Challenge registers nobody.
    hello = msgs.encode(msgs.Hello((len(load.nodes) << NODE_SHIFT) | (1 << KIND_SHIFT)))
    sock = load.socks[0]
    deadline = time.perf_counter() + 60
    while time.perf_counter() < deadline:
        if beacon.poll() is not None:
            raise SystemExit(f"the beacon exited with {beacon.returncode}; see its log")
        sock.sendto(hello, address)
        load.drain(0.2)
        if address in load.beacon_keys:
            return
    raise SystemExit("the beacon did not answer within 60 s")


# -- a fleet's Redis --------------------------------------------------------------------------


def start_redis(workdir: str):
    """A redis-server for the fleet runs (loopback, no persistence), and its address."""
    import shutil

    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            redis_command(("127.0.0.1", port), "PING")
            return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    raise SystemExit("redis-server did not start")


def redis_command(address, *words: str) -> bytes:
    with socket.create_connection(address, timeout=5) as s:
        s.sendall(b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w.encode()) for w in words))
        return s.recv(65536)


def redis_pid(url: str) -> int:
    """The pid of the redis-server at ``url`` (from INFO), to measure its CPU too."""
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    info = redis_command((host, int(port)), "INFO", "server").decode(errors="replace")
    return int(info.split("process_id:", 1)[1].split()[0])


def _mib(values) -> str:
    return " + ".join(f"{v:.0f}" for v in values) + " MiB"


def _pcts(values) -> str:
    return " + ".join(f"{v:.1f}" for v in values) + " %"


def report(figures: dict) -> None:
    n = figures["beacons"]
    print(f"{n} beacon(s){' on one Redis' if figures.get('store') else ''} against {figures['nodes']:,} simulated nodes on {figures['sockets']} UDP sockets")
    print(f"  registrations/s        {figures['registrations_per_s']:,.0f}  ({figures['registered']:,} registered, "
          f"{1e6 * figures['register_cpu_s'] / max(1, figures['registered']):,.0f} µs of beacon CPU each)")
    print(f"  RSS per beacon         {_mib(figures['rss_idle_mib'])} idle, {_mib(figures['rss_registered_mib'])} registered, {_mib(figures['rss_mib'])} at the end")
    grown = sum(figures["rss_registered_mib"]) - sum(figures["rss_idle_mib"])
    print(f"    per node             {grown * 2**20 / max(1, figures['registered']):,.0f} bytes")
    k = figures["keepalive"]
    print(f"  keepalives             {k['keepalives_per_s']:,.0f}/s sent, {k['received'].get('rx_KeepaliveAck', 0):,} acks for {k['sent']['keepalive']:,}")
    print(f"    beacon CPU           {_pcts(k['cpu_pct_each'])} of one core (idle: {figures['idle_cpu_pct']:.1f} % in all), "
          f"{k['cpu_pct_per_1000_nodes']:.3f} % per 1,000 nodes, {1e6 * k['beacon_cpu_pct'] / 100 / max(1, k['keepalives_per_s']):.0f} µs per keepalive"
          + (f"; Redis {k['redis_cpu_pct']:.1f} %" if figures.get("store") else ""))
    m = figures["mixed"]
    print(f"  + lookups/handshakes   {m['lookups_per_s']:,.0f} lookups/s answered, {m['sent']['handshake']} handshake requests, "
          f"{m['received'].get('rx_Deliver', 0)} pushes; beacon CPU {_pcts(m['cpu_pct_each'])}"
          + (f"; Redis {m['redis_cpu_pct']:.1f} %" if figures.get("store") else ""))
    for r in figures["relay"]:
        print(f"  relay, {r['pairs']:>3} pair(s)       {r['mbit_s']:,.0f} Mbit/s goodput ({r['offered_mbit_s']:,.0f} offered, "
              f"{r['frames_delivered']:,}/{r['frames_sent']:,} frames), beacon CPU {_pcts(r['cpu_pct_each'])}, "
              f"{r['mbit_per_beacon_cpu_s']:,.0f} Mbit/s per beacon core" + (f"; Redis {r['redis_cpu_pct']:.0f} %" if figures.get("store") else ""))
    if figures["errors"]:
        print(f"  errors                 {figures['errors']}")
    if "profile_file" in figures:
        print("\nwhere the (first) beacon's time goes (cProfile, by own time):")
        pstats.Stats(figures["profile_file"]).sort_stats("tottime").print_stats(25)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=2000, help="simulated nodes (default 2,000)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of each steady phase (default 20)")
    parser.add_argument("--sockets", type=int, default=256, help="UDP source sockets the nodes share (default 256)")
    parser.add_argument("--window", type=int, default=256, help="registrations in flight (default 256)")
    parser.add_argument("--register-timeout", type=float, default=300.0, help="give up registering after this many seconds")
    parser.add_argument("--lookups", type=float, default=200.0, help="lookups per second in the mixed phase (default 200)")
    parser.add_argument("--handshakes", type=float, default=20.0, help="handshake requests per second in the mixed phase (default 20)")
    parser.add_argument("--pairs", type=int, default=100, help="relay pairs for the many-pairs goodput (default 100)")
    parser.add_argument("--relay-seconds", type=float, default=5.0, help="seconds of each relay run (default 5)")
    parser.add_argument("--store", help="the beacon's --store (e.g. redis://127.0.0.1:6379/0, a fleet's store)")
    parser.add_argument("--fleet", type=int, default=1, help="N >= 2: one beacon, then N beacons on one Redis, in the same run")
    parser.add_argument("--beacon-arg", action="append", default=[], help="one more argument for twistd pilot beacon (repeatable)")
    parser.add_argument("--profile", action="store_true", help="run the beacon under cProfile and print where its time goes")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    args.pairs = max(1, min(args.pairs, args.nodes // 2))
    redis = None
    if args.fleet > 1 and not args.store:
        redis, args.store = start_redis(tempfile.mkdtemp(prefix="beacon-scale-redis-"))
    try:
        args.redis_pid = redis_pid(args.store) if args.store and args.store.startswith("redis://") else None
        runs = []
        for fleet in ([1, args.fleet] if args.fleet > 1 else [1]):
            if args.redis_pid:
                host, port = args.store.split("//", 1)[1].split("/", 1)[0].split(":")
                redis_command((host, int(port)), "FLUSHDB")
            figures = run(args, fleet)
            figures["store"] = args.store
            runs.append(figures)
            if not args.json:
                report(figures)
                print()
    finally:
        if redis is not None:
            redis.terminate()
            redis.wait(10)
    if args.json:
        print(json.dumps(runs if len(runs) > 1 else runs[0], indent=2, default=str))


if __name__ == "__main__":
    main()
