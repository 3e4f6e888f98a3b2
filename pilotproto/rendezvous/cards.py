"""
The node's agent card, and finding other nodes' cards (``docs/discovery.md``).

:class:`AgentCards` is a worker of the node, made by the boss and told by
the :class:`~pilotproto.rendezvous.link.BeaconLink` each time the node
(re)registers (:class:`IRegistrationWatcher`).  It keeps the card in
``HOME/card.json`` (0600), with the version it was signed at, and publishes
it after every registration: a beacon that restarted without a state
directory, or a new beacon, has the card again within seconds.

``find`` asks the beacon (``FindCards``, page by page) and **verifies every
card it returns**: the signature must be the key's over the card, its
version, the key and the address the beacon says the card is of
(:meth:`pilotproto.wire.cards.SignedCard.verify`).  A card that fails is
dropped, counted (``cards_rejected``) and logged, never shown: a beacon can
withhold cards but not forge, alter or move one.

Versions are nanoseconds since the epoch, strictly increasing, so a newer
card always has a larger version, across restarts too; the beacon installs
only a version at least as new as the one it holds.
"""

from __future__ import annotations

import contextlib
import base64
import collections
import json
import os

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from ..common.wiring import check_provides
from ..errors import InvalidArgument, NotFound, StateError
from ..identity import Address
from ..interfaces import ISignedRequests
from ..wire import beacon as msgs
from ..wire.beacon_cards import MAX_FIND_RESULTS, MAX_QUERY
from ..wire.cards import CardError, SignedCard, parse_card
from .interfaces import IRegistrationWatcher

CARD_FILE = "card.json"
FORMAT = "pilot-card-v1"
#: requests in flight for the card share one name: a delete cancels a set
_WHAT = ("card",)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@implementer(IRegistrationWatcher)
class AgentCards:
    """``identity``'s card, kept in ``home``, published through ``requests``
    (an :class:`ISignedRequests`); ``clock`` gives the versions."""

    log = Logger()

    def __init__(self, clock, identity, home: str, requests, hostname: str | None = None):
        self._clock = clock
        self._hostname = hostname
        self._identity = identity
        self._requests = check_provides(requests, ISignedRequests, "AgentCards requests")
        self.path = os.path.join(home, CARD_FILE)
        self.counters: collections.Counter = collections.Counter()
        self.signed: SignedCard | None = self._load()
        #: True once the beacon has acknowledged the card we hold (or its deletion)
        self.published = False
        self._delete_pending = False
        self._waiters: list[defer.Deferred] = []

    # -- card.json --------------------------------------------------------------------

    def _load(self) -> SignedCard | None:
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read())
            if data.get("format") != FORMAT:
                raise ValueError(f"format is not {FORMAT}")
            return SignedCard.make(self._identity, data["card"], int(data["version"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, CardError) as e:
            raise StateError(
                f"cannot use the agent card {self.path}: {e}",
                hint="Fix it, or delete it and publish again with: pilotctl card set --file card.json",
            ) from None

    def _save(self, signed: SignedCard | None) -> None:
        if signed is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            return
        data = json.dumps({"format": FORMAT, "version": signed.version, "card": json.loads(signed.card)}, indent=2) + "\n"
        tmp = self.path + ".tmp"
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(data)
            os.replace(tmp, self.path)
        except OSError as e:
            raise StateError(f"cannot write the agent card {self.path}: {e.strerror}", hint="Check free disk space and permissions.") from None

    # -- publishing -------------------------------------------------------------------------

    def beacon_registered(self, observed) -> None:
        """Registered (again): the beacon may have forgotten the card, or its deletion."""
        if self.signed is not None:
            self._publish()
        elif self._delete_pending:
            self._send_delete()

    def set(self, card) -> defer.Deferred:
        """Sign and keep ``card`` (a dict) at a new version, and publish it; fires with
        :meth:`describe` once the beacon took it, or (``published: false``) gave no answer."""
        try:
            parsed = parse_card(card)
        except CardError as e:
            return defer.fail(e)
        previous = self.signed.version if self.signed is not None else 0
        version = max(previous + 1, int(self._clock.seconds() * 1e9))
        signed = SignedCard.make(self._identity, parsed, version)
        self._save(signed)
        self.signed, self._delete_pending = signed, False
        waiter = self._waiter()
        self._publish()
        return waiter

    def _waiter(self) -> defer.Deferred:
        waiter = defer.Deferred(lambda d: self._waiters.remove(d) if d in self._waiters else None)
        self._waiters.append(waiter)
        return waiter

    def _settle(self, error=None) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if error is not None:
                waiter.errback(error)
            else:
                waiter.callback(self.describe())

    def _publish(self) -> None:
        signed = self.signed
        self.published = False
        request = msgs.SetCard(0, signed.version, signed.card, signed.signature)

        def ok():
            self.published = True
            self.counters["cards_published"] += 1
            self._settle()

        def refused(error):
            self.counters["cards_refused"] += 1
            self.log.warn("the beacon refused our agent card: {message}", message=error.message)
            self._settle(error)

        self._requests.send(_WHAT, request, ok, refused, self._settle)

    def delete(self) -> defer.Deferred:
        """Forget the card here and at the beacon; fires with ``{"deleted": bool, "published": bool}``."""
        had = self.signed is not None
        self._save(None)
        self.signed, self._delete_pending = None, True
        self._settle(InvalidArgument("the card was deleted before the beacon took it"))
        waiter = self._waiter()
        self._send_delete()
        return waiter.addCallback(lambda _: {"deleted": had, "published": self.published})

    def _send_delete(self) -> None:
        self.published = False

        def ok():
            self.published, self._delete_pending = True, False
            self._settle()

        self._requests.send(_WHAT, msgs.DeleteCard(0), ok, self._settle, self._settle)

    def describe(self) -> dict:
        """Our own card, as ``card show`` prints it."""
        if self.signed is None:
            return {"card": None, "published": self.published}
        return {
            "hostname": self._hostname,
            "address": str(self._identity.address),
            "public_key": _b64(self._identity.public_key),
            "version": self.signed.version,
            "card": json.loads(self.signed.card),
            "signature": _b64(self.signed.signature),
            "published": self.published,
        }

    # -- finding ------------------------------------------------------------------------------

    def find(self, tag=None, capability=None, text=None, peer=None) -> defer.Deferred:
        """``{"cards": [...], "total": N, "rejected": M}``: the verified cards the beacon
        shows us that carry ``tag`` and ``capability`` and contain ``text``."""
        query = {"tag": tag or "", "capability": capability or "", "text": text or "", "peer": peer or ""}
        for name, value in query.items():
            if not isinstance(value, str) or len(value.encode("utf-8")) > MAX_QUERY:
                return defer.fail(InvalidArgument(f"find {name} must be text of at most {MAX_QUERY} bytes"))
        return self._pages(query)

    @defer.inlineCallbacks
    def _pages(self, query):
        cards, seen, rejected, offset, total = [], set(), 0, 0, 0
        # Every page holds at least one card, so this many pages fetch them all.
        for _ in range(MAX_FIND_RESULTS):
            page = yield self._requests.ask(msgs.FindCards(0, offset=offset, **query))
            if not isinstance(page, msgs.FindResult):
                raise InvalidArgument("the beacon answered a find with something else")
            total = page.total
            for entry in page.entries:
                if entry.public_key in seen or len(cards) >= MAX_FIND_RESULTS:
                    continue
                seen.add(entry.public_key)
                card = self._verified(entry)
                if card is None:
                    rejected += 1
                else:
                    cards.append(card)
            if not page.next_offset or page.next_offset <= offset:
                break
            offset = page.next_offset
        return {"cards": cards, "total": total, "rejected": rejected}

    def _verified(self, entry) -> dict | None:
        """``entry`` as a dict if its card verifies against its key and address, else None."""
        try:
            address = str(Address.from_bytes(entry.address))
            card = SignedCard(entry.public_key, entry.version, entry.card, entry.card_signature).verify(address)
        except (CardError, InvalidArgument) as e:
            self.counters["cards_rejected"] += 1
            self.log.warn("dropped the card the beacon gave for {name}: {why}", name=entry.hostname, why=str(e))
            return None
        return {
            "hostname": entry.hostname,
            "address": address,
            "public_key": _b64(entry.public_key),
            "version": entry.version,
            "card": card,
            "signature": _b64(entry.card_signature),
            "verified": True,
        }

    def show(self, peer=None) -> defer.Deferred:
        """Our own card (``peer`` None), or ``peer``'s (a hostname or address) as the beacon shows it."""
        if peer is None:
            return defer.succeed(self.describe())

        def first(result):
            if not result["cards"]:
                why = " (the beacon's copy failed verification)" if result["rejected"] else ""
                raise NotFound(f"no card of {peer!r} is visible to this node{why}", hint=NotFound.hint)
            return result["cards"][0]

        return self.find(peer=peer).addCallback(first)
