"""
A lab router that grants port mappings: Debian's ``miniupnpd`` (UPnP IGD,
NAT-PMP and PCP) on a site router, with its nftables chains.

miniupnpd refuses to serve an external address from a reserved range, and
every public address in the lab's plan is one (documentation ranges, RFC
5737, see :mod:`pilotproto.lab.addressing`).  So a site that maps ports
first moves to an address from ``MAPPING_PUBLIC``, a block outside those
ranges: it exists only on the site router's uplink and as a route on the
lab's core router, inside namespaces the lab created, and the core has no
route out of the lab, so nothing sent to it can leave the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid

from . import ruleset
from .errors import LabError
from .lab import Lab, Site

#: public addresses for port-mapping sites: 198.51.101.(index + 2); see the module docstring
MAPPING_PUBLIC = "198.51.101.{}"

_CHAINS = """
table inet miniupnpd {
    chain miniupnpd { }
    chain prerouting_miniupnpd { }
    chain postrouting_miniupnpd { }
    chain forward { type filter hook forward priority filter; policy accept; jump miniupnpd; }
    chain prerouting { type nat hook prerouting priority dstnat - 1; policy accept; jump prerouting_miniupnpd; }
    chain postrouting { type nat hook postrouting priority srcnat - 1; policy accept; jump postrouting_miniupnpd; }
}
"""


def available() -> bool:
    return shutil.which("miniupnpd") is not None


def start_port_mapping(lab: Lab, site: Site, workdir: str, *, natpmp: bool = True, upnp: bool = True, timeout: float = 10.0) -> subprocess.Popen:
    """Run miniupnpd on ``site``'s router (NAT-PMP and PCP with ``natpmp``; UPnP IGD with ``upnp``).

    The site moves to its mapping address first (NAT state is dropped, as
    when a router gets a new lease).  Its config and log go in ``workdir``.  Returns the daemon's process; the lab
    stops it on close."""
    if not available():
        raise LabError("the port-mapping router needs miniupnpd", hint="Install it with: apt-get install -y miniupnpd")
    if site.nat == "none":
        raise LabError(f"site {site.name} has no NAT router to map ports on")
    public = MAPPING_PUBLIC.format(site.index + 2)
    router = site.router
    router.ip("addr", "add", f"{public}/32", "dev", "wan")
    lab.core.ip("route", "add", f"{public}/32", "via", site.public_address)
    site.public_address = public
    router.nft(ruleset.site_ruleset(site.nat, public, site.loss, site.mapping_timeout))
    router.nft(_CHAINS)
    config = _config(public, natpmp, upnp)
    workdir = os.path.join(workdir, f"miniupnpd-{site.name}")
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "miniupnpd.conf")
    with open(path, "w") as f:
        f.write(config)
    log = open(os.path.join(workdir, "miniupnpd.log"), "w+")
    argv = ["miniupnpd", "-d", "-f", path, "-P", os.path.join(workdir, "miniupnpd.pid")]
    proc = lab.popen(router, argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = log.name
    ready = "Listening for NAT-PMP/PCP traffic" if natpmp else "HTTP listening on port"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(log.name, errors="replace") as f:
            text = f.read()
        if ready in text:
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise LabError(f"miniupnpd did not start on {site.name}; its log:\n{text[-2000:]}")


def mapped_ports(site: Site) -> str:
    """miniupnpd's redirect chain on ``site``'s router, as nft lists it."""
    return site.router.run(["nft", "list", "chain", "inet", "miniupnpd", "prerouting_miniupnpd"])


def _config(public: str, natpmp: bool, upnp: bool) -> str:
    return "\n".join([
        "ext_ifname=wan",
        f"ext_ip={public}",
        "listening_ip=lan",
        f"enable_natpmp={'yes' if natpmp else 'no'}",
        f"enable_upnp={'yes' if upnp else 'no'}",
        "secure_mode=yes",
        "system_uptime=yes",
        f"uuid={uuid.uuid4()}",
        "upnp_table_name=miniupnpd",
        "upnp_nat_table_name=miniupnpd",
        "upnp_forward_chain=miniupnpd",
        "upnp_nat_chain=prerouting_miniupnpd",
        "upnp_nat_postrouting_chain=postrouting_miniupnpd",
        "allow 1024-65535 10.0.0.0/8 1024-65535",
        "deny 0-65535 0.0.0.0/0 0-65535",
    ]) + "\n"
