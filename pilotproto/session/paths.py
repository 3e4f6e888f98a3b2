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
see :mod:`pilotproto.session.peer`) starts a burst: first a *priming*
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

The path learns from the typed source of every authenticated packet
(:mod:`pilotproto.wire.sources`): a :class:`~pilotproto.wire.sources.Direct`
source names the endpoint the peer's packet came from, a
:class:`~pilotproto.wire.sources.Relayed` one says the peer used the relay.
What the path sends it sends through its owner (:class:`IPathOwner`, the
peer's record), which holds the keys and the sockets.

A direct path is a *route*: the peer's endpoint, and the local socket it is
reached from — the node's own (``via`` None), or one of the extra sockets a
birthday punch opened (:mod:`pilotproto.session.birthday`), whose packets
arrive as :class:`~pilotproto.session.birthday_schedule.ViaSocket` sources.
A symmetric NAT maps each local socket to its own public port, so
everything on such a path (data, keepalives, acks) must leave from that
socket.  A PathProbe that arrives while we are still on the relay is probed
back on it at once (:meth:`PeerPath.probed`): the peer's filter has just
opened for it, and this is how the side that was found learns its path.
"""

from __future__ import annotations

import attrs
from automat import MethodicalMachine
from twisted.logger import Logger
from zope.interface import Interface

from ..common.wiring import check_provides
from ..wire import Endpoint
from ..wire.sources import Direct, Relayed
from . import happy_eyeballs
from .birthday_schedule import via_of as _via

FILTERING_NATS = {"restricted_cone", "port_restricted_cone", "symmetric", "unknown", "udp_blocked"}
#: candidate endpoints kept per peer: its own few public ones and up to 8 LAN
#: ones, with room for roaming; a CallMeMaybe may list 510, and each is probed
#: in every burst, so without a cap a peer could aim our probes anywhere.
MAX_CANDIDATES = 24


class IPathOwner(Interface):
    """What a :class:`PeerPath` needs from the peer it is the path to."""

    def send_datagram(packet, endpoint, via=None):
        """Send one tunnel packet straight to ``endpoint`` over UDP (from socket ``via`` if given)."""

    def send_datagrams(packets, endpoint, via=None):
        """Send several tunnel packets (one burst, in order) straight to ``endpoint`` (from socket ``via``)."""

    def send_relay(packet):
        """Send one tunnel packet to the peer through the beacon's relay."""

    def send_relay_many(packets):
        """Send several tunnel packets (one burst, in order) to the peer through the beacon's relay."""

    def send_probe(endpoint, ttl=None, via=None):
        """Seal one PathProbe and send it to ``endpoint`` (with IP TTL ``ttl``, from socket ``via``, if given)."""

    def request_punch():
        """Ask the peer, through the session, for a new coordinated punch."""

    def relay_kind():
        """How relayed packets leave this node now: ``"relay"`` or ``"relay-tcp"``."""

    def label():
        """How logs name the peer."""

    def path_changed(direct, via):
        """The path moved to a direct route from socket ``via`` (None: the node's own), or to the relay."""


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
    The path to one peer.  ``send(packet)`` is what its tunnel's packets go through.

    The sessions layer feeds it what it learns: candidates
    (:meth:`add_candidates`, :meth:`start_punch`), every authenticated packet
    with its source (:meth:`received`), and PathAcks (:meth:`acked`).
    """

    _machine = MethodicalMachine()
    log = Logger()

    def __init__(self, clock, owner, *, allow_direct: bool = True, timers: PathTimers = PathTimers()):
        self._clock = clock
        self._owner = check_provides(owner, IPathOwner, "PeerPath.owner")
        self.allow_direct = allow_direct
        self.timers = timers
        self.candidates: set[Endpoint] = set()
        self.lan_candidates: set[Endpoint] = set()
        self.direct: Endpoint | None = None
        #: the extra socket the direct path leaves from (None: the node's own)
        self.direct_via = None
        #: route -> when we last probed it back (bounds answers to probes)
        self._probed_back: dict = {}
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
        self._later_family = None  # this round's IPv4 probes, waiting behind IPv6 (happy eyeballs)
        self._burst_left = 0
        self._retry_delay = timers.retry_first

    # -- what the sessions layer asks ------------------------------------------

    @property
    def kind(self) -> str:
        if not self._on_direct:
            # Either side on the TLS relay makes the whole path a TCP one.
            return "relay-tcp" if self.peer_nat == "udp_blocked" else self._owner.relay_kind()
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
        if not self._on_direct:
            self._owner.send_relay(packet)
            return
        if self.unanswered_since is None:
            self._expect_answer()
        self._owner.send_datagram(packet, self.direct, via=self.direct_via)

    def send_many(self, packets: list) -> None:
        """:meth:`send` for a burst: the bookkeeping once, the packets together."""
        self.bytes_sent += sum(map(len, packets))
        if not self._on_direct:
            self._owner.send_relay_many(packets)
            return
        if self.unanswered_since is None:
            self._expect_answer()
        self._owner.send_datagrams(packets, self.direct, via=self.direct_via)

    def _expect_answer(self) -> None:
        # Expect an answer; if none comes, probe quickly to find out.
        self.unanswered_since = self._clock.seconds()
        self.unanswered_probes = 0
        self._arm(self.timers.check_interval, self.keepalive_tick)

    def add_candidates(self, endpoints, lan=()) -> None:
        if not self.allow_direct:
            return
        endpoints, lan = list(endpoints), list(lan)
        if len(self.candidates) + len(endpoints) + len(lan) > MAX_CANDIDATES:
            # More than a peer has: the newest list wins (it is what the peer
            # has now), cut to the cap, so a peer cannot make us keep, and
            # probe, any number of addresses of its choosing.
            half = (MAX_CANDIDATES - 1) // 2  # one place for the direct path in use
            keep = {self.direct} if self.direct is not None else set()
            self.candidates = keep | set(endpoints[:half]) | set(lan[:half])
            self.lan_candidates &= self.candidates
            lan = lan[:half]
        else:
            self.candidates.update(endpoints)
            self.candidates.update(lan)
        self.lan_candidates.update(lan)

    def received(self, source: Direct | Relayed, size: int) -> None:
        """An authenticated packet of ``size`` bytes arrived from ``source``."""
        self.bytes_received += size
        if isinstance(source, Relayed):
            if self._on_direct and self.unanswered_since is None:
                # The peer is using the relay although we use the direct path:
                # it has stopped hearing us there.  Check the path at once.
                self.unanswered_since = self._clock.seconds()
                self.unanswered_probes = 0
                self._arm(0, self.keepalive_tick)
            return
        if not isinstance(source, Direct) or not self.allow_direct:
            return
        endpoint = source.endpoint
        if endpoint is self.direct or endpoint == self.direct:
            self.direct_seen = self._clock.seconds()
            self.unanswered_since = None
            self.unanswered_probes = 0
        elif self._on_direct and endpoint.host == self.direct.host and endpoint in self.candidates:
            # The peer sends from another of its ports than the one we send
            # to (a birthday punch hit several of its sockets and it kept
            # another): probe it, and its ack moves us where the peer is.
            self._probe_back(endpoint, _via(source))
        elif endpoint not in self.candidates:
            # A new address for the peer: roaming or a NAT rebinding.
            if len(self.candidates) >= MAX_CANDIDATES:
                self.candidates = {self.direct} if self.direct is not None else set()
                self.lan_candidates &= self.candidates
            self.candidates.add(endpoint)
            self._probe_back(endpoint, _via(source))

    def probed(self, source: Direct | Relayed) -> None:
        """A PathProbe arrived from ``source`` (and was acked): probe that route back.

        Still on the relay, the peer's NAT has just let its probe out towards us,
        so ours gets in: both sides prove the route without waiting for a
        burst round (and a birthday punch's opening side finds its winning
        socket only this way).  Once per route per ``check_interval``."""
        if not isinstance(source, Direct) or not self.allow_direct or self._on_direct:
            # On a direct path already, a probe from elsewhere is roaming: received() probes it.
            return
        self._probe_back(source.endpoint, _via(source))

    def _probe_back(self, endpoint, via) -> None:
        now = self._clock.seconds()
        route = (endpoint, id(via))
        if now - self._probed_back.get(route, -1e9) < self.timers.check_interval:
            return
        if len(self._probed_back) >= MAX_CANDIDATES:
            self._probed_back.clear()
        self._probed_back[route] = now
        self._owner.send_probe(endpoint, via=via)

    def acked(self, source: Direct | Relayed) -> None:
        """A PathAck arrived from ``source``: only a direct one proves a path."""
        if not isinstance(source, Direct) or not self.allow_direct:
            return
        via = _via(source)
        if self._on_direct and source.endpoint == self.direct and via is not self.direct_via:
            # The same peer endpoint from another of our sockets: the first
            # route proven stays (the birthday punch closes the others).
            return
        if via is not None and via.local_port is None:
            return  # a late ack on a socket already closed
        if self._on_direct and happy_eyeballs.keeps_current(
            self.direct, source.endpoint, self.direct_seen, self._clock.seconds(), self.timers.silence_after
        ):
            return  # the other family lost the race (RFC 8305): the winner is alive
        self.ack(source.endpoint, via)

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
    def ack(self, endpoint, via=None):
        "a PathAck arrived straight from endpoint (on socket via, None: the node's own)"

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

    def _probe_round(self) -> None:
        # IPv6 now, IPv4 a moment later (happy eyeballs), unless one is already waiting.
        now, later = happy_eyeballs.by_family(self.candidates)
        for endpoint in now:
            self._owner.send_probe(endpoint)
        if later and (self._later_family is None or not self._later_family.active()):
            self._later_family = self._clock.callLater(happy_eyeballs.FAMILY_DELAY, self._probe_later, later)

    def _probe_later(self, endpoints) -> None:
        self._later_family = None
        if not self._on_direct:
            for endpoint in endpoints:
                self._owner.send_probe(endpoint)

    def _cancel_later(self) -> None:
        if self._later_family is not None and self._later_family.active():
            self._later_family.cancel()
        self._later_family = None

    @_machine.output()
    def _prime_and_start_burst(self):
        for endpoint in sorted(self.candidates):
            self._owner.send_probe(endpoint, ttl=self.timers.prime_ttl)
        self._burst_left = self.timers.burst_count
        self._arm(self.timers.burst_interval / 2, self.burst_tick)

    @_machine.output()
    def _burst_round(self):
        self._probe_round()
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
        self._owner.request_punch()

    @_machine.output()
    def _use(self, endpoint, via=None):
        changed = endpoint != self.direct or via is not self.direct_via or not self._on_direct
        self.direct = endpoint
        self.direct_via = via
        self.direct_seen = self._clock.seconds()
        self.unanswered_since = None
        self.unanswered_probes = 0
        self.last_keepalive = self._clock.seconds()
        self._on_direct = True
        self._cancel_later()
        self._retry_delay = self.timers.retry_first
        self.candidates.add(endpoint)
        if changed:
            self.switches += 1
            self.log.info("{peer}: direct path {ep} ({kind})", peer=self._owner.label(), ep=str(endpoint), kind=self.kind)
            self._owner.path_changed(True, via)

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
        self._owner.send_probe(self.direct, via=self.direct_via)
        self.last_keepalive = now
        self.unanswered_probes += 1
        self._arm(t.check_interval, self.keepalive_tick)

    @_machine.output()
    def _fall_back(self):
        self._on_direct = False
        self.unanswered_since = None
        self.unanswered_probes = 0
        self.fallbacks += 1
        self.log.info("{peer}: direct path {ep} went silent; using the relay", peer=self._owner.label(), ep=str(self.direct))
        self.direct_via = None
        self._owner.path_changed(False, None)
        # A short outage should not cost a minute: try again soon, then back off.
        self._retry_delay = self.timers.retry_first
        self._arm(self.timers.silence_after, self.retry_tick)

    @_machine.output()
    def _stop(self):
        self._cancel()
        self._cancel_later()
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
