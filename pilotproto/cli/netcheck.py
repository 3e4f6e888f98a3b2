"""
``pilotctl netcheck``: what the network between this host and its beacon(s)
allows, without a daemon (Tailscale users reach for ``tailscale netcheck``
first; this is that).

For each beacon, on a fresh UDP socket of its own:

1. resolve its name;
2. UDP: three STUN Binding requests, one after the other: reachable or not,
   the round-trip time, the reflexive (public) address;
3. NAT behaviour (RFC 5780): the node's own prober
   (:class:`~pilotproto.session.natprobe.NatProber`), so netcheck and the
   daemon's ``nat_type`` can never disagree about what the tests mean;
4. mapping stability: one more Binding request after the tests must see the
   same mapping as the first;
5. hairpinning: a datagram to our own reflexive address must come back to
   the socket (two peers behind this NAT then reach each other directly);
6. port mapping: whether the router on the way to the first beacon grants
   a UDP port by PCP, NAT-PMP or UPnP IGD (:mod:`pilotproto.node.portmap`),
   tried with a short mapping that is deleted at once;
7. TCP/TLS: the beacon's TLS relay (``--beacon-tls``, by default the beacon
   host on port 443), checked exactly as the node checks it
   (:class:`~pilotproto.rendezvous.tls.VerifiedTLSEndpoint`), with the
   connect-and-handshake time.

TLS runs alongside the UDP tests.  The result says what it means for peers,
using the lab's table of which NAT pairs get a direct path
(:func:`pilotproto.lab.matrix.expected_path`).
"""

from __future__ import annotations

import os
import socket

from twisted.internet import defer
from twisted.internet.endpoints import SSL4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from ..errors import PilotError, Unavailable
from ..interfaces import IDatagramRouter
from ..lab.matrix import expected_path
from ..lab.ruleset import NAT_KINDS
from ..node.portmap import check_port_mapping
from ..node.config import DEFAULT_BEACON_TLS_PORT, parse_fingerprint, parse_hostport
from ..node.udp import UDPService
from ..rendezvous.link import resolve_endpoint
from ..rendezvous.tls import VerifiedTLSEndpoint, client_tls_options, describe_failure
from ..session.natprobe import NatProber
from ..wire import Endpoint
from ..wire import stun

#: Binding requests for the round-trip time, each tried this often, this long apart
RTT_SAMPLES = 3
TRIES = 3
TRY_INTERVAL = 0.5
#: how long a hairpinned datagram may take to come back
HAIRPIN_WAIT = 1.0
#: a hairpin probe starts with these bytes (a STUN message never does: its first two bits are 0)
HAIRPIN_MAGIC = b"\xffN"
TLS_TIMEOUT = 5.0

#: what each NAT type means, in RFC 4787 / 5780 words: (mapping, filtering)
BEHAVIOUR = {
    "none": ("no NAT (the beacon sees this host's own address)", "none"),
    "full_cone": ("endpoint-independent", "endpoint-independent"),
    "restricted_cone": ("endpoint-independent", "address-dependent"),
    "port_restricted_cone": ("endpoint-independent", "address-and-port-dependent"),
    "symmetric": ("address-dependent (a new public port per destination)", "unknown"),
    "udp_blocked": ("-", "-"),
    "unknown": ("unknown", "unknown"),
}


def beacon_targets(config, beacons: list[str], beacon_tls: str | None) -> list[dict]:
    """What to check: ``--beacon`` (repeatable), else the saved beacon, each with its TLS relay.

    Each target is ``{"beacon": (host, port), "tls": (host, port), "tls_default": bool}``;
    ``tls_default`` says the relay address is only the default (the beacon
    host, port 443), which the report says when it fails."""
    names = beacons or config.beacons
    targets = []
    for i, name in enumerate(names):
        host, port = parse_hostport(name)
        # The saved beacons each with its own saved relay (by position, issue 14).
        saved = config.beacon_tls[i] if not beacons and i < len(config.beacon_tls) else None
        given = beacon_tls if beacon_tls is not None else saved
        tls = parse_hostport(given, DEFAULT_BEACON_TLS_PORT) if given is not None else (host, DEFAULT_BEACON_TLS_PORT)
        targets.append({"beacon": (host, port), "tls": tls, "tls_default": given is None})
    return targets


# -- one beacon -----------------------------------------------------------------------


@implementer(IDatagramRouter)
class _Datagrams:
    """Where the check's socket delivers: STUN answers to whoever waits for them."""

    def __init__(self):
        #: transaction id or hairpin nonce -> Deferred firing with (data, source endpoint)
        self.waiting: dict[bytes, defer.Deferred] = {}
        self.prober: NatProber | None = None

    def datagram_received(self, data: bytes, source) -> None:
        endpoint = source.endpoint
        if self.prober is not None and self.prober.datagram_received(data, endpoint):
            return
        # A STUN answer is found by its transaction id, a hairpin probe by itself.
        key = data if data.startswith(HAIRPIN_MAGIC) else data[8:20]
        waiter = self.waiting.pop(key, None)
        if waiter is not None:
            waiter.callback((data, endpoint))


class BeaconCheck:
    """The checks against one beacon at ``beacon`` (host, port), TLS relay at ``tls``."""

    def __init__(self, reactor, beacon, tls, ca_file=None, fingerprint: bytes | None = None, random_bytes=os.urandom):
        self._reactor = reactor
        self._beacon = beacon
        self._tls = tls
        self._ca_file = ca_file
        self._fingerprint = fingerprint
        self._random_bytes = random_bytes
        self._datagrams = _Datagrams()
        self._udp = UDPService(reactor, 0)
        self._udp.wire(self._datagrams)
        self._server: Endpoint | None = None

    @defer.inlineCallbacks
    def run(self):
        host, port = self._beacon
        result = {"beacon": f"{host}:{port}", "address": None, "udp": {"reachable": False}, "tls": None, "nat": None}
        tls = self._check_tls() if self._tls is not None else defer.succeed(None)
        try:
            self._server = yield self._resolve(host, port)
        except PilotError as e:
            result["error"] = _error(e)
            result["udp"]["error"] = _error(e)
            result["tls"] = yield tls
            return result
        result["address"] = str(self._server)
        self._udp.startService()
        try:
            result["udp"], mapped = yield self._check_udp()
            if mapped is not None:
                result["nat"] = yield self._check_nat(mapped)
        finally:
            yield self._udp.stopService()
        result["tls"] = yield tls
        return result

    def _resolve(self, host: str, port: int) -> defer.Deferred:
        def failed(failure):
            raise Unavailable(f"cannot resolve the beacon's name {host}: {failure.getErrorMessage()}", hint="Check the name, and this host's DNS.")

        return resolve_endpoint(self._reactor, host, port).addErrback(failed)

    # -- UDP ---------------------------------------------------------------------------

    @defer.inlineCallbacks
    def _ask(self, destination: Endpoint):
        """A Binding request to ``destination``, retried: (BindingResult, seconds) or None."""
        transaction_id = self._random_bytes(12)
        datagram = stun.binding_request(transaction_id)
        for _ in range(TRIES):
            waiter = defer.Deferred()
            self._datagrams.waiting[transaction_id] = waiter
            sent = self._reactor.seconds()
            self._udp.send(datagram, destination)
            answer = yield _within(self._reactor, waiter, TRY_INTERVAL)
            if answer is not None:
                try:
                    return stun.parse_binding_response(answer[0]), self._reactor.seconds() - sent
                except PilotError:
                    return None
        self._datagrams.waiting.pop(transaction_id, None)
        return None

    @defer.inlineCallbacks
    def _check_udp(self):
        rtts, mapped, other = [], None, None
        for _ in range(RTT_SAMPLES):
            answer = yield self._ask(self._server)
            if answer is None:
                continue
            found, seconds = answer
            rtts.append(seconds * 1000)
            mapped, other = mapped or found.xor_mapped, other or found.other_address
        if not rtts:
            error = Unavailable(f"no STUN answer from {self._server} over UDP after {RTT_SAMPLES * TRIES} tries")
            return {"reachable": False, "error": _error(error)}, None
        return {
            "reachable": True,
            "rtt_ms": round(min(rtts), 2),
            "rtt_avg_ms": round(sum(rtts) / len(rtts), 2),
            "answered": f"{len(rtts)}/{RTT_SAMPLES}",
            "reflexive_endpoint": str(mapped),
            "alternate": str(other) if other else None,
        }, mapped

    def _source_endpoint(self) -> Endpoint | None:
        """The address our datagrams to the beacon leave from (the socket is on the wildcard)."""
        local = self._udp.local_endpoint
        if local is None or self._server is None:
            return None
        try:
            with socket.socket(socket.AF_INET6 if ":" in self._server.host else socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.connect(self._server.as_tuple())
                return Endpoint(probe.getsockname()[0], local.port)
        except OSError:
            return None

    @defer.inlineCallbacks
    def _check_nat(self, first: Endpoint):
        finished = defer.Deferred()
        # on_result must not call back into the prober: hand the result over later.
        prober = NatProber(
            self._reactor, self._udp, self._source_endpoint,
            on_result=lambda nat_type: self._reactor.callLater(0, finished.callback, nat_type),
            random_bytes=self._random_bytes,
        )  # fmt: skip
        self._datagrams.prober = prober
        prober.start(self._server)
        nat_type = yield finished
        prober.stop()
        self._datagrams.prober = None
        mapping, filtering = BEHAVIOUR.get(nat_type, BEHAVIOUR["unknown"])
        if nat_type == "symmetric":
            # The type names the mapping; the filtering tests ran before it.
            filtering = prober.filtering
        source = self._source_endpoint()
        again = yield self._ask(self._server)
        stable = None if again is None else again[0].xor_mapped == first
        nat = {
            "type": nat_type,
            "mapping": mapping,
            "filtering": filtering,
            "mapping_stable": stable,
            "port_preserved": None if source is None or nat_type == "none" else first.port == source.port,
            "hairpinning": None,
            "local_endpoint": str(source) if source else None,
        }
        if nat_type == "unknown" and prober.other is None:
            nat["why_unknown"] = (
                "the beacon announces no second address and port (OTHER-ADDRESS), "
                "so mapping and filtering cannot be told apart; start it with --alt-address and --alt-port"
            )
        if nat_type not in ("none", "udp_blocked"):
            nat["hairpinning"] = yield self._check_hairpin(first)
        return nat

    @defer.inlineCallbacks
    def _check_hairpin(self, mapped: Endpoint):
        nonce = HAIRPIN_MAGIC + self._random_bytes(14)
        waiter = defer.Deferred()
        self._datagrams.waiting[nonce] = waiter
        self._udp.send(nonce, mapped)
        answer = yield _within(self._reactor, waiter, HAIRPIN_WAIT)
        self._datagrams.waiting.pop(nonce, None)
        return answer is not None

    # -- TCP/TLS -----------------------------------------------------------------------

    def _check_tls(self) -> defer.Deferred:
        host, port = self._tls
        probe = _TLSAttempt(f"{host}:{port}")
        started = self._reactor.seconds()
        try:
            options = client_tls_options(host, self._ca_file, self._fingerprint)
        except PilotError as e:
            return defer.succeed({"endpoint": probe.where, "reachable": False, "error": _error(e)})
        endpoint = SSL4ClientEndpoint(self._reactor, host, port, options, timeout=TLS_TIMEOUT)
        connecting = VerifiedTLSEndpoint(self._reactor, endpoint, probe, self._fingerprint, TLS_TIMEOUT)

        def connected(protocol):
            protocol.transport.loseConnection()
            ms = round((self._reactor.seconds() - started) * 1000, 2)
            return {"endpoint": probe.where, "reachable": True, "connect_ms": ms, "verified": True}

        def failed(failure):
            return {"endpoint": probe.where, "reachable": False, "error": _error(probe.error or describe_failure(failure, probe.where))}

        return connecting.connect(Factory.forProtocol(Protocol)).addCallbacks(connected, failed)


class _TLSAttempt:
    """What :class:`VerifiedTLSEndpoint` reports to (the node's TLS link, for one attempt)."""

    def __init__(self, where: str):
        self.where = where
        self.open_protocols: set = set()
        self.error: PilotError | None = None

    def attempt_failed(self, failure, timeout: float):
        if failure.check(defer.TimeoutError, defer.CancelledError):
            self.error = Unavailable(f"the beacon at {self.where} did not finish a TLS connection within {timeout:g} s")
        else:
            self.error = describe_failure(failure, self.where)
        return failure


def _within(clock, waiter: defer.Deferred, seconds: float) -> defer.Deferred:
    """``waiter``'s result, or None after ``seconds``."""

    def none_in_time(failure):
        failure.trap(defer.TimeoutError, defer.CancelledError)
        return None

    return waiter.addTimeout(seconds, clock).addErrback(none_in_time)


def _error(error: PilotError) -> dict:
    return {"code": error.code, "message": error.message, "hint": error.hint}


# -- the whole check ---------------------------------------------------------------------


@defer.inlineCallbacks
def netcheck(reactor, targets, ca_file=None, fingerprint: str | None = None):
    """Check every target (see :func:`beacon_targets`) in turn; the result dict ``pilotctl netcheck`` prints."""
    pinned = parse_fingerprint(fingerprint) if fingerprint else None
    # Alongside the beacon checks: asking a router that speaks no mapping
    # protocol takes a few seconds of silence.
    mapping = _port_mapping(reactor, targets[0]["beacon"]) if targets else defer.succeed(None)
    beacons = []
    for target in targets:
        result = yield BeaconCheck(reactor, target["beacon"], target["tls"], ca_file, pinned).run()
        if result["tls"] is not None and not result["tls"]["reachable"] and target["tls_default"]:
            result["tls"]["error"]["hint"] = (
                f"{result['tls']['endpoint']} is only the default (the beacon host, port {DEFAULT_BEACON_TLS_PORT}); "
                "pass --beacon-tls HOST:PORT if the beacon's TLS relay is elsewhere, or --no-tls if it has none."
            )
        beacons.append(result)
    summary = summarise(beacons)
    summary["port_mapping"] = yield mapping
    return summary


def _port_mapping(reactor, beacon: tuple[str, int]) -> defer.Deferred:
    """The port-mapping check towards the first beacon; None if its name does not resolve."""
    d = resolve_endpoint(reactor, *beacon)
    d.addCallbacks(lambda endpoint: check_port_mapping(reactor, endpoint.host), lambda failure: None)
    return d


def summarise(beacons: list[dict]) -> dict:
    """What the per-beacon results mean: the best NAT reading, and what peers can expect."""
    udp = any(b["udp"]["reachable"] for b in beacons)
    tls = any((b.get("tls") or {}).get("reachable") for b in beacons)
    nat = next((b["nat"] for b in beacons if b.get("nat")), None)
    nat_type = nat["type"] if nat else ("udp_blocked" if not udp else "unknown")
    return {"beacons": beacons, "udp": udp, "tls": tls, "nat_type": nat_type, "peers": meaning(nat_type, udp, tls)}


def meaning(nat_type: str, udp: bool, tls: bool) -> dict:
    """Which path peers behind each kind of NAT will get with us, and a one-line summary."""
    if not udp:
        summary = (
            "relay over TCP/TLS for every peer (no UDP to the beacon; slower, but it works)"
            if tls else "no path to any peer: the beacon answers neither UDP nor TLS"
        )
        return {"summary": summary, "by_peer_nat": {}}
    ours = nat_type.replace("_", "-")
    if ours not in NAT_KINDS:
        return {
            "summary": "direct paths are tried with every peer and the relay is used where they fail (NAT behaviour unknown)",
            "by_peer_nat": {},
        }
    by_peer = {kind: expected_path(ours, kind) for kind in NAT_KINDS}
    relayed = [kind for kind, path in by_peer.items() if path != "direct" and kind != "udp-blocked"]
    if not relayed:
        summary = "direct to every peer that has UDP (hole punching works from here)"
    elif len(relayed) == 1:
        summary = f"direct to most peers; relay for peers behind {relayed[0]} NATs"
    else:
        summary = f"direct to peers with no NAT or a lenient one; relay for peers behind {' or '.join(relayed)} NATs"
    return {"summary": summary, "by_peer_nat": by_peer}


def run_on_reactor(work):
    """Run ``work(reactor)`` (a Deferred) on the global reactor and return its result.

    pilotctl is one process for one command, so the reactor runs once;
    Ctrl-C stops it, which is a KeyboardInterrupt here."""
    from twisted.internet import reactor

    outcome = []

    def begin():
        d = defer.maybeDeferred(work, reactor)
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(begin)
    reactor.run()
    if not outcome:
        raise KeyboardInterrupt
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]
