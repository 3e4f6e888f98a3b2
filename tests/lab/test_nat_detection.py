"""
``pilotctl info`` reports the right ``nat_type`` behind every kind of lab
router: a real beacon with two addresses and two ports, and one real node per
site.  Needs root, ip and nft.
"""

from __future__ import annotations

import time

from helpers import lab_marks

from pilotproto.errors import PilotError
from pilotproto.lab import NAT_KINDS, Lab


pytestmark = lab_marks()

EXPECTED = {
    "none": "none",
    "full-cone": "full_cone",
    "restricted-cone": "restricted_cone",
    "port-restricted-cone": "port_restricted_cone",
    "symmetric": "symmetric",
    "symmetric-sequential": "symmetric",  # RFC 5780 names the mapping, not how ports are picked
    "udp-blocked": "udp_blocked",
}


def test_every_lab_nat_kind_is_detected(tmp_path):
    from pilotproto.lab.pilot import LabBeacon, LabNode

    assert set(EXPECTED) == set(NAT_KINDS)
    with Lab() as lab:
        beacon = LabBeacon(lab, str(tmp_path)).start()
        nodes = {}
        try:
            for kind in EXPECTED:
                site = lab.add_site(kind)
                nodes[kind] = LabNode(lab, site.hosts[0], str(tmp_path), f"nat-{kind}", beacon)
            # Discovery runs alongside registration, so nothing here waits
            # for registration (a udp-blocked node never registers over UDP).
            for node in nodes.values():
                node.start(wait_registered=False)
            seen = {}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(seen) < len(nodes):
                for kind, node in nodes.items():
                    if kind not in seen:
                        try:
                            nat_type = node.ctl("info", timeout=2)["nat_type"]
                        except PilotError:
                            continue
                        if nat_type != "unknown":
                            seen[kind] = nat_type
                time.sleep(0.2)
            assert seen == EXPECTED, {kind: node.log_text()[-1500:] for kind, node in nodes.items() if seen.get(kind) != EXPECTED[kind]}
            for kind, node in nodes.items():
                assert f"NAT type: {EXPECTED[kind]}" in node.log_text()
                if kind != "udp-blocked":
                    assert node.ctl("info")["registered"]
        finally:
            for node in nodes.values():
                node.stop()
            beacon.kill()
