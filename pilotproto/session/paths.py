"""
Where one peer's packets go: the beacon's relay, or a direct UDP path once
one is proven to work both ways.  One Automat machine per peer.

::

    relay --punch--> punching --burst_over--> relay
      ^  \\             |                      |
      |   '----- ack ---+-------> direct <-----' (ack)
      |                           |    ^
      '-------- silence ----------'    | ack / rx (refresh, roam)

A session always starts on the relay, so the first byte never waits for a
hole punch.  ``punch`` (both sides exchanged candidates through the session,
see :mod:`pilotproto.session.sessions`) starts a burst: first a *priming*
probe with a low TTL to every candidate — it opens our own NAT's mapping
but dies before it reaches the peer's NAT, so the peer's first probes find
a mapping instead of making conntrack pick another port — then full probes
every ``burst_interval`` for ``burst_count`` rounds.  A ``PathAck`` that
arrives *directly* proves the path both ways: traffic moves there at once.
Every direct packet that authenticates keeps the path alive.  If the path
goes quiet — something sent on it has had no direct answer for
``silence_after`` seconds, or nothing at all came for ``stale_after`` — the
machine falls back to the relay and retries direct later with backoff.  A
packet authenticated from a new endpoint (the peer's NAT rebound, or it
moved) is probed at once and becomes the path when acked, so the session
follows the peer.

Sources travel as opaque bytes (the tunnel layer binds cookies to them):
``b"D" + endpoint`` for a direct packet, ``b"R" + address`` for one that
came through the relay.
"""

from __future__ import annotations

import ipaddress

import attrs
from automat import MethodicalMachine
from twisted.logger import Logger

from ..wire import Endpoint, Reader, Writer

RELAY = "relay"
FILTERING_NATS = {"restricted_cone", "port_restricted_cone", "symmetric", "unknown", "udp_blocked"}


def direct_source(endpoint: Endpoint) -> bytes:
    return b"D" + Writer().endpoint(endpoint).bytes()


def relay_source(address: bytes) -> bytes:
    return b"R" + address


def source_endpoint(source: bytes) -> Endpoint | None:
    """The endpoint a direct source names; None for the relay."""
    if source[:1] != b"D":
        return None
    return Reader(source[1:]).endpoint()


@attrs.frozen
class PathTimers:
    burst_interval: float = 0.1
    burst_count: int = 30
    #: probes to a direct path in use double as NAT keepalives (< 25 s)
    keepalive_interval: float = 10.0
    #: a direct path is dead when nothing came back for this long and at
    #: least ``check_probes`` probes, ``check_interval`` apart, went unanswered
    silence_after: float = 0.9
    check_interval: float = 0.3
    check_probes: int = 3
    stale_after: float = 25.0
    retry_first: float = 5.0
    retry_max: float = 60.0
    prime_ttl: int = 2


class PeerPath:
    """
    The path to one peer.  ``send(packet)`` is what its tunnel calls.

    Collaborators: ``send_datagram(packet, endpoint, ttl=None)`` and
    ``send_relay(address, packet)`` move bytes; ``send_probe(endpoint,
    ttl=None)`` seals and sends one PathProbe (the sessions layer owns the
    keys); ``request_punch()`` asks for a new coordinated punch;
    ``relay_kind()`` says which relay transport the node uses now.
    """

    _machine = MethodicalMachine()
    log = Logger()

    def __init__(
        self,
        clock,
        address: bytes,
        send_datagram,
        send_relay,
        send_probe=lambda endpoint, ttl=None: None,
        request_punch=lambda: None,
        relay_kind=lambda: RELAY,
        allow_direct=True,
        timers=PathTimers(),
        label="peer",
    ):
        self._clock = clock
        self.address = address
        self._send_datagram = send_datagram
        self._send_relay = send_relay
        self._send_probe = send_probe
        self._request_punch = request_punch
        self._relay_kind = relay_kind
        self.allow_direct = allow_direct
        self.timers = timers
        self.label = label
        self.candidates: set[Endpoint] = set()
        self.lan_candidates: set[Endpoint] = set()
        self.direct: Endpoint | None = None
        self.direct_seen: float | None = None
        self.unanswered_since: float | None = None
        self.unanswered_probes = 0
        self.last_keepalive: float | None = None
        self.our_nat = "unknown"
        self.peer_nat = "unknown"
        self.bytes_sent = 0
        self.bytes_received = 0
        self.switches = 0
        self.fallbacks = 0
        self._timer = None
        self._burst_left = 0
        self._retry_delay = timers.retry_first
        self.on_change = lambda kind: None

    # -- what the sessions layer asks ------------------------------------------

    @property
    def kind(self) -> str:
        if not self._on_direct:
            # Either side on the TLS relay makes the whole path a TCP one.
            return "relay-tcp" if self.peer_nat == "udp_blocked" else self._relay_kind()
        if self.direct in self.lan_candidates:
            return "lan"
        if self.our_nat in FILTERING_NATS or self.peer_nat in FILTERING_NATS:
            return "punched"
        return "direct"

    _on_direct = False

    def using_direct(self) -> bool:
        return self._on_direct

    def send(self, packet: bytes) -> None:
        self.bytes_sent += len(packet)
        if self._on_direct and self.unanswered_since is None:
            # Expect an answer; if none comes, probe quickly to find out.
            self.unanswered_since = self._clock.seconds()
            self.unanswered_probes = 0
            self._arm(self.timers.check_interval, self.keepalive_tick)
        if self._on_direct:
            self._send_datagram(packet, self.direct)
        else:
            self._send_relay(self.address, packet)

    def add_candidates(self, endpoints, lan=()) -> None:
        if self.allow_direct:
            self.candidates.update(endpoints)
            self.candidates.update(lan)
            self.lan_candidates.update(lan)

    def received(self, source: bytes, size: int) -> None:
        """An authenticated packet arrived from ``source``."""
        self.bytes_received += size
        endpoint = source_endpoint(source)
        if endpoint is None and self._on_direct and self.unanswered_since is None:
            # The peer is using the relay although we use the direct path:
            # it has stopped hearing us there.  Check the path at once.
            self.unanswered_since = self._clock.seconds()
            self.unanswered_probes = 0
            self._arm(0, self.keepalive_tick)
            return
        if endpoint is None or not self.allow_direct:
            return
        if endpoint == self.direct:
            self.direct_seen = self._clock.seconds()
            self.unanswered_since = None
            self.unanswered_probes = 0
        elif endpoint not in self.candidates:
            # A new address for the peer: roaming or a NAT rebinding.
            self.candidates.add(endpoint)
            self._send_probe(endpoint)

    def acked(self, source: bytes) -> None:
        endpoint = source_endpoint(source)
        if endpoint is not None and self.allow_direct:
            self.ack(endpoint)

    def start_punch(self) -> None:
        if self.allow_direct and self.candidates:
            self.punch()

    # -- states ------------------------------------------------------------------

    @_machine.state(initial=True)
    def relaying(self):
        "traffic goes through the relay"

    @_machine.state()
    def punching(self):
        "traffic goes through the relay while a probe burst runs"

    @_machine.state()
    def direct_path(self):
        "traffic goes straight to the peer"

    @_machine.state()
    def stopped(self):
        "the session is gone"

    # -- inputs ------------------------------------------------------------------

    @_machine.input()
    def punch(self):
        "candidates exchanged: probe them all now"

    @_machine.input()
    def burst_tick(self):
        "time for the next round of the probe burst"

    @_machine.input()
    def burst_over(self):
        "the probe burst ended without an ack"

    @_machine.input()
    def retry_tick(self):
        "time to try the direct path again"

    @_machine.input()
    def keepalive_tick(self):
        "time to check the direct path in use"

    @_machine.input()
    def ack(self, endpoint):
        "a PathAck arrived straight from endpoint"

    @_machine.input()
    def silence(self):
        "the direct path stopped answering"

    @_machine.input()
    def stop(self):
        "the session is gone"

    # -- outputs -----------------------------------------------------------------

    def _arm(self, delay, timer_input):
        self._cancel()
        self._timer = self._clock.callLater(delay, timer_input)

    def _cancel(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    @_machine.output()
    def _prime_and_start_burst(self):
        for endpoint in sorted(self.candidates):
            self._send_probe(endpoint, ttl=self.timers.prime_ttl)
        self._burst_left = self.timers.burst_count
        self._arm(self.timers.burst_interval / 2, self.burst_tick)

    @_machine.output()
    def _burst_round(self):
        for endpoint in sorted(self.candidates):
            self._send_probe(endpoint)
        self._burst_left -= 1
        if self._burst_left > 0:
            self._arm(self.timers.burst_interval, self.burst_tick)
        else:
            self._arm(self.timers.burst_interval, self.burst_over)

    @_machine.output()
    def _arm_retry(self):
        self._arm(self._retry_delay, self.retry_tick)
        self._retry_delay = min(self._retry_delay * 2, self.timers.retry_max)

    @_machine.output()
    def _retry(self):
        # Restricted NATs open only if both sides send: ask for a new
        # coordinated punch rather than probing alone.
        self._request_punch()

    @_machine.output()
    def _use(self, endpoint):
        changed = endpoint != self.direct or not self._on_direct
        self.direct = endpoint
        self.direct_seen = self._clock.seconds()
        self.unanswered_since = None
        self.unanswered_probes = 0
        self.last_keepalive = self._clock.seconds()
        self._on_direct = True
        self._retry_delay = self.timers.retry_first
        self.candidates.add(endpoint)
        if changed:
            self.switches += 1
            self.log.info("{peer}: direct path {ep} ({kind})", peer=self.label, ep=str(endpoint), kind=self.kind)
            self.on_change(self.kind)

    @_machine.output()
    def _arm_keepalive(self):
        self._arm(self.timers.keepalive_interval, self.keepalive_tick)

    @_machine.output()
    def _keepalive(self):
        t = self.timers
        now = self._clock.seconds()
        quiet = self.direct_seen is None or now - self.direct_seen > t.stale_after
        dead = (
            self.unanswered_since is not None
            and now - self.unanswered_since > t.silence_after
            and self.unanswered_probes >= t.check_probes
        )
        if quiet or dead:
            # Not from inside this transition: let it finish first.
            self._timer = self._clock.callLater(0, self.silence)
            return
        if self.unanswered_since is None:
            since = now - (self.last_keepalive or 0.0)
            if since < t.keepalive_interval:
                self._arm(t.keepalive_interval - since, self.keepalive_tick)
                return
            self.unanswered_since = now
            self.unanswered_probes = 0
        self._send_probe(self.direct)
        self.last_keepalive = now
        self.unanswered_probes += 1
        self._arm(t.check_interval, self.keepalive_tick)

    @_machine.output()
    def _fall_back(self):
        self._on_direct = False
        self.unanswered_since = None
        self.unanswered_probes = 0
        self.fallbacks += 1
        self.log.info("{peer}: direct path {ep} went silent; using the relay", peer=self.label, ep=str(self.direct))
        self.on_change(self.kind)
        # A short outage should not cost a minute: try again soon, then back off.
        self._retry_delay = self.timers.retry_first
        self._arm(self.timers.silence_after, self.retry_tick)

    @_machine.output()
    def _stop(self):
        self._cancel()
        self._on_direct = False

    # -- transitions -----------------------------------------------------------------

    relaying.upon(punch, enter=punching, outputs=[_prime_and_start_burst])
    relaying.upon(retry_tick, enter=relaying, outputs=[_arm_retry, _retry])
    relaying.upon(ack, enter=direct_path, outputs=[_use, _arm_keepalive])
    for _late in (burst_tick, burst_over, keepalive_tick, silence):
        relaying.upon(_late, enter=relaying, outputs=[])
    relaying.upon(stop, enter=stopped, outputs=[_stop])

    punching.upon(burst_tick, enter=punching, outputs=[_burst_round])
    punching.upon(burst_over, enter=relaying, outputs=[_arm_retry])
    punching.upon(ack, enter=direct_path, outputs=[_use, _arm_keepalive])
    for _late in (punch, retry_tick, keepalive_tick, silence):
        punching.upon(_late, enter=punching, outputs=[])
    punching.upon(stop, enter=stopped, outputs=[_stop])

    direct_path.upon(keepalive_tick, enter=direct_path, outputs=[_keepalive])
    direct_path.upon(ack, enter=direct_path, outputs=[_use])
    direct_path.upon(silence, enter=relaying, outputs=[_fall_back])
    for _late in (punch, burst_tick, burst_over, retry_tick):
        direct_path.upon(_late, enter=direct_path, outputs=[])
    direct_path.upon(stop, enter=stopped, outputs=[_stop])

    for _late in (punch, burst_tick, burst_over, retry_tick, keepalive_tick, ack, silence, stop):
        stopped.upon(_late, enter=stopped, outputs=[])
    del _late


def is_lan_address(host: str) -> bool:
    ip = ipaddress.ip_address(host)
    return ip.is_private and not ip.is_loopback
