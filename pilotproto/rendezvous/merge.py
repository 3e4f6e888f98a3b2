"""
What a node with several beacons believes: the merge rules for lookups, and
which beacon relays to which peer.  Pure functions and a small table, no
I/O, so the rules are tested alone (``tests/test_beacon_set.py``).

Lookups (:func:`merge_lookups`), as Nebula merges its lighthouses' answers:

* every beacon that knows the name (or address) under **one key** is one
  answer: the first beacon's record, with every beacon's endpoints (in
  order, without repeats) and the list of beacons that know it;
* **different keys** for one name on different beacons is
  :class:`NameConflict`, never a coin toss: one beacon holds a stale or
  forged registration, and a person must say which;
* not found only when every beacon says not found or is down; a beacon that
  refused for another reason (``rate_limited`` ...) makes the answer
  unknown, and its error is the answer; every beacon down is
  ``Unavailable``.

Relaying (:class:`RelayChoice`): each peer is relayed through one beacon
that both know, the same one while it lives (the beacon's relay counters
and the peer's replay window stay on one path).  When that beacon stops
answering, the next shared one takes over.  A peer no lookup has placed
yet (one that opened the session to us) is relayed through every beacon
we are registered with, until a lookup says where it is: a beacon that does
not know the peer drops the copy, and the tunnel drops duplicates.
"""

from __future__ import annotations

import base64
import collections

from ..errors import NotFound, PilotError, Unavailable
from ..identity import fingerprint

#: peers whose beacons are remembered at most (oldest forgotten first)
MAX_PEERS = 4096


class NameConflict(PilotError):
    """Two beacons hold the same name for different keys."""

    code = "name_conflict"
    hint = (
        "One of the beacons holds a stale or forged registration for that name. "
        "Use the node's address instead (the one its 'pilotctl info' shows) if you know it, and tell the operators of the beacons named here."
    )


def merge_lookups(target: str, answers: list) -> dict:
    """One answer from ``answers``: ``[(beacon, result)]`` in the beacons' order,
    each ``result`` a lookup dict, a :class:`PilotError`, or None (no answer in time).

    The merged dict is the first finder's, with ``endpoints`` from all and
    ``beacons`` (who knows the node).  Raises as the module docstring says."""
    found = [(beacon, result) for beacon, result in answers if isinstance(result, dict)]
    by_key: dict[str, list[str]] = {}
    for beacon, result in found:
        by_key.setdefault(result["public_key"], []).append(beacon)
    if len(by_key) > 1:
        claims = "; ".join(
            f"{', '.join(beacons)} say{'s' if len(beacons) == 1 else ''} key {fingerprint(base64.b64decode(key))}"
            for key, beacons in by_key.items()
        )
        raise NameConflict(f"the beacons disagree about who {target!r} is: {claims}")
    if found:
        merged = dict(found[0][1])
        endpoints: list[str] = []
        for _, result in found:
            endpoints += [e for e in result.get("endpoints", []) if e not in endpoints]
        merged["endpoints"] = endpoints
        merged["public"] = any(result.get("public") for _, result in found)
        merged["beacons"] = [beacon for beacon, _ in found]
        return merged
    errors = [result for _, result in answers if isinstance(result, PilotError)]
    for error in errors:
        if not isinstance(error, (NotFound, Unavailable)):
            raise error
    if any(isinstance(error, NotFound) for error in errors):
        raise NotFound(f"no node {target!r} is visible to this node", hint=NotFound.hint)
    raise Unavailable(
        f"no beacon answered a lookup of {target!r}",
        hint="Check that the beacons run and this host reaches them: pilotctl info shows each one's state, pilotctl netcheck tests them.",
    )


class RelayChoice:
    """Which of our beacons (by index) relays to which peer (by 6-byte address)."""

    def __init__(self, max_peers: int = MAX_PEERS):
        self._max = max_peers
        #: peer -> the beacons the latest lookup found it on
        self._known: collections.OrderedDict[bytes, tuple[int, ...]] = collections.OrderedDict()
        #: peer -> the beacon relaying to it now
        self._chosen: dict[bytes, int] = {}
        self.counters: collections.Counter = collections.Counter()

    def learned(self, peer: bytes, beacons) -> None:
        """A lookup found ``peer`` on ``beacons`` (indices)."""
        self._known.pop(peer, None)
        self._known[peer] = tuple(beacons)
        while len(self._known) > self._max:
            old, _ = self._known.popitem(last=False)
            self._chosen.pop(old, None)

    def known(self, peer: bytes) -> tuple[int, ...]:
        return self._known.get(peer, ())

    def chosen(self, peer: bytes) -> int | None:
        return self._chosen.get(peer)

    def route(self, peer: bytes, usable) -> tuple[list[int], bool]:
        """The beacons to relay a packet for ``peer`` through, given the ``usable``
        ones (indices, in order); and whether a lookup should place the peer."""
        shared = [i for i in usable if i in self._known.get(peer, ())]
        if not shared:
            # Not placed yet, or none of its beacons answers us: every beacon
            # we have, and ask where it is.
            self.counters["relay_fanned_out"] += 1
            return list(usable), True
        current = self._chosen.get(peer)
        if current not in shared:
            if current is not None:
                self.counters["relay_moves"] += 1
            current = self._chosen[peer] = shared[0]
        return [current], False
