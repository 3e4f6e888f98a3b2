"""
The beacon's request handling, free of sockets.

``BeaconServer.datagram_received(data, source, local)`` takes one datagram
and returns the datagrams to send back as ``(bytes, destination)`` pairs.
A pair may be a :class:`Reply` whose ``origin`` names the beacon socket it
must leave from (STUN CHANGE-REQUEST answers, RFC 5780); otherwise it leaves
from the socket the request came in on.  The UDP protocol in
:mod:`pilotproto.beacon.protocol` only moves bytes.

Nothing a peer sends can raise out of here: malformed, forged or replayed
datagrams are dropped and counted in ``counters``.  What the beacon does
against a hostile internet (``docs/security.md``) is in its workers: names
held for days and kept in a store (:mod:`~pilotproto.beacon.registry`,
:mod:`~pilotproto.beacon.store`), sending only to proven addresses
(:mod:`~pilotproto.beacon.paths`), and quotas answered with
``rate_limited`` (:mod:`~pilotproto.beacon.limits`).  An answer to a request
that has not proved its key is never more than ``AMPLIFICATION_LIMIT``
times the request's size (QUIC's anti-amplification rule); STUN answers
too, which :mod:`pilotproto.beacon.stun` trims to fit.
"""

from __future__ import annotations

import collections
import math
import os

import attrs
from nacl.bindings import crypto_scalarmult_base
from twisted.logger import Logger

from ..common.wiring import check_provides
from ..errors import InvalidArgument, PilotError, RateLimited
from ..identity import Address, verify_signature
from ..common.names import check_hostname
from ..wire import DecodeError, Endpoint, is_stun
from ..wire import beacon as msgs
from ..wire import relay
from ..wire import stun
from .cards import CARD_HANDLERS, AgentCards
from .limits import Limits, Quotas
from .mailbox import SEALED_HANDLERS, Mailbox
from .nonces import NonceIssuer
from .paths import AMPLIFICATION_LIMIT, PathValidator
from .registry import DEFAULT_TTL, Registry
from .relaying import RelayForwarder, relay_hasher
from .store import IBeaconStore, IFleet, MemoryStore
from .stun import StunResponder
from .visibility import VisibilityLists

DEFAULT_KEEPALIVE_INTERVAL = 5
SOFTWARE = "pilotproto beacon"


class Reply(tuple):
    """
    A datagram to send.  It unpacks as ``(data, destination)`` like every
    other answer; ``origin`` is the beacon endpoint it must be sent from,
    or None for the socket the request arrived on.
    """

    def __new__(cls, data: bytes, destination: Endpoint, origin: Endpoint | None = None):
        reply = super().__new__(cls, (data, destination))
        reply.origin = origin
        return reply


@attrs.define
class Inbound:
    """One datagram being handled: where from, how big, and once a signed
    request is authenticated, whose record and whether its source is validated."""

    source: Endpoint
    size: int
    record: object = None
    validated: bool = True
    #: the datagram as received: a signature is checked over these bytes
    data: bytes = attrs.field(default=b"", repr=False)


class BeaconServer:
    """The beacon's decisions.  ``limits`` (:class:`~pilotproto.beacon.limits.Limits`)
    bounds what anyone may cost it; ``store`` (an
    :class:`~pilotproto.beacon.store.IBeaconStore`) keeps names, visibility
    lists and mail across restarts, and is read once, here."""

    log = Logger()

    def __init__(
        self,
        clock,
        keepalive_interval: int = DEFAULT_KEEPALIVE_INTERVAL,
        other_address: Endpoint | None = None,
        send=None,
        primary_address: Endpoint | None = None,
        limits: Limits | None = None,
        store=None,
        random_bytes=os.urandom,
    ):
        self._clock = clock
        self.limits = limits if limits is not None else Limits()
        self.store = check_provides(store if store is not None else MemoryStore(), IBeaconStore, "BeaconServer store")
        self.registry = Registry(clock, DEFAULT_TTL, hold=self.limits.name_hold, store=self.store, max_names=self.limits.max_names)
        self.nonces = NonceIssuer(clock)
        self.keepalive_interval = keepalive_interval
        #: RFC 5780: with both set (different IP *and* port), the beacon
        #: listens on the four combinations, answers CHANGE-REQUEST and
        #: announces OTHER-ADDRESS; otherwise it does neither
        self.primary_address = primary_address
        self.other_address = other_address
        self.counters: collections.Counter = collections.Counter()
        # Per process, like the nonce secret: a restart re-keys every relay.
        self._relay_private = os.urandom(32)
        self.relay_public = crypto_scalarmult_base(self._relay_private)
        #: ``send(datagram, endpoint)`` for datagrams that answer no request
        #: (mail pushes); the UDP protocol sets it once it has a transport
        self.send = send
        #: the other beacons of a fleet (an IFleet, see :meth:`join_fleet`), or None
        self.fleet = None
        self.mailbox = Mailbox(
            clock,
            self.registry,
            self._send_unsolicited,
            self.counters,
            per_recipient=self.limits.mail_per_recipient,
            per_sender=self.limits.mail_per_sender,
            store=self.store,
        )
        self.visibility = VisibilityLists(self.counters, store=self.store)
        #: agent cards, one per key, and find (beacon/cards.py)
        self.cards = AgentCards(self.counters, store=self.store)
        self.paths = PathValidator(clock, self.registry, self.counters, self.mailbox, random_bytes)
        self.quotas = Quotas(clock, self.limits, self.counters)
        self.relaying = RelayForwarder(
            clock, self.registry, self.paths, self.quotas, self.counters, self._relay_hasher, lambda s, d: self.relay_allowed(s, d)
        )
        saved = self.store.load()
        self.registry.restore(saved.names)
        self.visibility.restore(saved.visibility)
        self.mailbox.restore(saved.mail)
        self.cards.restore(saved.cards)

    def _send_unsolicited(self, datagram: bytes, destination: Endpoint) -> None:
        if self.send is None:
            self.counters["dropped_no_transport"] += 1
            return
        self.send(datagram, destination)

    def join_fleet(self, fleet) -> None:
        """Reach the nodes registered on the other beacons of a fleet through ``fleet``."""
        self.fleet = check_provides(fleet, IFleet, "BeaconServer fleet")

    # -- entry point -----------------------------------------------------

    def datagram_received(self, data: bytes, source: Endpoint, local: Endpoint | None = None):
        self.counters["datagrams"] += 1
        try:
            kind = data[:1]
            # By the first byte, busiest first: no STUN message starts with
            # 0xD0 or 0xB0 (its first two bits are zero).
            if kind == _RELAY_KIND:
                return self._relay(data, source)
            if kind == _BEACON_KIND:  # 0xB0: not STUN either (first byte 0-3)
                return self._beacon_message(data, source)
            if is_stun(data) or stun.is_rfc3489(data):
                return self._stun(data, source, local)
            self.counters["dropped_unknown_kind"] += 1
            return []
        except DecodeError:
            self.counters["dropped_malformed"] += 1
            return []
        except Exception:
            # A bug, not a bad packet: keep serving everyone else.
            self.counters["internal_errors"] += 1
            self.log.failure("beacon failed to handle a datagram from {source}", source=source)
            return []

    # -- STUN --------------------------------------------------------------

    def _stun(self, data, source, local):
        # beacon/stun.py decides; built per request so that it always sees
        # the alternates as they are now.
        responder = StunResponder(
            self.counters,
            self.primary_address,
            self.other_address,
            software=SOFTWARE,
            amplification_limit=AMPLIFICATION_LIMIT,
        )
        answer = responder.answer(data, source, local)
        return [] if answer is None else [Reply(answer.data, answer.destination, answer.origin)]

    # -- pilot messages ------------------------------------------------------

    def _beacon_message(self, data, source):
        msg = msgs.decode(data)
        handler = _HANDLERS.get(type(msg))
        if handler is None:
            self.counters["dropped_unexpected_type"] += 1
            return []
        self.counters["rx_" + type(msg).__name__] += 1
        inbound = Inbound(source, len(data), data=data)
        replies = handler(self, msg, inbound)
        if inbound.record is not None and not inbound.validated:
            # Signed, but from an address that has not shown it receives for
            # this key: at most 3x what came from it, and a challenge.
            replies = self.paths.answer(inbound.record, source, replies)
        if self.fleet is not None and replies:
            # In a fleet, an answer leaves once Redis holds what it acknowledges.
            replies = self.fleet.when_kept(msg, inbound, replies)
        return replies

    def _unauthenticated_reply(self, reply, request_size, destination):
        data = msgs.encode(reply)
        if len(data) > AMPLIFICATION_LIMIT * request_size:
            self.counters["dropped_amplification"] += 1
            return []
        return [(data, destination)]

    def _error(self, request, code, message, inbound, authenticated=False, retry_after=0):
        self.counters["error_" + code] += 1
        reply = msgs.Error(request.request_id, code, message, math.ceil(retry_after))
        if authenticated:
            return [(msgs.encode(reply), inbound.source)]
        return self._unauthenticated_reply(reply, inbound.size, inbound.source)

    def _refusal(self, request, error: PilotError, inbound, authenticated=False):
        retry_after = getattr(error, "retry_after", 0)
        return self._error(request, error.code, error.message, inbound, authenticated, retry_after)

    def _rx_hello(self, msg, inbound):
        reply = msgs.Challenge(msg.request_id, self.nonces.issue(inbound.source), self.relay_public, inbound.source)
        return self._unauthenticated_reply(reply, inbound.size, inbound.source)

    def _signature_ok(self, msg, inbound=None) -> bool:
        # A signed datagram is its signed bytes then the signature, and decoding
        # is strict: checking the bytes as received saves encoding them again.
        raw = inbound.data if inbound is not None else b""
        signed = msgs.SIGNING_CONTEXT + raw[: -msgs.SIG_SIZE] if raw else msgs.signed_bytes(msg)
        if verify_signature(msg.public_key, signed, msg.signature):
            return True
        self.counters["dropped_bad_signature"] += 1
        return False

    def _proven(self, msg, inbound):
        """For requests with a nonce: None if signed and fresh, else the error to send."""
        if not self._signature_ok(msg, inbound):
            return self._error(msg, "refused", "bad signature", inbound)
        problem = self.nonces.redeem(msg.nonce, inbound.source)
        if problem is not None:
            self.counters["dropped_bad_nonce"] += 1
            return self._error(msg, "stale_nonce", problem, inbound)
        return None

    def _rx_register(self, msg, inbound):
        refusal = self._proven(msg, inbound)
        if refusal is not None:
            return refusal
        source = inbound.source
        try:
            check_hostname(msg.hostname)
            if len(msg.lan_endpoints) > msgs.MAX_LAN_ENDPOINTS:
                raise InvalidArgument(
                    f"a node may advertise at most {msgs.MAX_LAN_ENDPOINTS} LAN endpoints, not {len(msg.lan_endpoints)}"
                )
            if not self.registry.check_name(msg.public_key, msg.hostname):
                # A name this key does not hold yet: counted against its
                # source, which the nonce has just proved.
                wait = self.quotas.new_name(source.host)
                if wait:
                    raise RateLimited(f"too many new names registered from {source.host}", retry_after=wait)
            record = self.registry.register(
                msg.public_key,
                msg.hostname,
                source,
                lan_endpoints=msg.lan_endpoints,
                public=bool(msg.flags & msgs.FLAG_PUBLIC),
                seq=msg.seq,
            )
        except PilotError as e:
            return self._refusal(msg, e, inbound)
        self.log.info(
            "registered {name} ({address}) at {endpoint}",
            name=record.hostname,
            address=str(record.address),
            endpoint=str(source),
        )
        self.mailbox.recipient_online(record)
        if self.fleet is not None:
            self.fleet.registered(record)
        reply = msgs.Registered(
            msg.request_id,
            record.address.to_bytes(),
            source,
            self.keepalive_interval,
            int(self.registry.ttl),
        )
        return [(msgs.encode(reply), source)]

    def _rx_release(self, msg, inbound):
        refusal = self._proven(msg, inbound)
        if refusal is not None:
            return refusal
        if not self.registry.release(msg.public_key, msg.hostname):
            return self._error(msg, "not_found", f"this key holds no name {msg.hostname!r}", inbound)
        self.visibility.forget(msg.public_key)
        self.cards.forget(msg.public_key)
        self.log.info("released {name} at its owner's request", name=msg.hostname)
        return self._unauthenticated_reply(msgs.Ok(msg.request_id), inbound.size, inbound.source)

    def _authenticate(self, msg, inbound):
        """The sender's live record, or the error datagrams to send instead."""
        record = self.registry.get(msg.public_key)
        if record is None:
            return None, self._error(msg, "not_registered", "register first", inbound)
        if not self._signature_ok(msg, inbound):
            return None, self._error(msg, "refused", "bad signature", inbound)
        if not record.accept_seq(msg.seq):
            self.counters["dropped_replay"] += 1
            return None, self._error(msg, "replay", "request seen before", inbound)
        self.registry.touch(record)
        inbound.record = record
        inbound.validated = self.paths.arrived(record, inbound.source, inbound.size)
        wait = self.quotas.request(record)
        if wait:
            return None, self._error(msg, "rate_limited", "too many requests from this key", inbound, True, wait)
        return record, None

    def _rx_keepalive(self, msg, inbound):
        record, refusal = self._authenticate(msg, inbound)
        if record is None:
            return refusal
        return [(msgs.encode(msgs.KeepaliveAck(msg.request_id, inbound.source)), inbound.source)]

    def _rx_path_response(self, msg, inbound):
        record, refusal = self._authenticate(msg, inbound)
        if record is None:
            return refusal
        inbound.validated = self.paths.responded(record, inbound.source, msg.token)
        return []

    def _rx_unregister(self, msg, inbound):
        record, refusal = self._authenticate(msg, inbound)
        if record is None:
            return refusal
        self.registry.remove(record.public_key)
        self.log.info("unregistered {name}", name=record.hostname)
        return [(msgs.encode(msgs.Ok(msg.request_id)), inbound.source)]

    def _rx_lookup(self, msg, inbound):
        requester, refusal = self._authenticate(msg, inbound)
        if requester is None:
            return refusal
        target = None
        try:
            if msg.by_address:
                target = self.registry.find_by_address(Address.from_bytes(msg.target))
            else:
                target = self.registry.find_by_name(msg.target.decode("utf-8"))
        except (InvalidArgument, UnicodeDecodeError):
            target = None
        if target is None and self.fleet is not None:
            # Live on another beacon of the fleet, perhaps: answered once Redis says.
            return self.fleet.lookup(msg, requester, inbound)
        return self.lookup_answer(msg, target, requester, inbound)

    def lookup_answer(self, msg, target, requester, inbound):
        """The answer to ``requester``'s lookup: ``target`` is a live record
        (here or on another beacon of the fleet) or None."""
        if target is None or not self.visible(target, requester):
            return self._error(msg, "not_found", "no such node is visible to you", inbound, authenticated=True)
        reply = msgs.LookupResult(
            msg.request_id,
            target.hostname,
            target.address.to_bytes(),
            target.public_key,
            msgs.FLAG_PUBLIC if target.public else 0,
            target.endpoints(),
        )
        return [(msgs.encode(reply), inbound.source)]

    # -- trust: mail between nodes, and visibility lists ------------------------

    def _post(self, msg, sender, recipient, dedup_key, inbound, expires_at=0):
        try:
            self.mailbox.post(sender.public_key, recipient, msgs.encode(msg), dedup_key, expires_at)
        except PilotError as e:
            return self._refusal(msg, e, inbound, authenticated=True)
        return [(msgs.encode(msgs.Ok(msg.request_id)), inbound.source)]

    def _rx_handshake_request(self, msg, inbound):
        requester, refusal = self._authenticate(msg, inbound)
        if requester is None:
            return refusal
        if msg.hostname != requester.hostname:
            return self._error(msg, "invalid_argument", "hostname is not the one you registered", inbound, True)
        if msg.by_address:
            if len(msg.target) != 8:
                return self._error(msg, "invalid_argument", "an address is 8 bytes", inbound, True)
            recipient = ("address", msg.target)
        else:
            try:
                recipient = ("name", check_hostname(msg.target.decode("utf-8")))
            except (InvalidArgument, UnicodeDecodeError):
                return self._error(msg, "invalid_argument", "bad target hostname", inbound, True)
        if recipient in (("name", requester.hostname), ("address", requester.address.to_bytes())):
            return self._error(msg, "invalid_argument", "a node cannot ask itself for trust", inbound, True)
        dedup = ("handshake", msg.handshake_id)
        return self._post(msg, requester, recipient, dedup, inbound, msg.expires_at)

    def _rx_handshake_answer(self, msg, inbound):
        answerer, refusal = self._authenticate(msg, inbound)
        if answerer is None:
            return refusal
        dedup = ("answer", msg.handshake_id, msg.requester_key)
        return self._post(msg, answerer, ("key", msg.requester_key), dedup, inbound)

    def _rx_revoke(self, msg, inbound):
        revoker, refusal = self._authenticate(msg, inbound)
        if revoker is None:
            return refusal
        return self._post(msg, revoker, ("key", msg.peer_key), ("revoke",), inbound)

    def _rx_mail_ack(self, msg, inbound):
        recipient, refusal = self._authenticate(msg, inbound)
        if recipient is None:
            return refusal
        # No reply: a lost ack only means one more push, which is acked again.
        self.mailbox.acked(recipient.public_key, msg.mail_id)
        return []

    def _rx_set_visibility(self, msg, inbound):
        owner, refusal = self._authenticate(msg, inbound)
        if owner is None:
            return refusal
        if not self.visibility.offer(owner.public_key, msg.version, msg.chunk, msg.chunks, msg.keys):
            return self._error(msg, "invalid_argument", "visibility list too long", inbound, True)
        return [(msgs.encode(msgs.Ok(msg.request_id)), inbound.source)]

    # -- relay -------------------------------------------------------------

    def relay_udp(self, data: bytes, addr) -> list:
        """A relay frame straight off a UDP socket, ``addr`` its raw
        ``(host, port, ...)``: the hot path, which builds no Endpoint unless
        the sender's source is new.  Same answers as :meth:`datagram_received`."""
        self.counters["datagrams"] += 1
        try:
            return self._relay(data, addr)
        except Exception:
            self.counters["internal_errors"] += 1
            self.log.failure("beacon failed to relay a datagram from {source}", source=addr)
            return []

    def _relay(self, data, source):
        """A 0xD0 frame, checked and forwarded from its header alone
        (:mod:`pilotproto.beacon.relaying`); ``source`` is an Endpoint, or
        the raw address tuple of :meth:`relay_udp`."""
        return self.relaying.forward(data, source, self.fleet)

    def _relay_hasher(self, public_key: bytes):
        # Made on a node's first relay frame, not at registration: two curve
        # operations most nodes never need.
        return relay_hasher(self._relay_private, self.relay_public, public_key)

    def relay_allowed(self, sender, destination) -> bool:
        """Carry frames only to nodes that would let the sender find them."""
        return self.visible(destination, sender)

    def visible(self, target, requester) -> bool:
        """May ``requester`` learn where ``target`` is?  Private by default:
        only the node itself, and the keys its signed visibility list names."""
        if target.public or target.public_key == requester.public_key:
            return True
        return self.visibility.allows(target.public_key, requester.public_key)

    def expire(self) -> None:
        dropped, freed = self.registry.expire()
        if dropped:
            self.counters["expired"] += dropped
        for key in freed:
            self.counters["names_freed"] += 1
            self.visibility.forget(key)
            self.cards.forget(key)
        self.mailbox.expire()


_RELAY_KIND = bytes([relay.KIND_TO_BEACON])
_BEACON_KIND = bytes([msgs.KIND])


_HANDLERS = {
    msgs.Hello: BeaconServer._rx_hello,
    msgs.Register: BeaconServer._rx_register,
    msgs.ReleaseName: BeaconServer._rx_release,
    msgs.Keepalive: BeaconServer._rx_keepalive,
    msgs.PathResponse: BeaconServer._rx_path_response,
    msgs.Unregister: BeaconServer._rx_unregister,
    msgs.Lookup: BeaconServer._rx_lookup,
    msgs.HandshakeRequest: BeaconServer._rx_handshake_request,
    msgs.HandshakeAnswer: BeaconServer._rx_handshake_answer,
    msgs.Revoke: BeaconServer._rx_revoke,
    msgs.MailAck: BeaconServer._rx_mail_ack,
    msgs.SetVisibility: BeaconServer._rx_set_visibility,
    **CARD_HANDLERS,
    **SEALED_HANDLERS,
}
