"""
The lab's NAT kinds, measured: every kind must show the RFC 4787 mapping and
filtering behaviour it is named for.  Needs root, ip and nft.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from helpers import lab_marks

from pilotproto.lab import Lab, LabError, cleanup_stale, netns
from pilotproto.lab.probing import blast, probe_nat, start_probe_server


pytestmark = lab_marks()

EXPECTED = {
    "full-cone": ("endpoint-independent", "endpoint-independent"),
    "restricted-cone": ("endpoint-independent", "address-dependent"),
    "port-restricted-cone": ("endpoint-independent", "address-and-port-dependent"),
    "symmetric": ("address-and-port-dependent", "address-and-port-dependent"),
    "symmetric-sequential": ("address-and-port-dependent", "address-and-port-dependent"),
}


def _address(endpoint: str) -> str:
    return endpoint.rsplit(":", 1)[0]


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_nat_kind_behaviour(lab, kind):
    site = lab.add_site(kind)
    result = probe_nat(lab, site.hosts[0])
    mapping, filtering = EXPECTED[kind]
    assert result["behaviour"] == {"mapping": mapping, "filtering": filtering}, result
    assert {_address(m) for m in result["mapping"].values()} == {site.public_address}
    assert _address(result["tcp"]) == site.public_address
    if kind.startswith("symmetric"):
        assert len({_port(m) for m in result["mapping"].values()}) == 4
    if kind == "symmetric-sequential":
        # Four new destinations, four consecutive ports (the probe's only flows through this router).
        ports = sorted(_port(m) for m in result["mapping"].values())
        assert ports == list(range(ports[0], ports[0] + 4)), result


def test_no_nat_site_hosts_are_public(lab):
    site = lab.add_site("none")
    host = site.hosts[0]
    result = probe_nat(lab, host)
    assert result["behaviour"] == {"mapping": "no-nat", "filtering": "endpoint-independent"}, result
    assert set(result["mapping"].values()) == {result["local"]}
    assert _address(result["local"]) == host.address
    assert _address(result["tcp"]) == host.address


def test_udp_blocked_site_lets_only_tcp_out(lab):
    site = lab.add_site("udp-blocked")
    result = probe_nat(lab, site.hosts[0])
    assert set(result["mapping"].values()) == {None}
    assert result["filtering"] is None
    assert _address(result["tcp"]) == site.public_address


def test_cone_nat_gives_two_hosts_on_one_port_distinct_mappings(lab):
    site = lab.add_site("full-cone", hosts=2)
    first = probe_nat(lab, site.hosts[0], local_port=40000, tcp=False)
    second = probe_nat(lab, site.hosts[1], local_port=40000, tcp=False)
    for result in (first, second):
        assert result["behaviour"]["mapping"] == "endpoint-independent", result
    assert len(set(first["mapping"].values())) == 1
    assert set(first["mapping"].values()).isdisjoint(second["mapping"].values())


def test_short_mapping_timeout_expires_symmetric_mapping(lab):
    site = lab.add_site("symmetric", mapping_timeout=1)
    before = probe_nat(lab, site.hosts[0], local_port=40001, tcp=False)
    time.sleep(2.2)
    after = probe_nat(lab, site.hosts[0], local_port=40001, tcp=False)
    key = next(iter(before["mapping"]))
    assert before["mapping"][key] != after["mapping"][key]


def test_flush_nat_forgets_mappings(lab):
    site = lab.add_site("symmetric")
    before = probe_nat(lab, site.hosts[0], local_port=40002, tcp=False)
    lab.flush_nat(site)
    after = probe_nat(lab, site.hosts[0], local_port=40002, tcp=False)
    key = next(iter(before["mapping"]))
    assert before["mapping"][key] != after["mapping"][key]
    cone = lab.add_site("full-cone")
    probe_nat(lab, cone.hosts[0], tcp=False)
    lab.flush_nat(cone)
    listing = cone.router.run(["nft", "list", "map", "ip", "pilotlab", "mapping_in"])
    assert "elements" not in listing


def test_change_public_address_moves_the_site(lab):
    site = lab.add_site("port-restricted-cone")
    old = site.public_address
    assert _address(probe_nat(lab, site.hosts[0], tcp=False)["mapping"].popitem()[1]) == old
    new = lab.change_public_address(site)
    assert new != old and site.public_address == new
    result = probe_nat(lab, site.hosts[0])
    assert {_address(m) for m in result["mapping"].values()} == {new}
    assert result["behaviour"] == {"mapping": "endpoint-independent", "filtering": "address-and-port-dependent"}
    with pytest.raises(LabError):
        lab.change_public_address(lab.add_site("none"))


def test_loss_drops_about_the_asked_fraction(lab):
    site = lab.add_site("full-cone", loss=0.25)
    result = blast(lab, site.hosts[0], count=1000)
    # Binomial(1000, 0.75): sd 13.7, so +-60 is beyond 4 sd.
    assert 690 <= result["received"] <= 810, result


def test_reorder_delays_about_the_asked_fraction_without_loss(lab):
    site = lab.add_site("port-restricted-cone", reorder=0.2)
    result = blast(lab, site.hosts[0], count=1000)
    assert result["received"] == 1000, result
    assert 100 <= result["late"] <= 300, result


def test_lab_namespaces_are_removed_when_the_body_raises():
    with pytest.raises(RuntimeError):
        with Lab() as lab:
            lab.add_site("symmetric", hosts=2)
            names = lab.namespaces
            raise RuntimeError("test body failed")
    assert len(names) == 5
    assert set(names).isdisjoint(netns.list_namespaces())


def test_lab_is_closed_after_close():
    lab = Lab()
    lab.close()
    lab.close()
    with pytest.raises(LabError):
        lab.add_site("full-cone")


def test_two_labs_at_once_do_not_clash():
    with Lab() as one, Lab() as two:
        assert set(one.namespaces).isdisjoint(two.namespaces)
        start_probe_server(one)
        start_probe_server(two)
        site_one = one.add_site("full-cone")
        site_two = two.add_site("full-cone")
        assert site_one.public_address == site_two.public_address
        assert probe_nat(one, site_one.hosts[0], tcp=False)["behaviour"]["filtering"] == "endpoint-independent"
        two_names = two.namespaces
        one.close()
        assert set(two_names) <= set(netns.list_namespaces())
        assert probe_nat(two, site_two.hosts[0], tcp=False)["behaviour"]["mapping"] == "endpoint-independent"


_LAB_THEN_WAIT = """
import sys, time
from pilotproto.lab import Lab
lab = Lab()
lab.add_site("full-cone")
print(lab.lab_id, flush=True)
time.sleep(60)
"""


def _start_lab_process():
    proc = subprocess.Popen([sys.executable, "-c", _LAB_THEN_WAIT], stdout=subprocess.PIPE, text=True)
    lab_id = proc.stdout.readline().strip()
    assert lab_id, "the child lab did not start"
    prefix = f"{netns.NAME_PREFIX}{lab_id}-"
    assert any(n.startswith(prefix) for n in netns.list_namespaces())
    return proc, prefix


def test_sigterm_removes_the_lab():
    proc, prefix = _start_lab_process()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == -signal.SIGTERM
    assert not any(n.startswith(prefix) for n in netns.list_namespaces())


def test_cleanup_stale_removes_only_dead_labs():
    live, live_prefix = _start_lab_process()
    dead, dead_prefix = _start_lab_process()
    try:
        dead.kill()
        dead.wait(timeout=10)
        removed = cleanup_stale()
        assert removed and all(n.startswith(dead_prefix) for n in removed)
        names = netns.list_namespaces()
        assert not any(n.startswith(dead_prefix) for n in names)
        assert any(n.startswith(live_prefix) for n in names)
    finally:
        live.terminate()
        live.wait(timeout=20)
    assert not any(n.startswith(live_prefix) for n in netns.list_namespaces())
