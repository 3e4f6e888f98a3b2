"""
Visibility lists: which keys may find a private node at the beacon.

A node uploads its list itself, signed, in chunks (``SetVisibility``:
``version``, ``chunk`` of ``chunks``, up to 30 keys each) so that no datagram
exceeds ~1100 bytes.  The beacon installs a version once it holds every
chunk of it, and only a version newer than the one installed, so a chunk
replayed from an older upload cannot shrink or grow today's list.  The
beacon stores exactly what the node signed: it has no way to add a key.

Installed lists go to the beacon's store (:mod:`pilotproto.beacon.store`),
so a restart does not make every private node invisible to the nodes it
trusts; a list is forgotten with its owner's name.
"""

from __future__ import annotations

from ..common.wiring import check_provides
from ..wire.beacon import VISIBILITY_CHUNK_KEYS
from .store import IBeaconStore, MemoryStore, VisibilityRow

#: A node may let at most this many keys find it (bounds the beacon's memory).
MAX_KEYS = 4096


class VisibilityLists:
    def __init__(self, counters, max_keys: int = MAX_KEYS, store=None):
        self._counters = counters
        self.max_keys = max_keys
        self._store = check_provides(store if store is not None else MemoryStore(), IBeaconStore, "VisibilityLists store")
        self._installed: dict[bytes, tuple[int, frozenset]] = {}
        #: owner -> (version, chunks, {chunk: keys}) while an upload is incomplete
        self._assembling: dict[bytes, tuple[int, int, dict]] = {}

    def offer(self, owner: bytes, version: int, chunk: int, chunks: int, keys) -> bool:
        """Take one signed chunk from ``owner``; True once it is accepted (or already was)."""
        installed_version = self._installed.get(owner, (-1, None))[0]
        if version < installed_version:
            self._counters["visibility_stale"] += 1
            return True  # harmless: a late copy of an upload already superseded
        if version == installed_version:
            return True
        if chunks > -(-self.max_keys // VISIBILITY_CHUNK_KEYS):
            self._counters["visibility_too_large"] += 1
            return False
        current = self._assembling.get(owner)
        if current is None or version > current[0] or (version == current[0] and chunks != current[1]):
            current = (version, chunks, {})
        elif version < current[0]:
            return True
        current[2][chunk] = tuple(keys)
        self._assembling[owner] = current
        if len(current[2]) == chunks:
            del self._assembling[owner]
            allowed = frozenset(k for part in current[2].values() for k in part)
            self._installed[owner] = (version, allowed)
            self._store.put_visibility(VisibilityRow(owner, version, allowed))
            self._counters["visibility_installed"] += 1
        return True

    def restore(self, rows) -> None:
        """Take back the lists a store kept (at start)."""
        for row in rows:
            self._installed[row.owner] = (row.version, frozenset(row.keys))

    def forget(self, owner: bytes) -> None:
        """``owner`` holds no name any more: its list goes too."""
        self._assembling.pop(owner, None)
        if self._installed.pop(owner, None) is not None:
            self._store.delete_visibility(owner)

    def allows(self, owner: bytes, viewer: bytes) -> bool:
        entry = self._installed.get(owner)
        return entry is not None and viewer in entry[1]

    def keys_of(self, owner: bytes) -> frozenset:
        return self._installed.get(owner, (0, frozenset()))[1]

    def version_of(self, owner: bytes) -> int | None:
        entry = self._installed.get(owner)
        return entry[0] if entry is not None else None
