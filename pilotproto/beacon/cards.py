"""
Agent cards at the beacon: one signed card per key, and ``find``.

A node publishes its card (``SetCard``: the canonical JSON, a ``version``
and the node's own signature over both, see :mod:`pilotproto.wire.cards`);
the beacon checks the signature and the card's limits, keeps it only if its
version is newer than the one it holds (so a recorded older card cannot
roll a node back), and stores it (:mod:`pilotproto.beacon.store`) with the
name: it is forgotten when the name is released or its hold time ends, as
the visibility list is.  One card per key: a new version replaces the old.

``FindCards`` answers with the cards of *live* registrations that match
(in a fleet, live on any of its beacons: the cards are on every beacon, and
which of their keys are live elsewhere is one batched Redis read per query,
:meth:`~pilotproto.beacon.fleet.RedisFleet.find_cards`), and only of nodes the asker may look up: :meth:`BeaconServer.visible`,
the very rule lookups and the relay use.  A private node's card is never
in an answer to a key its visibility list does not name.  Matches are
sorted by hostname and capped at ``MAX_FIND_RESULTS``; they come in pages
that each fit one ``MAX_DATAGRAM``-byte datagram, and the asker asks for
the next page from ``next_offset``.  Every request here is a signed
request: it counts against ``--requests-per-key``, and its answer to an
unproven address is held to 3x by the path validator like a lookup's.

The handlers are functions of the server (``CARD_HANDLERS``), so that
:mod:`pilotproto.beacon.server` stays one table of dispatch.
"""

from __future__ import annotations

from ..common.wiring import check_provides
from ..errors import InvalidArgument
from ..identity import Address
from ..wire import beacon as msgs
from ..wire.beacon_cards import FIND_RESULT_OVERHEAD, MAX_DATAGRAM, MAX_FIND_RESULTS
from ..wire.cards import CardError, SignedCard, matches
from .store import CardRow, IBeaconStore, MemoryStore


class AgentCards:
    """The beacon's cards, by key: ``(SignedCard, parsed card)``."""

    def __init__(self, counters, store=None):
        self._counters = counters
        self._store = check_provides(store if store is not None else MemoryStore(), IBeaconStore, "AgentCards store")
        self._cards: dict[bytes, tuple[SignedCard, dict]] = {}

    def __len__(self) -> int:
        return len(self._cards)

    def restore(self, rows) -> None:
        """Take back the cards a store kept (at start); one that no longer verifies is dropped."""
        for row in rows:
            signed = SignedCard(row.public_key, row.version, row.card, row.signature)
            try:
                self._cards[row.public_key] = (signed, signed.verify())
            except CardError:
                self._counters["cards_dropped_corrupt"] += 1
                self._store.delete_card(row.public_key)

    def offer(self, signed: SignedCard) -> None:
        """Install ``signed`` for its key; InvalidArgument if it is bad or older than the one held."""
        card = signed.verify()
        held = self._cards.get(signed.public_key)
        if held is not None:
            if signed.version < held[0].version or (signed.version == held[0].version and signed != held[0]):
                self._counters["cards_stale"] += 1
                raise InvalidArgument("the beacon holds a newer version of this card", hint="Publish with a newer version.")
            if signed == held[0]:
                return  # a re-publish after registration: nothing changes
        self._cards[signed.public_key] = (signed, card)
        self._store.put_card(CardRow(signed.public_key, signed.version, signed.card, signed.signature))
        self._counters["cards_installed"] += 1

    def forget(self, public_key: bytes) -> bool:
        """Drop ``public_key``'s card (deleted, or its name freed)."""
        if self._cards.pop(public_key, None) is None:
            return False
        self._store.delete_card(public_key)
        return True

    def get(self, public_key: bytes):
        entry = self._cards.get(public_key)
        return entry[0] if entry is not None else None

    def items(self):
        return self._cards.items()


# -- the server's handlers ------------------------------------------------------------


def rx_set_card(server, msg, inbound):
    owner, refusal = server._authenticate(msg, inbound)
    if owner is None:
        return refusal
    try:
        server.cards.offer(SignedCard(owner.public_key, msg.version, msg.card, msg.card_signature))
    except InvalidArgument as e:
        return server._refusal(msg, e, inbound, authenticated=True)
    return [(msgs.encode(msgs.Ok(msg.request_id)), inbound.source)]


def rx_delete_card(server, msg, inbound):
    owner, refusal = server._authenticate(msg, inbound)
    if owner is None:
        return refusal
    # Deleting what is not there is done too: a resent delete must not fail.
    server.cards.forget(owner.public_key)
    return [(msgs.encode(msgs.Ok(msg.request_id)), inbound.source)]


def _peer_matches(record, peer: str) -> bool:
    if not peer:
        return True
    if Address.looks_like(peer):
        try:
            return Address.parse(peer) == record.address
        except InvalidArgument:
            return False
    return record.hostname == peer.lower()


def matching(server, requester, msg, remote=None) -> list:
    """The entries ``requester`` may see that ``msg`` asks for, sorted by
    hostname, capped.  ``remote``: the nodes live on other beacons of a fleet
    (key -> :class:`~pilotproto.beacon.fleet.RemoteRecord`)."""
    remote = remote or {}
    found = []
    for key, (signed, card) in server.cards.items():
        record = server.registry.get(key) or remote.get(key)
        if record is None or not server.visible(record, requester):
            continue
        if not _peer_matches(record, msg.peer) or not matches(card, msg.tag, msg.capability, msg.text):
            continue
        found.append(
            msgs.CardEntry(record.hostname, record.address.to_bytes(), key, signed.version, signed.card, signed.signature)
        )
    found.sort(key=lambda e: e.hostname)
    return found[:MAX_FIND_RESULTS]


def not_live_here(server, msg) -> list:
    """Keys whose card matches ``msg`` but that are not live on this beacon:
    in a fleet, the ones to ask Redis about (visibility is checked after)."""
    return [
        key
        for key, (signed, card) in server.cards.items()
        if server.registry.get(key) is None and matches(card, msg.tag, msg.capability, msg.text)
    ]


def find_reply(server, msg, requester, inbound, remote=None) -> list:
    """The ``FindResult`` page ``msg`` asks for (``remote`` as for :func:`matching`)."""
    found = matching(server, requester, msg, remote)
    page, size, index = [], FIND_RESULT_OVERHEAD, msg.offset
    while index < len(found) and size + found[index].size() <= MAX_DATAGRAM:
        page.append(found[index])
        size += found[index].size()
        index += 1
    server.counters["cards_found"] += len(page)
    next_offset = index if index < len(found) else 0
    reply = msgs.FindResult(msg.request_id, len(found), next_offset, tuple(page))
    return [(msgs.encode(reply), inbound.source)]


def rx_find_cards(server, msg, inbound):
    requester, refusal = server._authenticate(msg, inbound)
    if requester is None:
        return refusal
    if server.fleet is not None:
        elsewhere = not_live_here(server, msg)
        if elsewhere:
            # Cards of nodes perhaps live on other beacons: answered once Redis says.
            return server.fleet.find_cards(elsewhere, msg, requester, inbound)
    return find_reply(server, msg, requester, inbound)


CARD_HANDLERS = {
    msgs.SetCard: rx_set_card,
    msgs.DeleteCard: rx_delete_card,
    msgs.FindCards: rx_find_cards,
}
