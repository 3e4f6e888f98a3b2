"""
The beacon's quotas: what one source, one key or one pair may cost it.

A beacon is a public UDP server, so every resource a request can take is
bounded:

* **new names** per source address (IPv4, or an IPv6 /64, which one host
  usually holds whole) and per /24 (IPv6 /48): a key that registers the
  name it already holds is not counted, so restarts and roaming cost
  nothing; the source is proven (the nonce echoes a Challenge sent there)
  before a token is taken, so a spoofer cannot spend a victim's tokens;
* **signed requests per key**, counted after the signature and ``seq``
  checks (only the key's holder can spend its tokens);
* **relay bytes** per sending node and per (sender, destination) pair;
* mail per recipient and per sender (:mod:`pilotproto.beacon.mailbox`),
  names in all (:mod:`pilotproto.beacon.registry`).

In a fleet (``--store redis://``) the quotas a client could multiply by
spreading over the beacons are also counted fleet-wide through an
:class:`IQuotaShare` (:mod:`pilotproto.beacon.fleet_quotas`).

Over a limit the answer is ``rate_limited`` with a retry-after (relay
frames, which answer nothing, are dropped and counted, as a full link
would).  Each limit is a token bucket: ``COUNT/SECONDS`` allows a burst of
COUNT and refills COUNT every SECONDS.  Tables of buckets keyed by
something a stranger chooses (a source address) keep at most
``MAX_TRACKED`` entries, dropping the least recently used: a dropped
bucket was the least active, and starts full again.
"""

from __future__ import annotations

import collections
import ipaddress
import math
import re

import attrs
from zope.interface import Interface

from ..common.wiring import check_provides
from ..errors import InvalidArgument

#: entries per table of buckets keyed by a stranger's choice (bounded memory)
MAX_TRACKED = 65536
#: (sender, destination) pair buckets kept per sending node
MAX_PAIRS_PER_NODE = 256

_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]?)\s*/\s*(\d+(?:\.\d+)?)\s*$", re.IGNORECASE)


@attrs.frozen
class Rate:
    """At most ``count`` at once, refilled at ``count`` per ``seconds``."""

    count: float
    seconds: float

    @classmethod
    def parse(cls, text: str) -> "Rate":
        """``"32/600"`` or ``"16M/1"`` (K, M, G: binary multiples)."""
        found = _RATE.match(str(text))
        if found is None:
            raise InvalidArgument(f"{text!r} is not a rate", hint="Write COUNT/SECONDS, e.g. 32/600, or 16M/1 for bytes.")
        count = float(found.group(1)) * _SUFFIX[found.group(2).upper()]
        seconds = float(found.group(3))
        if count < 1 or seconds <= 0:
            raise InvalidArgument(f"{text!r}: the count must be at least 1 and the period above 0")
        return cls(count, seconds)

    def __str__(self) -> str:
        return f"{self.count:g}/{self.seconds:g}"


class TokenBucket:
    __slots__ = ("capacity", "per_second", "tokens", "stamp")

    def __init__(self, rate: Rate, now: float):
        self.capacity = rate.count
        self.per_second = rate.count / rate.seconds
        self.tokens = rate.count
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.per_second)
        self.stamp = now

    def wait(self, now: float, amount: float = 1) -> float:
        """Seconds until ``amount`` tokens are there (0: now); takes nothing."""
        self._refill(now)
        if amount > self.capacity:
            return math.inf
        return max(0.0, (amount - self.tokens) / self.per_second)

    def take(self, now: float, amount: float = 1) -> float:
        """Take ``amount`` tokens and return 0, or take none and return the wait."""
        wait = self.wait(now, amount)
        if wait == 0:
            self.tokens -= amount
        return wait


class BucketTable:
    """One bucket per key, at most ``max_entries`` (least recently used dropped)."""

    def __init__(self, rate: Rate, max_entries: int = MAX_TRACKED):
        self.rate = rate
        self.max_entries = max_entries
        self._buckets: collections.OrderedDict = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def bucket(self, key, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, now)
            while len(self._buckets) > self.max_entries:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def take(self, key, now: float, amount: float = 1) -> float:
        return self.bucket(key, now).take(now, amount)


def source_keys(host: str) -> tuple[str, str]:
    """``(address, prefix)`` for quotas: IPv4 and its /24; an IPv6 /64 and its /48."""
    if ":" not in host and host.count(".") == 3:
        # Endpoints hold canonical dotted quads: cut the /24 from the text
        # rather than parse it (this runs on every new registration).
        return host, host.rpartition(".")[0] + ".0/24"
    ip = ipaddress.ip_address(host)
    if ip.version == 4:
        return str(ip), str(ipaddress.ip_network(f"{ip}/24", strict=False))
    return str(ipaddress.ip_network(f"{ip}/64", strict=False)), str(ipaddress.ip_network(f"{ip}/48", strict=False))


DAY = 24 * 3600


@attrs.frozen
class Limits:
    """Every limit of a beacon; each is a ``twistd pilot beacon`` option (docs/security.md)."""

    #: how long a name stays bound to its key after the key was last seen
    name_hold: float = 30 * DAY
    #: names (keys) held in all
    max_names: int = 200_000
    #: new names registered from one address (IPv6: one /64)
    register_per_address: Rate = Rate(32, 600)
    #: new names registered from one /24 (IPv6: one /48)
    register_per_prefix: Rate = Rate(256, 600)
    #: signed requests from one key
    requests_per_key: Rate = Rate(256, 10)
    #: relayed payload bytes from one node
    relay_per_node: Rate = Rate(16 << 20, 1)
    #: relayed payload bytes from one node to one other
    relay_per_pair: Rate = Rate(8 << 20, 1)
    #: mail waiting for one recipient
    mail_per_recipient: int = 64
    #: mail waiting from one sender, to all recipients
    mail_per_sender: int = 256


class IQuotaShare(Interface):
    """Counters shared by the beacons of a fleet, kinds ``addr``, ``prefix``,
    ``req`` and ``relay`` (:mod:`pilotproto.beacon.fleet_quotas`)."""

    def blocked(kind, who, now):
        """Seconds ``who`` must wait because the fleet spent its ``kind`` quota (0: go)."""

    def spent(kind, who, amount, now):
        """This beacon let ``amount`` of ``kind`` through for ``who``."""


class Quotas:
    """The buckets behind :class:`Limits`; each check returns 0 (go) or seconds to wait."""

    def __init__(self, clock, limits: Limits, counters):
        self._clock = clock
        self.limits = limits
        self._counters = counters
        self._by_address = BucketTable(limits.register_per_address)
        self._by_prefix = BucketTable(limits.register_per_prefix)
        #: the fleet's counters (an IQuotaShare), or None for a single beacon
        self.shared = None

    def share(self, shared) -> None:
        """Count the quotas a client could multiply over a fleet in ``shared`` too."""
        self.shared = check_provides(shared, IQuotaShare, "Quotas share")

    def new_name(self, host: str) -> float:
        """A proven source registers a name it did not hold: one token from its address and its prefix."""
        now = self._clock.seconds()
        address, prefix = source_keys(host)
        buckets = (self._by_address.bucket(address, now), self._by_prefix.bucket(prefix, now))
        wait = max(b.wait(now) for b in buckets)
        shared = self.shared
        if shared is not None:
            wait = max(wait, shared.blocked("addr", address, now), shared.blocked("prefix", prefix, now))
        if wait:
            self._counters["limited_registrations"] += 1
            return wait
        for bucket in buckets:
            bucket.take(now)
        if shared is not None:
            shared.spent("addr", address, 1, now)
            shared.spent("prefix", prefix, 1, now)
        return 0.0

    def request(self, record) -> float:
        now = self._clock.seconds()
        if record.requests is None:
            record.requests = TokenBucket(self.limits.requests_per_key, now)
        shared = self.shared
        wait = shared.blocked("req", record.public_key, now) if shared is not None else 0
        if not wait:
            wait = record.requests.take(now)
        if wait:
            self._counters["limited_requests"] += 1
        elif shared is not None:
            shared.spent("req", record.public_key, 1, now)
        return wait

    def relay(self, sender, destination_key: bytes, size: int, now: float | None = None, quiet: bool = False) -> bool:
        """May ``sender`` relay ``size`` more bytes to ``destination_key``?
        Per frame (or per run of frames), so O(1): two buckets refilled once
        each, and taken from only if both have room.  ``quiet``: a refusal is
        not counted (the caller tries again frame by frame)."""
        if now is None:
            now = self._clock.seconds()
        node = sender.relay_bytes
        if node is None:
            node = sender.relay_bytes = TokenBucket(self.limits.relay_per_node, now)
            sender.relay_pairs = BucketTable(self.limits.relay_per_pair, MAX_PAIRS_PER_NODE)
        pair = sender.relay_pairs.bucket(destination_key, now)
        node._refill(now)
        pair._refill(now)
        shared = self.shared
        if node.tokens < size or pair.tokens < size or (shared is not None and shared.blocked("relay", sender.public_key, now)):
            if not quiet:
                self._counters["relay_dropped_rate_limited"] += 1
            return False
        node.tokens -= size
        pair.tokens -= size
        if shared is not None:
            shared.spent("relay", sender.public_key, size, now)
        return True


def _days(text) -> float:
    try:
        days = float(text)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{text!r} is not a number of days") from None
    if not 0 < days <= 3650:
        raise InvalidArgument("the name hold time must be between 0 and 3650 days")
    return days


def _count(text) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{text!r} is not a whole number") from None
    if value < 1:
        raise InvalidArgument("a limit must be at least 1")
    return value


_DEFAULTS = Limits()

#: ``twistd pilot beacon`` options for every limit: [long, short, default, help, coerce]
OPTIONS = [
    ["name-hold", None, _DEFAULTS.name_hold / DAY, "Days a name stays bound to its key after the key was last seen.", _days],
    ["max-names", None, _DEFAULTS.max_names, "Names (keys) the beacon holds in all.", _count],
    ["register-per-address", None, _DEFAULTS.register_per_address, "New names per source address (IPv6: /64), COUNT/SECONDS.", Rate.parse],
    ["register-per-prefix", None, _DEFAULTS.register_per_prefix, "New names per /24 (IPv6: /48), COUNT/SECONDS.", Rate.parse],
    ["requests-per-key", None, _DEFAULTS.requests_per_key, "Signed requests per key, COUNT/SECONDS.", Rate.parse],
    ["relay-per-node", None, _DEFAULTS.relay_per_node, "Relayed bytes per sending node, BYTES/SECONDS (K, M, G).", Rate.parse],
    ["relay-per-pair", None, _DEFAULTS.relay_per_pair, "Relayed bytes per pair of nodes, BYTES/SECONDS.", Rate.parse],
    ["mail-per-recipient", None, _DEFAULTS.mail_per_recipient, "Trust messages waiting for one node.", _count],
    ["mail-per-sender", None, _DEFAULTS.mail_per_sender, "Trust messages waiting from one node.", _count],
]


def limits_from_options(options) -> Limits:
    """The :class:`Limits` a parsed ``twistd pilot beacon`` command line asks for."""
    return Limits(
        name_hold=float(options["name-hold"]) * DAY,
        max_names=int(options["max-names"]),
        register_per_address=options["register-per-address"],
        register_per_prefix=options["register-per-prefix"],
        requests_per_key=options["requests-per-key"],
        relay_per_node=options["relay-per-node"],
        relay_per_pair=options["relay-per-pair"],
        mail_per_recipient=int(options["mail-per-recipient"]),
        mail_per_sender=int(options["mail-per-sender"]),
    )
