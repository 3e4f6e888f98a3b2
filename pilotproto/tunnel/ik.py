"""
Pilot's handshake messages: Noise IK with Ed25519 identities bound in.

Pure functions, no clock and no randomness of their own: the caller passes
ephemeral keys, indices and timestamps, so the exact bytes can be pinned by
test vectors.

The Noise static keys are the X25519 keys birationally derived from the
nodes' Ed25519 identities, so the initiator can compute the responder's
Noise static key from the Ed25519 key the beacon gave it.  The initiator's
payload carries its Ed25519 public key and a signature over the handshake
hash up to that point (which covers both ephemeral keys' DH results and the
initiator's static key); the responder checks the signature *and* that the
X25519 key derived from that Ed25519 key is the static key Noise delivered.

Why both: the derived-key check ties the Noise static key, which the DH
results authenticate, to the identity everything above the tunnel uses
(address, trust list).  The signature proves possession of the Ed25519
signing key itself, over this very transcript, so the binding does not rest
only on the argument that the derived X25519 key is as safe as the Ed25519
key it came from; and it cannot be replayed into another handshake because
the transcript hash includes fresh ephemeral keys.
"""

from __future__ import annotations

import struct

import attrs

from ..identity import Identity, verify_signature, x25519_from_ed25519_public
from ..wire.tunnel import (
    ENCRYPTED_STATIC_LEN,
    INIT_PAYLOAD_LEN,
    KEY_LEN,
    RESPONSE_PAYLOAD_LEN,
    TunnelInit,
    TunnelResponse,
)
from .errors import HandshakeError
from .noise import HandshakeState
from .record import TransportKeys

PROLOGUE = b"pilotproto tunnel v1"
SIGNATURE_CONTEXT = b"pilotproto tunnel v1 initiator identity"
TIMESTAMP_LEN = 12
# TAI64 labels second s of TAI as 2**62 + s; close enough to UNIX time for
# our purpose, which is only to compare timestamps from the same initiator.
_TAI64_BASE = 2**62


def tai64n(seconds: float) -> bytes:
    """A 12-byte TAI64N-style timestamp: big-endian, so bytes compare as times do."""
    whole = int(seconds)
    nanos = min(int(round((seconds - whole) * 1e9)), 999_999_999)
    return struct.pack("!QI", _TAI64_BASE + whole, nanos)


@attrs.frozen
class LocalKeys:
    """A node's long-term keys as the tunnel uses them."""

    identity: Identity
    x25519_private: bytes = attrs.field(repr=False)
    x25519_public: bytes

    @classmethod
    def from_identity(cls, identity: Identity) -> "LocalKeys":
        return cls(identity, identity.x25519_private(), identity.x25519_public())

    @property
    def ed25519_public(self) -> bytes:
        return self.identity.public_key


@attrs.define
class PendingInitiation:
    """What the initiator keeps between sending an initiation and its response."""

    local_index: int
    remote_ed25519: bytes
    handshake: HandshakeState = attrs.field(repr=False)


@attrs.frozen
class ConsumedInitiation:
    """A decrypted, signature-checked initiation, before the responder answers."""

    initiator_ed25519: bytes
    timestamp: bytes
    sender_index: int
    handshake: HandshakeState = attrs.field(repr=False, eq=False)


def remote_static_for(ed25519_public: bytes) -> bytes:
    try:
        return x25519_from_ed25519_public(ed25519_public)
    except Exception:  # nacl raises its own error types for keys off the curve
        raise HandshakeError("the Ed25519 key is not a valid curve point") from None


def create_initiation(
    local: LocalKeys,
    remote_ed25519: bytes,
    *,
    sender_index: int,
    timestamp: bytes,
    ephemeral_private: bytes,
) -> tuple[PendingInitiation, TunnelInit]:
    """Noise IK message 1 for ``remote_ed25519``; mac1/mac2 are left zero for the cookie layer."""
    if len(timestamp) != TIMESTAMP_LEN:
        raise ValueError("timestamp must be 12 bytes")
    hs = HandshakeState(
        initiator=True,
        prologue=PROLOGUE,
        s=local.x25519_private,
        e=ephemeral_private,
        rs=remote_static_for(remote_ed25519),
    )

    def payload(h: bytes) -> bytes:
        signature = local.identity.sign(SIGNATURE_CONTEXT + h)
        return local.ed25519_public + signature + timestamp + struct.pack("!I", sender_index)

    message = hs.write_message(payload)
    e_end = KEY_LEN
    s_end = e_end + ENCRYPTED_STATIC_LEN
    packet = TunnelInit(
        sender_index=sender_index,
        ephemeral=message[:e_end],
        encrypted_static=message[e_end:s_end],
        encrypted_payload=message[s_end:],
    )
    return PendingInitiation(sender_index, remote_ed25519, hs), packet


def consume_initiation(local: LocalKeys, packet: TunnelInit) -> ConsumedInitiation:
    """Decrypt and check an initiation; raises TunnelAuthError or HandshakeError."""
    hs = HandshakeState(initiator=False, prologue=PROLOGUE, s=local.x25519_private, rs=local.x25519_public)
    payload = hs.read_message(packet.noise_message)
    if len(payload) != INIT_PAYLOAD_LEN:
        raise HandshakeError("initiation payload has the wrong length")
    ed_public, signature = payload[:32], payload[32:96]
    timestamp, index = payload[96:108], struct.unpack("!I", payload[108:112])[0]
    if index != packet.sender_index:
        raise HandshakeError("initiation's clear sender index differs from the authenticated one")
    if not verify_signature(ed_public, SIGNATURE_CONTEXT + hs.payload_hash, signature):
        raise HandshakeError("initiation's identity signature is invalid")
    if remote_static_for(ed_public) != hs.rs:
        raise HandshakeError("initiation's Ed25519 key does not match its Noise static key")
    return ConsumedInitiation(ed_public, timestamp, index, hs)


def create_response(
    consumed: ConsumedInitiation, *, sender_index: int, ephemeral_private: bytes
) -> tuple[TunnelResponse, TransportKeys]:
    """Noise IK message 2 and the responder's transport keys."""
    hs = consumed.handshake
    hs.use_ephemeral(ephemeral_private)
    message = hs.write_message(struct.pack("!I", sender_index))
    packet = TunnelResponse(
        sender_index=sender_index,
        receiver_index=consumed.sender_index,
        ephemeral=message[:KEY_LEN],
        encrypted_payload=message[KEY_LEN:],
    )
    send, receive = hs.split_keys()
    keys = TransportKeys(send, receive, sender_index, consumed.sender_index, False, hs.h)
    return packet, keys


def consume_response(pending: PendingInitiation, packet: TunnelResponse) -> TransportKeys:
    """The initiator's transport keys from a response; raises TunnelAuthError or HandshakeError."""
    if packet.receiver_index != pending.local_index:
        raise HandshakeError("response is for another initiation")
    payload = pending.handshake.read_message(packet.noise_message)
    if len(payload) != RESPONSE_PAYLOAD_LEN:
        raise HandshakeError("response payload has the wrong length")
    index = struct.unpack("!I", payload)[0]
    if index != packet.sender_index:
        raise HandshakeError("response's clear sender index differs from the authenticated one")
    send, receive = pending.handshake.split_keys()
    return TransportKeys(send, receive, pending.local_index, index, True, pending.handshake.h)
