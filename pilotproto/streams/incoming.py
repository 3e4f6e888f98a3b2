"""
Which stream ids the peer has opened, and how many of its streams are live.

The peer numbers its streams 0, 1, 2, … (ids ``2n + bit``); a frame for an id
not seen yet opens that stream.  Finished ids must never open again, so the
ids seen are kept as a floor (every index below it was opened) and the set
of indices above it: the set stays as small as the ids the peer has skipped.
"""

from __future__ import annotations

from collections import Counter


class PeerStreamIds:
    def __init__(self, stats: Counter):
        self._stats = stats
        #: every index below this was opened by the peer
        self.floor = 0
        #: indices at or above the floor the peer has opened
        self.opened: set[int] = set()
        #: the peer's streams this side still holds
        self.live = 0

    def admit(self, index: int, max_incoming: int) -> bool:
        """A frame names the peer's stream ``index``: True when it opens a new stream (counted live).

        ``max_incoming`` is the connection's limit on the peer's streams, read at each call."""
        if index < self.floor or index in self.opened:
            return False  # the peer's, finished
        if self.live >= 2 * max_incoming or index >= self.floor + 2 * max_incoming:
            # Far past the limit (streams over it are reset when announced, but
            # each still costs a Stream): frames that would open more are
            # dropped, so a peer cannot make us hold unbounded streams or ids.
            self._stats["streams_dropped_too_many"] += 1
            return False
        opened = self.opened
        opened.add(index)
        while self.floor in opened:
            opened.discard(self.floor)
            self.floor += 1
        self.live += 1
        return True
