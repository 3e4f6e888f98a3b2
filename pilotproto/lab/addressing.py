"""
The lab's address plan.

Every address here lives only inside namespaces the lab creates, and the
core router has no default route, so nothing the lab sends can reach the
host's real network.  "Public" addresses come from the documentation ranges
(RFC 5737) so they can never collide with a real peer:

* 203.0.113.0/29  the beacon's link: core router .1, beacon .2 and .3 (two
  addresses, for RFC 5780 behaviour discovery);
* 198.51.100.0/24 one /29 per site's uplink: core router .8i+1, the site
  router's public address .8i+2, and .8i+3 to .8i+6 kept for
  :meth:`Lab.change_public_address`;
* 192.0.2.0/24    one /28 per "none" site, whose hosts are public;
* 10.(i+1).0.0/24 the private LAN behind NAT site i; it exists only inside
  that site's namespaces;
* 100.64.k.0/24   the inside of carrier-grade NAT k (RFC 6598 shared address
  space): CGN router .1, home router j at .4j+2 (.4j+3 to .4j+5 kept for
  :meth:`Lab.change_public_address`).  CGN k's own uplink is the /29 of site
  index 31-k, counted down from the top so sites and CGNs never meet.
"""

from __future__ import annotations

import ipaddress

BEACON_LINK = ipaddress.ip_network("203.0.113.0/29")
BEACON_GATEWAY = "203.0.113.1"
BEACON_PRIMARY = "203.0.113.2"
BEACON_ALTERNATE = "203.0.113.3"

_UPLINKS = ipaddress.ip_network("198.51.100.0/24")
_PUBLIC_LANS = ipaddress.ip_network("192.0.2.0/24")

MAX_SITES = 32
MAX_PUBLIC_SITES = 16
MAX_HOSTS_PER_SITE = 12  # fits a /28 public LAN; private LANs could hold more
REBIND_ADDRESSES = 4


def uplink(site_index: int) -> ipaddress.IPv4Network:
    """The /29 joining site ``site_index`` (0-based) to the core router."""
    if not 0 <= site_index < MAX_SITES:
        raise ValueError(f"site index {site_index} outside 0..{MAX_SITES - 1}")
    return list(_UPLINKS.subnets(new_prefix=29))[site_index]


def uplink_gateway(site_index: int) -> str:
    return str(uplink(site_index)[1])


def public_address(site_index: int, generation: int = 0) -> str:
    """The site router's public address after ``generation`` rebinds."""
    return str(uplink(site_index)[2 + generation % REBIND_ADDRESSES])


def private_lan(site_index: int) -> ipaddress.IPv4Network:
    if not 0 <= site_index < MAX_SITES:
        raise ValueError(f"site index {site_index} outside 0..{MAX_SITES - 1}")
    return ipaddress.ip_network(f"10.{site_index + 1}.0.0/24")


def public_lan(public_index: int) -> ipaddress.IPv4Network:
    """The /28 of public host addresses for the ``public_index``-th none site."""
    if not 0 <= public_index < MAX_PUBLIC_SITES:
        raise ValueError(f"public LAN index {public_index} outside 0..{MAX_PUBLIC_SITES - 1}")
    return list(_PUBLIC_LANS.subnets(new_prefix=28))[public_index]


def lan_gateway(lan: ipaddress.IPv4Network) -> str:
    return str(lan[1])


def lan_host(lan: ipaddress.IPv4Network, host_index: int) -> str:
    """Address of host ``host_index`` (0-based) on a site LAN."""
    if not 0 <= host_index < MAX_HOSTS_PER_SITE:
        raise ValueError(f"host index {host_index} outside 0..{MAX_HOSTS_PER_SITE - 1}")
    return str(lan[2 + host_index])


MAX_CGNS = 8
MAX_SITES_PER_CGN = 60
_CGN_SPACE = ipaddress.ip_network("100.64.0.0/10")


def cgn_uplink_index(cgn_index: int) -> int:
    """The uplink /29 (as a site index) of carrier-grade NAT ``cgn_index``."""
    if not 0 <= cgn_index < MAX_CGNS:
        raise ValueError(f"CGN index {cgn_index} outside 0..{MAX_CGNS - 1}")
    return MAX_SITES - 1 - cgn_index


def cgn_inside(cgn_index: int) -> ipaddress.IPv4Network:
    """The shared-address-space /24 behind carrier-grade NAT ``cgn_index``."""
    if not 0 <= cgn_index < MAX_CGNS:
        raise ValueError(f"CGN index {cgn_index} outside 0..{MAX_CGNS - 1}")
    return ipaddress.ip_network((int(_CGN_SPACE.network_address) + 256 * cgn_index, 24))


def cgn_gateway(cgn_index: int) -> str:
    return str(cgn_inside(cgn_index)[1])


def cgn_home_address(cgn_index: int, slot: int, generation: int = 0) -> str:
    """Home router ``slot``'s address behind CGN ``cgn_index`` after ``generation`` rebinds."""
    if not 0 <= slot < MAX_SITES_PER_CGN:
        raise ValueError(f"home slot {slot} outside 0..{MAX_SITES_PER_CGN - 1}")
    return str(cgn_inside(cgn_index)[2 + 4 * slot + generation % REBIND_ADDRESSES])
