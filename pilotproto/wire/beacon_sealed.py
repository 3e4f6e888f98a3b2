"""
Sealed mail (beacon type 60): a message or a delivery receipt one node
leaves at the beacon for another that is offline (store-and-forward).

The outer message is an ordinary signed beacon request, so the beacon knows
who posts it (quotas, replay) and to which key it goes, and keeps it byte
for byte in its mailbox like trust mail (pushed as ``Deliver``, acked with
``MailAck``).  Its ``sealed`` field is a libsodium sealed box to the
recipient's X25519 key (derived from its Ed25519 identity): the beacon
cannot read it.  Inside is an :class:`Envelope`, signed by the sender over
the sender's and the recipient's keys, so a recipient knows who wrote it and
that it was written *to it* (a sealed box alone is anonymous, and a
recipient could otherwise re-seal a signed envelope to a third node).

Sealing and opening are in :mod:`pilotproto.rendezvous.sealed`; this module
only encodes.  Registered in the beacon type table and re-exported by
:mod:`pilotproto.wire.beacon`.
"""

from __future__ import annotations

import attrs

from .beacon_codec import HEADER_SIZE, KEY_SIZE, SIG_SIZE
from .beacon_codec import message as _message
from .beacon_trust import MAX_DELIVERED
from .codec import DecodeError, Reader, Writer

#: libsodium's crypto_box_SEALBYTES: an ephemeral public key and a MAC
SEAL_OVERHEAD = 48
#: the whole signed SealedMail must fit a Deliver (which carries it byte for byte)
SEALED_FIXED = HEADER_SIZE + KEY_SIZE + 8 + KEY_SIZE + 8 + 8 + 2 + SIG_SIZE
MAX_SEALED = MAX_DELIVERED - SEALED_FIXED
ENVELOPE_VERSION = 1
#: what the envelope's signature covers first, then the sender's key, then the envelope
ENVELOPE_CONTEXT = b"pilotproto sealed mail v1\x00"
ENVELOPE_FIXED = 1 + 1 + KEY_SIZE + 8 + 8 + 2 + SIG_SIZE
#: the largest message body that can be left at a beacon
MAX_SEALED_BODY = MAX_SEALED - SEAL_OVERHEAD - ENVELOPE_FIXED

KIND_MESSAGE = 1
KIND_RECEIPT = 2
KINDS = (KIND_MESSAGE, KIND_RECEIPT)


@_message(60, signed=True)
@attrs.frozen
class SealedMail:
    """node -> beacon -> node: ``sealed`` (opaque to the beacon) for ``recipient_key``.

    ``message_id`` names the mail for the beacon's dedup (a resend replaces
    the earlier copy); ``expires_at`` (unix seconds, 0 = the beacon's
    default) bounds how long the beacon keeps it.
    """

    request_id: int
    recipient_key: bytes
    message_id: int
    expires_at: int
    sealed: bytes
    public_key: bytes = b"\x00" * KEY_SIZE
    seq: int = 0
    signature: bytes = attrs.field(default=b"\x00" * SIG_SIZE, repr=False)

    def write_body(self, w: Writer) -> None:
        if len(self.recipient_key) != KEY_SIZE:
            raise ValueError("recipient key must be 32 bytes")
        if len(self.sealed) > MAX_SEALED:
            raise ValueError(f"sealed mail is at most {MAX_SEALED} bytes")
        w.raw(self.recipient_key).u64(self.message_id).u64(self.expires_at).blob16(self.sealed)

    @classmethod
    def read_body(cls, r: Reader, **kw):
        recipient_key, message_id, expires_at = r.take(KEY_SIZE), r.u64(), r.u64()
        sealed = r.blob16()
        if len(sealed) > MAX_SEALED:
            raise DecodeError(f"sealed mail longer than {MAX_SEALED} bytes")
        return cls(recipient_key=recipient_key, message_id=message_id, expires_at=expires_at, sealed=sealed, **kw)


@attrs.frozen
class Envelope:
    """What a sealed box holds: a message (``body``) or a receipt for message ``message_id``."""

    kind: int
    recipient_key: bytes
    message_id: int
    created: int
    body: bytes = b""
    signature: bytes = attrs.field(default=b"\x00" * SIG_SIZE, repr=False)

    def unsigned(self) -> bytes:
        if self.kind not in KINDS:
            raise ValueError(f"unknown envelope kind {self.kind}")
        if len(self.recipient_key) != KEY_SIZE:
            raise ValueError("recipient key must be 32 bytes")
        if len(self.body) > MAX_SEALED_BODY:
            raise ValueError(f"a sealed message body is at most {MAX_SEALED_BODY} bytes")
        w = Writer().u8(ENVELOPE_VERSION).u8(self.kind).raw(self.recipient_key).u64(self.message_id).u64(self.created)
        return w.blob16(self.body).bytes()

    def signed_bytes(self, sender_key: bytes) -> bytes:
        """The bytes the sender signs: who writes, to whom, what."""
        return ENVELOPE_CONTEXT + sender_key + self.unsigned()

    def encode(self) -> bytes:
        if len(self.signature) != SIG_SIZE:
            raise ValueError("signature must be 64 bytes")
        return self.unsigned() + self.signature


def decode_envelope(data: bytes) -> Envelope:
    """The envelope in an opened box; DecodeError for anything malformed."""
    r = Reader(data)
    if r.u8() != ENVELOPE_VERSION:
        raise DecodeError("unsupported sealed envelope version")
    kind = r.u8()
    if kind not in KINDS:
        raise DecodeError(f"unknown sealed envelope kind {kind}")
    recipient_key, message_id, created = r.take(KEY_SIZE), r.u64(), r.u64()
    body = r.blob16()
    signature = r.take(SIG_SIZE)
    r.end()
    return Envelope(kind, recipient_key, message_id, created, body, signature)
