"""
Soak: two agents behind lab NATs exchange messages and a stream while the
beacon restarts every minute and a NAT forgets its mappings every 90 s.

    sudo python3 benchmarks/soak.py [--minutes 10] [--rate-kib 128] [--json]

It builds a lab (needs root, ``ip``, ``nft`` and ``conntrack``): a beacon
(keeping its state in SQLite, so a restart loses no name or mail) and two
sites behind port-restricted-cone NATs.  On each site host it runs this file
as a *worker*: a process embedding a :class:`~pilotproto.node.service.PilotNode`
with its control socket.  The driver sets up trust, then for ``--minutes``:

* sends a message each way every ``--message-interval`` seconds through the
  control socket (``send_message``, wait 0: the durable outbox, and the
  beacon's store-and-forward when a peer cannot be reached);
* the sender worker writes one stream of deterministic data at
  ``--rate-kib`` KiB/s to the receiver worker, which hashes it;
* restarts the beacon every ``--beacon-every`` seconds (SIGTERM; ``--kill``:
  SIGKILL) and flushes site 0's NAT mappings every ``--flush-every`` seconds.

At the end it waits for both outboxes to drain, then prints how many
messages were lost or duplicated each way (by id), and whether the stream's
size and SHA-256 match.  Exit status 0 only if all is well.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import signal
import sys
import tempfile
import time

HERE = os.path.abspath(__file__)
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.dirname(HERE))

import stream_throughput
from stream_throughput import ControlledNode, Worker, emit

# Its Worker runs the file it names: this one (our worker mode).
stream_throughput.HERE = HERE

STREAM_PORT = 9000
CHUNK = 16 * 1024


def chunk_at(index: int) -> bytes:
    """The ``index``-th chunk of the stream: distinct, cheap, the same on both sides."""
    return hashlib.sha256(index.to_bytes(8, "big")).digest() * (CHUNK // 32)


# -- the worker (in a lab host) ------------------------------------------------------------------


def worker(args) -> None:
    from twisted.internet import reactor, stdio, task
    from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
    from twisted.internet.protocol import Factory, Protocol
    from twisted.protocols.basic import LineReceiver
    from zope.interface import implementer

    from pilotproto.control.service import ControlService
    from pilotproto.node.service import PilotNode

    node = PilotNode(home=args.home, hostname=args.hostname, beacon=args.beacon, beacon_ca=args.beacon_ca, reactor=reactor)
    ControlService(node).setServiceParent(node)

    @implementer(IHalfCloseableProtocol)
    class Sink(Protocol):
        def connectionMade(self):
            self.digest, self.size, self.done = hashlib.sha256(), 0, False

        def dataReceived(self, data):
            self.digest.update(data)
            self.size += len(data)

        def readConnectionLost(self):
            self.done = True
            emit("received", size=self.size, sha256=self.digest.hexdigest())
            self.transport.loseConnection()

        def writeConnectionLost(self):
            """Nothing is sent back."""

        def connectionLost(self, reason=None):
            if not self.done:
                emit("stream-broken", side="receiver", size=self.size, reason=reason.getErrorMessage())

    @implementer(IPushProducer)
    class Source(Protocol):
        """Writes ``rate`` bytes a second (whole chunks) until told to finish, then half-closes."""

        def connectionMade(self):
            self.digest, self.size, self.index, self.finished, self.paused = hashlib.sha256(), 0, 0, False, False
            self.started = time.monotonic()
            self.transport.registerProducer(self, True)
            self.loop = task.LoopingCall(self.tick)
            self.loop.start(0.1)
            sources.append(self)

        def pauseProducing(self):
            self.paused = True

        def resumeProducing(self):
            self.paused = False

        def stopProducing(self):
            self.paused = True

        def tick(self):
            due = int((time.monotonic() - self.started) * args.rate) // CHUNK
            while self.index < due and not self.paused:
                chunk = chunk_at(self.index)
                self.transport.write(chunk)
                self.digest.update(chunk)
                self.size += len(chunk)
                self.index += 1

        def finish(self):
            if self.loop.running:
                self.loop.stop()
            self.finished = True
            emit("sent", size=self.size, sha256=self.digest.hexdigest())
            self.transport.unregisterProducer()
            self.transport.loseWriteConnection()

        def connectionLost(self, reason=None):
            if self.loop.running:
                self.loop.stop()
            if not self.finished:
                emit("stream-broken", side="sender", size=self.size, reason=reason.getErrorMessage())

    sources: list = []

    class Commands(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line):
            word = line.strip()
            if word == b"go":
                d = node.dial(args.peer, STREAM_PORT, Factory.forProtocol(Source))
                d.addErrback(lambda f: emit("error", message=f.getErrorMessage()))
            elif word == b"finish":
                for source in sources:
                    source.finish()

        def connectionLost(self, reason):
            if reactor.running:
                reactor.stop()

    node.startService()
    node.when_registered().addCallback(lambda _: emit("registered", address=str(node.address)))
    if args.role == "recv":
        node.listen(STREAM_PORT, Factory.forProtocol(Sink))
    stdio.StandardIO(Commands())
    reactor.run()


# -- the driver ---------------------------------------------------------------------------------------


def send(node: ControlledNode, peer: str, text: str) -> str | None:
    try:
        data = base64.b64encode(text.encode()).decode()
        return node.ctl("send_message", timeout=20, target=peer, data=data, wait=0)["id"]
    except Exception as e:  # noqa: BLE001 -- counted as not sent: the soak goes on
        print(f"  send to {peer} failed: {e}", file=sys.stderr, flush=True)
        return None


def inbox_ids(node: ControlledNode) -> list[str]:
    ids, after = [], 0
    while True:
        got = node.ctl("inbox", timeout=20, after=after, count=1000)
        ids += [m["text"] for m in got["messages"]]
        if len(got["messages"]) < 1000:
            return ids
        after = got["messages"][-1]["seq"]


def run(options) -> dict:
    from pilotproto.lab import Lab
    from pilotproto.lab.matrix import establish_trust
    from pilotproto.lab.pilot import LabBeacon

    workdir = tempfile.mkdtemp(prefix="pilot-soak-")
    report: dict = {"minutes": options.minutes, "beacon_restarts": 0, "nat_flushes": 0, "send_failures": 0}
    with Lab() as lab:
        beacon = LabBeacon(lab, workdir, extra=["--state-dir", os.path.join(workdir, "beacon-state")]).start()
        sites = [lab.add_site("port-restricted-cone") for _ in range(2)]
        names = ("soak-a", "soak-b")
        homes = [os.path.join(workdir, n) for n in names]
        common = ["--beacon", beacon.address, "--beacon-ca", beacon.pki.ca_file, "--rate", str(options.rate_kib * 1024)]
        rx = Worker(lab, sites[1].hosts[0], ["worker", "recv", "--home", homes[1], "--hostname", names[1], "--peer", names[0], *common])
        tx = Worker(lab, sites[0].hosts[0], ["worker", "send", "--home", homes[0], "--hostname", names[0], "--peer", names[1], *common])
        try:
            for w in (rx, tx):
                w.expect("registered", 60)
            a, b = ControlledNode(homes[0], names[0]), ControlledNode(homes[1], names[1])
            establish_trust(a, b, timeout=60)
            tx.send("go")
            sent = {names[1]: [], names[0]: []}
            start = time.monotonic()
            end = start + options.minutes * 60
            next_beacon, next_flush, i = start + options.beacon_every, start + options.flush_every, 0
            while time.monotonic() < end:
                now = time.monotonic()
                if now >= next_beacon:
                    beacon.process.send_signal(signal.SIGKILL if options.kill else signal.SIGTERM)
                    beacon.process.wait(10)
                    beacon.start()
                    report["beacon_restarts"] += 1
                    next_beacon += options.beacon_every
                if now >= next_flush:
                    lab.flush_nat(sites[0])
                    report["nat_flushes"] += 1
                    next_flush += options.flush_every
                for node, peer in ((a, names[1]), (b, names[0])):
                    text = f"{node.hostname}->{peer} #{i}"
                    if send(node, peer, text) is None:
                        report["send_failures"] += 1
                    else:
                        sent[peer].append(text)
                i += 1
                time.sleep(options.message_interval)
            tx.send("finish")
            sent_stream = tx.expect("sent", 30)
            try:
                received = rx.expect("received", 120)
            except (RuntimeError, TimeoutError) as e:
                received = {"size": None, "sha256": None, "error": str(e)[:300]}
            # Let both outboxes drain.
            deadline = time.monotonic() + options.drain
            while time.monotonic() < deadline:
                if all(node.ctl("outbox", count=1)["queues"] == [] for node in (a, b)):
                    break
                time.sleep(1)
            for node, peer in ((b, names[1]), (a, names[0])):
                got = inbox_ids(node)
                want = sent[peer]
                report[f"to_{peer}"] = {
                    "sent": len(want), "received": len(got),
                    "lost": len(set(want) - set(got)), "duplicated": len(got) - len(set(got)),
                    "unexpected": len(set(got) - set(want)),
                }
            states = a.ctl("outbox", count=1000)["messages"] + b.ctl("outbox", count=1000)["messages"]
            report["delivered_via"] = {via: sum(1 for s in states if s.get("via") == via) for via in ("stream", "beacon")}
            report["still_queued"] = sum(1 for s in states if s["state"] == "queued")
            report["stream"] = {"sent_bytes": sent_stream["size"], "received_bytes": received.get("size"),
                                "hash_matches": received.get("sha256") == sent_stream["sha256"]
                                and received.get("size") == sent_stream["size"]}
            if "error" in received:
                report["stream"]["error"] = received["error"]
            broken = [json.loads(line) for w in (tx, rx) for line in w.lines if '"stream-broken"' in line]
            if broken:
                report["stream"]["broken"] = broken
        finally:
            tx.stop()
            rx.stop()
            beacon.kill()
    return report


def verdict(report: dict) -> bool:
    messages_ok = all(report[k]["lost"] == 0 and report[k]["duplicated"] == 0 and report[k]["unexpected"] == 0
                      for k in report if k.startswith("to_"))
    return messages_ok and report["stream"]["hash_matches"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode")
    w = sub.add_parser("worker")
    w.add_argument("role", choices=["send", "recv"])
    for flag in ("--home", "--hostname", "--peer", "--beacon", "--beacon-ca"):
        w.add_argument(flag, required=True)
    w.add_argument("--rate", type=int, default=128 * 1024)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate-kib", type=int, default=128, help="stream rate in KiB/s (default 128)")
    parser.add_argument("--message-interval", type=float, default=1.0)
    parser.add_argument("--beacon-every", type=float, default=60.0)
    parser.add_argument("--flush-every", type=float, default=90.0)
    parser.add_argument("--drain", type=float, default=180.0, help="seconds to wait for the outboxes to empty")
    parser.add_argument("--kill", action="store_true", help="restart the beacon with SIGKILL, not SIGTERM")
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args(argv)
    if options.mode == "worker":
        worker(options)
        return 0
    if not 0 < options.minutes <= 24 * 60:
        parser.error("--minutes must be from 0 to 1440")
    report = run(options)
    ok = verdict(report)
    report["ok"] = ok
    if options.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
        print("PASS: 0 messages lost or duplicated, the stream's hash matches" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
