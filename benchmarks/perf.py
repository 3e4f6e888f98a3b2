"""
Throughput, latency, CPU and memory, side by side, in one run (issue 13).

    sudo python3 benchmarks/perf.py [--size-mb 64] [--old-tree DIR] [--json] [--skip PART ...]

Prints, measured in the same run on the same machine:

* **hotpath** — CPU per packet of the stream and record layers alone (no
  sockets: ``perf_hotpath.py``), for this tree and, with ``--old-tree DIR``,
  for an older copy of ``pilotproto/`` in ``DIR``, run alternately, so the
  ratio is fair on a busy machine.  When ``DIR`` also holds
  ``benchmarks/stream_throughput.py``, the direct in-process lab transfer
  runs with the old code too (its workers import ``DIR/pilotproto``).
* **direct** — one stream through two port-restricted-cone NATs of the lab:
  pilot in-process (a ``PilotNode`` in the worker), aioquic on the same two
  hosts and path, and pilot through the daemons (``pilotctl bench`` from
  another process through the control socket: echo, so both directions).
* **relay** — the same stream when the path is the beacon's UDP relay (both
  sites behind symmetric NATs) and its TCP/TLS relay (the sender's site
  blocks UDP).
* **dial** — dial → first byte back from the echo port on a cold session
  (lookup, handshake and stream over the relay), and dial → the path
  verified direct, on an idle lab.
* **CPU** — CPU seconds per GiB on each side of every transfer.
* **memory** — bytes per idle session with 1,000 sessions (``perf_memory.py``).

The lab needs root, ``ip`` and ``nft``; without root only hotpath and memory
run.  The default run takes a few minutes.  Machines are noisy (other work
shares the cores): compare the figures of one run with each other.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import perf_daemon
import stream_throughput as st

MiB = 1024 * 1024
GiB = 1024 * MiB
PARTS = ("hotpath", "memory", "direct", "aioquic", "daemons", "relay", "relay-tcp", "dial")


def _python(script: str, args: list[str], tree: str | None = None) -> dict:
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = tree
    out = subprocess.run([sys.executable, os.path.join(HERE, script), *args], env=env, capture_output=True,
                         text=True, timeout=900, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def hotpath(size_mb: float, old_tree: str | None, rounds: int = 3) -> dict:
    """The best of ``rounds`` alternating runs of each tree (the least disturbed by other work)."""
    runs: dict = {"new": [], "old": []}
    for _ in range(rounds):
        runs["new"].append(_python("perf_hotpath.py", ["--size-mb", str(size_mb)]))
        if old_tree:
            runs["old"].append(_python("perf_hotpath.py", ["--size-mb", str(size_mb)], tree=old_tree))
    report = {name: min(results, key=lambda r: r["cpu_s"]) for name, results in runs.items() if results}
    if "old" in report:
        report["cpu_ratio_old_over_new"] = round(report["old"]["cpu_s"] / report["new"]["cpu_s"], 2)
    return report


def per_gib(cpu_seconds: float, size: int) -> float:
    return round(cpu_seconds * GiB / size, 1)


def _old_workers(tree: str | None):
    """``DIR/benchmarks/stream_throughput.py`` as a module: its workers run ``DIR``'s pilotproto."""
    path = os.path.join(tree, "benchmarks", "stream_throughput.py") if tree else None
    if path is None or not os.path.exists(path):
        return None
    import importlib.util

    spec = importlib.util.spec_from_file_location("old_stream_throughput", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pilot(lab, beacon, hosts, workdir, size, want_direct=True, workers=st) -> dict:
    result = workers.pilot_transfer(lab, beacon, hosts, workdir, size, want_direct=want_direct)
    return {
        "mbit_s": round(st.mbit(result), 1),
        "path": result["path"],
        "intact": result["sha256"] == st.expected_digest(size, 7) and result["size"] == size,
        "sender_cpu_s_per_gib": per_gib(result["sender"]["cpu_seconds"], size),
        "receiver_cpu_s_per_gib": per_gib(result["cpu_seconds"], size),
        "packets_lost": result["sender"]["stats"]["packets_lost"],
    }


def _aioquic(lab, hosts, workdir, size) -> dict:
    result = st.quic_transfer(lab, hosts, workdir, size)
    return {
        "mbit_s": round(st.mbit(result), 1),
        "intact": result["sha256"] == st.expected_digest(size, 7) and result["size"] == size,
        "sender_cpu_s_per_gib": per_gib(result["sender"]["cpu_seconds"], size),
        "receiver_cpu_s_per_gib": per_gib(result["cpu_seconds"], size),
    }


def _daemons(lab, beacon, hosts, workdir, size) -> dict:
    """Two daemons on the lab hosts; ``pilotctl bench`` from another process, through the control socket."""
    from pilotproto.lab.matrix import DIRECT_KINDS, establish_trust
    from pilotproto.lab.pilot import LabNode

    tag = time.monotonic_ns() % 10**9
    a = LabNode(lab, hosts[0], workdir, f"da-{tag}", beacon).start(timeout=30)
    b = LabNode(lab, hosts[1], workdir, f"db-{tag}", beacon).start(timeout=30)
    try:
        establish_trust(a, b, timeout=30)
        path = st._settle_path(a, b.hostname, DIRECT_KINDS, deadline=time.monotonic() + 30)
        before = [_cpu_of(node.process.pid) for node in (a, b)]
        out = subprocess.run(
            [sys.executable, "-m", "pilotproto.cli", "--home", a.home, "--json", "bench", b.hostname,
             "--size-mb", str(size / MiB)], capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"pilotctl bench failed: {out.stdout}{out.stderr}")
        after = [_cpu_of(node.process.pid) for node in (a, b)]
        data = json.loads(out.stdout)["data"]  # {"status": "ok", "data": {...}}
        # One way, as the in-process figure is: a client of each daemon, each in another process than its daemon.
        before_one_way = [_cpu_of(node.process.pid) for node in (a, b)]
        one_way = perf_daemon.one_way(a.home, b.home, b.hostname, size)
        after_one_way = [_cpu_of(node.process.pid) for node in (a, b)]
        return {
            "one_way_mbit_s": one_way["mbit_s"],
            "one_way_intact": one_way["intact"],
            "one_way_cpu_s_per_gib": [per_gib(y - x, size) for x, y in zip(before_one_way, after_one_way)],
            "path": path,
            "send_mbit_s": round(data["send_mbps"], 1),
            "receive_mbit_s": round(data["receive_mbps"], 1),
            "echo_mbit_s": round(data["echo_mbps"], 1),
            # each daemon both sends and receives the size once (echo)
            "daemon_a_cpu_s_per_gib": per_gib(after[0] - before[0], 2 * size),
            "daemon_b_cpu_s_per_gib": per_gib(after[1] - before[1], 2 * size),
        }
    finally:
        a.stop()
        b.stop()


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a process has used: its twistd child's, if it has one."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _dial(lab, beacon, hosts, workdir) -> dict:
    """A cold dial to the echo port: first byte back (over the relay), then the direct path verified."""
    from pilotproto.lab.matrix import establish_trust

    tag = f"{os.getpid()}-{time.monotonic_ns() % 10**9}"
    names = (f"dial-{tag}", f"echo-{tag}")
    homes = [os.path.join(workdir, name) for name in names]
    common = ["--beacon", beacon.address, "--beacon-ca", beacon.pki.ca_file, "--size", "0"]
    receiver = st.Worker(lab, hosts[1], ["pilot-recv", "--home", homes[1], "--hostname", names[1], *common])
    dialer = st.Worker(lab, hosts[0], ["pilot-dial", "--home", homes[0], "--hostname", names[0], "--peer", names[1],
                                       *common])  # fmt: skip
    try:
        for worker in (receiver, dialer):
            worker.expect("registered", 30)
        establish_trust(st.ControlledNode(homes[0], names[0]), st.ControlledNode(homes[1], names[1]), timeout=30)
        time.sleep(1.0)  # idle: nothing in flight
        dialer.send("go")
        first = dialer.expect("first-byte", 30, partner=receiver)
        direct = dialer.expect("direct", 40, partner=receiver)
        return {"first_byte_ms": first["ms"], "direct_ms": direct["ms"], "direct_path": direct["path"]}
    finally:
        dialer.stop()
        receiver.stop()


def lab_parts(options, report: dict) -> None:
    from pilotproto.lab import Lab
    from pilotproto.lab.pilot import LabBeacon

    size = int(options.size_mb * MiB)
    skip = set(options.skip)
    workdir = tempfile.mkdtemp(prefix="pilot-perf-")
    with Lab() as lab:
        quota = [] if options.relay_quota == "default" else ["--relay-per-node", options.relay_quota,
                                                             "--relay-per-pair", options.relay_quota]
        beacon = LabBeacon(lab, workdir, extra=quota).start()
        cone = [lab.add_site("port-restricted-cone") for _ in range(2)]
        hosts = [site.hosts[0] for site in cone]
        if "direct" not in skip:
            report["direct"] = _pilot(lab, beacon, hosts, workdir, size)
            old = _old_workers(options.old_tree)
            if old is not None:
                report["direct_old_code"] = _pilot(lab, beacon, hosts, workdir, size, workers=old)
        if "aioquic" not in skip:
            report["aioquic"] = _aioquic(lab, hosts, workdir, size)
        if "daemons" not in skip:
            report["daemons"] = _daemons(lab, beacon, hosts, workdir, size)
        if "relay" not in skip:
            symmetric = [lab.add_site("symmetric").hosts[0] for _ in range(2)]
            report["relay"] = _pilot(lab, beacon, symmetric, workdir, size, want_direct=False)
        if "relay-tcp" not in skip:
            blocked = lab.add_site("udp-blocked").hosts[0]
            report["relay_tcp"] = _pilot(lab, beacon, [blocked, hosts[1]], workdir, size, want_direct=False)
        if "dial" not in skip:
            report["dial"] = _dial(lab, beacon, hosts, workdir)
        beacon.kill()


def ratios(report: dict) -> dict:
    out = {}
    direct = report.get("direct", {}).get("mbit_s")
    if direct:
        if report.get("aioquic"):
            out["direct_over_aioquic"] = round(direct / report["aioquic"]["mbit_s"], 2)
        if report.get("direct_old_code"):
            out["direct_over_old_code"] = round(direct / report["direct_old_code"]["mbit_s"], 2)
            old_cpu = report["direct_old_code"]["sender_cpu_s_per_gib"] + report["direct_old_code"]["receiver_cpu_s_per_gib"]
            new_cpu = report["direct"]["sender_cpu_s_per_gib"] + report["direct"]["receiver_cpu_s_per_gib"]
            out["cpu_per_gib_old_over_new"] = round(old_cpu / new_cpu, 2)
        if report.get("daemons"):
            out["daemons_send_over_direct"] = round(report["daemons"]["send_mbit_s"] / direct, 2)
            out["daemons_one_way_over_direct"] = round(report["daemons"]["one_way_mbit_s"] / direct, 2)
        if report.get("relay"):
            out["udp_relay_over_direct"] = round(report["relay"]["mbit_s"] / direct, 2)
        if report.get("relay_tcp"):
            out["tls_relay_over_direct"] = round(report["relay_tcp"]["mbit_s"] / direct, 2)
    return out


def render(report: dict) -> str:
    lines = [f"pilotproto performance, {report['machine']}, {report['size_mb']:g} MiB per transfer"]
    hot = report.get("hotpath")
    if hot:
        new = hot["new"]
        lines.append(f"  hot path (stream + record layers, no sockets): {new['us_per_data_packet']} µs CPU per data "
                     f"packet, {new['cpu_s_per_gib']} CPU s/GiB, ACK packets {new['packets_b']} per "
                     f"{new['packets_a']} data")  # fmt: skip
        if "old" in hot:
            old = hot["old"]
            lines.append(f"    old tree: {old['us_per_data_packet']} µs per data packet, ACK packets {old['packets_b']}"
                         f" per {old['packets_a']}: {hot['cpu_ratio_old_over_new']}x the CPU")  # fmt: skip
    for key, label in (("direct", "direct, pilot in-process"), ("direct_old_code", "  the same, old code"),
                       ("aioquic", "direct, aioquic"),
                       ("relay", "UDP relay"), ("relay_tcp", "TCP/TLS relay")):  # fmt: skip
        r = report.get(key)
        if r:
            path = f", path {r['path']}" if "path" in r else ""
            lines.append(f"  {label:26} {r['mbit_s']:8.1f} Mbit/s  CPU s/GiB sender {r['sender_cpu_s_per_gib']},"
                         f" receiver {r['receiver_cpu_s_per_gib']}{path}, intact {r['intact']}")  # fmt: skip
    d = report.get("daemons")
    if d:
        lines.append(f"  {'direct, through daemons':26} {d['send_mbit_s']:8.1f} Mbit/s send, {d['receive_mbit_s']} "
                     f"receive, {d['echo_mbit_s']} echo (pilotctl bench; daemon CPU s/GiB "
                     f"{d['daemon_a_cpu_s_per_gib']} / {d['daemon_b_cpu_s_per_gib']})")  # fmt: skip
        lines.append(f"  {'direct, through daemons':26} {d['one_way_mbit_s']:8.1f} Mbit/s one way (a client of each "
                     f"daemon; daemon CPU s/GiB {' / '.join(map(str, d['one_way_cpu_s_per_gib']))}), "
                     f"intact {d['one_way_intact']}")  # fmt: skip
    dial = report.get("dial")
    if dial:
        lines.append(f"  dial -> first byte (relay): {dial['first_byte_ms']} ms;"
                     f" dial -> verified direct path: {dial['direct_ms']} ms ({dial['direct_path']})")  # fmt: skip
    mem = report.get("memory")
    if mem:
        lines.append(f"  memory per idle session ({mem['sessions']} sessions, {mem['direct']} direct):"
                     f" {mem['bytes_per_idle_session'] / 1024:.1f} KiB")  # fmt: skip
    for name, value in report.get("ratios", {}).items():
        lines.append(f"  {name}: {value}")
    return "\n".join(lines)


def machine() -> str:
    import platform

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, Python {platform.python_version()}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=64.0, help="MiB per lab transfer (default 64)")
    parser.add_argument("--hotpath-mb", type=float, default=32.0)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--old-tree", help="a directory holding an older pilotproto/ to compare the hot path with")
    parser.add_argument("--relay-quota", metavar="RATE", default="1G/1",
                        help="the lab beacon's relay quota per node and per pair (default 1G/1: what the relay "
                             "itself moves); 'default' keeps the beacon's own, 8M/1 per pair, and the relay "
                             "figure is then the quota's")
    parser.add_argument("--skip", nargs="*", default=[], choices=PARTS)
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args(argv)
    report: dict = {"machine": machine(), "size_mb": options.size_mb, "relay_quota": options.relay_quota}
    if "hotpath" not in options.skip:
        report["hotpath"] = hotpath(options.hotpath_mb, options.old_tree)
    if "memory" not in options.skip:
        report["memory"] = _python("perf_memory.py", ["--sessions", str(options.sessions)])
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        lab_parts(options, report)
    else:
        print("not root: the lab parts are skipped (they need network namespaces and nftables)", file=sys.stderr)
    report["ratios"] = ratios(report)
    print(json.dumps(report, indent=2) if options.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
