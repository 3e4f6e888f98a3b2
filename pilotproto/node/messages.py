"""
``Mail``: messages (port 1001) and events (port 1002) on one node, as one
child service of the boss.

It makes the durable stores (``HOME/inbox.db``, ``HOME/outbox/``), the
outbox and its stream carrier, the inbox and the event bus, and wires them
(each collaborator checked).  Started, it resumes the outbox and announces
our subscriptions; stopped, it stops every timer and fails every long poll.
Trust changes come in as an :class:`~pilotproto.interfaces.ITrustListener`:
a revoked peer's queued items and subscriptions are dropped.
"""

from __future__ import annotations

import hashlib

from twisted.application import service
from twisted.internet import defer
from zope.interface import implementer

from ..common.wiring import check_provides
from ..errors import InvalidArgument, NotTrusted
from ..interfaces import IMailPeers, ITrustListener
from ..trust.book import address_of
from .delivery import StreamCarrier
from .events import LINGER, Events
from .inbox import INBOX_PORT, MAX_MESSAGE, Inbox
from .mailstore import MailStore, OutboxStore
from .outbox import Outbox

#: the longest send_message waits for the receiver's ack before answering "queued"
MAX_WAIT = 60


def new_id(ids) -> str:
    """A 16-hex-digit item id from the 64-bit random source ``ids``."""
    return f"{ids() & (2**64 - 1):016x}"


@implementer(ITrustListener)
class Mail(service.Service):
    """Messages and events for the node ``hostname``/``address`` whose home is ``home``."""

    name = "mail"

    def __init__(self, clock, home: str, peers, ids, hostname: str, address: str, linger: float = LINGER,
                 carrier=None, outbox_options=None):
        self._clock = clock
        self._peers = check_provides(peers, IMailPeers, "Mail.peers")
        self._ids = ids
        self.store = MailStore(home, clock)
        self.outbox = Outbox(clock, OutboxStore(home), carrier if carrier is not None else StreamCarrier(clock, peers),
                             **(outbox_options or {}))
        self.inbox = Inbox(home, clock, store=self.store, outbox=self.outbox)
        self.events = Events(clock, self.store, self.outbox, peers, ids, hostname, address, linger=linger)

    def startService(self):
        super().startService()
        self.outbox.start()
        self.events.start()

    def stopService(self):
        self.events.stop()
        self.inbox.stop()
        self.outbox.stop()
        return super().stopService()

    # -- sending ---------------------------------------------------------------------------

    @defer.inlineCallbacks
    def _resolve(self, target: str):
        """``(hostname, address)`` of the trusted peer ``target`` names; NotTrusted, NotFound."""
        for peer in self._peers.trusted_peers():
            if target in (peer["hostname"], peer["address"]):
                return peer["hostname"], peer["address"]
        found = yield self._peers.lookup(target)
        for peer in self._peers.trusted_peers():
            if peer["address"] == found.get("address"):
                return peer["hostname"], peer["address"]
        raise NotTrusted(
            f"this node does not trust {target} ({found.get('address')})",
            hint=f"Ask for trust first: pilotctl handshake {target} \"why\", and wait for the approval.",
        )

    @defer.inlineCallbacks
    def send_message(self, target, data, wait=10):
        if not isinstance(target, str) or not target:
            raise InvalidArgument("target must be a peer's hostname or address")
        if not isinstance(data, bytes) or len(data) > MAX_MESSAGE:
            raise InvalidArgument(f"a message is at most {MAX_MESSAGE} bytes", hint="Send larger data with send-file.")
        if not isinstance(wait, (int, float)) or isinstance(wait, bool) or not 0 <= wait <= MAX_WAIT:
            raise InvalidArgument(f"wait must be a number of seconds from 0 to {MAX_WAIT}")
        hostname, address = yield self._resolve(target)
        id_ = new_id(self._ids)
        digest = hashlib.sha256(data).hexdigest()
        header = {"kind": "message", "name": None, "size": len(data), "sha256": digest, "id": id_}
        n = self.outbox.enqueue(address, INBOX_PORT, id_, "message", header, data)
        answer = {"id": id_, "peer": hostname or address, "address": address, "size": len(data), "sha256": digest,
                  "state": "queued"}
        if wait > 0:
            acked = self.outbox.when_acked(n)
            acked.addTimeout(wait, self._clock)
            try:
                yield acked
                answer["state"] = "delivered"
            except defer.TimeoutError:
                answer["state"] = "queued"  # still in the outbox, retried until acked
        return answer

    # -- ITrustListener ------------------------------------------------------------------------

    def trust_established(self, public_key: bytes) -> None:
        self.events.trust_established(public_key)

    def trust_revoked(self, public_key: bytes) -> None:
        self.outbox.drop_peer(address_of(public_key))
        self.events.trust_revoked(public_key)
