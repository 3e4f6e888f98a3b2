"""
``Mail``: messages (port 1001) and events (port 1002) on one node, as one
child service of the boss.

It makes the durable stores (``HOME/inbox.db``, ``HOME/outbox/``), the
outbox and its stream carrier, the inbox and the event bus, and wires them
(each collaborator checked).  Started, it resumes the outbox and announces
our subscriptions; stopped, it stops every timer and fails every long poll.
Trust changes come in as an :class:`~pilotproto.interfaces.ITrustListener`:
a revoked peer's queued items and subscriptions are dropped.

Given a ``poster`` (a :class:`~pilotproto.rendezvous.sealed.SealedPoster`),
it also makes the store-and-forward worker (:mod:`pilotproto.node.sealed`):
messages a peer does not take within a few seconds are left sealed at the
beacon; :attr:`forwarder` is the sink the beacon link hands sealed mail to.
"""

from __future__ import annotations

import contextlib
import hashlib

from twisted.application import service
from twisted.internet import defer
from zope.interface import implementer

from ..common.wiring import check_provides
from ..errors import InvalidArgument, NotFound, NotTrusted
from ..interfaces import IMailPeers, ITrustListener
from ..trust.book import address_of
from .delivery import StreamCarrier
from .events import LINGER, Events
from .inbox import INBOX_PORT, MAX_MESSAGE, Inbox
from .mailstore import MailStore, OutboxStore
from .outbox import Outbox
from .sealed import StoreAndForward

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
                 carrier=None, outbox_options=None, poster=None, forward_options=None):
        self._clock = clock
        self._peers = check_provides(peers, IMailPeers, "Mail.peers")
        self._ids = ids
        self.store = MailStore(home, clock)
        #: store-and-forward through the beacon (None: the stream only)
        self.forwarder = StoreAndForward(clock, poster, peers, **(forward_options or {})) if poster is not None else None
        self.outbox = Outbox(clock, OutboxStore(home), carrier if carrier is not None else StreamCarrier(clock, peers),
                             sealer=self.forwarder, **(outbox_options or {}))
        self.inbox = Inbox(home, clock, store=self.store, outbox=self.outbox)
        if self.forwarder is not None:
            self.forwarder.wire(self.outbox, self.inbox)
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
                reply = yield acked
                answer["state"] = "delivered"
                answer["via"] = reply.get("via", "stream") if isinstance(reply, dict) else "stream"
            except defer.TimeoutError:
                answer["state"] = "queued"  # still in the outbox, retried until acked
        return answer

    # -- what became of what we sent ---------------------------------------------------------

    @defer.inlineCallbacks
    def outbox_messages(self, id=None, wait=0, count=100):
        """``{"messages": [...], "queues": [...]}``: each message's state, newest first (``id``: that one,
        waiting up to ``wait`` s while it is still queued)."""
        if id is not None and (not isinstance(id, str) or not id):
            raise InvalidArgument("id must be a message id (16 hex digits)")
        if not isinstance(wait, (int, float)) or isinstance(wait, bool) or not 0 <= wait <= MAX_WAIT:
            raise InvalidArgument(f"wait must be a number of seconds from 0 to {MAX_WAIT}")
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 1000:
            raise InvalidArgument("count must be a whole number from 1 to 1000")
        found = self.outbox.messages(id, count)
        if id is not None and not found:
            raise NotFound(f"no message {id} in the outbox's record", hint="Messages are remembered 7 days after they settle.")
        waiting = [n for row in found if row["state"] == "queued" for n in self.outbox.store.find(row["address"], row["id"])]
        if id is not None and wait > 0 and waiting:
            acked = defer.DeferredList([self.outbox.when_acked(n) for n in waiting], consumeErrors=True)
            acked.addTimeout(wait, self._clock)
            with contextlib.suppress(defer.TimeoutError):  # still queued after ``wait``: say so
                yield acked
            found = self.outbox.messages(id, count)
        names = {p["address"]: p["hostname"] for p in self._peers.trusted_peers()}
        for row in found:
            row["peer"] = names.get(row["address"]) or row["address"]
        return {"messages": found, "queues": self.outbox.describe()}

    # -- ITrustListener ------------------------------------------------------------------------

    def trust_established(self, public_key: bytes) -> None:
        self.events.trust_established(public_key)

    def trust_revoked(self, public_key: bytes) -> None:
        self.outbox.drop_peer(address_of(public_key))
        self.events.trust_revoked(public_key)
