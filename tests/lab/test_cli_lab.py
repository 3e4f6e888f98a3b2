"""
pilotctl in the lab (issue 10): ``netcheck`` behind real kernel NATs, run
in a site host's namespace against the lab beacon (two addresses, two
ports, a TLS relay), reports what the NAT is and what that means for
peers; ``lab matrix`` prints each pair once.  Needs root, ip and nft.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

from helpers import lab_marks

from pilotproto.lab import Lab


pytestmark = lab_marks()

PILOTCTL = [sys.executable, "-m", "pilotproto.cli"]


def test_netcheck_behind_each_kind_of_nat(tmp_path):
    from pilotproto.lab.pilot import LabBeacon

    with Lab() as lab:
        beacon = LabBeacon(lab, str(tmp_path)).start()
        try:
            results = {}
            for kind in ("port-restricted-cone", "symmetric", "udp-blocked"):
                host = lab.add_site(kind).hosts[0]
                run = lab.run(
                    host,
                    PILOTCTL + ["--json", "--home", str(tmp_path / kind), "netcheck", "--beacon", beacon.address, "--beacon-ca", beacon.pki.ca_file],
                    capture_output=True, text=True, timeout=90,
                )  # fmt: skip
                results[kind] = (run.returncode, json.loads(run.stdout))
        finally:
            beacon.kill()

    code, doc = results["port-restricted-cone"]
    assert code == 0, doc
    [b] = doc["data"]["beacons"]
    assert b["udp"]["reachable"] and b["tls"]["reachable"]
    nat = b["nat"]
    assert nat["type"] == "port_restricted_cone"
    assert (nat["mapping"], nat["filtering"]) == ("endpoint-independent", "address-and-port-dependent")
    assert nat["mapping_stable"] is True and isinstance(nat["hairpinning"], bool)
    assert not b["udp"]["reflexive_endpoint"].startswith(nat["local_endpoint"].rsplit(":", 1)[0] + ":")
    assert doc["data"]["peers"]["summary"] == "direct to every peer that has UDP (hole punching works from here)"

    code, doc = results["symmetric"]
    assert code == 0, doc
    assert doc["data"]["nat_type"] == "symmetric"
    [sym] = doc["data"]["beacons"]
    assert sym["nat"]["filtering"] != "unknown", sym["nat"]  # measured, though the type names the mapping
    assert doc["data"]["peers"]["by_peer_nat"]["port-restricted-cone"] == "direct"  # a birthday punch
    assert doc["data"]["peers"]["by_peer_nat"]["symmetric"] == "relay"
    assert doc["data"]["peers"]["by_peer_nat"]["full-cone"] == "direct"

    # No UDP at all: only the TLS relay, and netcheck says so (and still succeeds).
    code, doc = results["udp-blocked"]
    assert code == 0, doc
    [b] = doc["data"]["beacons"]
    assert not b["udp"]["reachable"] and b["tls"]["reachable"] and b["nat"] is None
    assert doc["data"]["nat_type"] == "udp_blocked"
    assert doc["data"]["peers"]["summary"].startswith("relay over TCP/TLS for every peer")


def test_lab_matrix_prints_each_pair_once_and_exits_zero_when_all_pass():
    run = subprocess.run(PILOTCTL + ["lab", "matrix", "--kinds", "none"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert len(re.findall(r"^none\s+none\s+direct", run.stdout + run.stderr, re.M)) == 1, run.stdout + run.stderr
    assert "Every pair got its best path." in run.stdout
