"""
IPv6 in the lab: global addresses for every host, routed by the core, with
a stateful firewall on each site router, as home routers have.

    with Lab() as lab:
        a, b = lab.add_site("symmetric"), lab.add_site("symmetric")
        v6 = LabIPv6(lab)          # the beacon link and every site so far
        v6.address(a.hosts[0])     # "2001:db8:1::2"

IPv6 has no NAT here: a host's address is what peers reach.  What stands
in the way is the site router's filter (nftables, its own ``ip6`` table):
anything may go out, and only packets of a flow that went out
(``ct state established,related``) come back in; a new inbound flow is
dropped.  Two nodes get through it the way they get through a filtering
NAT: both probe at once, each probe opens its sender's pinhole.  ICMPv6
passes (RFC 4890: path MTU discovery and errors need it).

The address plan, all in the documentation prefix 2001:db8::/32 (RFC 3849):

* 2001:db8:ffff::/64     the beacon's link: core ::1, beacon ::2;
* 2001:db8:fffe:I::/64   site I's uplink: core ::1, site router ::2;
* 2001:db8:I+1::/64      site I's LAN: router ::1, host H at ::H+2.

Addresses are added with ``nodad``: duplicate address detection would hold
each one "tentative" (unusable) for a second or two, and nothing here can
collide.  The core router still has no default route, so nothing leaves
the lab.
"""

from __future__ import annotations

import ipaddress

from .errors import LabError

BEACON6_LINK = ipaddress.ip_network("2001:db8:ffff::/64")
BEACON6_GATEWAY = "2001:db8:ffff::1"
BEACON6_ADDRESS = "2001:db8:ffff::2"
#: the site routers' nftables table for IPv6 (the NAT table is ``ip``, this one ``ip6``)
FIREWALL_TABLE = "pilotlab6"


def uplink6(site_index: int) -> ipaddress.IPv6Network:
    return ipaddress.ip_network(f"2001:db8:fffe:{site_index:x}::/64")


def lan6(site_index: int) -> ipaddress.IPv6Network:
    return ipaddress.ip_network(f"2001:db8:{site_index + 1:x}::/64")


def host6(site_index: int, host_index: int) -> str:
    return str(lan6(site_index)[host_index + 2])


def firewall_ruleset() -> str:
    """The ``nft -f`` script of a site router's stateful IPv6 filter (replaces a previous one)."""
    return "\n".join([
        f"table ip6 {FIREWALL_TABLE} {{}}",
        f"delete table ip6 {FIREWALL_TABLE}",
        f"table ip6 {FIREWALL_TABLE} {{",
        "  chain forward {",
        "    type filter hook forward priority 0; policy accept;",
        '    iifname "wan" ct state established,related accept',
        '    iifname "wan" meta l4proto ipv6-icmp accept',
        '    iifname "wan" counter drop',
        "  }",
        "}",
        "",
    ])  # fmt: skip


class LabIPv6:
    """IPv6 on ``lab``: the beacon's link at once, every site there is
    (:meth:`add_site` for sites made later).  ``firewall`` False leaves
    the sites open (no filter), for tests that want to see the difference."""

    def __init__(self, lab, firewall: bool = True):
        self.lab = lab
        self.firewall = firewall
        self._addresses: dict = {}
        self._sites: set = set()
        core = lab.core
        core.sysctl(net__ipv6__conf__all__disable_ipv6=0, net__ipv6__conf__all__forwarding=1)
        core.ip("-6", "addr", "add", f"{BEACON6_GATEWAY}/64", "dev", "beacon", "nodad")
        beacon = lab.beacon.namespace
        beacon.sysctl(net__ipv6__conf__all__disable_ipv6=0)
        beacon.ip("-6", "addr", "add", f"{BEACON6_ADDRESS}/64", "dev", "eth0", "nodad")
        beacon.ip("-6", "route", "add", "default", "via", BEACON6_GATEWAY)
        self._addresses[lab.beacon.name] = BEACON6_ADDRESS
        for site in lab.sites:
            self.add_site(site)

    @property
    def beacon_address(self) -> str:
        return BEACON6_ADDRESS

    def address(self, host) -> str:
        """The global IPv6 address of ``host`` (a lab host or the beacon)."""
        try:
            return self._addresses[host.name]
        except KeyError:
            raise LabError(f"{host.name} has no IPv6 address: add its site with LabIPv6.add_site") from None

    def add_site(self, site) -> None:
        """Give ``site`` an IPv6 uplink, a routed /64 LAN and (unless off) the stateful filter."""
        if site.name in self._sites:
            return
        self._sites.add(site.name)
        core, router = self.lab.core, site.router
        uplink = uplink6(site.index)
        router_wan = str(uplink[2])
        router.sysctl(net__ipv6__conf__all__disable_ipv6=0, net__ipv6__conf__all__forwarding=1)
        core.ip("-6", "addr", "add", f"{uplink[1]}/64", "dev", site.name, "nodad")
        router.ip("-6", "addr", "add", f"{router_wan}/64", "dev", "wan", "nodad")
        router.ip("-6", "route", "add", "default", "via", str(uplink[1]))
        lan = lan6(site.index)
        router.ip("-6", "addr", "add", f"{lan[1]}/64", "dev", "lan", "nodad")
        core.ip("-6", "route", "add", str(lan), "via", router_wan)
        for i, host in enumerate(site.hosts):
            ns = host.namespace
            address = host6(site.index, i)
            ns.sysctl(net__ipv6__conf__all__disable_ipv6=0)
            ns.ip("-6", "addr", "add", f"{address}/64", "dev", "eth0", "nodad")
            ns.ip("-6", "route", "add", "default", "via", str(lan[1]))
            self._addresses[host.name] = address
        if self.firewall:
            router.nft(firewall_ruleset())
