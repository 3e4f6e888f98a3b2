"""
IPv6 across real kernel firewalls: two sites whose IPv4 NATs are symmetric
(so IPv4 alone stays on the relay) and whose routers run a stateful IPv6
filter (new inbound flows dropped) get a direct path over IPv6, the beacon
answering on IPv6 too.  Needs root, ip and nft.
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
def test_symmetric_nats_with_ipv6_firewalls_go_direct_over_ipv6(tmp_path):
    from pilotproto.lab import Lab
    from pilotproto.lab.ipv6 import LabIPv6
    from pilotproto.lab.matrix import establish_trust
    from pilotproto.lab.pilot import BEACON_PORT, LabBeacon, LabNode

    with Lab() as lab:
        sites = [lab.add_site("symmetric"), lab.add_site("symmetric")]
        v6 = LabIPv6(lab)
        # The filter drops a new inbound flow: nothing reaches a host unasked.
        probe = lab.run(sites[1].hosts[0], ["sh", "-c", "timeout 2 ping -6 -c1 -W1 " + v6.address(sites[0].hosts[0])],
                        capture_output=True, text=True)
        assert probe.returncode != 0, probe.stdout
        beacon = LabBeacon(lab, str(tmp_path), extra=["--interface6", "::"]).start()
        # The beacon answers over IPv6 on its main port (registration, lookups, STUN).
        check = lab.run(lab.beacon, ["sh", "-c", f"ss -Hlun 'sport = :{BEACON_PORT}'"], capture_output=True, text=True)
        assert "[::]:" in check.stdout or "*:" in check.stdout, check.stdout
        a = LabNode(lab, sites[0].hosts[0], str(tmp_path), "six-a", beacon).start()
        b = LabNode(lab, sites[1].hosts[0], str(tmp_path), "six-b", beacon).start()
        establish_trust(a, b)
        started = time.monotonic()
        a.ctl("ping", target=b.hostname, count=1)
        peer = {}
        while time.monotonic() - started < 10:
            peer = a.ctl("peers")["peers"][0]
            if peer["path"] != "relay" and peer["endpoint"].startswith("["):
                break
            time.sleep(0.1)
        assert peer["endpoint"] == f"[{v6.address(b.host)}]:{peer['endpoint'].rsplit(':', 1)[1]}", peer
        assert peer["path"] in ("punched", "direct"), peer
        ping = a.ctl("ping", target=b.hostname, count=3, interval=0.1)
        assert ping["received"] == 3 and all(r["path"] != "relay" for r in ping["replies"]), ping
        other = b.ctl("peers")["peers"][0]
        assert other["endpoint"].startswith(f"[{v6.address(a.host)}]:"), other
        a.stop(), b.stop()
        beacon.kill()
