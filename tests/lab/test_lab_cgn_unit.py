"""Carrier-grade NAT pieces that need neither root nor namespaces: the
address plan, the CGN ruleset, each cell's expected path, ``lab matrix --cgn``."""

from __future__ import annotations

import ipaddress

import pytest

from pilotproto.lab import addressing, ruleset
from pilotproto.lab.cgn_cells import (
    CGN_CELLS,
    PRC,
    Cell,
    Side,
    cell_expected,
    outermost,
)
from pilotproto.lab.errors import LabError
from pilotproto.lab.matrix import expected_path


def test_cgn_addresses_are_shared_address_space_and_never_meet_the_sites():
    shared = ipaddress.ip_network("100.64.0.0/10")
    homes = {addressing.cgn_home_address(k, slot, gen) for k in range(addressing.MAX_CGNS) for slot in (0, 1, 59) for gen in range(4)}
    assert all(ipaddress.ip_address(a) in shared for a in homes)
    assert len(homes) == addressing.MAX_CGNS * 3 * 4
    assert addressing.cgn_gateway(2) == "100.64.2.1"
    uplinks = {addressing.cgn_uplink_index(k) for k in range(addressing.MAX_CGNS)}
    assert uplinks == set(range(addressing.MAX_SITES - addressing.MAX_CGNS, addressing.MAX_SITES))
    with pytest.raises(ValueError):
        addressing.cgn_home_address(0, addressing.MAX_SITES_PER_CGN)


def test_a_hairpinning_cgn_sends_inside_packets_back_in_with_the_senders_mapping():
    script = ruleset.site_ruleset(PRC, "198.51.100.250", hairpin_lan="lan", carrier=True)
    assert 'iifname "lan" ip daddr 198.51.100.250 udp dport @mapping_in meta mark set 0x4850 dnat' in script
    # postrouting has no input interface: the mark carries "hairpinned" there
    assert 'oifname "lan" meta mark 0x4850 ip saddr . udp sport @mapping_out snat ip addr . port to ip saddr . udp sport map @mapping_out' in script
    # a refused unsolicited packet leaves no conntrack entry at a CGN
    assert "udp dport . ip saddr . udp sport @peers accept" in script and "ct state new drop" in script


def test_without_hairpin_or_carrier_the_ruleset_is_the_plain_one():
    plain = ruleset.site_ruleset(PRC, "198.51.100.2")
    assert "0x4850" not in plain and "prerouting_unsolicited" not in plain
    assert ruleset.site_ruleset(PRC, "198.51.100.2", hairpin_lan=None, carrier=False) == plain


def test_a_symmetric_nat_cannot_hairpin():
    with pytest.raises(ValueError, match="hairpinning needs endpoint-independent mapping"):
        ruleset.site_ruleset("symmetric", "198.51.100.250", hairpin_lan="lan")


@pytest.mark.parametrize(
    "side, kind",
    [
        (Side(PRC), PRC),
        (Side(PRC, "full-cone"), PRC),
        (Side("full-cone", PRC), PRC),
        (Side("full-cone", "restricted-cone"), "restricted-cone"),
        (Side(PRC, "symmetric"), "symmetric"),
        (Side("symmetric", "full-cone"), "symmetric"),
        (Side("symmetric", "symmetric-sequential"), "symmetric-sequential"),
    ],
)
def test_the_outermost_behaviour_is_what_the_internet_sees(side, kind):
    assert outermost(side) == kind


def test_every_cgn_cell_has_the_expected_path_the_docs_give():
    expected = {(c.a.label, c.b.label, c.shared): cell_expected(c, expected_path) for c in CGN_CELLS}
    hp = f"{PRC}@cgn-{PRC}+hairpin"
    assert expected == {
        (f"{PRC}@cgn-{PRC}", PRC, False): "direct",
        (f"{PRC}@cgn-full-cone", "symmetric", False): "direct",
        (f"{PRC}@cgn-symmetric", PRC, False): "relay",
        (f"{PRC}@cgn-symmetric", "symmetric", False): "relay",
        (hp, hp, True): "direct",
        (f"{PRC}@cgn-{PRC}", f"{PRC}@cgn-{PRC}", True): "relay",
    }


def test_a_shared_cell_needs_one_cgn():
    with pytest.raises(LabError):
        Cell(Side(PRC, PRC, hairpin=True), Side(PRC, PRC), shared=True)
    with pytest.raises(LabError):
        Cell(Side(PRC), Side(PRC), shared=True)


def test_lab_matrix_cgn_adds_the_cgn_cells(monkeypatch, tmp_path):
    import pilotproto.lab
    import pilotproto.lab.matrix
    from pilotproto.cli.main import main

    seen = {}

    def run_matrix(kinds, loss=0.0, progress=lambda r: None, **kw):
        seen.update(kw, kinds=kinds)
        return []

    monkeypatch.setattr(pilotproto.lab, "check_prerequisites", lambda: None)
    monkeypatch.setattr(pilotproto.lab.matrix, "run_matrix", run_matrix)
    for argv, cells in ((["--cgn"], CGN_CELLS), ([], ())):
        seen.clear()
        main(["--json", "--home", str(tmp_path), "lab", "matrix", "--kinds", "full-cone", *argv])
        assert seen["cgn_cells"] == cells and seen["kinds"] == ("full-cone",)
