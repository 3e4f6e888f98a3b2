"""
Path MTU discovery in the lab: one stream over paths of MTU 1280, 1500 and
9000, the MTU each side's search settled on, and the goodput.

    sudo python benchmarks/pmtu.py [--size MiB] [--mtu 1280 --mtu 1500 ...]

Each MTU gets two port-restricted-cone sites whose every link (uplink, LAN,
hosts) has that MTU (``Lab.add_site(mtu=...)``); the nodes are the worker
processes of ``benchmarks/stream_throughput.py``.  After the transfer the
sender's ``peers`` shows the peer's ``pmtu``, which must be the link's MTU
within the search granularity (8 bytes); tests/lab/test_pmtu_lab.py runs
the same with a few MiB.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

MiB = 1024 * 1024
MTUS = (1280, 1500, 9000)


def _throughput():
    spec = importlib.util.spec_from_file_location("stream_throughput", os.path.join(HERE, "stream_throughput.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pmtu_transfer(lab, beacon, mtu: int, workdir: str, size: int, seed: int = 5, timeout: float = 120.0,
                  uplink_mtu: int | None = None) -> dict:
    """One stream of ``size`` bytes across two sites of MTU ``mtu``; the receiver's result plus each side's pmtu.

    ``uplink_mtu`` narrows the receiver site's uplink below its LAN: the
    hosts' interfaces say ``mtu`` and only the search finds the real path."""
    from pilotproto.lab.matrix import DIRECT_KINDS, establish_trust

    bench = _throughput()
    sites = [lab.add_site("port-restricted-cone", mtu=mtu) for _ in range(2)]
    if uplink_mtu is not None:
        for ns, dev in ((lab.core, sites[1].name), (sites[1].router, "wan")):
            ns.ip("link", "set", "dev", dev, "mtu", str(uplink_mtu))
    hosts = [site.hosts[0] for site in sites]
    names = (f"tx{mtu}-{uplink_mtu or mtu}", f"rx{mtu}-{uplink_mtu or mtu}")
    homes = [os.path.join(workdir, name) for name in names]
    common = ["--beacon", beacon.address, "--beacon-ca", beacon.pki.ca_file, "--size", str(size), "--seed", str(seed)]
    receiver = bench.Worker(lab, hosts[1], ["pilot-recv", "--home", homes[1], "--hostname", names[1], *common])
    sender = bench.Worker(lab, hosts[0], ["pilot-send", "--home", homes[0], "--hostname", names[0], "--peer", names[1], *common])
    try:
        for worker in (receiver, sender):
            worker.expect("registered", 30)
        tx, rx = bench.ControlledNode(homes[0], names[0]), bench.ControlledNode(homes[1], names[1])
        establish_trust(tx, rx, timeout=30)
        path = bench._settle_path(tx, names[1], DIRECT_KINDS, deadline=time.monotonic() + 30)
        sender.send("go")
        result = receiver.expect("received", timeout, partner=sender)
        result["sender"] = sender.expect("sent", 30)
        result["path"] = path
        result["expected_sha256"] = bench.expected_digest(size, seed)
        # A narrowed path takes a few lost probes (0.5 s each) to find: wait for both searches.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            result["pmtu"], result["peer_pmtu"] = (_pmtu(node, peer) for node, peer in ((tx, names[1]), (rx, names[0])))
            if result["pmtu"].get("pmtu_state") == result["peer_pmtu"].get("pmtu_state") == "complete":
                break
            time.sleep(0.2)
        result["pmtu"], result["peer_pmtu"] = result["pmtu"].get("pmtu"), result["peer_pmtu"].get("pmtu")
        return result
    finally:
        sender.stop()
        receiver.stop()


def _pmtu(node, peer: str) -> dict:
    for entry in node.ctl("peers")["peers"]:
        if entry["hostname"] == peer:
            return entry
    return {}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64, help="MiB per transfer (default 64)")
    parser.add_argument("--mtu", type=int, action="append", help="link MTU to try (repeatable; default 1280, 1500, 9000)")
    parser.add_argument("--json", action="store_true", help="one JSON object per MTU")
    args = parser.parse_args(argv)
    from pilotproto.lab import Lab
    from pilotproto.lab.pilot import LabBeacon

    workdir = tempfile.mkdtemp(prefix="pmtu-")
    try:
        with Lab() as lab:
            beacon = LabBeacon(lab, workdir).start()
            for mtu in args.mtu or MTUS:
                r = pmtu_transfer(lab, beacon, mtu, workdir, args.size * MiB, timeout=600)
                line = {"mtu": mtu, "pmtu": r["pmtu"], "peer_pmtu": r["peer_pmtu"], "path": r["path"],
                        "mbit_s": round(r["size"] * 8 / r["seconds"] / 1e6, 1), "intact": r["sha256"] == r["expected_sha256"]}
                print(json.dumps(line) if args.json else
                      f"link MTU {mtu:5d}: pmtu {line['pmtu']} / {line['peer_pmtu']}, path {line['path']}, "
                      f"{args.size} MiB at {line['mbit_s']} Mbit/s, intact {line['intact']}", flush=True)
            beacon.kill()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
