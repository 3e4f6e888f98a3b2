"""
The beacon's lasting state in Redis, shared by every beacon of a fleet
(``twistd pilot beacon --store redis://HOST:PORT/DB``).

:class:`RedisStore` is an :class:`~pilotproto.beacon.store.IBeaconStore`
like the SQLite one: the registry, the visibility lists, the cards and the
mailbox tell it each change.  Unlike SQLite it writes each change *at once*
(on the next reactor turn, pipelined: no one-second batch), because other
beacons wait for it, and each write is a Lua script that changes the data
**and publishes the change** on ``PREFIX:changes`` in one atomic step, so a
beacon that hears a change can rely on Redis holding it, and every beacon
hears the changes in the order Redis applied them.  A failed write (Redis
restarting) stays queued, in order, and is sent again by :meth:`flush`
(every ``FLUSH_INTERVAL``); every write is idempotent, so sending one twice
is harmless.  The answer to the request that made a change waits until
Redis acknowledged it (:meth:`written`, used by
:meth:`~pilotproto.beacon.fleet.RedisFleet.when_kept`): an ``Ok`` means
Redis has it, on disk with ``appendfsync always``.

Names are the one thing two beacons can race for.  Redis is the referee:
``PREFIX:holder:HOSTNAME`` names the key that holds it, and the put-name
script refuses to move a name held by another key that was seen within the
hold time; the beacon that lost is told (:class:`IStoreListener`) and gives
the name back, so its node's next request is answered ``name_taken``.

Rows are JSON (bytes in hex): readable with ``redis-cli``, and Lua's
``cjson`` reads them.  Keys (``PREFIX`` is ``pilot`` by default):

=========================  ====================================================
``PREFIX:names``           hash: key (hex) -> {"host", "seen"}
``PREFIX:holder:HOST``     string: the key (hex) that holds HOST
``PREFIX:vis``             hash: owner (hex) -> {"v", "keys": [hex, ...]}
``PREFIX:cards``           hash: key (hex) -> {"v", "card", "sig"}
``PREFIX:mail``            hash: mail id (hex) -> the mail row
``PREFIX:live:KEY``        string with expiry: where a node is live (fleet.py)
``PREFIX:DB:changes``      channel: every change above, as it is made
``PREFIX:DB:relay:ID``     channel: relay frames for beacon ID to forward
=========================  ====================================================

Needs Redis 5 or newer, not Redis Cluster (the scripts touch keys they
compute).  What the operator must configure is in ``docs/deploy.md``.
"""

from __future__ import annotations

import collections
import contextlib
import json
import urllib.parse

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import Interface, implementer

from ..common.wiring import check_provides
from ..errors import InvalidArgument
from .store import CardRow, IBeaconStore, MailRow, NameRow, Snapshot, VisibilityRow, _dedup_from_text, _dedup_to_text

DEFAULT_PREFIX = "pilot"
DEFAULT_PORT = 6379


@attrs.frozen
class RedisAddress:
    """Where the fleet's Redis is: ``redis://[:PASSWORD@]HOST[:PORT][/DB]``."""

    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    password: str | None = attrs.field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str) -> "RedisAddress":
        hint = "Write redis://HOST:PORT/DB, e.g. redis://127.0.0.1:6379/0."
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "redis" or not parts.hostname:
            raise InvalidArgument(f"{url!r} is not a Redis address", hint=hint)
        try:
            port = parts.port or DEFAULT_PORT
            path = parts.path.strip("/")
            db = int(path) if path else 0
        except ValueError:
            raise InvalidArgument(f"{url!r}: the port and the database must be numbers", hint=hint) from None
        if db < 0 or parts.query or parts.fragment:
            raise InvalidArgument(f"{url!r} is not a Redis address", hint=hint)
        return cls(parts.hostname, port, db, urllib.parse.unquote(parts.password) if parts.password else None)

    def __str__(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"


class IStoreListener(Interface):
    """Told what Redis decided against this beacon."""

    def name_lost(hostname, loser, winner):
        """Another beacon's node holds ``hostname`` (key ``winner``): ``loser`` may not."""


# -- rows as JSON ---------------------------------------------------------------------------


def name_value(row: NameRow) -> str:
    return json.dumps({"host": row.hostname, "seen": row.last_seen})


def name_row(field: str, value: str) -> NameRow:
    doc = json.loads(value)
    return NameRow(bytes.fromhex(field), doc["host"], float(doc["seen"]))


def visibility_value(row: VisibilityRow) -> str:
    return json.dumps({"v": row.version, "keys": sorted(k.hex() for k in row.keys)})


def visibility_row(field: str, value: str) -> VisibilityRow:
    doc = json.loads(value)
    return VisibilityRow(bytes.fromhex(field), int(doc["v"]), frozenset(bytes.fromhex(k) for k in doc["keys"]))


def card_value(row: CardRow) -> str:
    return json.dumps({"v": str(row.version), "card": row.card.hex(), "sig": row.signature.hex()})


def card_row(field: str, value: str) -> CardRow:
    doc = json.loads(value)
    return CardRow(bytes.fromhex(field), int(doc["v"]), bytes.fromhex(doc["card"]), bytes.fromhex(doc["sig"]))


def mail_field(mail_id: int) -> str:
    return mail_id.to_bytes(8, "big").hex()


def mail_value(row: MailRow) -> str:
    kind, value = row.recipient
    return json.dumps(
        {
            "from": row.sender.hex(),
            "to": [kind, value if isinstance(value, str) else value.hex()],
            "dedup": _dedup_to_text(row.dedup_key),
            "datagram": row.datagram.hex(),
            "expires": row.expires_at,
        }
    )


def mail_row(field: str, value: str) -> MailRow:
    doc = json.loads(value)
    kind, to = doc["to"]
    recipient = (kind, to) if kind == "name" else (kind, bytes.fromhex(to))
    return MailRow(
        int(field, 16), bytes.fromhex(doc["from"]), recipient, _dedup_from_text(doc["dedup"]), bytes.fromhex(doc["datagram"]), float(doc["expires"])
    )


#: hash name -> (value -> row) for each kind of row
ROW_READERS = {"names": name_row, "vis": visibility_row, "cards": card_row, "mail": mail_row}

# -- the scripts ------------------------------------------------------------------------------

#: KEYS: holder:HOST, names, changes.  ARGV: key, row, event, oldest "seen" still held, holder prefix.
#: Returns the key that holds the name instead, or nil once it is ours.
PUT_NAME = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then
  local row = redis.call('HGET', KEYS[2], cur)
  if row and tonumber(cjson.decode(row).seen) >= tonumber(ARGV[4]) then return cur end
  redis.call('HDEL', KEYS[2], cur)
end
local old = redis.call('HGET', KEYS[2], ARGV[1])
if old then
  local previous = ARGV[5] .. cjson.decode(old).host
  if previous ~= KEYS[1] and redis.call('GET', previous) == ARGV[1] then redis.call('DEL', previous) end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PUBLISH', KEYS[3], ARGV[3])
return false
"""

#: KEYS: names, changes.  ARGV: key, event, holder prefix.
DELETE_NAME = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local holder = ARGV[3] .. cjson.decode(old).host
  if redis.call('GET', holder) == ARGV[1] then redis.call('DEL', holder) end
  redis.call('HDEL', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[2], ARGV[2])
return 1
"""

#: KEYS: hash, changes.  ARGV: field, value, event.
PUT_ROW = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PUBLISH', KEYS[2], ARGV[3])
return 1
"""

#: KEYS: hash, changes.  ARGV: field, event.
DELETE_ROW = """
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('PUBLISH', KEYS[2], ARGV[2])
return 1
"""


@attrs.frozen
class Change:
    """One queued write: a script, its keys and arguments; ``name`` is set for a name's claim."""

    script: str
    keys: tuple
    args: tuple
    name: NameRow | None = None


@implementer(IBeaconStore)
class RedisStore:
    """The fleet's state in Redis.  ``connected(redis)`` hands it a txredisapi
    connection; until then (and while Redis is away) changes wait, in order."""

    log = Logger()

    def __init__(self, clock, beacon_id: str, hold: float, prefix: str = DEFAULT_PREFIX, db: int = 0):
        self._clock = clock
        self.beacon_id = beacon_id
        self.hold = hold
        self.prefix = prefix
        # Pub/sub channels are not per database: the database is in their names.
        self._channels = f"{prefix}:{db}"
        self.channel = f"{self._channels}:changes"
        self.listener = None
        self._redis = None
        self._queue: collections.deque = collections.deque()
        self._sending = False
        self._scheduled = None
        self._muted = 0
        #: changes Redis has acknowledged, and changes queued (both since start)
        self.writes = 0
        self._queued = 0
        #: changes queued when :meth:`written` was last asked
        self._answered = 0
        #: (changes that must be acknowledged, Deferred) for :meth:`written`
        self._watchers: list = []

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix,) + parts)

    def relay_channel(self, beacon_id: str) -> str:
        """Where relay frames for the nodes live on ``beacon_id`` go."""
        return f"{self._channels}:relay:{beacon_id}"

    def set_listener(self, listener) -> None:
        self.listener = check_provides(listener, IStoreListener, "RedisStore listener")

    def connected(self, redis) -> None:
        """Write through ``redis`` (a txredisapi connection) from now on."""
        self._redis = redis
        self._schedule()

    @contextlib.contextmanager
    def muted(self):
        """Changes made inside came from Redis (another beacon's): not written back."""
        self._muted += 1
        try:
            yield
        finally:
            self._muted -= 1

    # -- reading ----------------------------------------------------------------------------

    def load(self) -> Snapshot:
        """Empty: Redis is read asynchronously, by :meth:`read`, before the beacon listens."""
        return Snapshot()

    @defer.inlineCallbacks
    def read(self):
        """The fleet's state as Redis holds it now, as a :class:`Snapshot`."""
        found = {}
        for name, reader in ROW_READERS.items():
            rows = yield self._redis.hgetall(self.key(name))
            found[name] = tuple(reader(_text(f), _text(v)) for f, v in (rows or {}).items())
        return Snapshot(found["names"], found["vis"], found["mail"], found["cards"])

    # -- queueing ---------------------------------------------------------------------------

    def _event(self, op: str, field: str, value: str | None) -> str:
        return json.dumps({"from": self.beacon_id, "op": op, "field": field, "value": value})

    def _queue_change(self, change: Change) -> None:
        if self._muted:
            return
        self._queue.append(change)
        self._queued += 1
        self._schedule()

    def written(self):
        """None if no change was queued since the last call (the request being
        answered changed nothing: most requests) or all are acknowledged; else a
        Deferred that fires once Redis has acknowledged every change queued so
        far (the fleet holds the request's answer until then: an Ok means Redis
        has it).  None too before :meth:`connected` (a fleet beacon answers
        nobody then; sans-IO tests)."""
        mark, self._answered = self._answered, self._queued
        if self._redis is None or mark == self._queued or self.writes >= self._queued:
            return None
        d = defer.Deferred()
        self._watchers.append((self._queued, d))
        return d

    def _put(self, hash_name: str, op: str, field: str, value: str) -> None:
        self._queue_change(Change(PUT_ROW, (self.key(hash_name), self.channel), (field, value, self._event(op, field, value))))

    def _delete(self, hash_name: str, op: str, field: str) -> None:
        self._queue_change(Change(DELETE_ROW, (self.key(hash_name), self.channel), (field, self._event(op, field, None))))

    def put_name(self, row: NameRow) -> None:
        field, value = row.public_key.hex(), name_value(row)
        oldest = self._clock.seconds() - self.hold
        self._queue_change(
            Change(
                PUT_NAME,
                (self.key("holder", row.hostname), self.key("names"), self.channel),
                (field, value, self._event("put_name", field, value), repr(oldest), self.key("holder", "")),
                name=row,
            )
        )

    def delete_name(self, public_key: bytes) -> None:
        field = public_key.hex()
        self._queue_change(Change(DELETE_NAME, (self.key("names"), self.channel), (field, self._event("delete_name", field, None), self.key("holder", ""))))

    def put_visibility(self, row: VisibilityRow) -> None:
        self._put("vis", "put_visibility", row.owner.hex(), visibility_value(row))

    def delete_visibility(self, owner: bytes) -> None:
        self._delete("vis", "delete_visibility", owner.hex())

    def put_mail(self, row: MailRow) -> None:
        self._put("mail", "put_mail", mail_field(row.mail_id), mail_value(row))

    def delete_mail(self, mail_id: int) -> None:
        self._delete("mail", "delete_mail", mail_field(mail_id))

    def put_card(self, row: CardRow) -> None:
        self._put("cards", "put_card", row.public_key.hex(), card_value(row))

    def delete_card(self, public_key: bytes) -> None:
        self._delete("cards", "delete_card", public_key.hex())

    # -- writing ------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._queue)

    def _schedule(self) -> None:
        if self._scheduled is None and self._redis is not None and self._queue:
            self._scheduled = self._clock.callLater(0, self._send)

    def flush(self) -> int:
        """Send what waits (the service calls this every second: a retry after a failure)."""
        if self._scheduled is not None or self._sending:
            return 0
        return self._send()

    def _send(self) -> int:
        self._scheduled = None
        if self._sending or self._redis is None or not self._queue:
            return 0
        batch = list(self._queue)
        self._sending = True
        sent = [defer.maybeDeferred(self._redis.eval, c.script, list(c.keys), list(c.args)) for c in batch]
        results = defer.DeferredList(sent, consumeErrors=True)
        results.addCallback(self._sent, batch)
        return len(batch)

    def _sent(self, results, batch) -> None:
        self._sending = False
        for (ok, result), change in zip(results, batch):
            if not ok:
                # Redis is away (or refused): keep this change and all after it, in order.
                self.log.warn("cannot write to Redis ({why}); {n} changes wait", why=result.getErrorMessage(), n=len(self._queue))
                self._tell_watchers()
                return
            self._queue.popleft()
            self.writes += 1
            if change.name is not None and result:
                self._lost(change.name, _text(result))
        self._schedule()
        self._tell_watchers()

    def _tell_watchers(self) -> None:
        if not self._watchers:
            return
        ready = [d for target, d in self._watchers if target <= self.writes]
        self._watchers = [(t, d) for t, d in self._watchers if t > self.writes]
        for d in ready:
            if not d.called:  # a watcher that timed out was cancelled
                d.callback(None)

    def _lost(self, row: NameRow, winner: str) -> None:
        self.log.info("{name} is held by another key of the fleet", name=row.hostname)
        if self.listener is not None:
            self.listener.name_lost(row.hostname, row.public_key, bytes.fromhex(winner))

    def drained(self):
        """A Deferred that fires once nothing waits (or at once if Redis is away)."""
        if self._redis is None or not (self._queue or self._sending):
            return defer.succeed(None)
        d = defer.Deferred()
        deadline = self._clock.seconds() + 1.0

        def check():
            if not (self._queue or self._sending) or self._clock.seconds() >= deadline:
                d.callback(None)
            else:
                self._clock.callLater(0.02, check)

        check()
        return d

    def close(self):
        """Write what waits (for up to a second); the fleet closes the connection."""
        return self.drained()


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
