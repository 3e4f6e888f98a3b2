"""
Carrier-grade NAT in the lab: two NAT layers measure as the outermost
behaviour, a hairpinning CGN turns a packet to its public address back inside
(with the sender's mapping as its source) and one that does not drops it, and
a TTL-2 packet dies at the CGN.  Needs root, ip and nft.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import lab_marks

from pilotproto.lab import Lab, LabError
from pilotproto.lab.probing import probe_nat


pytestmark = lab_marks()

PRC = "port-restricted-cone"

# Listens on a port, says "ready", prints the source of the first datagram "hi" (or "none").
_LISTEN = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[1]))); s.settimeout(1.5)
print("ready", flush=True)
try:
    while True:
        data, source = s.recvfrom(100)
        if data == b"hi":
            print("%s:%d" % source, flush=True); break
except OSError:
    print("none", flush=True)
"""
_SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[1])))
s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, int(sys.argv[4]))
for _ in range(3):
    s.sendto(b"hi", (sys.argv[2], int(sys.argv[3])))
"""


def _mapped(lab, host, port) -> str:
    """The public endpoint of ``host``'s UDP ``port`` (made by talking to the probe server)."""
    mapping = probe_nat(lab, host, local_port=port, tcp=False)["mapping"]
    return next(iter(mapping.values()))


def _send_to_public(lab, sender, receiver, public: str, ttl: int = 64) -> str:
    listener = lab.popen(receiver, [sys.executable, "-c", _LISTEN, "4000"], stdout=subprocess.PIPE, text=True)
    assert listener.stdout.readline().strip() == "ready"
    host, port = public.split(":")
    lab.run(sender, [sys.executable, "-c", _SEND, "4001", host, port, str(ttl)], check=True, timeout=10)
    return listener.communicate(timeout=10)[0].strip()


def test_two_layers_measure_as_the_outermost_nat(lab):
    eim, sym = lab.add_cgn("full-cone"), lab.add_cgn("symmetric")
    behind_eim = lab.add_site(PRC, behind=eim)
    behind_sym = lab.add_site(PRC, behind=sym)
    assert behind_eim.public_address.startswith("100.64.")
    a = probe_nat(lab, behind_eim.hosts[0], tcp=False)
    b = probe_nat(lab, behind_sym.hosts[0], tcp=False)
    assert a["behaviour"]["mapping"] == "endpoint-independent" and a["behaviour"]["filtering"] == "address-and-port-dependent", a
    assert {ep.split(":")[0] for ep in a["mapping"].values()} == {eim.public_address}
    assert b["behaviour"]["mapping"] != "endpoint-independent", b
    assert {ep.split(":")[0] for ep in b["mapping"].values()} == {sym.public_address}


@pytest.mark.parametrize("hairpin", [True, False])
def test_only_a_hairpinning_cgn_connects_two_homes_at_their_public_endpoints(lab, hairpin):
    cgn = lab.add_cgn("full-cone", hairpin=hairpin)
    a, b = lab.add_site("full-cone", behind=cgn), lab.add_site("full-cone", behind=cgn)
    a_public, b_public = _mapped(lab, a.hosts[0], 4001), _mapped(lab, b.hosts[0], 4000)
    got = _send_to_public(lab, a.hosts[0], b.hosts[0], b_public)
    # Hairpinned, the packet comes from a's own public endpoint, as it would from outside.
    assert got == (a_public if hairpin else "none")


def test_a_ttl_2_packet_dies_at_the_cgn_even_when_hairpinned(lab):
    # With br_netfilter loaded a packet DNATed back onto the bridge it came
    # from would be bridged, not routed, and keep its TTL: priming would
    # then reach the peer's home router.
    cgn = lab.add_cgn("full-cone", hairpin=True)
    a, b = lab.add_site("full-cone", behind=cgn), lab.add_site("full-cone", behind=cgn)
    b_public = _mapped(lab, b.hosts[0], 4000)
    _mapped(lab, a.hosts[0], 4001)
    assert _send_to_public(lab, a.hosts[0], b.hosts[0], b_public, ttl=2) == "none"
    # home router, CGN, home router, host: four hops
    assert _send_to_public(lab, a.hosts[0], b.hosts[0], b_public, ttl=4) != "none"


def test_cgn_arguments_are_checked(lab):
    with pytest.raises(LabError, match="cannot hairpin"):
        lab.add_cgn("symmetric", hairpin=True)
    with pytest.raises(LabError, match="translates"):
        lab.add_cgn("none")
    with pytest.raises(LabError, match="not a carrier-grade NAT of this lab"), Lab() as other:
        lab.add_site(PRC, behind=other.add_cgn("full-cone"))
    cgn = lab.add_cgn("full-cone")
    with pytest.raises(LabError, match="no public LAN"):
        lab.add_site("none", behind=cgn)
