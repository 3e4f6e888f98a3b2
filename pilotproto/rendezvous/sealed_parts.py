"""
Joining the pieces of a large sealed message (:class:`~pilotproto.wire.beacon_sealed.SealedPart`)
on the recipient, in bounded memory.

A group is named by (sender key, message id, digest); its pieces may come
in any order, twice, or from several beacons (each has its own mail ids:
every copy's mail id is kept, with the requests of the link that pushed
it, so each beacon hears the ack for what it delivered).  Pieces are not
acknowledged until the whole message is kept: a piece lost here is pushed
again by the beacon.

Bounds (a trusted sender may still be buggy or hostile): at most
``groups_per_sender`` partial groups and ``bytes_per_sender`` bytes per
sender, ``max_bytes`` in all; a piece over a bound is refused (not acked:
the beacon pushes it again once earlier groups are done).  A partial group
is forgotten ``expire_after`` seconds after its first piece.  Groups kept
lately are remembered (``recent``), so a late duplicate piece is acked at
once instead of starting a group that would never complete.
"""

from __future__ import annotations

import collections

import attrs

from ..wire import DecodeError
from ..wire.beacon_sealed import join_parts

GROUPS_PER_SENDER = 8
BYTES_PER_SENDER = 1 << 20
MAX_BYTES = 8 << 20
EXPIRE_AFTER = 600.0
#: groups remembered as kept (late duplicates are acked at once)
RECENT = 1024


@attrs.define(eq=False)
class _Group:
    pieces: dict = attrs.field(factory=dict)
    #: (requests, mail_id) of every copy received: each is acked once the message is kept
    acks: set = attrs.field(factory=set)
    size: int = 0
    timer: object = None


class Reassembly:
    """Partial groups of sealed pieces, on ``clock``."""

    def __init__(self, clock, groups_per_sender: int = GROUPS_PER_SENDER, bytes_per_sender: int = BYTES_PER_SENDER,
                 max_bytes: int = MAX_BYTES, expire_after: float = EXPIRE_AFTER):
        self._clock = clock
        self.groups_per_sender = groups_per_sender
        self.bytes_per_sender = bytes_per_sender
        self.max_bytes = max_bytes
        self.expire_after = expire_after
        self._groups: dict[tuple, _Group] = {}
        self._recent: collections.OrderedDict[tuple, None] = collections.OrderedDict()
        self.size = 0
        self.counters: collections.Counter = collections.Counter()

    @staticmethod
    def key_of(piece) -> tuple:
        return (piece.public_key, piece.message_id, piece.digest)

    def kept_lately(self, piece) -> bool:
        return self.key_of(piece) in self._recent

    def add(self, piece, ack) -> tuple | None:
        """Take ``piece`` (checked by the caller: signed by its sender, to us), ``ack`` its
        (requests, mail_id).  ``(key, box, acks)`` when the group is whole, else None."""
        key = self.key_of(piece)
        group = self._groups.get(key)
        if group is None:
            if not self._room(piece.public_key, len(piece.sealed), new_group=True):
                return None
            group = self._groups[key] = _Group()
            group.timer = self._clock.callLater(self.expire_after, self._expire, key)
        elif piece.part in group.pieces and group.pieces[piece.part] == piece:
            group.acks.add(ack)  # the same piece again (another beacon, or a second push)
            self.counters["sealed_part_duplicate"] += 1
            return None
        elif piece.parts != next(iter(group.pieces.values())).parts or piece.part in group.pieces:
            self.counters["sealed_part_conflict"] += 1  # cannot be the same box: its digest would differ
            return None
        elif not self._room(piece.public_key, len(piece.sealed), new_group=False):
            return None
        group.pieces[piece.part] = piece
        group.acks.add(ack)
        group.size += len(piece.sealed)
        self.size += len(piece.sealed)
        if len(group.pieces) < piece.parts:
            return None
        self._drop(key)
        try:
            box = join_parts(group.pieces)
        except DecodeError:
            self.counters["sealed_group_bad"] += 1
            return key, None, group.acks
        return key, box, group.acks

    def kept(self, key: tuple) -> None:
        """The message of group ``key`` is kept: ack its late duplicates at once."""
        self._recent[key] = None
        self._recent.move_to_end(key)
        while len(self._recent) > RECENT:
            self._recent.popitem(last=False)

    def stop(self) -> None:
        for key in list(self._groups):
            self._drop(key)

    def _room(self, sender: bytes, size: int, new_group: bool) -> bool:
        mine = [g for k, g in self._groups.items() if k[0] == sender]
        if new_group and len(mine) >= self.groups_per_sender:
            self.counters["sealed_part_refused"] += 1
            return False
        if sum(g.size for g in mine) + size > self.bytes_per_sender or self.size + size > self.max_bytes:
            self.counters["sealed_part_refused"] += 1
            return False
        return True

    def _expire(self, key: tuple) -> None:
        group = self._groups.get(key)
        if group is not None:
            group.timer = None
            self.counters["sealed_group_expired"] += 1
            self._drop(key)

    def _drop(self, key: tuple) -> None:
        group = self._groups.pop(key)
        self.size -= group.size
        if group.timer is not None and group.timer.active():
            group.timer.cancel()
        group.timer = None
