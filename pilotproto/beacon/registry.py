"""
The beacon's registry: which key holds which name, and where each live
node is.

Two kinds of entry, with two lifetimes:

* a **name binding** (hostname -> key, last seen) lasts ``hold`` seconds
  (days: ``Limits.name_hold``) after the key was last seen, and is kept in
  the store, so neither a brief absence nor a beacon restart frees a name.
  Only the owner frees it earlier: by a signed release, or by registering
  another name (a key holds one name).  The key's address is bound with it.
* a **live registration** (:class:`Record`: endpoint, relay key, replay
  state) lasts ``ttl`` seconds (30) after the last fresh signed request.
  Lookups, relaying and mail pushes see only live registrations.

Rules:

* a hostname and an address belong to the key that holds the binding;
  another key gets ``name_taken`` (or ``refused`` for a colliding address)
  until the binding has gone ``hold`` seconds unseen;
* the same key registering again updates its record and its binding;
* a record's ``endpoint`` is always a *validated* address: set by a
  registration (its nonce proves the source receives) and moved only by
  :mod:`pilotproto.beacon.paths`; :meth:`Registry.touch` only notes that
  the key was seen;
* a signed request's ``seq`` must not have been seen from that key before,
  and may be at most ``SEQ_WINDOW_NS`` older than the newest one seen.

Pure bookkeeping with an injected clock; the beacon server feeds it.
"""

from __future__ import annotations

import attrs

from ..common.replay import ReplayWindow
from ..common.wiring import check_provides
from ..errors import NameTaken, RateLimited, Refused
from ..identity import Address
from ..wire.codec import Endpoint
from .limits import DAY
from .store import IBeaconStore, MemoryStore, NameRow

DEFAULT_TTL = 30
DEFAULT_HOLD = 30 * DAY
DEFAULT_MAX_NAMES = 200_000
SEQ_WINDOW_NS = 10 * 1_000_000_000
#: a binding's last-seen time is written to the store when it has moved this
#: far: the hold time is days, so a keepalive every 5 s need not be a write
LAST_SEEN_RESOLUTION = 600
#: when the beacon holds ``max_names``, a new name may try again after this
FULL_RETRY_AFTER = 3600
#: request seqs a record keeps before it prunes the ones outside the window
SEQS_KEPT = 4


@attrs.define
class Binding:
    public_key: bytes
    hostname: str
    last_seen: float
    #: ``last_seen`` as last written to the store
    stored_seen: float = attrs.field(default=0.0, eq=False)

    @property
    def address(self) -> Address:
        return Address.from_public_key(self.public_key)


@attrs.define(slots=True)
class Record:
    """One live node.  Slotted and lean: a beacon holds 100,000 of these, and
    state only some nodes need (relay replay window, tag hasher, quota
    buckets, a path candidate) is made on first use."""

    public_key: bytes
    hostname: str
    address: Address
    #: the validated endpoint: every datagram the beacon starts goes here
    endpoint: Endpoint
    lan_endpoints: tuple
    public: bool
    registered_at: float
    last_seen: float
    max_seq: int = 0
    seen_seqs: set = attrs.field(factory=set)
    #: ``seen_seqs`` is pruned when it grows past this (doubling: amortised O(1))
    prune_at: int = attrs.field(default=SEQS_KEPT, repr=False)
    #: relay frame counters seen (made on the node's first relay frame)
    relay_window: ReplayWindow | None = attrs.field(default=None, repr=False)
    #: the hasher keyed with the relay key this node shares with this beacon
    #: process (:func:`relay.tag_hasher`), copied per frame; made on the first
    #: relay frame; False if the node's key cannot use the relay
    relay_mac: object = attrs.field(default=None, repr=False)
    #: an address the node's datagrams came from that has not echoed a challenge yet
    candidate: object = attrs.field(default=None, repr=False)
    #: quota buckets (:mod:`pilotproto.beacon.limits`), made on first use
    requests: object = attrs.field(default=None, repr=False)
    relay_bytes: object = attrs.field(default=None, repr=False)
    relay_pairs: object = attrs.field(default=None, repr=False)

    def endpoints(self) -> tuple:
        # A node on the TLS relay has no UDP endpoint worth probing.
        reachable = (self.endpoint,) if type(self.endpoint) is Endpoint else ()
        return reachable + tuple(e for e in self.lan_endpoints if e != self.endpoint)

    def accept_seq(self, seq: int) -> bool:
        """Record ``seq`` if it is fresh; False for a replay or a stale one."""
        seen = self.seen_seqs
        if seq in seen or seq <= self.max_seq - SEQ_WINDOW_NS:
            return False
        seen.add(seq)
        if seq > self.max_seq:
            self.max_seq = seq
            if len(seen) > self.prune_at:
                # Only seqs inside the window can still be replayed.  Pruning
                # when the set doubles keeps the cost O(1) per request even for
                # a key holder who sends thousands in a window, and a node that
                # keeps alive every 25 s holds a set of one or two.
                floor = seq - SEQ_WINDOW_NS
                self.seen_seqs = seen = {s for s in seen if s > floor}
                self.prune_at = max(SEQS_KEPT, 2 * len(seen))
        return True


class Registry:
    def __init__(self, clock, ttl: float = DEFAULT_TTL, hold: float = DEFAULT_HOLD, store=None, max_names: int = DEFAULT_MAX_NAMES):
        self._clock = clock
        self.ttl = ttl
        self.hold = hold
        self.max_names = max_names
        self._store = check_provides(store if store is not None else MemoryStore(), IBeaconStore, "Registry store")
        self._live: dict[bytes, Record] = {}
        self._bindings: dict[bytes, Binding] = {}
        self._by_name: dict[str, bytes] = {}
        #: the 8 address bytes (as on the wire) -> key: relay frames look up raw bytes
        self._by_address: dict[bytes, bytes] = {}

    def __len__(self) -> int:
        """Live registrations."""
        return len(self._live)

    @property
    def names(self) -> int:
        return len(self._bindings)

    def restore(self, rows) -> None:
        """Take back the bindings a store kept (at start, before any datagram)."""
        now = self._clock.seconds()
        for row in sorted(rows, key=lambda r: r.last_seen):
            if now - row.last_seen > self.hold:
                self._store.delete_name(row.public_key)
                continue
            # Newest last: if two rows name one host (a half-written move), the newest wins.
            stale = self._by_name.get(row.hostname)
            if stale is not None and stale != row.public_key:
                self._drop_binding(stale)
            self._bind(Binding(row.public_key, row.hostname, row.last_seen, stored_seen=row.last_seen))

    # -- names ---------------------------------------------------------------------

    def _held(self, binding: Binding | None) -> bool:
        return binding is not None and self._clock.seconds() - binding.last_seen <= self.hold

    def holder_of(self, hostname: str) -> bytes | None:
        """The key that holds ``hostname`` (online or not), or None."""
        key = self._by_name.get(hostname)
        return key if key is not None and self._held(self._bindings.get(key)) else None

    def holder_of_address(self, address: Address) -> bytes | None:
        key = self._by_address.get(address.to_bytes())
        return key if key is not None and self._held(self._bindings.get(key)) else None

    def name_of(self, public_key: bytes) -> str | None:
        binding = self._bindings.get(public_key)
        return binding.hostname if self._held(binding) else None

    def check_name(self, public_key: bytes, hostname: str) -> bool:
        """May ``public_key`` register ``hostname``?  True if it holds it already
        (a returning owner), False if it is free; NameTaken or Refused if not."""
        holder = self.holder_of(hostname)
        if holder is not None and holder != public_key:
            raise NameTaken(f"the name {hostname!r} is held by another key")
        address = Address.from_public_key(public_key)
        other = self.holder_of_address(address)
        if other is not None and other != public_key:
            raise Refused(f"address {address} is held by another key", hint="Make a new identity.")
        if holder == public_key:
            return True
        if public_key not in self._bindings and len(self._bindings) >= self.max_names:
            # Names past their hold time are dropped by expire(), every few seconds.
            raise RateLimited("the beacon holds as many names as it may", retry_after=FULL_RETRY_AFTER)
        return False

    def _bind(self, binding: Binding) -> None:
        self._bindings[binding.public_key] = binding
        self._by_name[binding.hostname] = binding.public_key
        self._by_address[binding.address.to_bytes()] = binding.public_key

    def _drop_binding(self, public_key: bytes) -> None:
        self._live.pop(public_key, None)
        binding = self._bindings.pop(public_key, None)
        if binding is None:
            return
        if self._by_name.get(binding.hostname) == public_key:
            del self._by_name[binding.hostname]
        raw = binding.address.to_bytes()
        if self._by_address.get(raw) == public_key:
            del self._by_address[raw]
        self._store.delete_name(public_key)

    def _store_binding(self, binding: Binding) -> None:
        binding.stored_seen = binding.last_seen
        self._store.put_name(NameRow(binding.public_key, binding.hostname, binding.last_seen))

    def release(self, public_key: bytes, hostname: str) -> bool:
        """The owner gives ``hostname`` up: free now, and its registration ends."""
        if self.holder_of(hostname) != public_key:
            return False
        self._drop_binding(public_key)
        return True

    # -- live registrations ------------------------------------------------------------

    def _alive(self, record: Record | None) -> bool:
        return record is not None and self._clock.seconds() - record.last_seen <= self.ttl

    def register(self, public_key, hostname, endpoint, lan_endpoints=(), public=False, seq=0) -> Record:
        """Bind ``hostname`` and the key's address to ``public_key``, live at ``endpoint``
        (an address the registration's nonce proved)."""
        now = self._clock.seconds()
        self.check_name(public_key, hostname)
        address = Address.from_public_key(public_key)
        old = self._live.get(public_key)
        # Whoever held the name or the address before is past the hold time.
        for stale in {self._by_name.get(hostname), self._by_address.get(address.to_bytes())} - {None, public_key}:
            self._drop_binding(stale)
        binding = self._bindings.get(public_key)
        if binding is not None and binding.hostname != hostname:
            self._drop_binding(public_key)  # a key holds one name: the old one is free now
        binding = Binding(public_key, hostname, now)
        self._bind(binding)
        self._store_binding(binding)
        record = Record(
            public_key=public_key,
            hostname=hostname,
            address=address,
            endpoint=endpoint,
            lan_endpoints=tuple(lan_endpoints),
            public=public,
            registered_at=now,
            last_seen=now,
        )
        if old is not None:
            record.max_seq, record.seen_seqs, record.prune_at = old.max_seq, old.seen_seqs, old.prune_at
            record.relay_window, record.relay_mac = old.relay_window, old.relay_mac
            record.requests, record.relay_bytes, record.relay_pairs = old.requests, old.relay_bytes, old.relay_pairs
        record.accept_seq(seq)
        self._live[public_key] = record
        return record

    def get(self, public_key: bytes) -> Record | None:
        """The live record for ``public_key``, or None."""
        record = self._live.get(public_key)
        if record is not None and not self._alive(record):
            del self._live[public_key]
            return None
        return record

    def find_by_name(self, hostname: str) -> Record | None:
        key = self._by_name.get(hostname)
        return self.get(key) if key is not None else None

    def find_by_address(self, address: Address) -> Record | None:
        key = self._by_address.get(address.to_bytes())
        return self.get(key) if key is not None else None

    def live_by_address(self, raw: bytes, now: float) -> Record | None:
        """The live record whose address is the 8 bytes ``raw``, or None: the
        relay's per-frame lookup (two dict reads, no objects made)."""
        record = self._live.get(self._by_address.get(raw))
        if record is None or now - record.last_seen > self.ttl:
            return None
        return record

    def touch(self, record: Record) -> None:
        """A fresh signed request (or relay frame) from ``record``'s key: it is alive.
        Where it came from is for the path validator to judge."""
        now = self._clock.seconds()
        record.last_seen = now
        binding = self._bindings.get(record.public_key)
        if binding is not None:
            binding.last_seen = now
            if now - binding.stored_seen >= LAST_SEEN_RESOLUTION:
                self._store_binding(binding)

    def move(self, record: Record, endpoint: Endpoint) -> None:
        """``endpoint`` has proved it receives for ``record``: send there from now on."""
        record.endpoint = endpoint
        record.candidate = None

    def remove(self, public_key: bytes) -> None:
        """The node went offline (Unregister): its name stays held."""
        self._live.pop(public_key, None)

    # -- forgetting ------------------------------------------------------------------------

    def expire(self) -> tuple[int, list[bytes]]:
        """Drop dead registrations and bindings past the hold time.
        Returns (registrations dropped, keys whose names were freed)."""
        # One sweep for every node (no timer per node): 100,000 records cost
        # tens of milliseconds every few seconds, so the clock is read once.
        now = self._clock.seconds()
        ttl, hold = self.ttl, self.hold
        dead = [k for k, r in self._live.items() if now - r.last_seen > ttl]
        for key in dead:
            del self._live[key]
        freed = [k for k, b in self._bindings.items() if now - b.last_seen > hold]
        for key in freed:
            self._drop_binding(key)
        return len(dead), freed
