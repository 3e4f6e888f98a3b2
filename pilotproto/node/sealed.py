"""
Store-and-forward: messages for trusted peers that are offline are left,
sealed, at the beacon, and delivered when the peer comes back, even if we
are gone by then.

The sender's side: every message the outbox queues (any size the messages
port takes; one over ``MAX_SEALED_BODY`` goes as a group of sealed pieces,
:mod:`pilotproto.wire.beacon_sealed`) gets a timer; if the outbox has not
delivered it over a stream within ``seal_after`` seconds (no session formed:
the peer is likely offline), a sealed copy is posted to every registered beacon
(:class:`~pilotproto.rendezvous.sealed.SealedPoster`; the first that keeps
it all is enough) and the outbox row is
marked *sealed*.  The row stays queued, and the outbox keeps trying the
stream too; whichever reaches the peer first wins, and the receiver's dedup
by (sender, id) makes the other a no-op.  A beacon that refuses or does not
answer is asked again later (doubling, up to ``max_delay``).

The receiver's side (:class:`ISealedMailSink`): a sealed message from a
trusted key is stored in the inbox (deduplicated with the stream path), a
sealed *receipt* is posted back to the sender, and only then is the mail
acknowledged to the beacon, so that neither the message nor the receipt is
lost if we stop half-way (a second push is a duplicate, and earns the
receipt again).  A sealed receipt settles the sender's outbox row:
``queued`` becomes ``delivered`` (via the beacon), and a ``send_message``
still waiting hears it.  Sealed mail from a key we do not trust is dropped.
"""

from __future__ import annotations

import base64
import hashlib

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from ..common.wiring import check_provides
from ..interfaces import IMailPeers
from ..rendezvous.sealed import ISealedMailSink
from ..trust.book import address_of
from ..wire.beacon_sealed import KIND_MESSAGE, KIND_RECEIPT, MAX_ENVELOPE_BODY
from .inbox import INBOX_PORT
from .mailstore import NoSpace
from .outbox import MAX_AGE, ISealer

#: seconds a message may wait for a stream before a sealed copy goes to the beacon
SEAL_AFTER = 5.0
#: the longest wait between two attempts to leave a sealed copy
MAX_SEAL_DELAY = 300.0

log = Logger()


@attrs.frozen
class SealedPeer:
    """The sender of sealed mail, as the inbox records it."""

    hostname: str | None
    address: str

    def __str__(self):
        return self.hostname or self.address


@implementer(ISealer, ISealedMailSink)
class StoreAndForward:
    """Seals what ``outbox`` cannot deliver in time and posts it through ``poster``
    (a SealedPoster); stores sealed messages in ``inbox`` and settles receipts in ``outbox``.

    ``peers`` (IMailPeers) says whom we trust and their keys (``public_key``, base64)."""

    def __init__(self, clock, poster, peers, seal_after: float = SEAL_AFTER, max_delay: float = MAX_SEAL_DELAY,
                 max_age: float = MAX_AGE):
        self._clock = clock
        self._poster = poster
        self._peers = check_provides(peers, IMailPeers, "StoreAndForward.peers")
        self.seal_after = seal_after
        self.max_delay = max_delay
        self.max_age = max_age
        self._outbox = None
        self._inbox = None
        self._timers: dict[int, object] = {}
        self._attempts: dict[int, int] = {}
        self._running = False

    def wire(self, outbox, inbox) -> None:
        self._outbox = outbox
        self._inbox = inbox

    def stop(self) -> None:
        self._running = False
        for n in list(self._timers):
            self.settled(n)

    # -- ISealer: the outbox's side ------------------------------------------------------

    def queued(self, row: dict) -> None:
        self._running = True
        n = row["n"]
        if row["kind"] != "message" or row["port"] != INBOX_PORT or len(row["data"]) > MAX_ENVELOPE_BODY:
            return  # larger than any message (files go by stream only)
        if n in self._timers:
            return
        self._timers[n] = self._clock.callLater(self.seal_after, self._seal, row)

    def settled(self, n: int) -> None:
        timer = self._timers.pop(n, None)
        self._attempts.pop(n, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _key_of(self, address: str) -> bytes | None:
        for peer in self._peers.trusted_peers():
            if peer["address"] == address and peer.get("public_key"):
                return base64.b64decode(peer["public_key"])
        return None

    def _seal(self, row: dict) -> None:
        n = row["n"]
        self._timers[n] = None
        if not self._outbox.store.exists(n):
            self.settled(n)
            return
        key = self._key_of(row["address"])
        if key is None:
            log.warn("outbox: no trusted key for {peer}; message {id} is not left at the beacon", peer=row["address"], id=row["id"])
            self.settled(n)
            return
        d = self._poster.post(key, KIND_MESSAGE, int(row["id"], 16), row["created"], row["data"],
                              expires_at=int(row["created"] + self.max_age))
        d.addCallbacks(lambda _: self._sealed(row), lambda f: self._not_sealed(row, f.value))

    def _sealed(self, row: dict) -> None:
        n = row["n"]
        self._timers.pop(n, None)
        self._attempts.pop(n, None)
        self._outbox.store.mark_sealed(n, self._clock.seconds())
        log.info("outbox: message {id} for {peer} left sealed at the beacon", id=row["id"], peer=row["address"])

    def _not_sealed(self, row: dict, error) -> None:
        n = row["n"]
        if n not in self._timers or not self._running:
            return  # settled (delivered, dropped) meanwhile, or stopping
        attempts = self._attempts[n] = self._attempts.get(n, 0) + 1
        delay = min(self.max_delay, self.seal_after * 2 ** min(attempts, 20))
        log.info("outbox: the beacon did not keep message {id} ({why}); trying again in {delay:g} s",
                 id=row["id"], why=str(error), delay=delay)
        self._timers[n] = self._clock.callLater(delay, self._seal, row)

    # -- ISealedMailSink: the receiver's side -----------------------------------------------

    def _trusted(self, key: bytes) -> dict | None:
        address = address_of(key)
        for peer in self._peers.trusted_peers():
            if peer["address"] == address:
                return peer
        return None

    @defer.inlineCallbacks
    def sealed_mail_received(self, sender_key, envelope):
        peer = self._trusted(sender_key)
        if peer is None:
            log.warn("dropping sealed mail from {address}, a key we do not trust", address=address_of(sender_key))
            return True
        id_ = f"{envelope.message_id:016x}"
        if envelope.kind == KIND_RECEIPT:
            self._outbox.receipt(peer["address"], id_)
            return True
        try:
            item = self._inbox.store_message(SealedPeer(peer.get("hostname"), peer["address"]), envelope.body,
                                             hashlib.sha256(envelope.body).hexdigest(), id_)
        except NoSpace as e:
            log.warn("sealed message {id} from {peer} not kept: {why}", id=id_, peer=peer["address"], why=e.message)
            return False
        if item is not None:
            log.info("inbox: sealed message {id} ({size} bytes) from {peer}", id=id_, size=len(envelope.body),
                     peer=peer.get("hostname") or peer["address"])
        try:
            yield self._poster.post(sender_key, KIND_RECEIPT, envelope.message_id, self._clock.seconds())
        except Exception as e:  # noqa: BLE001 -- any failure: keep the mail at the beacon, it comes again
            log.info("the receipt for sealed message {id} did not reach the beacon ({why}); it is sent again",
                     id=id_, why=str(e))
            return False
        return True
