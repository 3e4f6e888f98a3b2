"""
The node's side of sealed mail (store-and-forward through the beacon).

* :func:`seal` writes an :class:`~pilotproto.wire.beacon_sealed.Envelope`
  (a message, or a receipt for one), signs it with our identity over both
  keys, and seals it to the recipient's X25519 key (a libsodium sealed box,
  the recipient's Ed25519 key converted); the result is a ``SealedMail``
  request ready for :class:`SignedRequests` to sign and send.
* :func:`open_sealed` undoes it for the recipient and refuses, with
  :class:`SealedMailRejected`, anything that is not sealed to us, not signed
  by the key that posted it (a blob re-posted by another node), or signed to
  another recipient (an envelope re-sealed to us by its first recipient).
* :class:`SealedMailReader` sits in front of the node's other beacon-mail
  reader (trust) on the link: it takes the ``Deliver`` pushes that carry
  sealed mail, hands each opened envelope to an :class:`ISealedMailSink`,
  and acknowledges the mail to the beacon only once the sink says it is
  kept (a sink that cannot keep it now leaves it at the beacon, which
  pushes it again).  Everything else goes to the next reader untouched:
  sealed mail must not pass through the trust reader, whose per-sender
  ``seq`` check would drop a message posted before a later trust request.
"""

from __future__ import annotations

import collections

from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import Interface, implementer

from ..common.wiring import check_provides
from ..errors import PilotError
from ..identity import verify_signature, x25519_from_ed25519_public
from ..interfaces import IBeaconMail, ISignedRequests
from ..wire import DecodeError
from ..wire import beacon as msgs
from ..wire.beacon_sealed import KIND_MESSAGE, KIND_RECEIPT, Envelope, decode_envelope


class SealedMailRejected(PilotError):
    """Sealed mail that is not for us, or not from whom it claims."""

    code = "refused"
    hint = "Nothing to do: the mail is dropped (and acknowledged, so the beacon forgets it)."


class ISealedMailSink(Interface):
    """Where opened sealed mail goes (the node's store-and-forward worker)."""

    def sealed_mail_received(sender_key, envelope):
        """Keep ``envelope`` from ``sender_key``; a Deferred firing True once it is kept (or
        deliberately dropped), False if it cannot be kept now (the beacon pushes it again)."""


def seal(identity, recipient_key: bytes, kind: int, message_id: int, created: int, body: bytes = b"",
         expires_at: int = 0) -> msgs.SealedMail:
    """A ``SealedMail`` request (unsigned: SignedRequests signs the outer message)."""
    envelope = Envelope(kind, recipient_key, message_id, int(created), body)
    envelope = Envelope(kind, recipient_key, message_id, int(created), body,
                        identity.sign(envelope.signed_bytes(identity.public_key)))
    box = SealedBox(PublicKey(x25519_from_ed25519_public(recipient_key)))
    return msgs.SealedMail(0, recipient_key, message_id, int(expires_at), box.encrypt(envelope.encode()))


def open_sealed(identity, mail: msgs.SealedMail) -> Envelope:
    """The envelope in ``mail`` (posted by ``mail.public_key``), checked; SealedMailRejected if not ours."""
    if mail.recipient_key != identity.public_key:
        raise SealedMailRejected("sealed mail addressed to another key")
    if not verify_signature(mail.public_key, msgs.signed_bytes(mail), mail.signature):
        raise SealedMailRejected("sealed mail whose outer signature does not verify")
    try:
        plain = SealedBox(PrivateKey(identity.x25519_private())).decrypt(mail.sealed)
    except CryptoError:
        raise SealedMailRejected("sealed mail that does not open with our key") from None
    try:
        envelope = decode_envelope(plain)
    except DecodeError as e:
        raise SealedMailRejected(f"a malformed sealed envelope: {e}") from None
    if not verify_signature(mail.public_key, envelope.signed_bytes(mail.public_key), envelope.signature):
        raise SealedMailRejected("a sealed envelope not signed by the node that posted it")
    if envelope.recipient_key != identity.public_key:
        raise SealedMailRejected("a sealed envelope written to another node")
    if envelope.message_id != mail.message_id:
        raise SealedMailRejected("a sealed envelope whose id is not the mail's")
    return envelope


@implementer(IBeaconMail)
class SealedMailReader:
    """Reads sealed mail off ``Deliver`` for ``identity``, into ``sink``; the rest goes to ``next_reader``.

    Acknowledgements go through ``requests`` (ISignedRequests of the link
    that delivered the mail)."""

    log = Logger()

    def __init__(self, identity, requests, next_reader, sink=None):
        self._identity = identity
        self._requests = check_provides(requests, ISignedRequests, "SealedMailReader requests")
        self._next = check_provides(next_reader, IBeaconMail, "SealedMailReader next reader")
        self._sink = None
        self.counters: collections.Counter = collections.Counter()
        if sink is not None:
            self.wire(sink)

    def wire(self, sink) -> None:
        self._sink = check_provides(sink, ISealedMailSink, "SealedMailReader sink")

    # -- IBeaconMail ----------------------------------------------------------------------

    def registered(self) -> None:
        self._next.registered()

    def message_received(self, msg) -> bool:
        if not isinstance(msg, msgs.Deliver) or self._sink is None:
            return self._next.message_received(msg)
        try:
            inner = msgs.decode(msg.datagram)
        except DecodeError:
            return self._next.message_received(msg)
        if not isinstance(inner, msgs.SealedMail):
            return self._next.message_received(msg)
        try:
            envelope = open_sealed(self._identity, inner)
        except SealedMailRejected as e:
            self.counters["sealed_rejected"] += 1
            self.log.warn("dropping sealed mail {id:016x}: {why}", id=inner.message_id, why=e.message)
            self._ack(msg.mail_id)
            return True
        self.counters["sealed_" + ("message" if envelope.kind == KIND_MESSAGE else "receipt")] += 1
        d = defer.maybeDeferred(self._sink.sealed_mail_received, inner.public_key, envelope)
        d.addCallback(lambda kept: self._ack(msg.mail_id) if kept else None)
        d.addErrback(lambda f: self.log.failure("sealed mail {id:016x} not kept", f, id=inner.message_id))
        return True

    def _ack(self, mail_id: int) -> None:
        self._requests.post(msgs.MailAck(0, mail_id))


class SealedPoster:
    """Posts sealed mail for ``identity`` through ``requests`` (ISignedRequests): one beacon."""

    def __init__(self, identity, requests):
        self._identity = identity
        self._requests = check_provides(requests, ISignedRequests, "SealedPoster requests")

    def post(self, recipient_key: bytes, kind: int, message_id: int, created: float, body: bytes = b"",
             expires_at: int = 0) -> defer.Deferred:
        """A Deferred firing once the beacon keeps it (``Ok``), or failing with its PilotError."""
        request = seal(self._identity, recipient_key, kind, message_id, int(created), body, expires_at)
        d = self._requests.ask(request)

        def answered(reply):
            if not isinstance(reply, msgs.Ok):
                raise PilotError(f"the beacon answered sealed mail with {type(reply).__name__}")
            return True

        return d.addCallback(answered)


__all__ = [
    "KIND_MESSAGE",
    "KIND_RECEIPT",
    "ISealedMailSink",
    "SealedMailReader",
    "SealedMailRejected",
    "SealedPoster",
    "open_sealed",
    "seal",
]
