"""
Port mapping against a real router: miniupnpd (UPnP IGD, NAT-PMP, PCP) on a
lab site router doing symmetric NAT.  Each protocol grants and deletes a
mapping; a node behind that router advertises its mapped port, so a peer
behind a port-restricted NAT (a pair that otherwise needs the relay) gets a
direct path; stopping the node deletes the mapping.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
import time

import pytest

from pilotproto.lab.matrix import DIRECT_KINDS

pytestmark = pytest.mark.lab

needs_lab = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip") or not shutil.which("miniupnpd"),
    reason="needs root, ip, nft and miniupnpd (apt-get install miniupnpd)",
)

CLIENT = textwrap.dedent(
    """
    import json, sys
    from twisted.internet import defer
    from twisted.internet.task import react
    from pilotproto.node.portmap import gateway_towards, source_address
    from pilotproto.node.portmap_pcp import NatPmpClient, PcpClient
    from pilotproto.node.portmap_upnp import UpnpClient

    @defer.inlineCallbacks
    def main(reactor, beacon):
        gateway = gateway_towards(beacon)
        me = source_address(gateway)
        made = {"pcp": PcpClient(reactor, gateway, me), "nat-pmp": NatPmpClient(reactor, gateway), "upnp": UpnpClient(reactor, gateway, me)}
        for port, (name, client) in enumerate(made.items(), start=41000):
            try:
                mapping = yield client.request(port, 600)
                yield client.release(mapping)
                print(json.dumps({"protocol": name, "external": [mapping.external_host, mapping.external_port], "internal": mapping.internal_port}))
            except Exception as e:
                print(json.dumps({"protocol": name, "error": f"{type(e).__name__}: {e}"}))
    react(main, sys.argv[1:])
    """
)


@needs_lab
def test_each_protocol_maps_and_deletes_a_port_on_miniupnpd(tmp_path):
    from pilotproto.lab import Lab
    from pilotproto.lab.upnp import mapped_ports, start_port_mapping

    with Lab() as lab:
        site = lab.add_site("symmetric")
        start_port_mapping(lab, site, str(tmp_path))
        script = tmp_path / "client.py"
        script.write_text(CLIENT)
        out = lab.run(site.hosts[0], [sys.executable, str(script), lab.beacon.address], capture_output=True, text=True, timeout=60)
        results = {r["protocol"]: r for r in map(json.loads, out.stdout.splitlines())}
        assert set(results) == {"pcp", "nat-pmp", "upnp"}, out.stderr[-2000:]
        for port, name in enumerate(("pcp", "nat-pmp", "upnp"), start=41000):
            assert results[name].get("external") == [site.public_address, port], results[name]
        assert "dport" not in mapped_ports(site)  # every mapping was deleted


@needs_lab
def test_a_mapped_port_gives_a_symmetric_site_a_direct_path(tmp_path):
    from pilotproto.lab import Lab
    from pilotproto.lab.matrix import establish_trust
    from pilotproto.lab.pilot import LabBeacon, LabNode
    from pilotproto.lab.upnp import mapped_ports, start_port_mapping

    with Lab() as lab:
        beacon = LabBeacon(lab, str(tmp_path)).start()
        mapping_site, other_site = lab.add_site("symmetric"), lab.add_site("port-restricted-cone")
        start_port_mapping(lab, mapping_site, str(tmp_path))
        a = LabNode(lab, mapping_site.hosts[0], str(tmp_path), "agent-a", beacon).start()
        b = LabNode(lab, other_site.hosts[0], str(tmp_path), "agent-b", beacon).start()
        deadline = time.monotonic() + 15
        while a.ctl("info")["port_mapping"]["state"] != "mapped" and time.monotonic() < deadline:
            time.sleep(0.1)
        mapping = a.ctl("info")["port_mapping"]
        assert mapping["state"] == "mapped" and mapping["protocol"] == "pcp" and mapping["advertised"], mapping
        assert mapping["external"].startswith(mapping_site.public_address + ":")
        establish_trust(a, b)
        b.ctl("ping", target="agent-a", count=1)
        path = None
        for _ in range(100):
            path = b.ctl("peers")["peers"][0]["path"]
            if path in DIRECT_KINDS:
                break
            time.sleep(0.1)
        assert path in DIRECT_KINDS, (path, b.ctl("peers"))
        assert b.ctl("peers")["peers"][0]["endpoint"] == mapping["external"]
        a.stop()
        assert "dport" not in mapped_ports(mapping_site), "stopping the node deletes its mapping"
