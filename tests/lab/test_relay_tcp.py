"""
The TLS relay across real kernel NATs: a node behind a router that drops all
UDP registers with the beacon over TCP/TLS (its certificate checked against
the lab's own CA), and pings a node behind a port-restricted cone NAT through
the relay.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

pytestmark = pytest.mark.lab

needs_lab = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip"),
    reason="the lab needs root, ip and nft",
)


@needs_lab
def test_udp_blocked_node_pings_over_the_tls_relay(tmp_path):
    from pilotproto.lab import Lab
    from pilotproto.lab.matrix import establish_trust
    from pilotproto.lab.pilot import LabBeacon, LabNode

    with Lab() as lab:
        beacon = LabBeacon(lab, str(tmp_path)).start()
        blocked_site, cone_site = lab.add_site("udp-blocked"), lab.add_site("port-restricted-cone")
        started = time.monotonic()
        blocked = LabNode(lab, blocked_site.hosts[0], str(tmp_path), "agent-blocked", beacon).start(timeout=20)
        registered_after = time.monotonic() - started
        cone = LabNode(lab, cone_site.hosts[0], str(tmp_path), "agent-cone", beacon).start()
        try:
            info = blocked.ctl("info")
            assert info["beacon_transport"] == "tls" and info["registered"], info
            assert cone.ctl("info")["beacon_transport"] == "udp"
            assert registered_after < 10, registered_after

            establish_trust(blocked, cone)
            there = blocked.ctl("ping", timeout=30, target="agent-cone", count=4, interval=0.2)
            back = cone.ctl("ping", timeout=30, target="agent-blocked", count=4, interval=0.2)
            assert there["received"] == 4, there
            assert back["received"] == 4, back
            # The blocked node's traffic rides the TLS relay both ways.
            assert {r["path"] for r in there["replies"]} == {"relay-tcp"}, there
            assert [p["path"] for p in blocked.ctl("peers")["peers"]] == ["relay-tcp"]
            # The cone node relays by UDP: its own hop to the beacon is "relay".
            assert {r["path"] for r in back["replies"]} <= {"relay", "relay-tcp"}, back
            print(f"registered over TLS after {registered_after:.1f} s; rtt {[r['rtt_ms'] for r in there['replies']]} ms")
        finally:
            blocked.stop(), cone.stop(), beacon.kill()
