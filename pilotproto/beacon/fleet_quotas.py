"""
The quotas a client could multiply by spreading its requests over the
beacons of a fleet, counted fleet-wide in Redis.

Each beacon keeps its own token buckets (:mod:`pilotproto.beacon.limits`)
and enforces them synchronously, as a single beacon does.  On top, for the
quotas an attacker gains from by using several beacons —

=========  ==========================  ==================================
kind       limit                       counted by
=========  ==========================  ==================================
``addr``   ``--register-per-address``  source address (IPv6: /64)
``prefix`` ``--register-per-prefix``   /24 (IPv6: /48)
``req``    ``--requests-per-key``      key
``relay``  ``--relay-per-node``        sending key (a node registered on
                                       two beacons relays through both)
=========  ==========================  ==================================

— each beacon adds what it let through to a Redis counter per fixed window
(``PREFIX:q:KIND:WHO:WINDOW``, ``INCRBY`` and ``EXPIRE`` in one script, for
every pending counter in **one** round trip), and Redis answers which
counters are over the fleet-wide limit (the same COUNT per SECONDS window);
the beacon then refuses that client until the window ends, with the window's
end as the retry-after.  The enforcement is *approximate*, so that no
request waits for Redis:

* new names are reported on the next reactor turn (a handful a second): the
  fleet lets through at most one more per other beacon (a beacon learns that
  the window is spent when it reports) and what is in flight during one
  round trip;
* signed requests and relay bytes are batched, reported every
  ``FLUSH_INTERVAL`` (1 s), and only for clients that spent at least
  ``1/REPORT_FRACTION`` of the limit on this beacon in the window (a node's
  keepalives never reach Redis): the fleet lets through at most one flush
  interval's worth more, plus ``1/REPORT_FRACTION`` of the limit per beacon.

Fixed windows: a client may spend up to twice the limit across a window's
boundary, as with any fixed-window counter.  If Redis is away, the reports
are dropped (counted) and each beacon's own buckets still hold.
Per-pair relay bytes, mail and the name table stay per beacon: the first is
bounded by the per-node quota, the others are already fleet-wide (the
mailbox and the names are shared state).
"""

from __future__ import annotations

import collections
import math

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from .limits import MAX_TRACKED, IQuotaShare

#: a client is reported once it spent this fraction of its limit on one beacon
REPORT_FRACTION = 16
#: kinds reported at once (rare), not with the next batch
PROMPT = frozenset({"addr", "prefix"})

#: KEYS: the counters.  ARGV: amount, expiry (s), limit, for each key in turn.
#: Returns the (1-based) indexes of the counters whose window's budget is now spent.
SPEND = """
local over = {}
for i, key in ipairs(KEYS) do
  local amount = tonumber(ARGV[3 * i - 2])
  local total = redis.call('INCRBY', key, amount)
  if total == amount then redis.call('EXPIRE', key, ARGV[3 * i - 1]) end
  if total >= tonumber(ARGV[3 * i]) then over[#over + 1] = i end
end
return over
"""


@implementer(IQuotaShare)
class FleetQuotas:
    """The fleet-wide counters behind a beacon's :class:`~pilotproto.beacon.limits.Quotas`."""

    log = Logger()

    def __init__(self, clock, limits, key_prefix: str, counters, timeout: float = 2.0):
        self._clock = clock
        self._prefix = key_prefix
        self._counters = counters
        self._timeout = timeout
        self._rates = {
            "addr": limits.register_per_address,
            "prefix": limits.register_per_prefix,
            "req": limits.requests_per_key,
            "relay": limits.relay_per_node,
        }
        self._thresholds = {k: (0 if k in PROMPT else rate.count / REPORT_FRACTION) for k, rate in self._rates.items()}
        #: kind -> (window number, {who: [spent, reported]}): a new window drops the old dict whole
        self._windows = {kind: (-1, {}) for kind in self._rates}
        #: (kind, who, window) to report
        self._pending: dict = {}
        #: (kind, who) -> refused until (the end of its window); bounded
        self._blocked: collections.OrderedDict = collections.OrderedDict()
        self._redis = None
        self._scheduled = None
        self._sending = False

    def connected(self, redis) -> None:
        self._redis = redis

    # -- IQuotaShare ---------------------------------------------------------------------------

    def blocked(self, kind: str, who, now: float) -> float:
        """Seconds ``who`` must wait for ``kind`` because the fleet spent its window (0: go)."""
        if not self._blocked:
            return 0.0
        until = self._blocked.get((kind, who))
        if until is None:
            return 0.0
        if until <= now:
            del self._blocked[(kind, who)]
            return 0.0
        return until - now

    def spent(self, kind: str, who, amount: float, now: float) -> None:
        """This beacon let ``amount`` of ``kind`` through for ``who``."""
        window = int(now // self._rates[kind].seconds)
        number, spending = self._windows[kind]
        if number != window:
            number, spending = self._windows[kind] = (window, {})
        entry = spending.get(who)
        if entry is None:
            entry = spending[who] = [0, 0]
        entry[0] += amount
        if entry[0] >= self._thresholds[kind]:
            self._pending[(kind, who, window)] = entry
            if kind in PROMPT and self._scheduled is None:
                self._scheduled = self._clock.callLater(0, self.flush)

    # -- reporting ------------------------------------------------------------------------------

    def flush(self) -> int:
        """Send what this beacon spent since the last report, in one round trip;
        the service calls this every ``FLUSH_INTERVAL``."""
        self._scheduled = None
        if self._sending or not self._pending:
            return 0
        if self._redis is None:
            self._pending.clear()
            return 0
        batch, self._pending = self._pending, {}
        keys, args, order = [], [], []
        for (kind, who, window), entry in batch.items():
            amount = math.ceil(entry[0] - entry[1])
            entry[1] = entry[0]
            if amount <= 0:
                continue
            rate = self._rates[kind]
            label = who.hex() if isinstance(who, bytes) else str(who)
            keys.append(f"{self._prefix}:q:{kind}:{label}:{window}")
            args += [amount, math.ceil(rate.seconds) + 1, math.floor(rate.count)]
            order.append((kind, who, (window + 1) * rate.seconds))
        if not keys:
            return 0
        self._sending = True
        d = defer.maybeDeferred(self._redis.eval, SPEND, keys, args)
        d.addTimeout(self._timeout, self._clock)
        d.addCallbacks(self._over, self._failed, callbackArgs=(order,))
        d.addBoth(self._done)
        return len(keys)

    def _over(self, indexes, order) -> None:
        for index in indexes or ():
            kind, who, until = order[int(index) - 1]
            self._block(kind, who, until)

    def _block(self, kind: str, who, until: float) -> None:
        self._counters["fleet_quota_blocked_" + kind] += 1
        self._blocked[(kind, who)] = until
        self._blocked.move_to_end((kind, who))
        while len(self._blocked) > MAX_TRACKED:
            self._blocked.popitem(last=False)

    def _failed(self, failure) -> None:
        self._counters["fleet_quota_errors"] += 1
        self.log.warn("cannot count quotas in Redis ({why}); each beacon's own limits still hold", why=failure.getErrorMessage())

    def _done(self, _) -> None:
        self._sending = False
        if self._pending and any(kind in PROMPT for kind, _, _ in self._pending):
            self._scheduled = self._scheduled or self._clock.callLater(0, self.flush)
