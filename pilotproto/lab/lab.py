"""
A virtual internet on one Linux machine, for NAT traversal tests and demos.

    with Lab() as lab:
        site = lab.add_site("symmetric", hosts=2, loss=0.05)
        lab.run(site.hosts[0], ["ping", "-c1", lab.beacon.address])

The core router ``inet`` joins the beacon and every site router; each site
router does real kernel NAT (see :mod:`pilotproto.lab.ruleset`) for the
hosts on its LAN bridge.  Nothing here touches the root namespace, so the
lab cannot leak packets onto the machine's real network.
"""

from __future__ import annotations

import atexit
import os
import secrets
import signal
import subprocess
import sys
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from pilotproto.lab import addressing, cgn, netns, ruleset
from pilotproto.lab.cgn import CGN
from pilotproto.lab.errors import LabError
from pilotproto.lab.netns import Namespace

DEFAULT_MAPPING_TIMEOUT = 120
# The conntrack timeout for UDP flows that never saw a reply; the kernel's
# default, written explicitly so every router behaves the same.
UNREPLIED_UDP_TIMEOUT = 30
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


@dataclass(eq=False)
class Host:
    """A machine in the lab: a namespace with one interface, ``eth0``."""

    name: str
    namespace: Namespace
    address: str
    site: "Site | None" = None

    @property
    def netns(self) -> str:
        return self.namespace.name


@dataclass(eq=False)
class Beacon(Host):
    """The public server, reachable at two addresses (RFC 5780)."""

    alternate_address: str = ""

    @property
    def addresses(self) -> tuple[str, str]:
        return (self.address, self.alternate_address)


@dataclass(eq=False)
class Site:
    """A router doing NAT of one kind, and the hosts on its LAN."""

    name: str
    index: int
    nat: str
    router: Namespace
    public_address: str
    lan: str
    loss: float
    reorder: float
    mapping_timeout: int
    hosts: list[Host] = field(default_factory=list)
    generation: int = 0
    #: the carrier-grade NAT this site's router sits behind, if any, and its place there
    behind: "CGN | None" = None
    slot: int = 0


_open_labs: "weakref.WeakSet[Lab]" = weakref.WeakSet()
_handler_lock = threading.Lock()
_handler_installed = False


class Lab:
    """Namespaces, links and NAT rules for one run; removed by :meth:`close`.

    ``lab_id`` (default: random) keeps two labs on one machine apart; all
    namespaces are named ``pilotlab-<lab_id>-...``.
    """

    def __init__(self, lab_id: str | None = None):
        netns.check_prerequisites()
        self.lab_id = lab_id or secrets.token_hex(3)
        if not self.lab_id.isalnum():
            raise LabError(f"lab id {self.lab_id!r} must be letters and digits only")
        self.sites: list[Site] = []
        self.cgns: list[CGN] = []
        self._namespaces: list[Namespace] = []
        self._processes: list[subprocess.Popen] = []
        self._public_sites = 0
        self._closed = False
        netns.write_owner(self.lab_id)
        _open_labs.add(self)
        _install_exit_handlers()
        try:
            self.core = self._namespace("inet")
            self.core.sysctl(net__ipv4__ip_forward=1)
            self.beacon = self._build_beacon()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"<Lab {self.lab_id}: {len(self.sites)} sites>"

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def namespaces(self) -> list[str]:
        return [ns.name for ns in self._namespaces]

    def add_site(
        self,
        nat: str,
        hosts: int = 1,
        loss: float = 0.0,
        reorder: float = 0.0,
        mapping_timeout: int | None = None,
        behind: CGN | None = None,
        mtu: int | None = None,
    ) -> Site:
        """A new site behind a NAT of kind ``nat`` with ``hosts`` hosts.

        ``behind`` (from :meth:`add_cgn`) puts the site router's uplink on
        that carrier-grade NAT's inside instead of the core: two NAT layers.

        ``mtu`` sets the MTU of every link of the site (uplink, LAN, hosts).

        ``loss`` and ``reorder`` are per-packet fractions applied to every
        packet the site router forwards; ``mapping_timeout`` (seconds)
        shortens how long an idle NAT mapping lives.
        """
        self._check_open()
        ruleset.check_kind(nat)
        ruleset.loss_threshold(loss)
        if not 0.0 <= reorder <= 1.0:
            raise LabError(f"reorder {reorder!r} is not a fraction between 0 and 1")
        if not 1 <= hosts <= addressing.MAX_HOSTS_PER_SITE:
            raise LabError(f"a site holds 1 to {addressing.MAX_HOSTS_PER_SITE} hosts, not {hosts}")
        index = len(self.sites)
        if index >= addressing.MAX_SITES - len(self.cgns):
            raise LabError(f"a lab holds at most {addressing.MAX_SITES} sites and carrier-grade NATs together")
        if behind is not None:
            cgn.check_behind(behind, self.cgns, nat, reorder)
        if nat == "none":
            if self._public_sites >= addressing.MAX_PUBLIC_SITES:
                raise LabError(f"a lab holds at most {addressing.MAX_PUBLIC_SITES} sites without NAT")
            lan = addressing.public_lan(self._public_sites)
            self._public_sites += 1
        else:
            lan = addressing.private_lan(index)
        timeout = mapping_timeout or DEFAULT_MAPPING_TIMEOUT
        name = f"s{index}"
        router = self._namespace(f"{name}r")
        site = Site(
            name=name,
            index=index,
            nat=nat,
            router=router,
            public_address=addressing.public_address(index) if behind is None else addressing.cgn_home_address(behind.index, len(behind.sites)),
            lan=str(lan),
            loss=loss,
            reorder=reorder,
            mapping_timeout=timeout,
        )
        self.sites.append(site)
        if behind is None:
            self._build_uplink(site)
        else:
            cgn.attach_home(site, behind)
        self._build_lan(site, lan, hosts)
        router.sysctl(
            net__ipv4__ip_forward=1,
            net__netfilter__nf_conntrack_udp_timeout=UNREPLIED_UDP_TIMEOUT if mapping_timeout is None else timeout,
            net__netfilter__nf_conntrack_udp_timeout_stream=timeout,
        )
        router.nft(ruleset.site_ruleset(nat, site.public_address, loss, timeout))
        if mtu is not None:
            self._set_mtu(site, mtu)
        return site

    def _set_mtu(self, site: Site, mtu: int) -> None:
        """``mtu`` on every link of ``site``: its uplink (both ends), LAN bridge and hosts (path MTU tests)."""
        if not 576 <= mtu <= 9216 or site.reorder or site.behind is not None:
            raise LabError(f"mtu={mtu!r}: 576 to 9216, on a site with no reorder box and no carrier-grade NAT")
        links = [(self.core, site.name), (site.router, "wan")]
        links += [(site.router, f"port{i}") for i in range(len(site.hosts))] + [(site.router, "lan")]
        links += [(host.namespace, "eth0") for host in site.hosts]
        for ns, dev in links:
            ns.ip("link", "set", "dev", dev, "mtu", str(mtu))

    def add_cgn(self, nat: str, hairpin: bool = False, mapping_timeout: int | None = None) -> CGN:
        """A carrier-grade NAT of kind ``nat`` on the core; give it to
        ``add_site(..., behind=cgn)`` to put home routers behind it.

        ``hairpin=True`` (cone kinds only) lets two homes behind it reach each
        other at their public endpoints; without it such packets die at the CGN.
        """
        self._check_open()
        index = len(self.cgns)
        cgn.check_new(nat, hairpin, index, len(self.sites))
        name = f"c{index}"
        timeout = mapping_timeout or DEFAULT_MAPPING_TIMEOUT
        unreplied = UNREPLIED_UDP_TIMEOUT if mapping_timeout is None else timeout
        made = cgn.build(self.core, self._namespace(f"{name}r"), name, index, nat, hairpin, timeout, unreplied)
        self.cgns.append(made)
        return made

    def popen(self, host: "Host | Namespace", argv: list[str], **popen_kwargs) -> subprocess.Popen:
        """Start ``argv`` inside ``host``'s namespace; :meth:`close` stops it.

        ``host`` is a :class:`Host` (or the beacon), or a namespace such as
        ``site.router``.  Keywords are ``subprocess.Popen``'s.
        """
        self._check_open()
        popen_kwargs.setdefault("env", _child_env())
        proc = subprocess.Popen(_namespace_of(host).exec_argv(list(argv)), **popen_kwargs)
        self._processes.append(proc)
        return proc

    def run(self, host: "Host | Namespace", argv: list[str], **run_kwargs) -> subprocess.CompletedProcess:
        """``subprocess.run`` inside ``host``'s namespace (same keywords)."""
        self._check_open()
        run_kwargs.setdefault("env", _child_env())
        return subprocess.run(_namespace_of(host).exec_argv(list(argv)), **run_kwargs)

    def flush_nat(self, site: "Site | CGN") -> None:
        """Forget every NAT mapping of ``site`` or of a CGN (like a NAT reboot)."""
        self._check_open()
        for kind, name in ruleset.dynamic_sets(site.nat):
            site.router.run(["nft", "flush", kind, "ip", ruleset.TABLE, name])
        self._flush_conntrack(site)

    def change_public_address(self, site: Site) -> str:
        """Move ``site`` to its next public address and drop all mappings.

        Existing flows then reach the internet from the new address: what a
        home router does when its ISP hands it a new lease.
        """
        self._check_open()
        if site.nat == "none":
            raise LabError(f"site {site.name} has no NAT, so it has no public address of its own to change")
        old = site.public_address
        site.generation += 1
        if site.behind is None:
            new = addressing.public_address(site.index, site.generation)
            prefix = addressing.uplink(site.index).prefixlen
        else:
            new = addressing.cgn_home_address(site.behind.index, site.slot, site.generation)
            prefix = addressing.cgn_inside(site.behind.index).prefixlen
        site.router.ip("addr", "add", f"{new}/{prefix}", "dev", "wan")
        site.router.ip("addr", "del", f"{old}/{prefix}", "dev", "wan")
        site.public_address = new
        site.router.nft(ruleset.site_ruleset(site.nat, new, site.loss, site.mapping_timeout))
        self._flush_conntrack(site)
        return new

    def close(self) -> None:
        """Stop every process and delete every namespace; safe to repeat."""
        if self._closed:
            return
        self._closed = True
        errors = []
        for proc in self._processes:
            _stop(proc)
        for ns in reversed(self._namespaces):
            try:
                netns.delete_namespace(ns.name)
            except LabError as e:
                errors.append(str(e))
        netns.forget_owner(self.lab_id)
        _open_labs.discard(self)
        if errors:
            raise LabError("could not remove every lab namespace: " + "; ".join(errors))

    def _check_open(self) -> None:
        if self._closed:
            raise LabError(f"lab {self.lab_id} is closed")

    def _namespace(self, role: str) -> Namespace:
        ns = netns.create_namespace(f"{netns.NAME_PREFIX}{self.lab_id}-{role}")
        self._namespaces.append(ns)
        return ns

    def _build_beacon(self) -> Beacon:
        ns = self._namespace("beacon")
        prefix = addressing.BEACON_LINK.prefixlen
        netns.link(self.core, "beacon", ns, "eth0")
        self.core.ip("addr", "add", f"{addressing.BEACON_GATEWAY}/{prefix}", "dev", "beacon")
        for address in (addressing.BEACON_PRIMARY, addressing.BEACON_ALTERNATE):
            ns.ip("addr", "add", f"{address}/{prefix}", "dev", "eth0")
        ns.ip("route", "add", "default", "via", addressing.BEACON_GATEWAY)
        return Beacon(
            name="beacon",
            namespace=ns,
            address=addressing.BEACON_PRIMARY,
            alternate_address=addressing.BEACON_ALTERNATE,
        )

    def _build_uplink(self, site: Site) -> None:
        uplink = addressing.uplink(site.index)
        gateway = addressing.uplink_gateway(site.index)
        if site.reorder:
            self._build_reorder_box(site)
        else:
            netns.link(self.core, site.name, site.router, "wan")
        self.core.ip("addr", "add", f"{gateway}/{uplink.prefixlen}", "dev", site.name)
        # Keeps the connected route when change_public_address removes the
        # first address of the uplink subnet.
        site.router.sysctl(net__ipv4__conf__all__promote_secondaries=1, net__ipv4__conf__wan__promote_secondaries=1)
        site.router.ip("addr", "add", f"{site.public_address}/{uplink.prefixlen}", "dev", "wan")
        site.router.ip("route", "add", "default", "via", gateway)
        if site.nat == "none":
            self.core.ip("route", "add", site.lan, "via", site.public_address)

    def _build_reorder_box(self, site: Site) -> None:
        """Join ``site``'s router to the core through a reorder box
        (see :mod:`pilotproto.lab.reorder` for why it is not netem)."""
        box = self._namespace(f"{site.name}x")
        netns.link(self.core, site.name, box, "core")
        netns.link(box, "site", site.router, "wan")
        for dev in ("core", "site"):
            box.ip("link", "set", "dev", dev, "promisc", "on")
        # The box copies whole frames: no GSO super-frames larger than the MTU.
        for ns, dev in ((self.core, site.name), (site.router, "wan")):
            ns.ip("link", "set", "dev", dev, "gso_max_segs", "1")
        argv = [sys.executable, "-m", "pilotproto.lab.reorder", "--fraction", str(site.reorder), "core", "site"]
        proc = self.popen(box, argv, stdout=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise LabError(f"the reorder box for site {site.name} did not start (it said {line!r})")

    def _build_lan(self, site: Site, lan, hosts: int) -> None:
        site.router.ip("link", "add", "name", "lan", "type", "bridge")
        site.router.ip("addr", "add", f"{addressing.lan_gateway(lan)}/{lan.prefixlen}", "dev", "lan")
        site.router.ip("link", "set", "dev", "lan", "up")
        for i in range(hosts):
            ns = self._namespace(f"{site.name}h{i}")
            netns.link(site.router, f"port{i}", ns, "eth0")
            site.router.ip("link", "set", "dev", f"port{i}", "master", "lan")
            address = addressing.lan_host(lan, i)
            ns.ip("addr", "add", f"{address}/{lan.prefixlen}", "dev", "eth0")
            ns.ip("route", "add", "default", "via", addressing.lan_gateway(lan))
            site.hosts.append(Host(name=f"{site.name}h{i}", namespace=ns, address=address, site=site))

    def _flush_conntrack(self, site: Site) -> None:
        try:
            site.router.run(["conntrack", "-F"])
        except LabError as e:
            if "not installed" in str(e):
                raise LabError(
                    "flushing NAT state needs the 'conntrack' command.",
                    hint="Install it with: apt-get install -y conntrack",
                ) from None
            raise


def _namespace_of(target: "Host | Namespace") -> Namespace:
    if isinstance(target, Namespace):
        return target
    if isinstance(target, Host):
        return target.namespace
    raise LabError(f"{target!r} is not a lab host or namespace")


def _child_env() -> dict[str, str]:
    """The caller's environment, with this package importable (-m works)."""
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if _PACKAGE_PARENT not in paths:
        env["PYTHONPATH"] = os.pathsep.join([_PACKAGE_PARENT, *paths])
    return env


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def close_all_labs() -> None:
    """Close every lab this process still has open (exit and SIGTERM path)."""
    for lab in list(_open_labs):
        try:
            lab.close()
        except LabError as e:
            print(f"pilotproto.lab: {e}", file=sys.stderr)


def _install_exit_handlers() -> None:
    global _handler_installed
    with _handler_lock:
        if _handler_installed:
            return
        _handler_installed = True
        atexit.register(close_all_labs)
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum, frame):
            close_all_labs()
            if callable(previous):
                previous(signum, frame)
            else:
                # Die of SIGTERM as the process would have without us.
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)

        signal.signal(signal.SIGTERM, on_sigterm)
