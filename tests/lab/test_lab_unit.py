"""Lab pieces that need neither root nor namespaces."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pilotproto.errors import PilotError
from pilotproto.lab import LabError, NAT_KINDS, addressing, netns, ruleset
from pilotproto.lab.probe import classify
from pilotproto.lab.reorder import fix_checksum, internet_checksum


def test_lab_error_is_a_pilot_error_with_a_hint():
    err = LabError("boom")
    assert isinstance(err, PilotError)
    assert err.to_dict()["code"] == "lab_error"
    assert "root" in err.hint


def test_not_root_is_a_lab_error(monkeypatch):
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    with pytest.raises(LabError, match="root"):
        netns.check_prerequisites()


@pytest.mark.parametrize("missing", ["ip", "nft"])
def test_missing_tool_is_a_lab_error(monkeypatch, missing):
    monkeypatch.setattr(netns.os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns.shutil, "which", lambda tool: None if tool == missing else f"/usr/sbin/{tool}")
    with pytest.raises(LabError, match=f"'{missing}'") as info:
        netns.check_prerequisites()
    assert "apt-get install" in info.value.hint


def test_addresses_stay_in_documentation_and_private_ranges():
    public = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
    seen = set()
    for i in range(addressing.MAX_SITES):
        uplink = addressing.uplink(i)
        assert any(uplink.subnet_of(p) for p in public)
        addresses = {addressing.public_address(i, g) for g in range(addressing.REBIND_ADDRESSES)}
        addresses.add(addressing.uplink_gateway(i))
        assert len(addresses) == addressing.REBIND_ADDRESSES + 1
        assert all(ipaddress.ip_address(a) in uplink for a in addresses)
        assert seen.isdisjoint(addresses)
        seen |= addresses
        assert addressing.private_lan(i).is_private
    lans = [addressing.public_lan(i) for i in range(addressing.MAX_PUBLIC_SITES)]
    assert all(not a.overlaps(b) for j, a in enumerate(lans) for b in lans[j + 1 :])
    with pytest.raises(ValueError):
        addressing.uplink(addressing.MAX_SITES)


def test_ruleset_replaces_its_table_atomically():
    for kind in NAT_KINDS:
        script = ruleset.site_ruleset(kind, "198.51.100.2")
        first_lines = script.splitlines()[:3]
        assert first_lines == ["table ip pilotlab {}", "delete table ip pilotlab", "table ip pilotlab {"]


def test_ruleset_per_kind():
    assert "snat" not in ruleset.site_ruleset("none", "198.51.100.2")
    assert "fully-random" in ruleset.site_ruleset("symmetric", "198.51.100.2")
    sequential = ruleset.site_ruleset("symmetric-sequential", "198.51.100.2")
    assert "numgen inc mod 4096 map { 0 : 20000, 1 : 20001," in sequential and "fully-random" not in sequential
    assert "meta l4proto udp drop" in ruleset.site_ruleset("udp-blocked", "198.51.100.2")
    full = ruleset.site_ruleset("full-cone", "198.51.100.2")
    assert "udp dport @mapping_in dnat" in full and "@peers" not in full
    assert "udp dport . ip saddr @peers" in ruleset.site_ruleset("restricted-cone", "198.51.100.2")
    assert "udp dport . ip saddr . udp sport @peers" in ruleset.site_ruleset("port-restricted-cone", "198.51.100.2")
    assert "timeout 7s" in ruleset.site_ruleset("full-cone", "198.51.100.2", mapping_timeout=7)


def test_ruleset_loss_threshold():
    assert "numgen random mod 10000 < 2500 drop" in ruleset.site_ruleset("none", "198.51.100.2", loss=0.25)
    assert "numgen" not in ruleset.site_ruleset("none", "198.51.100.2")
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError):
            ruleset.site_ruleset("none", "198.51.100.2", loss=bad)
    with pytest.raises(ValueError, match="unknown NAT kind"):
        ruleset.site_ruleset("carrier-grade", "198.51.100.2")


def test_dynamic_sets_are_those_the_ruleset_declares():
    for kind in NAT_KINDS:
        script = ruleset.site_ruleset(kind, "198.51.100.2")
        for what, name in ruleset.dynamic_sets(kind):
            assert f"{what} {name} {{" in script


def _udp_frame(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes, checksum: int) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), checksum) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, src, dst)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp


@given(
    src=st.binary(min_size=4, max_size=4),
    dst=st.binary(min_size=4, max_size=4),
    sport=st.integers(0, 65535),
    dport=st.integers(0, 65535),
    payload=st.binary(max_size=300),
    garbage=st.integers(0, 65535),
)
def test_fix_checksum_makes_udp_checksums_valid(src, dst, sport, dport, payload, garbage):
    fixed = fix_checksum(_udp_frame(src, dst, sport, dport, payload, garbage))
    segment = fixed[34:]
    pseudo = src + dst + struct.pack("!BBH", 0, 17, len(segment))
    assert internet_checksum(pseudo + segment) == 0
    assert fixed[:40] == _udp_frame(src, dst, sport, dport, payload, 0)[:40]
    assert fix_checksum(fixed) == fixed


@given(st.binary(max_size=80))
def test_fix_checksum_never_raises_on_junk(frame):
    assert isinstance(fix_checksum(frame), bytes)


A1, A2, B1, B2 = "203.0.113.2:3478", "203.0.113.2:3479", "203.0.113.3:3478", "203.0.113.3:3479"


def _result(mapped, arrived, local="10.1.0.2:5000"):
    return {
        "local": local,
        "mapping": dict(zip((A1, A2, B1, B2), mapped)),
        "filtering": None if arrived is None else {k: k in arrived for k in (A1, A2, B1, B2)},
    }


@pytest.mark.parametrize(
    "mapped, arrived, expected",
    [
        (["p:1"] * 4, {A1, A2, B1, B2}, ("endpoint-independent", "endpoint-independent")),
        (["p:1"] * 4, {A1, A2}, ("endpoint-independent", "address-dependent")),
        (["p:1"] * 4, {A1}, ("endpoint-independent", "address-and-port-dependent")),
        (["p:1", "p:1", "p:2", "p:2"], {A1}, ("address-dependent", "address-and-port-dependent")),
        (["p:1", "p:2", "p:3", "p:4"], {A1}, ("address-and-port-dependent", "address-and-port-dependent")),
        ([None] * 4, None, ("blocked", "blocked")),
        (["10.1.0.2:5000"] * 4, {A1, A2, B1, B2}, ("no-nat", "endpoint-independent")),
        (["p:1"] * 4, {A1, B1}, ("endpoint-independent", "inconsistent")),
    ],
)
def test_classify(mapped, arrived, expected):
    behaviour = classify(_result(mapped, arrived), A1, B2)
    assert (behaviour["mapping"], behaviour["filtering"]) == expected
