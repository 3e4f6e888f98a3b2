"""
The beacon's mailbox: signed trust messages on their way from one node to
another (handshake requests, answers, revocations).

A mail is the sender's original signed datagram, kept byte for byte, so the
recipient verifies the sender's signature itself: the beacon can delay or
drop mail but cannot forge it.

* Mail is addressed to a recipient key.  A handshake request may name its
  target by hostname or address; if a key holds that name or address (online
  or not: names are held for days, :mod:`pilotproto.beacon.registry`), the
  mail is bound to that key at once; if none does, the mail waits *for the
  name or address* and is bound to the first key that registers it.
* Pushes go only to the recipient's validated endpoint
  (:mod:`pilotproto.beacon.paths`), in *rounds*: a round starts when the
  mail is posted to a live recipient, when the recipient registers, and
  when its endpoint moves; it pushes at once and again after 1, 2, 4, ...
  seconds, at most ``MAX_PUSHES`` times, until the recipient acknowledges
  with ``MailAck``.  Keepalives start nothing, so a mail costs at most
  ``MAX_PUSHES`` datagrams per registration of its recipient, and one node
  receives at most ``PUSHES_PER_NODE`` pushes (others wait their turn).
* Mail expires (default 7 days; the sender may ask for less, never more).
* Caps keep one sender from filling the beacon's memory: per recipient,
  per sender, per (sender, recipient) pair, and in total; over one the
  answer is ``rate_limited``.  A resent message (same sender and
  ``dedup_key``) replaces the earlier copy instead of adding one.
* Waiting mail is kept in the beacon's store, so a restart loses none.
* Sealed mail (``SealedMail``, store-and-forward of messages and their
  receipts between nodes, :mod:`pilotproto.wire.beacon_sealed`) is mail
  like the rest, opaque to the beacon, bound to a key from the start.  A
  large message is a group of pieces (``SealedPart``), each kept, pushed
  and acked as its own mail (dedup by message id and piece number: a
  resent piece replaces).  Sealed mail has caps of its own, which count
  pieces and bytes: ``SEALED_PER_PAIR`` datagrams and
  ``SEALED_BYTES_PER_PAIR`` bytes per (sender, recipient), and
  ``SEALED_BYTES_PER_RECIPIENT`` / ``SEALED_BYTES_PER_SENDER``; it does not
  count towards the trust-mail caps (a full mailbox of messages must not
  stop a trust request), only towards ``TOTAL``.
"""

from __future__ import annotations

import collections
import os

import attrs
from twisted.logger import Logger
from zope.interface import implementer

from ..common.wiring import check_provides
from ..errors import InvalidArgument, RateLimited, Refused
from ..identity import Address
from ..wire import beacon as msgs
from ..wire.beacon_sealed import SealedPart
from .limits import BucketTable, Rate
from .paths import IPathListener
from .store import IBeaconStore, MailRow, MemoryStore

DEFAULT_EXPIRY = 7 * 24 * 3600
#: seconds between the pushes of one round: at once, then doubling
PUSH_DELAYS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MAX_PUSHES = len(PUSH_DELAYS) + 1
#: pushes one node may receive: a burst of 64 (a full mailbox), then 6.4 a second
PUSHES_PER_NODE = Rate(64, 10)
PER_RECIPIENT = 64
PER_SENDER = 256
PER_PAIR = 8
#: sealed datagrams (messages, receipts, pieces of large messages) one sender may leave for one recipient
SEALED_PER_PAIR = 512
#: sealed bytes one sender may leave for one recipient (about seven 64 KiB messages), for one
#: recipient from everyone, and from one sender for everyone
SEALED_BYTES_PER_PAIR = 512 << 10
SEALED_BYTES_PER_RECIPIENT = 4 << 20
SEALED_BYTES_PER_SENDER = 16 << 20
TOTAL = 100_000
#: what a sender over a cap is told to wait: mail leaves as recipients come online
FULL_RETRY_AFTER = 300


@attrs.define(eq=False)
class Mail:
    mail_id: int
    sender: bytes
    #: ("key", public_key) once bound; ("name", hostname) or ("address", 8 bytes) while waiting
    recipient: tuple
    dedup_key: tuple
    datagram: bytes
    expires_at: float
    pushes: int = 0
    timer: object = attrs.field(default=None, repr=False)

    def row(self) -> MailRow:
        return MailRow(self.mail_id, self.sender, self.recipient, self.dedup_key, self.datagram, self.expires_at)


@implementer(IPathListener)
class Mailbox:
    log = Logger()

    def __init__(
        self,
        clock,
        registry,
        send,
        counters,
        default_expiry: float = DEFAULT_EXPIRY,
        per_recipient: int = PER_RECIPIENT,
        per_sender: int = PER_SENDER,
        total: int = TOTAL,
        store=None,
        per_pair: int = PER_PAIR,
        sealed_per_pair: int = SEALED_PER_PAIR,
        sealed_bytes_per_pair: int = SEALED_BYTES_PER_PAIR,
        sealed_bytes_per_recipient: int = SEALED_BYTES_PER_RECIPIENT,
        sealed_bytes_per_sender: int = SEALED_BYTES_PER_SENDER,
    ):
        self._clock = clock
        self._registry = registry
        #: ``send(datagram, endpoint)`` for pushes, which answer no request
        self._send = send
        self._counters = counters
        self._store = check_provides(store if store is not None else MemoryStore(), IBeaconStore, "Mailbox store")
        self.default_expiry = default_expiry
        self.per_recipient = per_recipient
        self.per_sender = per_sender
        self.per_pair = per_pair
        self.sealed_per_pair = sealed_per_pair
        self.sealed_bytes_per_pair = sealed_bytes_per_pair
        self.sealed_bytes_per_recipient = sealed_bytes_per_recipient
        self.sealed_bytes_per_sender = sealed_bytes_per_sender
        self.total = total
        #: sender -> bytes of sealed mail it has waiting
        self._sealed_from: collections.Counter = collections.Counter()
        self._boxes: dict[tuple, dict[int, Mail]] = {}
        self._from: collections.Counter = collections.Counter()
        self._count = 0
        self._push_budget = BucketTable(PUSHES_PER_NODE)

    def __len__(self) -> int:
        return self._count

    def waiting_for(self, recipient: tuple) -> list[Mail]:
        return list(self._boxes.get(recipient, {}).values())

    def restore(self, rows) -> None:
        """Take back the mail a store kept (at start); it is pushed when its recipients register."""
        now = self._clock.seconds()
        for row in rows:
            if row.expires_at <= now:
                self._store.delete_mail(row.mail_id)
                continue
            self._add(Mail(row.mail_id, row.sender, row.recipient, row.dedup_key, row.datagram, row.expires_at))

    def _add(self, mail: Mail) -> None:
        self._boxes.setdefault(mail.recipient, {})[mail.mail_id] = mail
        if is_sealed(mail.dedup_key):
            self._sealed_from[mail.sender] += len(mail.datagram)
        else:
            self._from[mail.sender] += 1
        self._count += 1

    # -- posting -----------------------------------------------------------

    def post(self, sender: bytes, recipient: tuple, datagram: bytes, dedup_key: tuple, expires_at: int = 0) -> Mail:
        """Keep ``datagram`` for ``recipient`` and push it if they are online.

        ``recipient`` is ``("key", k)``, ``("name", hostname)`` or
        ``("address", raw)``; a name or address a key holds is bound to that
        key at once.  Raises RateLimited when a cap is reached.
        """
        if len(datagram) > msgs.MAX_DELIVERED:
            raise InvalidArgument("the message is too large to deliver")
        recipient = self._resolve(recipient)
        now = self._clock.seconds()
        longest = now + self.default_expiry
        expiry = min(expires_at, longest) if expires_at else longest
        if expiry <= now:
            raise Refused("the message has already expired")
        for old in [m for m in self.waiting_for(recipient) if m.sender == sender and m.dedup_key == dedup_key]:
            self._drop(old)
        box = self._boxes.get(recipient, {})
        if is_sealed(dedup_key):
            self._check_sealed_room(sender, box, len(datagram))
        else:
            pair = sum(1 for m in box.values() if m.sender == sender and not is_sealed(m.dedup_key))
            if pair >= self.per_pair or sum(1 for m in box.values() if not is_sealed(m.dedup_key)) >= self.per_recipient:
                self._refuse("the recipient's mailbox at the beacon is full")
            if self._from[sender] >= self.per_sender:
                self._refuse("you have too much mail waiting at the beacon")
        if self._count >= self.total:
            self._refuse("the beacon's mailbox is full")
        mail = Mail(int.from_bytes(os.urandom(8), "big"), sender, recipient, dedup_key, datagram, expiry)
        self._add(mail)
        self._store.put_mail(mail.row())
        self._counters["mail_posted"] += 1
        if recipient[0] == "key" and self._registry.get(recipient[1]) is not None:
            self._start_round(mail)
        return mail

    def _check_sealed_room(self, sender: bytes, box: dict, size: int) -> None:
        """Sealed caps, in datagrams and bytes (a large message is many pieces)."""
        sealed = [m for m in box.values() if is_sealed(m.dedup_key)]
        pair = [m for m in sealed if m.sender == sender]
        if len(pair) >= self.sealed_per_pair or sum(len(m.datagram) for m in pair) + size > self.sealed_bytes_per_pair:
            self._refuse("you have left this recipient as much sealed mail as the beacon keeps")
        if sum(len(m.datagram) for m in sealed) + size > self.sealed_bytes_per_recipient:
            self._refuse("the recipient's mailbox at the beacon is full")
        if self._sealed_from[sender] + size > self.sealed_bytes_per_sender:
            self._refuse("you have too much sealed mail waiting at the beacon")

    def _refuse(self, why: str):
        self._counters["mail_refused_full"] += 1
        raise RateLimited(why, hint="Try again later: mail leaves as its recipients come online.", retry_after=FULL_RETRY_AFTER)

    def _resolve(self, recipient: tuple) -> tuple:
        kind, value = recipient
        key = None
        if kind == "name":
            key = self._registry.holder_of(value)
        elif kind == "address":
            key = self._registry.holder_of_address(Address.from_bytes(value))
        return ("key", key) if key is not None else recipient

    # -- pushing -----------------------------------------------------------

    def recipient_online(self, record) -> None:
        """``record`` registered: bind mail waiting for its name or address,
        and start a round for everything it has not acknowledged."""
        key = ("key", record.public_key)
        for waiting in (("name", record.hostname), ("address", record.address.to_bytes())):
            for mail in self._boxes.pop(waiting, {}).values():
                mail.recipient = key
                self._boxes.setdefault(key, {})[mail.mail_id] = mail
                self._store.put_mail(mail.row())
        self.path_changed(record)

    def path_changed(self, record) -> None:
        """``record``'s endpoint is new: pushes so far may have gone elsewhere."""
        for mail in self.waiting_for(("key", record.public_key)):
            self._start_round(mail)

    def _start_round(self, mail: Mail) -> None:
        self._cancel(mail)
        mail.pushes = 0
        # Not inline: the reply to the request that brought the recipient
        # online (its Registered) should reach it before its mail.
        mail.timer = self._clock.callLater(0, self._push, mail)

    def _push(self, mail: Mail) -> None:
        mail.timer = None
        now = self._clock.seconds()
        if now >= mail.expires_at:
            self._expire_one(mail)
            return
        record = self._registry.get(mail.recipient[1])
        if record is None or mail.pushes >= MAX_PUSHES:
            # Offline, or not answering: wait for its next registration.
            return
        if self._push_budget.take(record.public_key, now):
            self._counters["mail_push_deferred"] += 1
            mail.timer = self._clock.callLater(PUSH_DELAYS[0], self._push, mail)
            return
        mail.pushes += 1
        self._counters["mail_pushes"] += 1
        deliver = msgs.Deliver(int.from_bytes(os.urandom(8), "big"), mail.mail_id, mail.datagram)
        self._send(msgs.encode(deliver), record.endpoint)
        if mail.pushes < MAX_PUSHES:
            mail.timer = self._clock.callLater(PUSH_DELAYS[mail.pushes - 1], self._push, mail)

    def acked(self, recipient_key: bytes, mail_id: int) -> bool:
        mail = self._boxes.get(("key", recipient_key), {}).get(mail_id)
        if mail is None:
            return False
        self._counters["mail_delivered"] += 1
        self._drop(mail)
        return True

    # -- forgetting ----------------------------------------------------------

    def _cancel(self, mail: Mail) -> None:
        if mail.timer is not None and mail.timer.active():
            mail.timer.cancel()
        mail.timer = None

    def _drop(self, mail: Mail) -> None:
        self._cancel(mail)
        box = self._boxes.get(mail.recipient, {})
        if box.pop(mail.mail_id, None) is not None:
            self._count -= 1
            counter, size = (self._sealed_from, len(mail.datagram)) if is_sealed(mail.dedup_key) else (self._from, 1)
            counter[mail.sender] -= size
            if counter[mail.sender] <= 0:
                del counter[mail.sender]
            self._store.delete_mail(mail.mail_id)
        if not box:
            self._boxes.pop(mail.recipient, None)

    def _expire_one(self, mail: Mail) -> None:
        self._counters["mail_expired"] += 1
        self._drop(mail)

    def expire(self) -> int:
        """Drop every mail past its expiry; return how many."""
        now = self._clock.seconds()
        old = [m for box in self._boxes.values() for m in box.values() if now >= m.expires_at]
        for mail in old:
            self._expire_one(mail)
        return len(old)

    # -- a fleet (pilotproto.beacon.fleet): what another beacon posted, bound or dropped --

    def adopt(self, row) -> None:
        """Another beacon of the fleet keeps this mail (new, or bound to a key
        now): hold the same copy, and push it if its recipient is live here."""
        self.forget(row.mail_id)
        if row.expires_at <= self._clock.seconds():
            return
        mail = Mail(row.mail_id, row.sender, row.recipient, row.dedup_key, row.datagram, row.expires_at)
        self._add(mail)
        if mail.recipient[0] == "key" and self._registry.get(mail.recipient[1]) is not None:
            self._start_round(mail)

    def forget(self, mail_id: int) -> bool:
        """Another beacon of the fleet delivered, expired or replaced this mail."""
        for box in self._boxes.values():
            mail = box.get(mail_id)
            if mail is not None:
                self._drop(mail)
                return True
        return False

    def stop(self) -> None:
        for box in self._boxes.values():
            for mail in box.values():
                self._cancel(mail)


def is_sealed(dedup_key: tuple) -> bool:
    return bool(dedup_key) and dedup_key[0] == "sealed"


# -- the server's handlers ------------------------------------------------------------


def rx_sealed_mail(server, msg, inbound):
    """Keep a sealed message (or receipt) for its recipient's key; Ok, or why not."""
    sender, refusal = server._authenticate(msg, inbound)
    if sender is None:
        return refusal
    if msg.recipient_key == sender.public_key:
        return server._error(msg, "invalid_argument", "a node cannot leave mail for itself", inbound, True)
    server.counters["sealed_posted"] += 1
    return server._post(msg, sender, ("key", msg.recipient_key), ("sealed", msg.message_id), inbound, msg.expires_at)


def rx_sealed_part(server, msg, inbound):
    """Keep one piece of a large sealed message; each piece is mail of its own (a resent piece replaces)."""
    sender, refusal = server._authenticate(msg, inbound)
    if sender is None:
        return refusal
    if msg.recipient_key == sender.public_key:
        return server._error(msg, "invalid_argument", "a node cannot leave mail for itself", inbound, True)
    server.counters["sealed_parts_posted"] += 1
    dedup = ("sealed", msg.message_id, msg.part)
    return server._post(msg, sender, ("key", msg.recipient_key), dedup, inbound, msg.expires_at)


#: merged into the server's dispatch table (:mod:`pilotproto.beacon.server`)
SEALED_HANDLERS = {
    msgs.SealedMail: rx_sealed_mail,
    SealedPart: rx_sealed_part,
}
