"""
A beacon fleet: several beacon processes that share one Redis
(``--store redis://``) and answer as one beacon.

What each beacon holds, and where it comes from:

* **Names, visibility lists, agent cards and mail** — the state a single
  beacon keeps in memory and in SQLite — every beacon of the fleet holds
  *whole*, in memory, as it would alone: loaded from Redis at start, then
  kept up to date by the changes the others publish on ``PREFIX:changes``
  (:mod:`pilotproto.beacon.redis_store` writes and publishes each change in
  one script).  So the checks on every request (who holds a name, who may
  find whom, the mailbox caps) stay synchronous, and fleet-wide.
* **Live registrations** (where a node is now: its endpoints, and which
  beacon has its NAT mapping and relay key) stay on the beacon the node
  registered with, and are published as ``PREFIX:live:KEY`` with an expiry
  (``LIVE_TTL``), refreshed every ``LIVE_REFRESH`` seconds while the node
  keeps alive.  Another beacon reads them *through* when its own registry
  has no live record: a lookup is answered when Redis answers (a few
  hundred microseconds), and the answer is cached for ``CACHE_TTL`` seconds
  for the relay.
* **Relay frames** for a node live on another beacon are checked here
  (sender's tag, replay, visibility, quotas) and published on that beacon's
  channel ``PREFIX:DB:relay:BEACON_ID`` (those of one reactor turn in one
  message, up to ``RELAY_BATCH``), which forwards them from its own
  socket: only it has the node's NAT mapping.  A frame for a node whose
  location is not cached yet is dropped while it is looked up (the tunnel
  retransmits; the lookup that precedes a session has usually cached it).
* **Mail** is pushed by the beacon the recipient is live on: it holds the
  mail (the fleet-wide mailbox above), hears it posted, and pushes it; the
  recipient's ack there deletes it for everyone.

* **Agent cards** are held whole too; ``FindCards`` checks the liveness of
  the matching cards' keys not live here in one ``MGET`` (:meth:`find_cards`).
* **Redis away:** a read not answered within ``REDIS_TIMEOUT`` answers the
  node ``unavailable`` (txredisapi itself would wait for its reconnection),
  and an answer to a request that changed the shared state leaves only once
  Redis acknowledged the change (:meth:`when_kept`), else ``unavailable``.

Nothing here decides what a request may do: that is the server's, as for
a single beacon.  :class:`RedisFleet` is pure bookkeeping over an injected
Redis connection; :mod:`pilotproto.beacon.fleet_service` connects it.
"""

from __future__ import annotations

import json

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from ..errors import InvalidArgument, Unavailable
from ..identity import Address
from ..wire import Endpoint
from ..wire import relay as relay_wire
from . import cards as cards_
from .redis_store import ROW_READERS, IStoreListener, RedisStore, name_row
from .store import IFleet, NameRow

#: a live registration in Redis outlives the node's last refresh by this much
LIVE_TTL = 45
#: how often a beacon refreshes the live registrations it holds
LIVE_REFRESH = 10
#: how long a location read from Redis is trusted (relay frames use it)
CACHE_TTL = 5.0
#: how long "not live anywhere" is trusted (a flood of frames to a node that
#: is gone costs one Redis read per this many seconds)
MISS_TTL = 1.0
#: relay frames for one beacon published together (at least once a reactor turn)
RELAY_BATCH = 64
#: a read Redis has not answered in this long fails (Redis down: txredisapi
#: would wait for its reconnection): the asker gets ``unavailable``, not silence
REDIS_TIMEOUT = 2.0

#: live registrations renewed by one command
REFRESH_BATCH = 1000

#: KEYS: live:KEY, ...  ARGV: the expiry (s), then each key's value.
SET_LIVE = """
for i, key in ipairs(KEYS) do redis.call('SET', key, ARGV[i + 1], 'EX', ARGV[1]) end
return #KEYS
"""

#: KEYS: live:KEY.  ARGV: this beacon's id.  A beacon deletes only what it published.
DELETE_OWN_LIVE = """
local v = redis.call('GET', KEYS[1])
if v and cjson.decode(v).b == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


@attrs.frozen
class RemoteRecord:
    """A node live on another beacon of the fleet, as Redis had it: what a
    lookup answers and what the relay and visibility checks need."""

    public_key: bytes
    hostname: str
    address: Address
    public: bool
    reachable: tuple
    beacon: str

    def endpoints(self) -> tuple:
        return self.reachable


def live_value(record, beacon_id: str) -> str:
    return json.dumps(
        {
            "b": beacon_id,
            "host": record.hostname,
            "pub": bool(record.public),
            "ep": [[e.host, e.port] for e in record.endpoints()],
        }
    )


def remote_record(public_key: bytes, value: str) -> RemoteRecord:
    doc = json.loads(value)
    return RemoteRecord(
        public_key,
        doc["host"],
        Address.from_public_key(public_key),
        bool(doc["pub"]),
        tuple(Endpoint(h, int(p)) for h, p in doc["ep"]),
        doc["b"],
    )


@implementer(IFleet, IStoreListener)
class RedisFleet:
    log = Logger()

    def __init__(self, clock, server, store: RedisStore, beacon_id: str):
        self._clock = clock
        self._server = server
        self._store = store
        self.beacon_id = beacon_id
        self.counters = server.counters
        self._redis = None
        #: public key -> the record this beacon published as live
        self._local: dict = {}
        #: public key -> (trusted until, RemoteRecord or None)
        self._cache: dict = {}
        #: public key -> Deferred of a locate in flight
        self._locating: dict = {}
        #: beacon id -> relay frames for it, published once per reactor turn
        self._outbox: dict = {}
        self._publishing = None
        store.set_listener(self)

    def connected(self, redis) -> None:
        self._redis = redis
        for record in list(self._local.values()):
            self._publish_live(record)

    # -- this beacon's nodes ---------------------------------------------------------------

    def _live_key(self, public_key: bytes) -> str:
        return self._store.key("live", public_key.hex())

    def registered(self, record) -> None:
        self._local[record.public_key] = record
        self._cache.pop(record.public_key, None)
        self._publish_live(record)

    def _publish_live(self, record) -> None:
        if self._redis is None:
            return
        d = defer.maybeDeferred(self._redis.set, self._live_key(record.public_key), live_value(record, self.beacon_id), expire=LIVE_TTL)
        d.addErrback(self._failed, "publish a registration")

    def refresh(self) -> None:
        """Every ``LIVE_REFRESH`` s: renew the nodes still live here (``REFRESH_BATCH``
        to a command: one command per node cost ~100 µs of this beacon's CPU
        each), withdraw the rest."""
        keys, values = [], []
        for key in list(self._local):
            record = self._server.registry.get(key)
            if record is None:
                del self._local[key]
                self._withdraw(key)
            else:
                self._local[key] = record
                keys.append(self._live_key(key))
                values.append(live_value(record, self.beacon_id))
        if self._redis is None:
            return
        for at in range(0, len(keys), REFRESH_BATCH):
            d = defer.maybeDeferred(self._redis.eval, SET_LIVE, keys[at : at + REFRESH_BATCH], [LIVE_TTL, *values[at : at + REFRESH_BATCH]])
            d.addErrback(self._failed, "renew registrations")

    def _withdraw(self, public_key: bytes):
        if self._redis is None:
            return defer.succeed(None)
        d = defer.maybeDeferred(self._redis.eval, DELETE_OWN_LIVE, [self._live_key(public_key)], [self.beacon_id])
        return d.addErrback(self._failed, "withdraw a registration")

    def withdraw_all(self):
        """The beacon stops: its nodes are no longer live here (they register elsewhere)."""
        keys, self._local = list(self._local), {}
        return defer.gatherResults([self._withdraw(k) for k in keys])

    def _failed(self, failure, what: str) -> None:
        self.counters["fleet_redis_errors"] += 1
        self.log.warn("cannot {what} in Redis: {why}", what=what, why=failure.getErrorMessage())

    # -- nodes live elsewhere ------------------------------------------------------------------

    def located(self, public_key: bytes):
        """The cached location of ``public_key`` (RemoteRecord, None if known to be
        nowhere), or ``...`` if nothing fresh is cached."""
        entry = self._cache.get(public_key)
        if entry is None or entry[0] < self._clock.seconds():
            return ...
        return entry[1]

    def locate(self, public_key: bytes):
        """A Deferred of where ``public_key`` is live in the fleet (not here), or
        None; None too when Redis does not answer (the relay retries)."""
        d = self.ask(public_key)
        return d.addErrback(lambda f: (self._failed(f, "read a registration"), None)[1])

    def ask(self, public_key: bytes):
        """As :meth:`locate`, but a Redis that does not answer within
        ``REDIS_TIMEOUT`` fails the Deferred (with :class:`Unavailable`)."""
        cached = self.located(public_key)
        if cached is not ...:
            return defer.succeed(cached)
        if public_key in self._locating:
            waiting = defer.Deferred()
            self._locating[public_key].addBoth(lambda r: (waiting.callback(r), r)[1])
            return waiting
        if self._redis is None:
            return defer.fail(self._unavailable())
        d = self._read(self._redis.get, self._live_key(public_key))
        d.addCallback(self._found, public_key)
        self._locating[public_key] = d
        d.addBoth(lambda r: (self._locating.pop(public_key, None), r)[1])
        return d

    def _read(self, command, *args):
        """One read from Redis, failed with :class:`Unavailable` past ``REDIS_TIMEOUT``."""
        d = defer.maybeDeferred(command, *args)
        d.addTimeout(REDIS_TIMEOUT, self._clock)

        def unavailable(failure):
            self.counters["fleet_redis_unavailable"] += 1
            raise self._unavailable() from failure.value

        return d.addErrback(unavailable)

    @staticmethod
    def _unavailable() -> Unavailable:
        return Unavailable(
            "the node is not live on this beacon, and the beacon fleet's shared store (Redis) is not answering",
            hint="Retry in a few seconds, or look it up through another beacon; the operator should check Redis.",
        )

    def _found(self, value, public_key: bytes):
        remote = None
        if value:
            remote = remote_record(public_key, value.decode("utf-8") if isinstance(value, bytes) else value)
            if remote.beacon == self.beacon_id:
                remote = None  # what this beacon published, gone from its registry since
        self._cache[public_key] = (self._clock.seconds() + (CACHE_TTL if remote else MISS_TTL), remote)
        return remote

    def _holder(self, msg):
        """A Deferred of the key a lookup names, from the beacon's names, else from Redis."""
        registry = self._server.registry
        try:
            if msg.by_address:
                return defer.succeed(registry.holder_of_address(Address.from_bytes(msg.target)))
            hostname = msg.target.decode("utf-8")
        except (InvalidArgument, UnicodeDecodeError):
            return defer.succeed(None)
        key = registry.holder_of(hostname)
        if key is not None or self._redis is None:
            return defer.succeed(key)
        # A name bound an instant ago on another beacon, whose change is still on its way.
        d = self._read(self._redis.get, self._store.key("holder", hostname))
        return d.addCallback(lambda v: bytes.fromhex(v.decode() if isinstance(v, bytes) else v) if v else None)

    def lookup(self, msg, requester, inbound) -> list:
        self.counters["fleet_lookups"] += 1
        d = self._holder(msg)
        d.addCallback(lambda key: self.ask(key) if key is not None else None)
        d.addCallbacks(
            lambda target: self._server.lookup_answer(msg, target, requester, inbound),
            lambda f: self._refused(f, msg, inbound),
        )
        d.addCallback(self._reply, inbound)
        d.addErrback(lambda f: self.log.failure("a fleet lookup failed", f))
        return []

    def find_cards(self, keys, msg, requester, inbound) -> list:
        """``FindCards`` whose matches include cards of ``keys``, nodes not
        live here: which of them are live in the fleet is one ``MGET`` of their
        liveness keys (one round trip per query), then the answer is sent."""
        self.counters["fleet_finds"] += 1
        if self._redis is None:
            d = defer.fail(self._unavailable())
        else:
            d = self._read(self._redis.mget, [self._live_key(k) for k in keys])
        d.addCallback(self._found_many, keys)
        d.addCallbacks(
            lambda remote: cards_.find_reply(self._server, msg, requester, inbound, remote),
            lambda f: self._refused(f, msg, inbound),
        )
        d.addCallback(self._reply, inbound)
        d.addErrback(lambda f: self.log.failure("a fleet find failed", f))
        return []

    def _found_many(self, values, keys) -> dict:
        remote = {}
        for key, value in zip(keys, values or ()):
            record = self._found(value, key)
            if record is not None:
                remote[key] = record
        return remote

    def _refused(self, failure, msg, inbound) -> list:
        failure.trap(Unavailable)
        return self._server._refusal(msg, failure.value, inbound, authenticated=True)

    def _reply(self, replies, inbound) -> None:
        server = self._server
        if inbound.record is not None and not inbound.validated:
            replies = server.paths.answer(inbound.record, inbound.source, replies)
        for data, destination in replies:
            self._send(data, destination)

    def when_kept(self, msg, inbound, replies) -> list:
        """``replies`` to a request, sent once Redis acknowledged every change
        queued so far (the request's own): a restart of Redis loses nothing
        acknowledged to a node.  Redis silent for ``REDIS_TIMEOUT``: the
        answer is ``unavailable`` (the change stays queued and is written when
        Redis is back; a resent request is deduplicated)."""
        d = self._store.written()
        if d is None:
            return replies
        self.counters["fleet_answers_held"] += 1
        d.addTimeout(REDIS_TIMEOUT, self._clock)

        def unkept(failure):
            self.counters["fleet_answers_unkept"] += 1
            error = Unavailable(
                "the beacon fleet's shared store (Redis) did not confirm the change in time",
                hint="Retry in a few seconds; the operator should check Redis.",
            )
            return self._server._refusal(msg, error, inbound, authenticated=inbound.record is not None)

        d.addCallbacks(lambda _: replies, unkept)
        d.addCallback(lambda out: [self._send(data, destination) for data, destination in out])
        d.addErrback(lambda f: self.log.failure("cannot answer after a write to Redis", f))
        return []

    def _send(self, data: bytes, destination) -> None:
        if self._server.send is None:
            self.counters["dropped_no_transport"] += 1
            return
        self._server.send(data, destination)

    # -- the relay across beacons -------------------------------------------------------------

    def relay(self, sender, data: bytes) -> list:
        server = self._server
        key = server.registry.holder_of_address(Address.from_bytes(bytes(data[10:18])))
        remote = self.located(key) if key is not None else None
        if remote is ...:
            self.counters["fleet_relay_dropped_locating"] += 1
            self.locate(key)
            return []
        if remote is None or not server.relay_allowed(sender, remote):
            self.counters["relay_dropped_no_destination"] += 1
            return []
        payload = len(data) - relay_wire.TO_BEACON_OVERHEAD
        if not server.quotas.relay(sender, key, payload):
            return []
        self.counters["relayed_frames"] += 1
        self.counters["relayed_bytes"] += payload
        self.counters["fleet_relayed_out"] += 1
        if self._redis is not None:
            frame = key + relay_wire.forward_from_beacon(data)
            batch = self._outbox.setdefault(remote.beacon, [])
            batch.append(len(frame).to_bytes(2, "big") + frame)
            if len(batch) >= RELAY_BATCH:
                self._publish(remote.beacon)
            elif self._publishing is None:
                self._publishing = self._clock.callLater(0, self._publish_all)
        return []

    def _publish_all(self) -> None:
        self._publishing = None
        for beacon in list(self._outbox):
            self._publish(beacon)

    def _publish(self, beacon: str) -> None:
        """The frames for ``beacon`` of this reactor turn, in one PUBLISH: a
        command costs the beacon ~100 µs of txredisapi, whatever its size."""
        frames = self._outbox.pop(beacon, None)
        if not frames:
            return
        d = defer.maybeDeferred(self._redis.publish, self._store.relay_channel(beacon), b"".join(frames))
        d.addErrback(self._failed, "pass on relay frames")

    def relayed_in(self, message: bytes) -> None:
        """Frames another beacon checked, for nodes live here: each is a u16
        length, then the node's key (32 bytes) and the frame to forward."""
        view, at = memoryview(message), 0
        registry = self._server.registry
        while at + 2 + 32 <= len(view):
            size = int.from_bytes(view[at : at + 2], "big")
            item = view[at + 2 : at + 2 + size]
            at += 2 + size
            if len(item) < 32 or len(item) != size:
                self.counters["fleet_relay_bad_frames"] += 1
                return
            record = registry.get(bytes(item[:32]))
            if record is None:
                self.counters["fleet_relay_dropped_gone"] += 1
                continue
            self.counters["fleet_relayed_in"] += 1
            self._send(bytes(item[32:]), record.endpoint)

    # -- what the other beacons changed ------------------------------------------------------------

    def changed(self, message: bytes) -> None:
        """One change another beacon made (as ``redis_store`` publishes it): make it here."""
        try:
            event = json.loads(message)
            origin, apply, field, value = event["from"], _APPLY[event["op"]], event["field"], event["value"]
        except (ValueError, KeyError, TypeError):
            # Something else publishes on our channel (another version, or a mistake).
            self.counters["fleet_bad_changes"] += 1
            self.log.warn("ignored a message on the fleet's channel that is no change: {message!r}", message=message[:200])
            return
        if origin == self.beacon_id:
            return
        try:
            with self._store.muted():
                apply(self, field, value)
        except Exception:
            self.counters["fleet_bad_changes"] += 1
            self.log.failure("cannot apply a change from the fleet: {message!r}", message=message[:200])
            return
        self.counters["fleet_changes"] += 1

    def name_lost(self, hostname: str, loser: bytes, winner: bytes) -> None:
        """Redis gave ``hostname`` to another beacon's node: give it up here
        (the loser's next request is answered ``not_registered``, then ``name_taken``)."""
        self.counters["fleet_names_lost"] += 1
        with self._store.muted():
            self._server.registry.restore([NameRow(winner, hostname, self._clock.seconds())])

    def _put_name(self, field: str, value: str) -> None:
        row = name_row(field, value)
        registry = self._server.registry
        old = registry.name_of(row.public_key)
        if old is not None and old != row.hostname:
            registry.release(row.public_key, old)
        registry.restore([row])

    def _delete_name(self, field: str, value) -> None:
        key = bytes.fromhex(field)
        registry = self._server.registry
        name = registry.name_of(key)
        if name is not None:
            registry.release(key, name)
        self._cache.pop(key, None)

    def _put_visibility(self, field: str, value: str) -> None:
        self._server.visibility.restore([ROW_READERS["vis"](field, value)])

    def _delete_visibility(self, field: str, value) -> None:
        self._server.visibility.forget(bytes.fromhex(field))

    def _put_card(self, field: str, value: str) -> None:
        self._server.cards.restore([ROW_READERS["cards"](field, value)])

    def _delete_card(self, field: str, value) -> None:
        self._server.cards.forget(bytes.fromhex(field))

    def _put_mail(self, field: str, value: str) -> None:
        self._server.mailbox.adopt(ROW_READERS["mail"](field, value))

    def _delete_mail(self, field: str, value) -> None:
        self._server.mailbox.forget(int(field, 16))

    def catch_up(self, snapshot) -> None:
        """After Redis was away: take every row it holds (changes published
        meanwhile were not heard).  Rows deleted meanwhile stay until their expiry."""
        server = self._server
        with self._store.muted():
            server.registry.restore(snapshot.names)
            server.visibility.restore(snapshot.visibility)
            server.cards.restore(snapshot.cards)
            for row in snapshot.mail:
                server.mailbox.adopt(row)
        self.counters["fleet_catch_ups"] += 1


_APPLY = {
    "put_name": RedisFleet._put_name,
    "delete_name": RedisFleet._delete_name,
    "put_visibility": RedisFleet._put_visibility,
    "delete_visibility": RedisFleet._delete_visibility,
    "put_card": RedisFleet._put_card,
    "delete_card": RedisFleet._delete_card,
    "put_mail": RedisFleet._put_mail,
    "delete_mail": RedisFleet._delete_mail,
}
