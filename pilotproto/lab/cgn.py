"""
Carrier-grade NAT in the lab: a CGN router on the core with one public
address, and home site routers on its inside bridge (100.64.k.0/24, RFC 6598).
:meth:`Lab.add_cgn` and ``Lab.add_site(..., behind=cgn)`` use this module;
docs/lab.md says how a CGN differs from a site router, and why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from pilotproto.lab import addressing, netns, ruleset
from pilotproto.lab.errors import LabError
from pilotproto.lab.netns import Namespace


@dataclass(eq=False)
class CGN:
    """A carrier-grade NAT: home routers on its inside (100.64.k.0/24, RFC
    6598) share its one public address; ``hairpin`` says whether two homes
    behind it reach each other at their public endpoints."""

    name: str
    index: int
    nat: str
    hairpin: bool
    router: Namespace
    public_address: str
    inside: str
    mapping_timeout: int
    #: the home sites (:class:`~pilotproto.lab.lab.Site`) behind it, in slot order
    sites: list = field(default_factory=list)


def check_new(nat: str, hairpin: bool, index: int, sites: int) -> None:
    ruleset.check_kind(nat)
    if nat in ("none", "udp-blocked"):
        raise LabError(f"a carrier-grade NAT translates: {nat!r} is not one", hint="Use full-cone, restricted-cone, port-restricted-cone or a symmetric kind.")
    if hairpin and nat not in ruleset.CONE_KINDS:
        raise LabError(
            f"a {nat} CGN cannot hairpin: it has no endpoint-independent mapping to send a packet back into",
            hint="Use hairpin=True with full-cone, restricted-cone or port-restricted-cone.",
        )
    if index >= addressing.MAX_CGNS or sites >= addressing.cgn_uplink_index(index):
        raise LabError(f"a lab holds at most {addressing.MAX_CGNS} carrier-grade NATs, and {addressing.MAX_SITES} sites and CGNs together")


def build(core: Namespace, router: Namespace, name: str, index: int, nat: str, hairpin: bool, timeout: int, unreplied: int) -> CGN:
    """Link ``router`` to the core as CGN ``index`` and load its NAT."""
    uplink_index = addressing.cgn_uplink_index(index)
    inside = addressing.cgn_inside(index)
    made = CGN(name, index, nat, hairpin, router, addressing.public_address(uplink_index), str(inside), timeout)
    uplink = addressing.uplink(uplink_index)
    netns.link(core, name, router, "wan")
    core.ip("addr", "add", f"{addressing.uplink_gateway(uplink_index)}/{uplink.prefixlen}", "dev", name)
    router.ip("addr", "add", f"{made.public_address}/{uplink.prefixlen}", "dev", "wan")
    router.ip("route", "add", "default", "via", addressing.uplink_gateway(uplink_index))
    router.ip("link", "add", "name", "lan", "type", "bridge")
    router.ip("addr", "add", f"{addressing.cgn_gateway(index)}/{inside.prefixlen}", "dev", "lan")
    router.ip("link", "set", "dev", "lan", "up")
    _route_bridged_traffic(router)
    router.sysctl(
        net__ipv4__ip_forward=1,
        # A hairpinned packet leaves by the interface it came in on: no ICMP redirects for it.
        net__ipv4__conf__all__send_redirects=0,
        net__ipv4__conf__lan__send_redirects=0,
        net__netfilter__nf_conntrack_udp_timeout=unreplied,
        net__netfilter__nf_conntrack_udp_timeout_stream=timeout,
    )
    router.nft(ruleset.site_ruleset(nat, made.public_address, 0.0, timeout, hairpin_lan="lan" if hairpin else None, carrier=True))
    return made


def check_behind(cgn: CGN, cgns: list[CGN], nat: str, reorder: float) -> None:
    if cgn not in cgns:
        raise LabError(f"{cgn!r} is not a carrier-grade NAT of this lab", hint="Make it with this lab's add_cgn().")
    if nat == "none":
        raise LabError("a site behind a carrier-grade NAT has no public LAN: give it a NAT kind other than 'none'")
    if reorder:
        raise LabError("reorder is not available for a site behind a carrier-grade NAT")
    if len(cgn.sites) >= addressing.MAX_SITES_PER_CGN:
        raise LabError(f"a carrier-grade NAT holds at most {addressing.MAX_SITES_PER_CGN} sites")


def attach_home(site, cgn: CGN) -> None:
    """Join home ``site``'s router (its ``wan``) to ``cgn``'s inside bridge."""
    site.behind, site.slot = cgn, len(cgn.sites)
    cgn.sites.append(site)
    port = f"h{site.slot}"
    netns.link(cgn.router, port, site.router, "wan")
    cgn.router.ip("link", "set", "dev", port, "master", "lan")
    prefix = addressing.cgn_inside(cgn.index).prefixlen
    site.router.sysctl(net__ipv4__conf__all__promote_secondaries=1, net__ipv4__conf__wan__promote_secondaries=1)
    site.router.ip("addr", "add", f"{site.public_address}/{prefix}", "dev", "wan")
    site.router.ip("route", "add", "default", "via", addressing.cgn_gateway(cgn.index))


def _route_bridged_traffic(ns: Namespace) -> None:
    """With br_netfilter loaded (Docker loads it), a packet DNATed back onto
    the bridge it came from is *bridged* (br_netfilter's "bridged DNAT"), so
    a hairpinned packet would keep its TTL and outlive the TTL-2 priming
    that must die at the CGN.  Off in this namespace, it is routed."""
    if os.path.exists("/proc/sys/net/bridge/bridge-nf-call-iptables"):
        ns.sysctl(**{"net__bridge__bridge-nf-call-iptables": 0})
