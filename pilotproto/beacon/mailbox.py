"""
The beacon's mailbox: signed trust messages on their way from one node to
another (handshake requests, answers, revocations).

A mail is the sender's original signed datagram, kept byte for byte, so the
recipient verifies the sender's signature itself: the beacon can delay or
drop mail but cannot forge it.

* Mail is addressed to a recipient key.  A handshake request may name its
  target by hostname or address; if no live registration holds that name or
  address, the mail waits *for the name or address* and is bound to the
  first key that registers it (the same key a lookup would have returned).
* If the recipient is online the mail is pushed at once, and again every
  ``RETRANSMIT`` seconds, at most ``MAX_PUSHES`` times, until the recipient
  acknowledges it with ``MailAck``.  Waiting mail is pushed again whenever
  the recipient registers or keeps alive, so a node that was offline gets it
  as soon as it is back.
* Mail expires (default 7 days; the sender may ask for less, never more).
* Caps keep one sender from filling the beacon's memory: per recipient,
  per (sender, recipient) pair, and in total.  A resent message (same
  sender and ``dedup_key``) replaces the earlier copy instead of adding one.
"""

from __future__ import annotations

import os

import attrs
from twisted.logger import Logger

from ..errors import Refused
from ..wire import beacon as msgs

DEFAULT_EXPIRY = 7 * 24 * 3600
RETRANSMIT = 1.0
MAX_PUSHES = 10
PER_RECIPIENT = 64
PER_SENDER = 8
TOTAL = 100_000


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
    ):
        self._clock = clock
        self._registry = registry
        #: ``send(datagram, endpoint)`` for pushes, which answer no request
        self._send = send
        self._counters = counters
        self.default_expiry = default_expiry
        self.per_recipient = per_recipient
        self.per_sender = per_sender
        self.total = total
        self._boxes: dict[tuple, dict[int, Mail]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def waiting_for(self, recipient: tuple) -> list[Mail]:
        return list(self._boxes.get(recipient, {}).values())

    # -- posting -----------------------------------------------------------

    def post(self, sender: bytes, recipient: tuple, datagram: bytes, dedup_key: tuple, expires_at: int = 0) -> Mail:
        """Keep ``datagram`` for ``recipient`` and push it if they are online.

        ``recipient`` is ``("key", k)``, ``("name", hostname)`` or
        ``("address", raw)``; a name or address held by a live registration
        is bound to its key at once.  Raises Refused when a cap is reached.
        """
        recipient = self._resolve(recipient)
        now = self._clock.seconds()
        longest = now + self.default_expiry
        expiry = min(expires_at, longest) if expires_at else longest
        if expiry <= now:
            raise Refused("the message has already expired")
        for old in [m for m in self.waiting_for(recipient) if m.sender == sender and m.dedup_key == dedup_key]:
            self._drop(old)
        box = self._boxes.setdefault(recipient, {})
        from_sender = sum(1 for m in box.values() if m.sender == sender)
        if from_sender >= self.per_sender or len(box) >= self.per_recipient or self._count >= self.total:
            self._counters["mail_refused_full"] += 1
            if not box:
                del self._boxes[recipient]
            raise Refused("the recipient's mailbox at the beacon is full", hint="Try again later.")
        mail = Mail(int.from_bytes(os.urandom(8), "big"), sender, recipient, dedup_key, datagram, expiry)
        box[mail.mail_id] = mail
        self._count += 1
        self._counters["mail_posted"] += 1
        if recipient[0] == "key":
            self._start_pushing(mail)
        return mail

    def _resolve(self, recipient: tuple) -> tuple:
        kind, value = recipient
        record = None
        if kind == "name":
            record = self._registry.find_by_name(value)
        elif kind == "address":
            from ..identity import Address

            record = self._registry.find_by_address(Address.from_bytes(value))
        return ("key", record.public_key) if record is not None else recipient

    # -- pushing -----------------------------------------------------------

    def recipient_online(self, record) -> None:
        """``record`` registered or kept alive: bind mail waiting for its name
        or address, and push everything it has not acknowledged."""
        key = ("key", record.public_key)
        for waiting in (("name", record.hostname), ("address", record.address.to_bytes())):
            for mail in self._boxes.pop(waiting, {}).values():
                mail.recipient = key
                self._boxes.setdefault(key, {})[mail.mail_id] = mail
        for mail in self.waiting_for(key):
            if mail.timer is None or not mail.timer.active():
                mail.pushes = 0
                self._start_pushing(mail)

    def _start_pushing(self, mail: Mail) -> None:
        # Not inline: the reply to the request that brought the recipient
        # online (its Registered) should reach it before its mail.
        mail.timer = self._clock.callLater(0, self._push, mail)

    def _push(self, mail: Mail) -> None:
        mail.timer = None
        if self._clock.seconds() >= mail.expires_at:
            self._expire_one(mail)
            return
        record = self._registry.get(mail.recipient[1])
        if record is None or mail.pushes >= MAX_PUSHES:
            # Offline, or not answering: wait for its next registration or keepalive.
            return
        mail.pushes += 1
        self._counters["mail_pushes"] += 1
        deliver = msgs.Deliver(int.from_bytes(os.urandom(8), "big"), mail.mail_id, mail.datagram)
        self._send(msgs.encode(deliver), record.endpoint)
        mail.timer = self._clock.callLater(RETRANSMIT, self._push, mail)

    def acked(self, recipient_key: bytes, mail_id: int) -> bool:
        mail = self._boxes.get(("key", recipient_key), {}).get(mail_id)
        if mail is None:
            return False
        self._counters["mail_delivered"] += 1
        self._drop(mail)
        return True

    # -- forgetting ----------------------------------------------------------

    def _drop(self, mail: Mail) -> None:
        if mail.timer is not None and mail.timer.active():
            mail.timer.cancel()
        mail.timer = None
        box = self._boxes.get(mail.recipient, {})
        if box.pop(mail.mail_id, None) is not None:
            self._count -= 1
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

    def stop(self) -> None:
        for box in self._boxes.values():
            for mail in box.values():
                if mail.timer is not None and mail.timer.active():
                    mail.timer.cancel()
                mail.timer = None
