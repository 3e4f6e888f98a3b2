"""
Port mapping: asking the home router to forward a public UDP port to the
node, so peers behind any NAT can reach it directly.  One Automat machine,
started by NAT discovery (:mod:`pilotproto.node.nat`) once the beacon's
address is known, stopped with it.

::

    idle --start--> mapping --granted--> mapped --renew_due--> renewing
                      |  ^                 ^                      |
                      |  |                 '------granted---------'
                  failed retry_due                                |
                      v  |                                      failed
                    unmapped <--------------- (start over) -------'
    any --stop--> stopped (a held mapping is deleted on the way out)

``mapping`` tries PCP (RFC 6887), then NAT-PMP (RFC 6886), then UPnP IGD,
at the default gateway, and keeps the first that grants a mapping of the
node's UDP port.  ``renewing`` asks the same protocol again at half the
lifetime (a router that rebooted and forgot us answers a renewal like a new
request).  A network with no mapping protocol is asked again every
``RETRY_INTERVAL`` seconds, not more often: most routers say nothing at all.

The mapping becomes a candidate (:meth:`PortMapper.candidate`) only when
its external address is the one the beacon sees us from: behind a second
NAT (a carrier-grade NAT) a mapping on the home router is not reachable
from the internet, and advertising it would only waste peers' probes.
"""

from __future__ import annotations

import ipaddress
import socket

from automat import MethodicalMachine
from twisted.internet import defer
from twisted.logger import Logger

from ..wire import Endpoint
from ..wire import portmap as pm
from .portmap_pcp import NatPmpClient, PcpClient
from .portmap_upnp import UpnpClient

#: what we ask for; routers may grant less
LIFETIME = 7200
RETRY_INTERVAL = 300.0
#: a renewal that fails is retried this soon, once, before starting over
MIN_RENEW = 30.0
#: how long stopping waits for the router to confirm a delete
RELEASE_WAIT = 2.0


RTF_GATEWAY = 0x2


def gateway_towards(host: str, route_table: str = "/proc/net/route") -> str | None:
    """The IPv4 router our packets to ``host`` leave through, from the kernel's routing table.

    None when they cross no router: ``host`` is on this machine or on our
    own link, so no NAT of ours stands between us and it.  The NAT worth
    asking is the one on the way to the beacon; a node whose beacon is
    local has nobody to ask (and sends nothing to any router)."""
    try:
        target = ipaddress.IPv4Address(host)
    except ValueError:
        return None
    if target.is_loopback or target.is_unspecified or _is_own_address(str(target)):
        return None
    try:
        with open(route_table) as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return None
    best = None
    for line in lines:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            destination, gateway, flags, mask = (int(fields[i], 16) for i in (1, 2, 3, 7))
        except ValueError:
            continue
        network = int.from_bytes(destination.to_bytes(4, "little"), "big")
        netmask = int.from_bytes(mask.to_bytes(4, "little"), "big")
        if int(target) & netmask != network:
            continue
        if best is None or netmask > best[0]:
            best = (netmask, gateway if flags & RTF_GATEWAY else None)
    if best is None or best[1] is None:
        return None
    return socket.inet_ntoa(best[1].to_bytes(4, "little"))


def _is_own_address(host: str) -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((host, pm.PORT))
            return probe.getsockname()[0] == host
    except OSError:
        return False


def source_address(gateway: str) -> str | None:
    """Our address on the gateway's network (a connected UDP socket sends nothing)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((gateway, pm.PORT))
            return probe.getsockname()[0]
    except OSError:
        return None


def standard_clients(reactor, gateway: str, client_host: str) -> list:
    return [
        PcpClient(reactor, gateway, client_host),
        NatPmpClient(reactor, gateway),
        UpnpClient(reactor, gateway, client_host),
    ]


def _first(results):
    """What ``stop`` returns: the Deferred of a delete in flight, or None."""
    return next(iter(results), None)


class PortMapper:
    """Holds one mapping of ``internal_port`` on the gateway between ``start`` and ``stop``.

    ``gateway()`` names the router to ask (None: there is none to ask)."""

    _machine = MethodicalMachine()
    log = Logger()

    def __init__(self, reactor, internal_port, *, gateway, client_host=source_address, clients=standard_clients):
        self._reactor = reactor
        #: the node's UDP port; a callable, since port 0 is chosen when it binds
        self._internal_port = internal_port if callable(internal_port) else (lambda: internal_port)
        self._find_gateway = gateway
        self._find_client_host = client_host
        self._make_clients = clients
        self._timer = None
        self._attempt = None
        self._client = None
        self.mapping: pm.Mapping | None = None
        self.gateway: str | None = None
        self.state = "idle"
        self.last_error: str | None = None
        self.tried: list[str] = []

    # -- public -------------------------------------------------------------------

    def candidate(self, public: Endpoint | None) -> Endpoint | None:
        """The mapped endpoint, if it is on the address the internet sees us from."""
        mapping = self.mapping
        if mapping is None or mapping.external_host is None:
            return None
        if public is not None and public.host != mapping.external_host:
            return None
        return Endpoint(mapping.external_host, mapping.external_port)

    def status(self) -> dict:
        mapping = self.mapping
        return {
            "state": self.state,
            "gateway": self.gateway,
            "protocol": mapping.protocol if mapping else None,
            "external": str(Endpoint(mapping.external_host, mapping.external_port)) if mapping and mapping.external_host else None,
            "lifetime": mapping.lifetime if mapping else None,
            "tried": list(self.tried),
            "last_error": self.last_error,
        }

    # -- states ---------------------------------------------------------------------

    @_machine.state(initial=True)
    def idle(self):
        "not started"

    @_machine.state()
    def mapping_(self):
        "asking the gateway, protocol by protocol"

    @_machine.state()
    def mapped(self):
        "holding a mapping"

    @_machine.state()
    def renewing(self):
        "asking the protocol that worked to extend the mapping"

    @_machine.state()
    def unmapped(self):
        "no protocol worked; asking again later"

    @_machine.state()
    def stopped(self):
        "stopped for good"

    # -- inputs -----------------------------------------------------------------------

    @_machine.input()
    def start(self):
        "the node's UDP port is open"

    @_machine.input()
    def stop(self):
        "the node is stopping"

    @_machine.input()
    def granted(self, mapping):
        "a protocol granted a mapping"

    @_machine.input()
    def failed(self, reason):
        "no protocol granted one (or the renewal failed)"

    @_machine.input()
    def renew_due(self):
        "half the lifetime has passed"

    @_machine.input()
    def retry_due(self):
        "time to look for a mapping protocol again"

    # -- outputs -------------------------------------------------------------------------

    def _arm(self, delay, callback):
        self._cancel_timer()
        self._timer = self._reactor.callLater(delay, callback)

    def _cancel_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _set(self, state):
        self.state = state

    @_machine.output()
    def try_protocols(self):
        self._set("mapping")
        self.tried = []
        self.gateway = self._find_gateway()
        if self.gateway is None:
            self._reactor.callLater(0, self.failed, "no router between this node and its beacon")
            return
        client_host = self._find_client_host(self.gateway)
        if client_host is None:
            self._reactor.callLater(0, self.failed, f"no route to the gateway {self.gateway}")
            return
        clients = self._make_clients(self._reactor, self.gateway, client_host)
        self._attempt = self._first_grant(clients)

    @defer.inlineCallbacks
    def _first_grant(self, clients):
        reasons = []
        for client in clients:
            self.tried.append(client.protocol)
            try:
                mapping = yield client.request(self._internal_port(), LIFETIME)
            except Exception as e:  # every protocol's failure is "try the next"
                reasons.append(f"{client.protocol}: {getattr(e, 'message', None) or e}")
                continue
            self._client = client
            self.granted(mapping)
            return
        self.failed("; ".join(reasons) or "no mapping protocol to try")

    @_machine.output()
    def ask_renewal(self):
        self._set("renewing")
        d = self._client.request(self._internal_port(), LIFETIME, self.mapping.external_port)
        d.addCallbacks(self.granted, lambda f: self.failed(f"renewal: {f.getErrorMessage()}"))

    @_machine.output()
    def keep(self, mapping):
        changed = self.mapping is None or (mapping.external_host, mapping.external_port) != (self.mapping.external_host, self.mapping.external_port)
        self.mapping = mapping
        self.last_error = None
        self._set("mapped")
        if changed:
            self.log.info("{p} mapped UDP {ext} to this node's port {port} for {t} s", p=mapping.protocol,
                          ext=f"{mapping.external_host}:{mapping.external_port}", port=mapping.internal_port, t=mapping.lifetime)
        self._arm(max(MIN_RENEW, mapping.lifetime / 2), self.renew_due)

    @_machine.output()
    def note_failure(self, reason):
        self.last_error = reason
        self.mapping = None
        self._client = None
        self._set("unmapped")
        self.log.debug("no port mapping from the gateway: {reason}", reason=reason)
        self._arm(RETRY_INTERVAL, self.retry_due)

    @_machine.output()
    def release_held(self):
        self._cancel_timer()
        self._set("stopped")
        mapping, client = self.mapping, self._client
        self.mapping = None
        if mapping is None or client is None:
            return None
        d = client.release(mapping)
        d.addErrback(lambda f: self.log.debug("deleting the port mapping failed: {e}", e=f.getErrorMessage()))
        timeout = self._reactor.callLater(RELEASE_WAIT, d.cancel)
        d.addBoth(lambda _: timeout.cancel() if timeout.active() else None)
        return d

    @_machine.output()
    def release_late(self, mapping):
        # Granted after we stopped: the router holds a mapping nobody uses.
        if self._client is not None:
            self._client.release(mapping).addErrback(lambda f: None)

    @_machine.output()
    def halt(self):
        self._cancel_timer()
        self._set("stopped")

    # -- transitions -------------------------------------------------------------------------

    idle.upon(start, enter=mapping_, outputs=[try_protocols])
    idle.upon(stop, enter=stopped, outputs=[halt], collector=_first)

    mapping_.upon(granted, enter=mapped, outputs=[keep])
    mapping_.upon(failed, enter=unmapped, outputs=[note_failure])
    mapping_.upon(stop, enter=stopped, outputs=[halt], collector=_first)
    mapping_.upon(start, enter=mapping_, outputs=[])

    mapped.upon(renew_due, enter=renewing, outputs=[ask_renewal])
    mapped.upon(stop, enter=stopped, outputs=[release_held], collector=_first)
    mapped.upon(start, enter=mapped, outputs=[])

    renewing.upon(granted, enter=mapped, outputs=[keep])
    renewing.upon(failed, enter=unmapped, outputs=[note_failure])
    renewing.upon(stop, enter=stopped, outputs=[release_held], collector=_first)
    renewing.upon(start, enter=renewing, outputs=[])

    unmapped.upon(retry_due, enter=mapping_, outputs=[try_protocols])
    unmapped.upon(stop, enter=stopped, outputs=[halt], collector=_first)
    unmapped.upon(start, enter=unmapped, outputs=[])

    stopped.upon(granted, enter=stopped, outputs=[release_late])
    stopped.upon(stop, enter=stopped, outputs=[], collector=_first)
    for _ignored in (start, failed, renew_due, retry_due):
        stopped.upon(_ignored, enter=stopped, outputs=[])

    # Late or early inputs change nothing: timers from an earlier state, a
    # renewal answer that raced a retry.
    for _ignored in (granted, failed, renew_due, retry_due):
        idle.upon(_ignored, enter=idle, outputs=[])
    for _ignored in (renew_due, retry_due):
        mapping_.upon(_ignored, enter=mapping_, outputs=[])
        renewing.upon(_ignored, enter=renewing, outputs=[])
    mapped.upon(granted, enter=mapped, outputs=[keep])
    mapped.upon(failed, enter=mapped, outputs=[])
    mapped.upon(retry_due, enter=mapped, outputs=[])
    for _ignored in (granted, failed, renew_due):
        unmapped.upon(_ignored, enter=unmapped, outputs=[])
    del _ignored


@defer.inlineCallbacks
def check_port_mapping(reactor, beacon_host: str, clients=standard_clients):
    """Which protocol the router on the way to ``beacon_host`` maps ports with (``pilotctl netcheck``).

    Each protocol is asked for a short mapping of a fresh UDP port, which is
    deleted at once; the answer names the first that granted one."""
    gateway = gateway_towards(beacon_host)
    if gateway is None:
        return {"gateway": None, "protocol": None, "tried": [], "error": "no router between this host and the beacon"}
    client_host = source_address(gateway)
    if client_host is None:
        return {"gateway": gateway, "protocol": None, "tried": [], "error": f"no route to the gateway {gateway}"}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        # Holding the port keeps another program from being handed it while it is mapped.
        holder.bind((client_host, 0))
        internal_port = holder.getsockname()[1]
        tried, reasons = [], []
        for client in clients(reactor, gateway, client_host):
            tried.append(client.protocol)
            try:
                mapping = yield client.request(internal_port, 60)
            except Exception as e:  # every protocol's failure is "try the next"
                reasons.append(f"{client.protocol}: {getattr(e, 'message', None) or e}")
                continue
            try:
                yield client.release(mapping)
            except Exception as e:  # the 60 s lease ends it anyway
                reasons.append(f"{client.protocol}: delete failed: {e}")
            external = f"{mapping.external_host}:{mapping.external_port}" if mapping.external_host else None
            return {"gateway": gateway, "protocol": client.protocol, "external": external, "tried": tried, "error": None}
    return {"gateway": gateway, "protocol": None, "tried": tried, "error": "; ".join(reasons)}
