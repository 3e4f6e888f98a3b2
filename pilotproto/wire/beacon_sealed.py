"""
Sealed mail (beacon types 60 and 61): a message or a delivery receipt one
node leaves at the beacon for another that is offline (store-and-forward).

The outer message is an ordinary signed beacon request, so the beacon knows
who posts it (quotas, replay) and to which key it goes, and keeps it byte
for byte in its mailbox like trust mail (pushed as ``Deliver``, acked with
``MailAck``).  Its ``sealed`` field is a libsodium sealed box to the
recipient's X25519 key (derived from its Ed25519 identity): the beacon
cannot read it.  Inside is an :class:`Envelope`, signed by the sender over
the sender's and the recipient's keys, so a recipient knows who wrote it and
that it was written *to it* (a sealed box alone is anonymous, and a
recipient could otherwise re-seal a signed envelope to a third node).

A sealed box too large for one datagram (a message body over
``MAX_SEALED_BODY``, up to the messages port's 64 KiB) travels as a group of
:class:`SealedPart` (type 61): the box is cut into ``parts`` numbered
pieces, each its own signed request (so the beacon authenticates, counts and
keeps each like any mail), all carrying the message id and ``digest``, the
first 16 bytes of the SHA-256 of the whole box.  The digest names the group:
pieces of two different sealings of one message (a sender that sealed it
again after a restart) never mix, and a joined box whose hash is not the
digest is refused before it is opened.  :func:`split_sealed` and
:func:`join_parts` cut and join.

Sealing and opening are in :mod:`pilotproto.rendezvous.sealed`; this module
only encodes.  Registered in the beacon type table and re-exported by
:mod:`pilotproto.wire.beacon`.
"""

from __future__ import annotations

import hashlib

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

#: a group's pieces: the fixed part of a SealedPart, and the largest piece
DIGEST_SIZE = 16
PART_FIXED = SEALED_FIXED + DIGEST_SIZE + 2 + 2
MAX_PART = MAX_DELIVERED - PART_FIXED
#: the most pieces a group may have (a 64 KiB message needs about 72)
MAX_PARTS = 128
#: envelope version 2: the body's length is 32 bits (a body over 65,535 bytes)
ENVELOPE_VERSION_LARGE = 2
#: the largest body an envelope may carry (the messages port's limit, node/inbox.py MAX_MESSAGE)
MAX_ENVELOPE_BODY = 64 * 1024

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


@_message(61, signed=True)
@attrs.frozen
class SealedPart:
    """node -> beacon -> node: piece ``part`` (0-based) of ``parts`` of a sealed box too
    large for one :class:`SealedMail`; ``digest`` names the whole box (its SHA-256, cut)."""

    request_id: int
    recipient_key: bytes
    message_id: int
    expires_at: int
    digest: bytes
    part: int
    parts: int
    sealed: bytes
    public_key: bytes = b"\x00" * KEY_SIZE
    seq: int = 0
    signature: bytes = attrs.field(default=b"\x00" * SIG_SIZE, repr=False)

    def write_body(self, w: Writer) -> None:
        if len(self.recipient_key) != KEY_SIZE:
            raise ValueError("recipient key must be 32 bytes")
        if len(self.digest) != DIGEST_SIZE:
            raise ValueError(f"a group digest is {DIGEST_SIZE} bytes")
        if not (2 <= self.parts <= MAX_PARTS and 0 <= self.part < self.parts):
            raise ValueError(f"part {self.part} of {self.parts}: a group has 2 to {MAX_PARTS} parts")
        if not 0 < len(self.sealed) <= MAX_PART:
            raise ValueError(f"a sealed part is 1 to {MAX_PART} bytes")
        w.raw(self.recipient_key).u64(self.message_id).u64(self.expires_at).raw(self.digest)
        w.u16(self.part).u16(self.parts).blob16(self.sealed)

    @classmethod
    def read_body(cls, r: Reader, **kw):
        recipient_key, message_id, expires_at, digest = r.take(KEY_SIZE), r.u64(), r.u64(), r.take(DIGEST_SIZE)
        part, parts = r.u16(), r.u16()
        if not (2 <= parts <= MAX_PARTS and part < parts):
            raise DecodeError(f"sealed part {part} of {parts}")
        sealed = r.blob16()
        if not 0 < len(sealed) <= MAX_PART:
            raise DecodeError(f"a sealed part is 1 to {MAX_PART} bytes")
        return cls(recipient_key=recipient_key, message_id=message_id, expires_at=expires_at, digest=digest,
                   part=part, parts=parts, sealed=sealed, **kw)


def box_digest(box: bytes) -> bytes:
    return hashlib.sha256(box).digest()[:DIGEST_SIZE]


def split_sealed(recipient_key: bytes, message_id: int, expires_at: int, box: bytes) -> list:
    """``box`` as unsigned requests: one SealedMail if it fits, else a group of SealedPart."""
    if len(box) <= MAX_SEALED:
        return [SealedMail(0, recipient_key, message_id, expires_at, box)]
    parts = -(-len(box) // MAX_PART)
    if parts > MAX_PARTS:
        raise ValueError(f"a sealed box of {len(box)} bytes needs more than {MAX_PARTS} parts")
    digest = box_digest(box)
    return [SealedPart(0, recipient_key, message_id, expires_at, digest, i, parts, box[i * MAX_PART:(i + 1) * MAX_PART])
            for i in range(parts)]


def join_parts(pieces: dict) -> bytes:
    """The box ``pieces`` (part -> SealedPart, every part of one group) make; DecodeError if they
    are not one whole group (a part missing, foreign, or a box whose hash is not the digest)."""
    if not pieces:
        raise DecodeError("no parts")
    first = next(iter(pieces.values()))
    if sorted(pieces) != list(range(first.parts)):
        raise DecodeError("a sealed group with parts missing")
    for i, piece in pieces.items():
        if (piece.part, piece.parts, piece.digest, piece.message_id, piece.public_key) != (
                i, first.parts, first.digest, first.message_id, first.public_key):
            raise DecodeError("a part of another sealed group")
    box = b"".join(pieces[i].sealed for i in range(first.parts))
    if box_digest(box) != first.digest:
        raise DecodeError("a sealed group whose parts do not make its digest")
    return box


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
        if len(self.body) > MAX_ENVELOPE_BODY:
            raise ValueError(f"a sealed message body is at most {MAX_ENVELOPE_BODY} bytes")
        # Version 1 (a 16-bit length) whenever the body allows: what one SealedMail always carried.
        large = len(self.body) > 0xFFFF
        w = Writer().u8(ENVELOPE_VERSION_LARGE if large else ENVELOPE_VERSION).u8(self.kind)
        w.raw(self.recipient_key).u64(self.message_id).u64(self.created)
        return (w.u32(len(self.body)).raw(self.body) if large else w.blob16(self.body)).bytes()

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
    version = r.u8()
    if version not in (ENVELOPE_VERSION, ENVELOPE_VERSION_LARGE):
        raise DecodeError("unsupported sealed envelope version")
    kind = r.u8()
    if kind not in KINDS:
        raise DecodeError(f"unknown sealed envelope kind {kind}")
    recipient_key, message_id, created = r.take(KEY_SIZE), r.u64(), r.u64()
    body = r.take(r.u32()) if version == ENVELOPE_VERSION_LARGE else r.blob16()
    if len(body) > MAX_ENVELOPE_BODY:
        raise DecodeError(f"a sealed message body over {MAX_ENVELOPE_BODY} bytes")
    signature = r.take(SIG_SIZE)
    r.end()
    return Envelope(kind, recipient_key, message_id, created, body, signature)
