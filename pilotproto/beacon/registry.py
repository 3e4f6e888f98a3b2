"""
The beacon's registry: which key holds which name and address, where it was
last seen, and which signed requests it has already made.

Pure bookkeeping with an injected clock; the beacon server feeds it.

Rules:

* a hostname and an address belong to the first key that registers them,
  for as long as that registration is alive (keepalives within ``ttl``);
* the same key registering again (from a new endpoint, or after a beacon
  restart) updates its record; a key that registers a new name gives up its
  old one;
* a signed request's ``seq`` must not have been seen from that key before,
  and may be at most ``SEQ_WINDOW_NS`` older than the newest one seen (nodes
  use nanosecond timestamps, so reordering in the network is tolerated but
  an old request replayed later is not).
"""

from __future__ import annotations

import attrs

from ..errors import NameTaken, Refused
from ..identity import Address
from ..common.replay import ReplayWindow
from ..wire.codec import Endpoint

DEFAULT_TTL = 30
SEQ_WINDOW_NS = 10 * 1_000_000_000


@attrs.define
class Record:
    public_key: bytes
    hostname: str
    address: Address
    endpoint: Endpoint
    lan_endpoints: tuple
    public: bool
    registered_at: float
    last_seen: float
    max_seq: int = 0
    seen_seqs: set = attrs.field(factory=set)
    #: key this node tags relay frames with, shared with this beacon process
    relay_key: bytes | None = attrs.field(default=None, repr=False)
    relay_window: ReplayWindow = attrs.field(factory=ReplayWindow, repr=False)

    def endpoints(self) -> tuple:
        # A node on the TLS relay has no UDP endpoint worth probing.
        reachable = (self.endpoint,) if type(self.endpoint) is Endpoint else ()
        return reachable + tuple(e for e in self.lan_endpoints if e != self.endpoint)

    def accept_seq(self, seq: int) -> bool:
        """Record ``seq`` if it is fresh; False for a replay or a stale one."""
        if seq in self.seen_seqs or seq <= self.max_seq - SEQ_WINDOW_NS:
            return False
        self.seen_seqs.add(seq)
        if seq > self.max_seq:
            self.max_seq = seq
            floor = seq - SEQ_WINDOW_NS
            if len(self.seen_seqs) > 64:
                self.seen_seqs = {s for s in self.seen_seqs if s > floor}
        return True


class Registry:
    def __init__(self, clock, ttl: float = DEFAULT_TTL):
        self._clock = clock
        self.ttl = ttl
        self._by_key: dict[bytes, Record] = {}
        self._by_name: dict[str, bytes] = {}
        self._by_address: dict[Address, bytes] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def _alive(self, record: Record | None) -> bool:
        return record is not None and self._clock.seconds() - record.last_seen <= self.ttl

    def register(self, public_key, hostname, endpoint, lan_endpoints=(), public=False, seq=0) -> Record:
        """Bind ``hostname`` and the key's address to ``public_key`` at ``endpoint``."""
        now = self._clock.seconds()
        address = Address.from_public_key(public_key)
        holder = self._by_name.get(hostname)
        if holder is not None and holder != public_key and self._alive(self._by_key.get(holder)):
            raise NameTaken(f"the name {hostname!r} is held by another key")
        holder = self._by_address.get(address)
        if holder is not None and holder != public_key and self._alive(self._by_key.get(holder)):
            raise Refused(f"address {address} is held by another key", hint="Make a new identity.")
        for stale in {self._by_name.get(hostname), self._by_address.get(address)} - {None, public_key}:
            self.remove(stale)
        old = self._by_key.get(public_key)
        if old is not None and old.hostname != hostname:
            self._by_name.pop(old.hostname, None)
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
            record.max_seq, record.seen_seqs = old.max_seq, old.seen_seqs
            record.relay_window = old.relay_window
        record.accept_seq(seq)
        self._by_key[public_key] = record
        self._by_name[hostname] = public_key
        self._by_address[address] = public_key
        return record

    def get(self, public_key: bytes) -> Record | None:
        """The live record for ``public_key``, or None."""
        record = self._by_key.get(public_key)
        if record is not None and not self._alive(record):
            self.remove(public_key)
            return None
        return record

    def find_by_name(self, hostname: str) -> Record | None:
        key = self._by_name.get(hostname)
        return self.get(key) if key is not None else None

    def find_by_address(self, address: Address) -> Record | None:
        key = self._by_address.get(address)
        return self.get(key) if key is not None else None

    def touch(self, record: Record, endpoint: Endpoint) -> None:
        """A fresh signed request came from ``endpoint``: follow it there."""
        record.last_seen = self._clock.seconds()
        record.endpoint = endpoint

    def remove(self, public_key: bytes) -> None:
        record = self._by_key.pop(public_key, None)
        if record is None:
            return
        if self._by_name.get(record.hostname) == public_key:
            del self._by_name[record.hostname]
        if self._by_address.get(record.address) == public_key:
            del self._by_address[record.address]

    def expire(self) -> int:
        """Drop every registration whose keepalives stopped; return how many."""
        dead = [k for k, r in self._by_key.items() if not self._alive(r)]
        for key in dead:
            self.remove(key)
        return len(dead)
