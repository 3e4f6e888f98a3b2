"""
The beacon's request handling, free of sockets.

``BeaconServer.datagram_received(data, source, local)`` takes one datagram
and returns the datagrams to send back as ``(bytes, destination)`` pairs.
A pair may be a :class:`Reply` whose ``origin`` names the beacon socket it
must leave from (STUN CHANGE-REQUEST answers, RFC 5780); otherwise it leaves
from the socket the request came in on.  The UDP protocol in
:mod:`pilotproto.beacon.protocol` only moves bytes.

Nothing a peer sends can raise out of here: malformed, forged or replayed
datagrams are dropped and counted in ``counters``.  An answer to a request
that has not proved its key is never more than ``AMPLIFICATION_LIMIT``
times the request's size (QUIC's anti-amplification rule), except STUN
Binding responses, whose size RFC 8489 fixes.
"""

from __future__ import annotations

import collections
import os

from nacl.bindings import crypto_scalarmult_base

from twisted.logger import Logger

from ..errors import InvalidArgument, PilotError
from ..identity import Address, verify_signature, x25519_from_ed25519_public
from ..common.names import check_hostname
from ..wire import DecodeError, Endpoint, is_stun
from ..wire import beacon as msgs
from ..wire import relay
from ..wire import stun
from .mailbox import Mailbox
from .nonces import NonceIssuer
from .registry import DEFAULT_TTL, Registry
from .visibility import VisibilityLists

AMPLIFICATION_LIMIT = 3
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


class BeaconServer:
    log = Logger()

    def __init__(
        self,
        clock,
        registry: Registry | None = None,
        nonces: NonceIssuer | None = None,
        keepalive_interval: int = DEFAULT_KEEPALIVE_INTERVAL,
        other_address: Endpoint | None = None,
        send=None,
        primary_address: Endpoint | None = None,
    ):
        self._clock = clock
        self.registry = registry if registry is not None else Registry(clock, DEFAULT_TTL)
        self.nonces = nonces if nonces is not None else NonceIssuer(clock)
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
        self.mailbox = Mailbox(clock, self.registry, self._send_unsolicited, self.counters)
        self.visibility = VisibilityLists(self.counters)

    def _send_unsolicited(self, datagram: bytes, destination: Endpoint) -> None:
        if self.send is None:
            self.counters["dropped_no_transport"] += 1
            return
        self.send(datagram, destination)

    # -- entry point -----------------------------------------------------

    def datagram_received(self, data: bytes, source: Endpoint, local: Endpoint | None = None):
        self.counters["datagrams"] += 1
        try:
            if is_stun(data):
                return self._stun(data, source, local)
            if data[:1] == bytes([msgs.KIND]):
                return self._beacon_message(data, source)
            if data[:1] == bytes([relay.KIND_TO_BEACON]):
                return self._relay(data, source)
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
        request = stun.decode(data)
        if request.message_class != stun.StunClass.REQUEST or request.method != stun.BINDING:
            self.counters["dropped_stun_not_binding_request"] += 1
            return []
        self.counters["stun_requests"] += 1
        unknown = stun.unknown_comprehension_required(request)
        if unknown:
            reply = stun.binding_error(request, 420, "Unknown Attribute", software=SOFTWARE)
            return [(reply, source)]
        origin = local
        change = request.find(stun.ChangeRequest)
        if change is not None and (change.change_ip or change.change_port):
            origin = self.alternate_endpoint(local, change.change_ip, change.change_port)
            if origin is None:
                # RFC 5780 §6.1: no alternate address, so CHANGE-REQUEST is
                # an attribute we cannot honour.
                self.counters["stun_change_refused"] += 1
                reply = stun.binding_error(
                    request, 420, "Unknown Attribute", unknown_attributes=[stun.ChangeRequest.TYPE], software=SOFTWARE
                )
                return [(reply, source)]
            self.counters["stun_change_requests"] += 1
        reply = stun.binding_response(
            request,
            source,
            response_origin=origin,
            other_address=self.alternate_endpoint(local, True, True),
            software=SOFTWARE,
        )
        return [Reply(reply, source, origin)]

    def alternate_endpoint(self, local: Endpoint | None, change_ip: bool, change_port: bool) -> Endpoint | None:
        """The beacon endpoint that differs from ``local`` in IP and/or port, if there is one."""
        if local is None or self.primary_address is None or self.other_address is None:
            return None
        hosts = (self.primary_address.host, self.other_address.host)
        ports = (self.primary_address.port, self.other_address.port)
        if hosts[0] == hosts[1] or ports[0] == ports[1] or local.host not in hosts or local.port not in ports:
            return None
        host = hosts[1 - hosts.index(local.host)] if change_ip else local.host
        port = ports[1 - ports.index(local.port)] if change_port else local.port
        return Endpoint(host, port)

    # -- pilot messages ------------------------------------------------------

    def _beacon_message(self, data, source):
        msg = msgs.decode(data)
        handler = getattr(self, "_rx_" + type(msg).__name__, None)
        if handler is None:
            self.counters["dropped_unexpected_type"] += 1
            return []
        self.counters["rx_" + type(msg).__name__] += 1
        return handler(msg, source, len(data))

    def _unauthenticated_reply(self, reply, request_size, destination):
        data = msgs.encode(reply)
        if len(data) > AMPLIFICATION_LIMIT * request_size:
            self.counters["dropped_amplification"] += 1
            return []
        return [(data, destination)]

    def _error(self, request, code, message, source, request_size, authenticated=False):
        self.counters["error_" + code] += 1
        reply = msgs.Error(request.request_id, code, message)
        if authenticated:
            return [(msgs.encode(reply), source)]
        return self._unauthenticated_reply(reply, request_size, source)

    def _rx_Hello(self, msg, source, size):
        reply = msgs.Challenge(msg.request_id, self.nonces.issue(source), self.relay_public, source)
        return self._unauthenticated_reply(reply, size, source)

    def _signature_ok(self, msg) -> bool:
        if verify_signature(msg.public_key, msgs.signed_bytes(msg), msg.signature):
            return True
        self.counters["dropped_bad_signature"] += 1
        return False

    def _rx_Register(self, msg, source, size):
        if not self._signature_ok(msg):
            return self._error(msg, "refused", "bad signature", source, size)
        problem = self.nonces.redeem(msg.nonce, source)
        if problem is not None:
            self.counters["dropped_bad_nonce"] += 1
            return self._error(msg, "stale_nonce", problem, source, size)
        try:
            check_hostname(msg.hostname)
            record = self.registry.register(
                msg.public_key,
                msg.hostname,
                source,
                lan_endpoints=msg.lan_endpoints,
                public=bool(msg.flags & msgs.FLAG_PUBLIC),
                seq=msg.seq,
            )
        except PilotError as e:
            return self._error(msg, e.code, e.message, source, size)
        try:
            record.relay_key = relay.relay_key(
                self._relay_private, x25519_from_ed25519_public(msg.public_key), msg.public_key, self.relay_public
            )
        except Exception:
            # A key that is not a valid curve point cannot use the relay.
            record.relay_key = None
        self.log.info(
            "registered {name} ({address}) at {endpoint}",
            name=record.hostname,
            address=str(record.address),
            endpoint=str(source),
        )
        self.mailbox.recipient_online(record)
        reply = msgs.Registered(
            msg.request_id,
            record.address.to_bytes(),
            source,
            self.keepalive_interval,
            int(self.registry.ttl),
        )
        return [(msgs.encode(reply), source)]

    def _authenticate(self, msg, source, size):
        """The sender's live record, or the error datagrams to send instead."""
        record = self.registry.get(msg.public_key)
        if record is None:
            return None, self._error(msg, "not_registered", "register first", source, size)
        if not self._signature_ok(msg):
            return None, self._error(msg, "refused", "bad signature", source, size)
        if not record.accept_seq(msg.seq):
            self.counters["dropped_replay"] += 1
            return None, self._error(msg, "replay", "request seen before", source, size)
        self.registry.touch(record, source)
        return record, None

    def _rx_Keepalive(self, msg, source, size):
        record, refusal = self._authenticate(msg, source, size)
        if record is None:
            return refusal
        self.mailbox.recipient_online(record)
        return [(msgs.encode(msgs.KeepaliveAck(msg.request_id, source)), source)]

    def _rx_Unregister(self, msg, source, size):
        record, refusal = self._authenticate(msg, source, size)
        if record is None:
            return refusal
        self.registry.remove(record.public_key)
        self.log.info("unregistered {name}", name=record.hostname)
        return [(msgs.encode(msgs.Ok(msg.request_id)), source)]

    def _rx_Lookup(self, msg, source, size):
        requester, refusal = self._authenticate(msg, source, size)
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
        if target is None or not self.visible(target, requester):
            return self._error(msg, "not_found", "no such node is visible to you", source, size, authenticated=True)
        reply = msgs.LookupResult(
            msg.request_id,
            target.hostname,
            target.address.to_bytes(),
            target.public_key,
            msgs.FLAG_PUBLIC if target.public else 0,
            target.endpoints(),
        )
        return [(msgs.encode(reply), source)]

    # -- trust: mail between nodes, and visibility lists ------------------------

    def _post(self, msg, sender, recipient, dedup_key, source, size, expires_at=0):
        try:
            self.mailbox.post(sender.public_key, recipient, msgs.encode(msg), dedup_key, expires_at)
        except PilotError as e:
            return self._error(msg, e.code, e.message, source, size, authenticated=True)
        return [(msgs.encode(msgs.Ok(msg.request_id)), source)]

    def _rx_HandshakeRequest(self, msg, source, size):
        requester, refusal = self._authenticate(msg, source, size)
        if requester is None:
            return refusal
        if msg.hostname != requester.hostname:
            return self._error(msg, "invalid_argument", "hostname is not the one you registered", source, size, True)
        if msg.by_address:
            if len(msg.target) != 8:
                return self._error(msg, "invalid_argument", "an address is 8 bytes", source, size, True)
            recipient = ("address", msg.target)
        else:
            try:
                recipient = ("name", check_hostname(msg.target.decode("utf-8")))
            except (InvalidArgument, UnicodeDecodeError):
                return self._error(msg, "invalid_argument", "bad target hostname", source, size, True)
        if recipient in (("name", requester.hostname), ("address", requester.address.to_bytes())):
            return self._error(msg, "invalid_argument", "a node cannot ask itself for trust", source, size, True)
        dedup = ("handshake", msg.handshake_id)
        return self._post(msg, requester, recipient, dedup, source, size, msg.expires_at)

    def _rx_HandshakeAnswer(self, msg, source, size):
        answerer, refusal = self._authenticate(msg, source, size)
        if answerer is None:
            return refusal
        dedup = ("answer", msg.handshake_id, msg.requester_key)
        return self._post(msg, answerer, ("key", msg.requester_key), dedup, source, size)

    def _rx_Revoke(self, msg, source, size):
        revoker, refusal = self._authenticate(msg, source, size)
        if revoker is None:
            return refusal
        return self._post(msg, revoker, ("key", msg.peer_key), ("revoke",), source, size)

    def _rx_MailAck(self, msg, source, size):
        recipient, refusal = self._authenticate(msg, source, size)
        if recipient is None:
            return refusal
        # No reply: a lost ack only means one more push, which is acked again.
        self.mailbox.acked(recipient.public_key, msg.mail_id)
        return []

    def _rx_SetVisibility(self, msg, source, size):
        owner, refusal = self._authenticate(msg, source, size)
        if owner is None:
            return refusal
        if not self.visibility.offer(owner.public_key, msg.version, msg.chunk, msg.chunks, msg.keys):
            return self._error(msg, "invalid_argument", "visibility list too long", source, size, True)
        return [(msgs.encode(msgs.Ok(msg.request_id)), source)]

    # -- relay -------------------------------------------------------------

    def _relay(self, data, source):
        frame = relay.decode_to_beacon(data)
        sender = self.registry.find_by_address(Address.from_bytes(frame.sender))
        if sender is None or sender.relay_key is None:
            self.counters["relay_dropped_unknown_sender"] += 1
            return []
        if not relay.tag_ok(sender.relay_key, frame):
            self.counters["relay_dropped_bad_tag"] += 1
            return []
        if not sender.relay_window.accept(frame.counter):
            self.counters["relay_dropped_replay"] += 1
            return []
        self.registry.touch(sender, source)
        destination = self.registry.find_by_address(Address.from_bytes(frame.destination))
        if destination is None or not self.relay_allowed(sender, destination):
            self.counters["relay_dropped_no_destination"] += 1
            return []
        self.counters["relayed_frames"] += 1
        self.counters["relayed_bytes"] += len(frame.payload)
        out = relay.encode_from_beacon(relay.RelayFromBeacon(frame.sender, frame.payload))
        return [(out, destination.endpoint)]

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
        dropped = self.registry.expire()
        if dropped:
            self.counters["expired"] += dropped
        self.mailbox.expire()
