"""
NAT traversal across real kernel NATs: every pair of NAT kinds, and homes
behind carrier-grade NATs, gets the best path it can have, with and without
packet loss; sessions survive a NAT rebinding and the loss of the beacon.
"""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest

from pilotproto.lab.cgn_cells import CGN_CELLS
from pilotproto.lab.matrix import DIRECT_KINDS, format_table, run_matrix

pytestmark = pytest.mark.lab

needs_lab = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip"),
    reason="the lab needs root, ip and nft",
)


@needs_lab
def test_every_pair_of_nat_kinds_gets_its_best_path(tmp_path):
    # The carrier-grade NAT cells run in the same lab, in parallel with the rest.
    results = run_matrix(workdir=str(tmp_path), cgn_cells=CGN_CELLS)
    assert len(results) == 28 + len(CGN_CELLS)  # seven NAT kinds, every pair once, and the CGN cells
    assert {r.a for r in results[28:]} == {cell.a.label for cell in CGN_CELLS}
    failed = [r for r in results if not r.ok]
    assert not failed, "\n" + format_table(results)


@needs_lab
def test_every_pair_still_connects_with_ten_percent_loss_on_both_routers(tmp_path):
    results = run_matrix(loss=0.10, workdir=str(tmp_path))
    failed = [r for r in results if not r.ok]
    assert not failed, "\n" + format_table(results)


def _ping_in_background(node, target, count, interval):
    box = {}

    def run():
        try:
            box["result"] = node.ctl("ping", timeout=count * interval + 30, target=target, count=count, interval=interval, reply_timeout=1.0)
        except Exception as e:  # reported by the test thread
            box["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def _direct_pair(lab, tmp_path, kind_a="port-restricted-cone", kind_b="port-restricted-cone"):
    from pilotproto.lab.matrix import establish_trust
    from pilotproto.lab.pilot import LabBeacon, LabNode

    beacon = LabBeacon(lab, str(tmp_path)).start()
    site_a, site_b = lab.add_site(kind_a), lab.add_site(kind_b)
    a = LabNode(lab, site_a.hosts[0], str(tmp_path), "agent-a", beacon).start()
    b = LabNode(lab, site_b.hosts[0], str(tmp_path), "agent-b", beacon).start()
    establish_trust(a, b)
    a.ctl("ping", target="agent-b", count=1)
    for _ in range(60):
        if a.ctl("peers")["peers"][0]["path"] in DIRECT_KINDS:
            break
        time.sleep(0.1)
    assert a.ctl("peers")["peers"][0]["path"] in DIRECT_KINDS
    return beacon, site_a, site_b, a, b


@needs_lab
@pytest.mark.parametrize("change", ["flush", "new-address"])
def test_session_survives_a_nat_rebinding(tmp_path, change):
    from pilotproto.lab import Lab

    with Lab() as lab:
        beacon, site_a, _, a, b = _direct_pair(lab, tmp_path)
        trusted_before = a.ctl("trust")["trusted"]
        interval, count = 0.1, 60
        thread, box = _ping_in_background(a, "agent-b", count, interval)
        time.sleep(2.0)
        if change == "flush":
            lab.flush_nat(site_a)
        else:
            lab.change_public_address(site_a)
        thread.join(60)
        result = box.get("result")
        assert result is not None, box
        lost = [r for r in result["replies"] if r is None]
        # At most two seconds of replies lost, and no new trust handshake.
        print(f"{change}: {len(lost)} of {count} pings lost")
        assert len(lost) * interval <= 2.0, result
        assert result["replies"][-1] is not None
        assert a.ctl("trust")["trusted"] == trusted_before
        assert a.ctl("pending")["pending"] == [] and b.ctl("pending")["pending"] == []
        a.stop(), b.stop(), beacon.kill()


@needs_lab
def test_killing_the_beacon_does_not_interrupt_a_direct_session(tmp_path):
    from pilotproto.lab import Lab

    with Lab() as lab:
        beacon, _, _, a, b = _direct_pair(lab, tmp_path)
        thread, box = _ping_in_background(a, "agent-b", 30, 0.1)
        time.sleep(0.5)
        beacon.kill()
        thread.join(30)
        result = box["result"]
        assert result["received"] == 30, result
        assert all(r["path"] in DIRECT_KINDS for r in result["replies"][-10:])
        again = a.ctl("ping", target="agent-b", count=3, interval=0.1)
        assert again["received"] == 3
        a.stop(), b.stop()
