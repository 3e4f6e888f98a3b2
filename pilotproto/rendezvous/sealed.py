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
from ..wire.beacon_sealed import (
    KIND_MESSAGE,
    KIND_RECEIPT,
    Envelope,
    SealedPart,
    decode_envelope,
    split_sealed,
)
from .sealed_parts import Reassembly


class SealedMailRejected(PilotError):
    """Sealed mail that is not for us, or not from whom it claims."""

    code = "refused"
    hint = "Nothing to do: the mail is dropped (and acknowledged, so the beacon forgets it)."


class ISealedMailSink(Interface):
    """Where opened sealed mail goes (the node's store-and-forward worker)."""

    def sealed_mail_received(sender_key, envelope):
        """Keep ``envelope`` from ``sender_key``; a Deferred firing True once it is kept (or
        deliberately dropped), False if it cannot be kept now (the beacon pushes it again)."""


def _box(identity, recipient_key: bytes, kind: int, message_id: int, created: int, body: bytes) -> bytes:
    """The signed envelope, sealed to ``recipient_key``."""
    envelope = Envelope(kind, recipient_key, message_id, int(created), body)
    envelope = Envelope(kind, recipient_key, message_id, int(created), body,
                        identity.sign(envelope.signed_bytes(identity.public_key)))
    return SealedBox(PublicKey(x25519_from_ed25519_public(recipient_key))).encrypt(envelope.encode())


def seal(identity, recipient_key: bytes, kind: int, message_id: int, created: int, body: bytes = b"",
         expires_at: int = 0) -> msgs.SealedMail:
    """A ``SealedMail`` request (unsigned: SignedRequests signs the outer message); the body must fit one."""
    [request] = seal_all(identity, recipient_key, kind, message_id, created, body, expires_at, max_parts=1)
    return request


def seal_all(identity, recipient_key: bytes, kind: int, message_id: int, created: int, body: bytes = b"",
             expires_at: int = 0, max_parts: int | None = None) -> list:
    """The requests that carry one sealed message: a ``SealedMail``, or a group of ``SealedPart``."""
    requests = split_sealed(recipient_key, message_id, int(expires_at),
                            _box(identity, recipient_key, kind, message_id, created, body))
    if max_parts is not None and len(requests) > max_parts:
        raise ValueError(f"a sealed message body of {len(body)} bytes does not fit {max_parts} datagram(s)")
    return requests


def open_sealed(identity, mail: msgs.SealedMail) -> Envelope:
    """The envelope in ``mail`` (posted by ``mail.public_key``), checked; SealedMailRejected if not ours."""
    check_outer(identity, mail)
    return open_box(identity, mail.public_key, mail.message_id, mail.sealed)


def check_outer(identity, mail) -> None:
    """``mail`` (a SealedMail or SealedPart) is addressed to us and signed by the key it names."""
    if mail.recipient_key != identity.public_key:
        raise SealedMailRejected("sealed mail addressed to another key")
    if not verify_signature(mail.public_key, msgs.signed_bytes(mail), mail.signature):
        raise SealedMailRejected("sealed mail whose outer signature does not verify")


def open_box(identity, sender_key: bytes, message_id: int, box: bytes) -> Envelope:
    """The envelope in ``box``, posted by ``sender_key`` as ``message_id``; SealedMailRejected if not ours."""
    try:
        plain = SealedBox(PrivateKey(identity.x25519_private())).decrypt(box)
    except CryptoError:
        raise SealedMailRejected("sealed mail that does not open with our key") from None
    try:
        envelope = decode_envelope(plain)
    except DecodeError as e:
        raise SealedMailRejected(f"a malformed sealed envelope: {e}") from None
    if not verify_signature(sender_key, envelope.signed_bytes(sender_key), envelope.signature):
        raise SealedMailRejected("a sealed envelope not signed by the node that posted it")
    if envelope.recipient_key != identity.public_key:
        raise SealedMailRejected("a sealed envelope written to another node")
    if envelope.message_id != message_id:
        raise SealedMailRejected("a sealed envelope whose id is not the mail's")
    return envelope


@implementer(IBeaconMail)
class SealedMailReader:
    """Reads sealed mail off ``Deliver`` for ``identity``, into ``sink``; the rest goes to ``next_reader``.

    Acknowledgements go through ``requests`` (ISignedRequests of the link
    that delivered the mail: with several beacons, one reader per link).
    Pieces of large messages are joined in ``parts`` (a
    :class:`~pilotproto.rendezvous.sealed_parts.Reassembly`, shared by the
    readers of every link, so pieces from different beacons make one
    message)."""

    log = Logger()

    def __init__(self, identity, requests, next_reader, sink=None, parts=None, clock=None):
        self._identity = identity
        self._requests = check_provides(requests, ISignedRequests, "SealedMailReader requests")
        self._next = check_provides(next_reader, IBeaconMail, "SealedMailReader next reader")
        if parts is None:
            from twisted.internet import reactor
            parts = Reassembly(clock if clock is not None else reactor)
        self.parts = parts
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
        if isinstance(inner, msgs.SealedMail):
            self._opened(inner.message_id, inner.public_key, lambda: open_sealed(self._identity, inner),
                         {(self._requests, msg.mail_id)})
            return True
        if isinstance(inner, SealedPart):
            self._piece(inner, msg.mail_id)
            return True
        return self._next.message_received(msg)

    def _piece(self, piece, mail_id: int) -> None:
        try:
            check_outer(self._identity, piece)
        except SealedMailRejected as e:
            self._rejected(piece.message_id, e, {(self._requests, mail_id)})
            return
        self.counters["sealed_parts"] += 1
        if self.parts.kept_lately(piece):
            self._ack({(self._requests, mail_id)})
            return
        whole = self.parts.add(piece, (self._requests, mail_id))
        if whole is None:
            return
        key, box, acks = whole
        if box is None:
            self._rejected(piece.message_id, SealedMailRejected("a sealed group whose parts do not join"), acks)
            return
        self._opened(piece.message_id, piece.public_key,
                     lambda: open_box(self._identity, piece.public_key, piece.message_id, box), acks,
                     lambda: self.parts.kept(key))

    def _opened(self, message_id, sender_key, opener, acks, on_kept=None) -> None:
        try:
            envelope = opener()
        except SealedMailRejected as e:
            self._rejected(message_id, e, acks)
            return
        self.counters["sealed_" + ("message" if envelope.kind == KIND_MESSAGE else "receipt")] += 1
        d = defer.maybeDeferred(self._sink.sealed_mail_received, sender_key, envelope)

        def kept(ok):
            if ok:
                if on_kept is not None:
                    on_kept()
                self._ack(acks)

        d.addCallback(kept)
        d.addErrback(lambda f: self.log.failure("sealed mail {id:016x} not kept", f, id=message_id))

    def _rejected(self, message_id, error, acks) -> None:
        self.counters["sealed_rejected"] += 1
        self.log.warn("dropping sealed mail {id:016x}: {why}", id=message_id, why=error.message)
        self._ack(acks)

    @staticmethod
    def _ack(acks) -> None:
        for requests, mail_id in acks:
            requests.post(msgs.MailAck(0, mail_id))


class SealedPoster:
    """Posts sealed mail for ``identity``: through ``requests`` (ISignedRequests: one beacon), or,
    given ``links`` (each with ``requests`` and ``registered``), to every registered beacon.

    A message is sealed once; the same pieces go to every beacon (so the
    recipient can join pieces pushed by different beacons) and to a beacon
    asked again (so a retry replaces pieces instead of starting a second
    group).  Pieces are asked ``WINDOW`` at a time per beacon."""

    WINDOW = 8
    #: sealed groups kept for retries, newest last
    CACHE = 64
    log = Logger()

    def __init__(self, identity, requests=None, links=None):
        self._identity = identity
        if links is None:
            self._requests = [check_provides(requests, ISignedRequests, "SealedPoster requests")]
            self._links = None
        else:
            self._links = list(links)
            for i, link in enumerate(self._links):
                check_provides(link.requests, ISignedRequests, f"SealedPoster link {i} requests")
        self._sealed: collections.OrderedDict = collections.OrderedDict()
        self.counters: collections.Counter = collections.Counter()

    def _targets(self) -> list:
        if self._links is None:
            return self._requests
        registered = [link.requests for link in self._links if link.registered]
        return registered or [link.requests for link in self._links]

    def _requests_for(self, recipient_key, kind, message_id, created, body, expires_at) -> list:
        key = (recipient_key, kind, message_id)
        cached = self._sealed.get(key)
        if cached is None:
            cached = seal_all(self._identity, recipient_key, kind, message_id, int(created), body, expires_at)
            self._sealed[key] = cached
            while len(self._sealed) > self.CACHE:
                self._sealed.popitem(last=False)
        self._sealed.move_to_end(key)
        return cached

    def post(self, recipient_key: bytes, kind: int, message_id: int, created: float, body: bytes = b"",
             expires_at: int = 0) -> defer.Deferred:
        """A Deferred firing once one beacon keeps every piece (``Ok``), or failing with a PilotError
        (the first beacon's refusal) when none does."""
        try:
            requests = self._requests_for(recipient_key, kind, message_id, created, body, expires_at)
        except ValueError as e:
            return defer.fail(PilotError(f"this message cannot be sealed: {e}"))
        key = (recipient_key, kind, message_id)
        result = defer.Deferred()
        targets = self._targets()
        failures = []

        def kept(_):
            self._sealed.pop(key, None)
            if not result.called:
                result.callback(True)

        def failed(f):
            failures.append(f)
            if len(failures) == len(targets) and not result.called:
                result.errback(failures[0])

        for target in targets:
            self._post_all(target, requests).addCallbacks(kept, failed)
        return result

    def _post_all(self, target, requests) -> defer.Deferred:
        window = defer.DeferredSemaphore(self.WINDOW)

        def answered(reply):
            if not isinstance(reply, msgs.Ok):
                raise PilotError(f"the beacon answered sealed mail with {type(reply).__name__}")
            return True

        asks = [window.run(target.ask, request).addCallback(answered) for request in requests]
        self.counters["sealed_requests"] += len(asks)
        d = defer.gatherResults(asks, consumeErrors=True)
        return d.addErrback(lambda f: f.value.subFailure if isinstance(f.value, defer.FirstError) else f)


__all__ = [
    "KIND_MESSAGE",
    "KIND_RECEIPT",
    "ISealedMailSink",
    "SealedMailReader",
    "SealedMailRejected",
    "SealedPoster",
    "open_box",
    "open_sealed",
    "seal",
    "seal_all",
]
