"""
The parts of birthday punching that need no clock: who does what, which
ports the probing side tries in which order, the bounds, and the typed
values and interfaces the node's extra sockets are seen through.

Why it works (hyperdht's holepuncher is the reference design): a symmetric
NAT gives every new destination a new public port, so the side behind it
cannot tell the other side which port to answer.  But it can make *many*
mappings towards the other side's one known endpoint, by sending one
packet from each of ``sockets`` fresh sockets.  The other side, whose NAT
maps endpoint-independently (a port-restricted cone), then sends probes to
random ports of the symmetric NAT's public address.  Each probe opens its
own NAT's filter for the port it went to, and a probe that lands on one of
the ``sockets`` mappings gets through, to the socket that made it, which
answers along the very mapping.  With 256 mappings among 64,512 ports, each
probe hits with p = 1/252; 600 distinct probes succeed with 91 %, 1,200
with 99 % (``1 - C(N - s, n) / C(N, n)``).

A NAT that allocates ports *sequentially* gives the sockets' mappings the
ports after the last ones it was seen to give (NAT discovery's mapping
tests show the step), so those are probed first, and win in a few probes.
"""

from __future__ import annotations

import random

import attrs
from zope.interface import Attribute, Interface

from ..wire.sources import Direct

PORT_MIN, PORT_MAX = 1024, 65535
#: NATs whose mapping is endpoint-independent but whose filter admits only
#: the exact endpoint sent to: the only partner a symmetric NAT needs this for
#: (full and address-restricted cones already go direct with a plain punch)
CONSISTENT = frozenset({"port_restricted_cone"})
OPENS, PROBES = "opens", "probes"
#: a step between observed mappings this small or smaller means sequential allocation
MAX_SEQUENTIAL_STEP = 16
#: predicted ports tried beyond the opened sockets (other flows take ports too)
PREDICT_SLACK = 64
#: hard limits on the options, whatever a configuration says
MAX_SOCKETS = 1024
MAX_PROBES = 4000
MAX_RATE = 2000.0


def role(our_nat: str, peer_nat: str) -> str | None:
    """``OPENS`` (open many sockets), ``PROBES`` (probe many ports) or None (no birthday punch)."""
    if our_nat == "symmetric" and peer_nat in CONSISTENT:
        return OPENS
    if our_nat in CONSISTENT and peer_nat == "symmetric":
        return PROBES
    return None


def _positive_at_most(limit):
    def check(instance, attribute, value):
        if not 0 < value <= limit:
            raise ValueError(f"birthday {attribute.name} must be above 0 and at most {limit}, not {value!r}")

    return check


@attrs.frozen
class BirthdayOptions:
    """The bounds of one birthday punch.  The defaults send at most
    ~80 kB of probes (1,200 x 67 bytes on the wire) from the probing side
    and ~17 kB of priming from the opening side, over at most 4 s."""

    #: sockets the symmetric side opens (and mappings its NAT makes)
    sockets: int = attrs.field(default=256, validator=_positive_at_most(MAX_SOCKETS))
    #: probes per second from the probing side
    probe_rate: float = attrs.field(default=300.0, validator=_positive_at_most(MAX_RATE))
    #: probes per attempt, at most
    max_probes: int = attrs.field(default=1200, validator=_positive_at_most(MAX_PROBES))
    #: the probing side sends a batch every ``tick`` seconds
    tick: float = 0.02
    #: IP TTL of the opening side's priming packets: out of its own NAT, not into the peer's
    prime_ttl: int = 2
    #: the start message is sent again after this long without a reply, this many times
    start_retry: float = 0.5
    start_tries: int = 4
    #: the opening side keeps its sockets this long past the probing side's schedule
    linger: float = 1.5
    #: attempts per session (each retry of the path may start one)
    max_attempts: int = 3

    @property
    def duration(self) -> float:
        """How long the probing side's schedule runs at most."""
        return self.max_probes / self.probe_rate

    @property
    def batch(self) -> int:
        return max(1, round(self.probe_rate * self.tick))


def predicted_ports(observed, count: int) -> list[int]:
    """The ``count`` ports a sequential NAT gives next, from ``observed`` (oldest first).

    Empty unless the observed ports step by one small, non-zero amount."""
    observed = list(observed)
    if len(observed) < 2 or count <= 0:
        return []
    steps = {b - a for a, b in zip(observed, observed[1:])}
    if len(steps) != 1:
        return []
    step = steps.pop()
    if step == 0 or abs(step) > MAX_SEQUENTIAL_STEP:
        return []
    ports = []
    port = observed[-1]
    while len(ports) < count:
        port += step
        if not PORT_MIN <= port <= PORT_MAX:
            break
        ports.append(port)
    return ports


def probe_ports(rng: random.Random, options: BirthdayOptions, sockets: int, observed=()) -> list[int]:
    """Every port the probing side tries, in order: predicted ones first,
    then distinct random ones; never more than ``options.max_probes``."""
    first = predicted_ports(observed, min(options.max_probes, sockets + PREDICT_SLACK))
    tried = set(first)
    rest = options.max_probes - len(first)
    # One more than needed per predicted port, so that skipping them still leaves enough.
    sample = rng.sample(range(PORT_MIN, PORT_MAX + 1), min(rest + len(first), PORT_MAX - PORT_MIN + 1))
    return first + [p for p in sample if p not in tried][:rest]


@attrs.frozen
class ViaSocket(Direct):
    """Straight from ``endpoint``, received on one of the node's extra punch
    ``socket``\\ s: an answer must leave from that socket, or the symmetric
    NAT maps it to another port and the peer's filter drops it."""

    socket: object = attrs.field(default=None, kw_only=True)


def via_of(source):
    """The extra socket a direct source came in on (None: the node's own)."""
    return source.socket if isinstance(source, ViaSocket) else None


class IPunchSocket(Interface):
    """One extra UDP socket: sends like the node's socket, and can be closed."""

    local_port = Attribute("the port it is bound to (None once closed)")

    def send(data, destination, ttl=None):
        """Send one datagram from this socket (as IDatagramSender.send)."""

    def close():
        """Stop listening; sending afterwards drops (counted). Idempotent."""


class IPunchSockets(Interface):
    """Where a birthday punch gets its extra sockets (the node's UDP layer)."""

    def open(count):
        """Up to ``count`` new sockets (IPunchSocket), fewer if the system has no more;
        their datagrams reach the node's router with :class:`ViaSocket` sources."""

    def observed_ports():
        """Public ports our NAT gave our recent mappings, oldest first (NAT discovery's)."""


class IMappingObservations(Interface):
    """What NAT discovery saw of our NAT's port allocation."""

    def observed_ports():
        """The public ports of the mappings seen in the latest run, oldest first."""
