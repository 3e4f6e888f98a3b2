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
"""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.logger import Logger

from ..errors import InvalidArgument, NotFound, PilotError, StateError
from ..identity import Address, verify_signature
from ..common.names import check_hostname
from ..wire import DecodeError
from ..wire import beacon as msgs
from .sender import ReliableSender
from .store import IncomingRequest, OutboxItem, OutgoingRequest, TrustedPeer, TrustStore, b64, unb64

DEFAULT_EXPIRY = 7 * 24 * 3600
#: Requests from strangers kept at most (oldest dropped first).
MAX_INCOMING = 256


def _address_of(key: bytes) -> str:
    return str(Address.from_public_key(key))


class TrustManager:
    log = Logger()

    def __init__(
        self,
        clock,
        identity,
        home,
        send_to_beacon,
        seq,
        lookup,
        hostname: str = "",
        auto_approve: bool = False,
        on_revoked=None,
        on_trusted=None,
        store: TrustStore | None = None,
    ):
        self._clock = clock
        self._identity = identity
        self._send_raw = send_to_beacon
        self._seq = seq
        self._lookup = lookup
        self.hostname = hostname
        self.auto_approve = auto_approve
        self._on_revoked = on_revoked
        self._on_trusted = on_trusted
        self.store = store if store is not None else TrustStore.load(home)
        self.sender = ReliableSender(clock, identity, send_to_beacon, seq)
        self._visibility_version = 0
        self.counters: dict[str, int] = {}

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    # -- questions -------------------------------------------------------------

    def is_trusted(self, public_key: bytes) -> bool:
        """Do we trust ``public_key``?  (A session also needs the peer to trust us.)"""
        return public_key in self.store.trusted

    def trusted(self) -> list[dict]:
        return [
            {
                "hostname": p.hostname,
                "address": p.address,
                "public_key": b64(p.public_key),
                "since": p.since,
                "reason": p.reason,
                "mutual": p.mutual,
            }
            for p in sorted(self.store.trusted.values(), key=lambda p: p.since)
        ]

    def pending(self) -> list[dict]:
        self._drop_expired_incoming()
        return [
            {
                "hostname": r.hostname,
                "address": r.address,
                "public_key": b64(r.public_key),
                "reason": r.reason,
                "received_at": r.received_at,
                "expires_at": r.expires_at,
            }
            for r in sorted(self.store.incoming.values(), key=lambda r: r.received_at)
        ]

    def outgoing(self) -> list[dict]:
        return [
            {
                "target": o.target,
                "reason": o.reason,
                "sent_at": o.sent_at,
                "expires_at": o.expires_at,
                "state": o.state,
                "public_key": b64(o.public_key) if o.public_key else None,
            }
            for o in sorted(self.store.outgoing.values(), key=lambda o: o.sent_at)
        ]

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
        not answer; it is sent after the next registration).
        """
        by_address, raw_target, target = self._parse_target(target)
        reason = self._check_reason(reason)
        now = self._clock.seconds()
        handshake_id = int.from_bytes(os.urandom(8), "big")
        request = OutgoingRequest(handshake_id, target, reason, now, now + DEFAULT_EXPIRY)
        # One live request per target: a new one replaces an unanswered one.
        for old in [o for o in self.store.outgoing.values() if o.target == target and o.state in ("queued", "sent")]:
            del self.store.outgoing[old.handshake_id]
            self.sender.cancel(("handshake", old.handshake_id))
        self.store.outgoing[handshake_id] = request
        self.store.save()
        done = defer.Deferred()
        self._send_handshake(request, by_address, raw_target, done)
        self._learn_key_by_lookup(request)
        return done

    def _parse_target(self, target):
        if not isinstance(target, str) or not target:
            raise InvalidArgument("handshake needs a hostname or an address", hint="For example: pilotctl handshake agent-b \"why\"")
        if Address.looks_like(target):
            address = Address.parse(target)
            if address == self._identity.address:
                raise InvalidArgument("a node cannot ask itself for trust")
            return True, address.to_bytes(), str(address)
        check_hostname(target)
        if target == self.hostname:
            raise InvalidArgument("a node cannot ask itself for trust")
        return False, target.encode(), target

    @staticmethod
    def _check_reason(reason) -> str:
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidArgument("the reason is empty", hint="Say why, for example: pilotctl handshake agent-b \"share results\"")
        if len(reason.encode("utf-8")) > msgs.MAX_REASON:
            raise InvalidArgument(f"the reason is longer than {msgs.MAX_REASON} bytes", hint="Shorten it.")
        return reason

    def _send_handshake(self, request: OutgoingRequest, by_address, raw_target, done=None) -> None:
        message = msgs.HandshakeRequest(
            0, request.handshake_id, by_address, raw_target, self.hostname, request.reason, int(request.expires_at)
        )

        def describe(state):
            return {
                "target": request.target,
                "handshake_id": request.handshake_id,
                "state": state,
                "sent_at": request.sent_at,
                "expires_at": request.expires_at,
            }

        def ok():
            if request.state == "queued":
                request.state = "sent"
                self._save_quietly()
            if done is not None and not done.called:
                done.callback(describe("sent"))

        def refused(error: PilotError):
            request.state = "failed"
            self._save_quietly()
            if done is not None and not done.called:
                done.errback(error)

        def gave_up():
            if done is not None and not done.called:
                done.callback(describe("queued"))

        self.sender.send(("handshake", request.handshake_id), message, ok, refused, gave_up)

    def _learn_key_by_lookup(self, request: OutgoingRequest) -> None:
        """If the target is visible (public), trust its key now so it can find us."""

        def found(info):
            key = unb64(info["public_key"])
            if request.state not in ("queued", "sent") or key == self._identity.public_key:
                return
            request.public_key = key
            if key not in self.store.trusted:
                self._trust(key, info.get("hostname", request.target), request.reason, mutual=False)
            else:
                self.store.save()

        def not_visible(failure):
            # Private or offline: the key comes with the answer instead.
            self.log.debug("handshake target {t} not visible: {f}", t=request.target, f=failure.getErrorMessage())

        d = self._lookup(request.target)
        d.addCallback(found)
        d.addErrback(not_visible)

    def approve(self, peer: str) -> dict:
        request = self._find(peer, self.store.incoming.values(), "pending request from")
        return self._approve(request)

    def _approve(self, request: IncomingRequest) -> dict:
        self.store.incoming.pop(request.public_key, None)
        # They asked us, so they trust us: the trust is mutual at once.
        self._trust(request.public_key, request.hostname, request.reason, mutual=True, save=False)
        self._answer(request, approved=True)
        return {"peer": self._describe_key(request.public_key, request.hostname), "approved": True}

    def reject(self, peer: str) -> dict:
        request = self._find(peer, self.store.incoming.values(), "pending request from")
        del self.store.incoming[request.public_key]
        self._answer(request, approved=False)
        return {"peer": self._describe_key(request.public_key, request.hostname), "approved": False}

    def revoke(self, peer: str) -> dict:
        trusted = self._find(peer, self.store.trusted.values(), "trusted peer")
        key = trusted.public_key
        del self.store.trusted[key]
        for request in [o for o in self.store.outgoing.values() if o.public_key == key]:
            del self.store.outgoing[request.handshake_id]
            self.sender.cancel(("handshake", request.handshake_id))
        self.store.outbox = [i for i in self.store.outbox if i.peer_key != key]
        item = OutboxItem("revoke", key)
        self.store.outbox.append(item)
        self.store.save()
        self._send_outbox_item(item)
        self.upload_visibility()
        if self._on_revoked is not None:
            self._on_revoked(key)
        return {"peer": self._describe_key(key, trusted.hostname), "revoked": True}

    def _find(self, peer, entries, what):
        if not isinstance(peer, str) or not peer:
            raise InvalidArgument("name the peer by hostname, address or public key")
        if Address.looks_like(peer):
            address = str(Address.parse(peer))
            match = lambda e: _address_of(e.public_key) == address  # noqa: E731
        elif len(peer) == 44 and peer.endswith("="):
            try:
                key = unb64(peer)
            except ValueError:
                raise InvalidArgument(f"{peer!r} is not a base64 public key") from None
            match = lambda e: e.public_key == key  # noqa: E731
        else:
            check_hostname(peer)
            match = lambda e: e.hostname == peer  # noqa: E731
        for entry in entries:
            if match(entry):
                return entry
        hint = "See 'pilotctl pending'." if "pending" in what else "See 'pilotctl trust'."
        raise NotFound(f"no {what} {peer!r}", hint=hint)

    @staticmethod
    def _describe_key(key: bytes, hostname: str) -> dict:
        return {"hostname": hostname, "address": _address_of(key), "public_key": b64(key)}

    # -- state changes ---------------------------------------------------------------

    def _trust(self, key, hostname, reason, mutual, save=True) -> None:
        existing = self.store.trusted.get(key)
        if existing is not None:
            existing.mutual = existing.mutual or mutual
            existing.hostname = hostname or existing.hostname
        else:
            self.store.trusted[key] = TrustedPeer(key, hostname, _address_of(key), self._clock.seconds(), reason, mutual)
        if save:
            self.store.save()
        self.upload_visibility()
        if existing is None and self._on_trusted is not None:
            self._on_trusted(key)

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
            self.log.warn("the beacon refused a trust message for {peer}: {e}", peer=_address_of(item.peer_key), e=error.message)
            ok()

        self.sender.send(("outbox", id(item)), message, ok, refused)

    def _save_quietly(self) -> None:
        try:
            self.store.save()
        except StateError as e:
            self.log.error("{message}", message=e.message)

    # -- the beacon ---------------------------------------------------------------------

    def registered(self) -> None:
        """We (re-)registered: upload our visibility list and resend what waits."""
        self.upload_visibility()
        for request in self.store.outgoing.values():
            if request.state == "queued" and not self.sender.in_flight(("handshake", request.handshake_id)):
                by_address, raw, _ = self._parse_target(request.target)
                self._send_handshake(request, by_address, raw)
        for item in self.store.outbox:
            if not self.sender.in_flight(("outbox", id(item))):
                self._send_outbox_item(item)

    def upload_visibility(self) -> None:
        """Send the beacon the signed list of keys that may find us."""
        self._visibility_version = max(self._visibility_version + 1, int(self._clock.seconds() * 1e9))
        keys = sorted(self.store.trusted)
        size = msgs.VISIBILITY_CHUNK_KEYS
        chunks = [tuple(keys[i : i + size]) for i in range(0, len(keys), size)] or [()]
        self.sender.cancel_matching(("visibility",))
        for number, chunk in enumerate(chunks):
            message = msgs.SetVisibility(0, self._visibility_version, number, len(chunks), chunk)
            self.sender.send(("visibility", number), message, lambda: None)

    def message_received(self, msg) -> bool:
        """Take a message from the beacon; False if it is not ours."""
        if isinstance(msg, msgs.Deliver):
            self._delivered(msg)
            return True
        return self.sender.message_received(msg)

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
        handler = getattr(self, "_mail_" + type(inner).__name__, None)
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
        ack = msgs.sign(msgs.MailAck(int.from_bytes(os.urandom(8), "big"), mail_id), self._identity, self._seq.next())
        self._send_raw(msgs.encode(ack))

    def _mail_HandshakeRequest(self, request) -> None:
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
        incoming = IncomingRequest(key, request.hostname, _address_of(key), request.reason, now, expires_at, request.handshake_id)
        if key in self.store.trusted or self.auto_approve or self._we_asked(incoming):
            self.log.info("approving the handshake from {name} ({address})", name=request.hostname, address=incoming.address)
            self._approve(incoming)
            return
        self.store.incoming[key] = incoming
        while len(self.store.incoming) > MAX_INCOMING:
            oldest = min(self.store.incoming.values(), key=lambda r: r.received_at)
            del self.store.incoming[oldest.public_key]
        self.log.info("handshake request from {name} ({address}): {reason}", name=request.hostname, address=incoming.address, reason=request.reason)

    def _we_asked(self, incoming: IncomingRequest) -> bool:
        """Did we send this peer a request it has not answered?  (Crossing requests.)"""
        for request in self.store.outgoing.values():
            if request.state in ("queued", "sent") and request.target in (incoming.hostname, incoming.address):
                request.state = "approved"
                request.public_key = incoming.public_key
                return True
        return False

    def _mail_HandshakeAnswer(self, answer) -> None:
        request = self.store.outgoing.get(answer.handshake_id)
        if answer.requester_key != self._identity.public_key or request is None or request.state not in ("queued", "sent"):
            self._count("mail_unsolicited_answer")
            return
        key = answer.public_key
        if request.public_key is not None and request.public_key != key:
            # The name changed hands since our lookup: not the node we meant.
            self._count("mail_answer_from_other_key")
            return
        request.public_key = key
        self.sender.cancel(("handshake", request.handshake_id))
        if answer.approved:
            request.state = "approved"
            self.log.info("{name} ({address}) approved our handshake", name=answer.hostname, address=_address_of(key))
            self._trust(key, answer.hostname, request.reason, mutual=True, save=False)
            return
        request.state = "rejected"
        self.log.info("{name} ({address}) rejected our handshake", name=answer.hostname, address=_address_of(key))
        peer = self.store.trusted.get(key)
        if peer is not None and not peer.mutual:
            del self.store.trusted[key]
            self.upload_visibility()
            if self._on_revoked is not None:
                self._on_revoked(key)

    def _mail_Revoke(self, revoke) -> None:
        if revoke.peer_key != self._identity.public_key:
            self._count("mail_not_for_us")
            return
        key = revoke.public_key
        self.store.incoming.pop(key, None)
        for request in [o for o in self.store.outgoing.values() if o.public_key == key]:
            del self.store.outgoing[request.handshake_id]
        peer = self.store.trusted.pop(key, None)
        if peer is None:
            return
        self.log.info("{name} ({address}) revoked its trust", name=peer.hostname, address=peer.address)
        self.upload_visibility()
        if self._on_revoked is not None:
            self._on_revoked(key)

    def stop(self) -> None:
        self.sender.stop()
