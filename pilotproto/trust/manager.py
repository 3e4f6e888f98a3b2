"""
The node's side of trust: handshake requests, answers, revocations and the
visibility list it uploads to the beacon.

Trust is mutual and each side decides for itself:

* asking ``handshake B`` trusts B (once B's key is known: at once if a
  lookup finds it, else from B's answer), so that B can find us after it
  approves;
* approving A's request trusts A;
* a session needs both sides to trust each other, which each checks
  locally (:meth:`TrustManager.is_trusted`, for the tunnel responder);
* ``revoke`` ends it on our side and tells the peer through the beacon.

Everything another node says reaches us as the beacon's ``Deliver``: the
other node's original signed datagram.  We check its signature and that it
is addressed to us, drop anything at or below the newest ``seq`` already
seen from that key (duplicates, replays by the beacon), act, save, and only
then acknowledge it, so a failed save means the beacon delivers it again.

The parts: :class:`~pilotproto.trust.book.TrustBook` (whom we trust, the
visibility list, the listener), :class:`~pilotproto.trust.outgoing.OutgoingRequests`
(our requests, each a state machine), and this class: requests from
others, answers and revocations we owe (the outbox), and the mail reader.
"""

from __future__ import annotations

from twisted.logger import Logger
from zope.interface import implementer

from ..common.ids import new_request_id
from ..common.names import check_hostname
from ..common.wiring import check_provides
from ..errors import InvalidArgument, NotFound, StateError
from ..identity import Address, fingerprint, verify_signature
from ..interfaces import (
    IBeaconMail,
    IPeerDirectory,
    ISignedRequests,
    ITrustListener,
    ITrustPolicy,
)
from ..wire import DecodeError
from ..wire import beacon as msgs
from .book import TrustBook, address_of, describe_key
from .outgoing import DEFAULT_EXPIRY, OutgoingRequests
from .store import IncomingRequest, OutboxItem, TrustStore, b64, unb64

#: Requests from strangers kept at most (oldest dropped first).
MAX_INCOMING = 256


@implementer(ITrustPolicy, IBeaconMail)
class TrustManager:
    """Trust for ``identity``, stored in ``home`` (or ``store``).

    ``requests`` (:class:`ISignedRequests`) carries what we send the beacon,
    ``directory`` (:class:`IPeerDirectory`) finds a target's key early,
    ``listener`` (:class:`ITrustListener`) hears when trust begins or ends.
    """

    log = Logger()

    def __init__(
        self,
        clock,
        identity,
        home,
        *,
        requests,
        directory,
        listener,
        hostname: str = "",
        auto_approve: bool = False,
        store: TrustStore | None = None,
        ids=new_request_id,
    ):
        self._clock = clock
        self._identity = identity
        self._requests = check_provides(requests, ISignedRequests, "TrustManager requests")
        check_provides(directory, IPeerDirectory, "TrustManager directory")
        check_provides(listener, ITrustListener, "TrustManager listener")
        self.hostname = hostname
        self.auto_approve = auto_approve
        self.store = store if store is not None else TrustStore.load(home)
        self.book = TrustBook(clock, self.store, requests, listener)
        self.handshakes = OutgoingRequests(clock, identity, self.store, self.book, requests, directory, hostname, ids)
        self.counters: dict[str, int] = {}
        self._mail = {
            msgs.HandshakeRequest: self._mail_request,
            msgs.HandshakeAnswer: self._mail_answer,
            msgs.Revoke: self._mail_revoke,
        }

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    # -- questions -------------------------------------------------------------

    def is_trusted(self, public_key: bytes) -> bool:
        """Do we trust ``public_key``?  (A session also needs the peer to trust us.)"""
        return self.book.is_trusted(public_key)

    def hostname_of(self, public_key: bytes) -> str | None:
        entry = self.book.get(public_key)
        return entry.hostname if entry is not None else None

    def trusted(self) -> list[dict]:
        return self.book.describe()

    def pending(self) -> list[dict]:
        self._drop_expired_incoming()
        return [
            {
                "hostname": r.hostname,
                "address": r.address,
                "public_key": b64(r.public_key),
                "fingerprint": fingerprint(r.public_key),
                "reason": r.reason,
                "received_at": r.received_at,
                "expires_at": r.expires_at,
                "name_conflict": _conflict(r),
            }
            for r in sorted(self.store.incoming.values(), key=lambda r: r.received_at)
        ]

    def outgoing(self) -> list[dict]:
        if self.handshakes.expire_due():
            self._save_quietly()
        return self.handshakes.describe_all()

    def _drop_expired_incoming(self) -> None:
        now = self._clock.seconds()
        old = [k for k, r in self.store.incoming.items() if r.expires_at <= now]
        if old:
            for key in old:
                del self.store.incoming[key]
            self.store.save()

    # -- commands ------------------------------------------------------------------

    def handshake(self, target: str, reason: str):
        """Ask ``target`` (hostname or address) to trust us.

        Returns a Deferred firing with a dict whose ``state`` is ``sent``
        (the beacon has it: it delivers at once if the peer is online, and
        keeps it until ``expires_at`` if not) or ``queued`` (the beacon did
        not answer; it is sent after the next registration); ``approved`` or
        ``rejected`` if the answer came first.  It fails with the beacon's
        refusal.
        """
        return self.handshakes.start(target, reason)

    def approve(self, peer: str) -> dict:
        request = self._find(peer, self.store.incoming.values(), "pending request from")
        if request.known_key is not None and peer == request.hostname:
            raise InvalidArgument(
                f"the request from {peer!r} comes from a different key ({fingerprint(request.public_key)}) "
                f"than the one you know for that name ({fingerprint(request.known_key)})",
                hint=f"The name may have been taken over. If {peer} really has a new key, approve this key "
                f"by its address: pilotctl approve {request.address}",
            )
        return self._approve(request)

    def _approve(self, request: IncomingRequest) -> dict:
        self.store.incoming.pop(request.public_key, None)
        # They asked us, so they trust us: the trust is mutual at once.
        self.book.trust(request.public_key, request.hostname, request.reason, mutual=True, save=False)
        self._answer(request, approved=True)
        return {"peer": describe_key(request.public_key, request.hostname), "approved": True}

    def reject(self, peer: str) -> dict:
        request = self._find(peer, self.store.incoming.values(), "pending request from")
        del self.store.incoming[request.public_key]
        self._answer(request, approved=False)
        return {"peer": describe_key(request.public_key, request.hostname), "approved": False}

    def revoke(self, peer: str) -> dict:
        trusted = self._find(peer, self.store.trusted.values(), "trusted peer")
        key = trusted.public_key
        self.handshakes.withdraw(key)
        self.store.outbox = [i for i in self.store.outbox if i.peer_key != key]
        item = OutboxItem("revoke", key)
        self.store.outbox.append(item)
        # Hides us from the peer and ends its sessions (the listener).
        self.book.untrust(key)
        self.store.save()
        self._send_outbox_item(item)
        return {"peer": describe_key(key, trusted.hostname), "revoked": True}

    def _find(self, peer, entries, what):
        if not isinstance(peer, str) or not peer:
            raise InvalidArgument("name the peer by hostname, address or public key")
        if Address.looks_like(peer):
            address = str(Address.parse(peer))
            match = lambda e: address_of(e.public_key) == address  # noqa: E731
        elif len(peer) == 44 and peer.endswith("="):
            try:
                key = unb64(peer)
            except ValueError:
                raise InvalidArgument(f"{peer!r} is not a base64 public key") from None
            match = lambda e: e.public_key == key  # noqa: E731
        else:
            check_hostname(peer)
            match = lambda e: e.hostname == peer  # noqa: E731
        found = [entry for entry in entries if match(entry)]
        hint = "See 'pilotctl pending'." if "pending" in what else "See 'pilotctl trust'."
        if not found:
            raise NotFound(f"no {what} {peer!r}", hint=hint)
        if len(found) > 1:
            # A name is a label: two keys may carry it, and only a key says which one is meant.
            keys = ", ".join(f"{address_of(e.public_key)} ({fingerprint(e.public_key)})" for e in found)
            raise InvalidArgument(f"{len(found)} keys go by the name {peer!r}: {keys}", hint="Name the peer by its address. " + hint)
        return found[0]

    # -- what we owe the beacon (answers, revocations) -----------------------------------

    def _answer(self, request: IncomingRequest, approved: bool) -> None:
        item = OutboxItem("answer", request.public_key, request.handshake_id, approved)
        self.store.outbox.append(item)
        self.store.save()
        self._send_outbox_item(item)

    def _send_outbox_item(self, item: OutboxItem) -> None:
        if item.kind == "answer":
            message = msgs.HandshakeAnswer(0, item.handshake_id, item.peer_key, item.approved, self.hostname)
        else:
            message = msgs.Revoke(0, item.peer_key)

        def ok():
            if item in self.store.outbox:
                self.store.outbox.remove(item)
                self._save_quietly()

        def refused(error):
            self.log.warn("the beacon refused a trust message for {peer}: {e}", peer=address_of(item.peer_key), e=error.message)
            ok()

        self._requests.send(("outbox", id(item)), message, ok, refused)

    def _save_quietly(self) -> None:
        try:
            self.store.save()
        except StateError as e:
            self.log.error("{message}", message=e.message)

    # -- IBeaconMail ---------------------------------------------------------------------

    def registered(self) -> None:
        """We (re-)registered: upload our visibility list and resend what waits."""
        self.book.upload_visibility()
        self.handshakes.registered()
        for item in self.store.outbox:
            if not self._requests.in_flight(("outbox", id(item))):
                self._send_outbox_item(item)

    def upload_visibility(self) -> None:
        """Send the beacon the signed list of keys that may find us."""
        self.book.upload_visibility()

    def message_received(self, msg) -> bool:
        """Take a message from the beacon; False if it is not ours.

        Answers to our signed requests go to the signed sender before this
        is asked; what is left for us is mail the beacon pushes."""
        if isinstance(msg, msgs.Deliver):
            self._delivered(msg)
            return True
        return False

    def _delivered(self, deliver) -> None:
        try:
            inner = msgs.decode(deliver.datagram)
        except DecodeError:
            self._count("mail_malformed")
            self._ack(deliver.mail_id)
            return
        if not inner.SIGNED or not verify_signature(inner.public_key, msgs.signed_bytes(inner), inner.signature):
            self._count("mail_bad_signature")
            self._ack(deliver.mail_id)
            return
        sender = inner.public_key
        if inner.seq <= self.store.peer_seqs.get(sender, 0):
            self._count("mail_duplicate")
            self._ack(deliver.mail_id)
            return
        handler = self._mail.get(type(inner))
        if handler is None:
            self._count("mail_unexpected_type")
            self._ack(deliver.mail_id)
            return
        previous = self.store.peer_seqs.get(sender)
        self.store.peer_seqs[sender] = inner.seq
        try:
            handler(inner)
            self.store.save()
        except StateError as e:
            # Not acknowledged: the beacon keeps it and delivers it again.
            if previous is None:
                del self.store.peer_seqs[sender]
            else:
                self.store.peer_seqs[sender] = previous
            self.log.error("{message}", message=e.message)
            return
        self._ack(deliver.mail_id)

    def _ack(self, mail_id: int) -> None:
        self._requests.post(msgs.MailAck(0, mail_id))

    def _mail_request(self, request) -> None:
        me = self._identity.address.to_bytes() if request.by_address else self.hostname.encode()
        if request.target != me:
            self._count("mail_not_for_us")
            return
        now = self._clock.seconds()
        expires_at = request.expires_at or now + DEFAULT_EXPIRY
        if expires_at <= now:
            self._count("mail_expired")
            return
        key = request.public_key
        incoming = IncomingRequest(key, request.hostname, address_of(key), request.reason, now, expires_at, request.handshake_id)
        if self.book.is_trusted(key):
            # A key we trust (in advance, because we asked it; or it lost its
            # state and asks again): approve, and count it as the answer to
            # our own request to it, if we have one.
            self.log.info("approving the handshake from {name} ({address}), a key we trust", name=request.hostname, address=incoming.address)
            self.handshakes.crossed(key, incoming.hostname, incoming.address)
            self._approve(incoming)
            return
        known = self.book.keys_named(request.hostname) + self.handshakes.keys_asked(request.hostname)
        if known and key not in known:
            # A name we trust or asked for, from another key: a new request
            # of its own, kept apart and never approved without the user.
            incoming.known_key = known[0]
            self._count("mail_name_held_by_other_key")
            self.log.warn(
                "handshake request from {name} by a different key ({new}) than the one we know for that name ({old})",
                name=request.hostname, new=fingerprint(key), old=fingerprint(known[0]),
            )
        elif self.auto_approve or self.handshakes.crossed(key, incoming.hostname, incoming.address):
            self.log.info("approving the handshake from {name} ({address})", name=request.hostname, address=incoming.address)
            self._approve(incoming)
            return
        self.store.incoming[key] = incoming
        while len(self.store.incoming) > MAX_INCOMING:
            oldest = min(self.store.incoming.values(), key=lambda r: r.received_at)
            del self.store.incoming[oldest.public_key]
        self.log.info("handshake request from {name} ({address}): {reason}", name=request.hostname, address=incoming.address, reason=request.reason)

    def _mail_answer(self, answer) -> None:
        problem = self.handshakes.answered(answer)
        if problem is not None:
            self._count(problem)

    def _mail_revoke(self, revoke) -> None:
        if revoke.peer_key != self._identity.public_key:
            self._count("mail_not_for_us")
            return
        key = revoke.public_key
        self.store.incoming.pop(key, None)
        self.handshakes.withdraw(key)
        peer = self.book.untrust(key)
        if peer is not None:
            self.log.info("{name} ({address}) revoked its trust", name=peer.hostname, address=peer.address)

    def stop(self) -> None:
        self.handshakes.stop()
        self.book.stop()
        self._requests.cancel_matching(("outbox",))


def _conflict(request: IncomingRequest) -> dict | None:
    """How ``pending`` shows a request whose name we know under another key."""
    if request.known_key is None:
        return None
    return {
        "message": "name now held by a different key",
        "known_public_key": b64(request.known_key),
        "known_fingerprint": fingerprint(request.known_key),
        "known_address": address_of(request.known_key),
    }
