"""
The traversal matrix: every pair of NAT kinds, two real pilot nodes per
pair, the path they settle on, time to first byte and time to a direct path.

Used by ``pilotctl lab matrix``, by the lab test suite and by
``benchmarks/traversal.py``.  The expected path of every pair, and why, is
:func:`expected_path`; ``docs/traversal.md`` has the table.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import attrs

from ..errors import PilotError
from .cgn_cells import Cell, Side, cell_expected
from .lab import Lab
from .pilot import LabBeacon, LabNode
from .ruleset import NAT_KINDS

DIRECT_KINDS = ("direct", "punched", "lan")
#: NAT kinds that map every destination to a new port
_SYMMETRIC = {"symmetric", "symmetric-sequential"}


def expected_path(a: str, b: str) -> str:
    """The best path two nodes behind NATs of kinds ``a`` and ``b`` can have.

    ``direct`` stands for any direct path (direct, punched or lan).
    """
    kinds = {a, b}
    if "udp-blocked" in kinds:
        return "relay-tcp"  # no UDP at all on that side: only the TLS relay
    if len(kinds & _SYMMETRIC) == 2 or kinds <= _SYMMETRIC:
        return "relay"  # neither side can predict the port the other's NAT will use
    # Port-restricted with symmetric: the symmetric side's probes come from a
    # new port per destination, which a port-restricted NAT admits only once
    # it has sent to that very port: a birthday punch finds one (punched).
    return "direct"


def path_class(path: str) -> str:
    return "direct" if path in DIRECT_KINDS else path


@attrs.define
class PairResult:
    a: str
    b: str
    expected: str
    path: str = "-"
    first_byte_ms: float | None = None
    direct_after_ms: float | None = None
    replies: int = 0
    sent: int = 0
    error: str | None = None
    #: RTT of the first echo, on the relay, and the mean RTT at the end, on
    #: whatever path the pair settled on: what traversal bought, same run
    relay_rtt_ms: float | None = None
    final_rtt_ms: float | None = None

    #: under injected loss a pair passes when it connects and pings at all:
    #: some pings are lost, and a lossy direct path may briefly fall back
    lossy: bool = False

    @property
    def ok(self) -> bool:
        if self.error is not None:
            return False
        if self.lossy:
            return self.replies >= 1
        return self.replies == self.sent and path_class(self.path) == self.expected

    def as_dict(self) -> dict:
        return {**attrs.asdict(self), "ok": self.ok}


def _wait_for(predicate, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def establish_trust(x: LabNode, y: LabNode, timeout: float = 10.0) -> None:
    """x asks, y approves: the same two commands an operator runs."""
    x.ctl("handshake", target=y.hostname, reason="lab matrix")
    if not _wait_for(lambda: any(p["hostname"] == x.hostname for p in y.ctl("pending")["pending"]), timeout):
        raise PilotError(f"{y.hostname} never received {x.hostname}'s handshake request")
    y.ctl("approve", peer=x.hostname)
    if not _wait_for(lambda: any(t["hostname"] == y.hostname for t in x.ctl("trust")["trusted"]), timeout):
        raise PilotError(f"{x.hostname} never learned that {y.hostname} approved")
    # y's new visibility list reaches the beacon on its own schedule (it may
    # be resent under loss): wait until the beacon shows y to x.
    if not _wait_for(lambda: _can_look_up(x, y), timeout, interval=0.2):
        raise PilotError(f"the beacon does not show {y.hostname} to {x.hostname} after the approval")


def _can_look_up(x: LabNode, y: LabNode) -> bool:
    try:
        x.ctl("lookup", target=y.hostname)
        return True
    except PilotError:
        return False


def measure_pair(
    x: LabNode, y: LabNode, a: str, b: str, pings: int = 4, settle: float = 6.0, lossy: bool = False, expected: str | None = None
) -> PairResult:
    result = PairResult(a, b, expected or expected_path(a, b), sent=pings, lossy=lossy)
    try:
        establish_trust(x, y)
        started = time.monotonic()
        # Time to first byte: until the first echo comes back, through
        # lookup, tunnel handshake and whatever path is up first.
        for _ in range(5 if lossy else 1):
            first = x.ctl("ping", timeout=30, target=y.hostname, count=1, reply_timeout=2.0)
            if first["received"]:
                result.first_byte_ms = round((time.monotonic() - started) * 1000, 1)
                reply = first["replies"][0]
                if reply["path"].startswith("relay"):
                    result.relay_rtt_ms = reply["rtt_ms"]
                break
        if result.expected == "direct":
            moved = _wait_for(lambda: _peer_path(x, y) in DIRECT_KINDS, settle)
            if moved:
                result.direct_after_ms = round((time.monotonic() - started) * 1000, 1)
        else:
            time.sleep(min(settle, 1.5))  # give a (wrong) upgrade the chance to show
        summary = x.ctl("ping", timeout=30, target=y.hostname, count=pings, interval=0.2, reply_timeout=2.0)
        result.replies = summary["received"]
        result.final_rtt_ms = summary["avg_ms"]
        answered = [r for r in summary["replies"] if r]
        result.path = answered[-1]["path"] if answered else summary["path"]
    except PilotError as e:
        result.error = f"{e.code}: {e.message}"
    return result


def _peer_path(x: LabNode, y: LabNode) -> str | None:
    for peer in x.ctl("peers")["peers"]:
        if peer["hostname"] == y.hostname:
            return peer["path"]
    return None


def pairs_of(kinds) -> list[tuple[str, str]]:
    return list(itertools.combinations_with_replacement(kinds, 2))


def run_matrix(
    kinds=NAT_KINDS, loss: float = 0.0, workdir: str | None = None, progress=lambda result: None, workers: int = 6, cgn_cells=()
) -> list[PairResult]:
    """Build a lab, run every pair of ``kinds`` and every cell of ``cgn_cells``
    (e.g. :data:`~pilotproto.lab.cgn_cells.CGN_CELLS`), one result per pair."""
    workdir = workdir or tempfile.mkdtemp(prefix="pilot-matrix-")
    results: list[PairResult] = []
    with Lab() as lab:
        beacon = LabBeacon(lab, workdir).start()
        nodes: dict[str, list[LabNode]] = {}
        for kind in kinds:
            # Two sites per kind, so that a kind can meet itself across the internet.
            nodes[kind] = []
            for n in (1, 2):
                site = lab.add_site(kind, loss=loss)
                nodes[kind].append(LabNode(lab, site.hosts[0], workdir, f"{_short(kind)}-{n}", beacon))
        everyone = [node for pair in nodes.values() for node in pair]
        cells = [_build_cell(lab, beacon, workdir, i, cell, loss) for i, cell in enumerate(cgn_cells)]
        everyone += [node for _, x, y in cells for node in (x, y)]
        for node in everyone:
            node.start(wait_registered=False)
        for node in everyone:
            _wait_for(lambda: node.ctl("info")["registered"], 15)
        for node in everyone:
            # NAT discovery too: the NAT type rides the first candidate exchange,
            # and a symmetric NAT is told apart only after ~4 s of tests.
            _wait_for(lambda: node.ctl("info")["nat_type"] != "unknown", 15, interval=0.2)
        jobs = []
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for a, b in pairs_of(kinds):
                x, y = nodes[a][0], nodes[b][1]
                jobs.append(pool.submit(measure_pair, x, y, a, b, pings=10 if loss else 4, settle=12.0 if loss else 6.0, lossy=bool(loss)))
            for cell, x, y in cells:
                expected = cell_expected(cell, expected_path)
                jobs.append(pool.submit(measure_pair, x, y, cell.a.label, cell.b.label, pings=10 if loss else 4, settle=12.0 if loss else 6.0, lossy=bool(loss), expected=expected))
            for job in jobs:
                result = job.result()
                progress(result)
                results.append(result)
        for node in everyone:
            node.stop()
        beacon.kill()
    return results


def _build_cell(lab: Lab, beacon: LabBeacon, workdir: str, number: int, cell: Cell, loss: float):
    """The CGN(s), home sites and two (unstarted) nodes of one CGN cell."""
    shared = lab.add_cgn(cell.a.cgn, hairpin=cell.a.hairpin) if cell.shared else None

    def side(s: Side, letter: str) -> LabNode:
        cgn = shared or (lab.add_cgn(s.cgn, hairpin=s.hairpin) if s.cgn else None)
        site = lab.add_site(s.home, loss=loss, behind=cgn)
        return LabNode(lab, site.hosts[0], workdir, f"cgn{number}{letter}", beacon)

    return cell, side(cell.a, "a"), side(cell.b, "b")


_SHORT = {
    "none": "pub",
    "full-cone": "full",
    "restricted-cone": "rest",
    "port-restricted-cone": "port",
    "symmetric": "sym",
    "udp-blocked": "noudp",
    "symmetric-sequential": "seq",
}


def _short(kind: str) -> str:
    return _SHORT.get(kind, kind)


def format_table(results: list[PairResult]) -> str:
    rows = [("A", "B", "EXPECTED", "PATH", "PINGS", "FIRST BYTE", "DIRECT AFTER", "")]
    for r in results:
        rows.append(
            (
                r.a,
                r.b,
                r.expected,
                r.path,
                f"{r.replies}/{r.sent}",
                f"{r.first_byte_ms:.0f} ms" if r.first_byte_ms is not None else "-",
                f"{r.direct_after_ms:.0f} ms" if r.direct_after_ms is not None else "-",
                "ok" if r.ok else f"FAIL {r.error or ''}".strip(),
            )
        )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows)
