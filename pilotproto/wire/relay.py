"""
Relay frames: a tunnel packet carried through the beacon.

``0xD0`` node -> beacon::

    kind (0xD0) | version (1) | sender address (8) | destination address (8)
    | counter (u64) | tag (16) | payload

``0xD1`` beacon -> node::

    kind (0xD1) | version (1) | sender address (8) | payload

The payload is an end-to-end encrypted tunnel packet the beacon cannot read.
``tag`` is keyed BLAKE2b-128 over every other byte of the 0xD0 frame, under
the *relay key* the sender shares with this beacon process (see
:func:`relay_key`): it proves to the beacon which registered node sent the
frame, cheaply enough to check on every packet.  ``counter`` increases per
frame so recorded frames cannot be replayed through the beacon.
"""

from __future__ import annotations

import hashlib
import hmac

import attrs
from nacl.bindings import crypto_scalarmult

from .codec import DecodeError, Reader, Writer

KIND_TO_BEACON = 0xD0
KIND_FROM_BEACON = 0xD1
VERSION = 1
TAG_SIZE = 16
TO_BEACON_OVERHEAD = 2 + 8 + 8 + 8 + TAG_SIZE
FROM_BEACON_OVERHEAD = 2 + 8

# Where the fields of a 0xD0 frame are: the beacon's fast path reads these
# slices of the datagram and never builds a RelayToBeacon.
SENDER = slice(2, 10)
DESTINATION = slice(10, 18)
COUNTER = slice(18, 26)
TAG = slice(26, 26 + TAG_SIZE)
#: the bytes the tag covers before the payload (kind .. counter)
SIGNED_HEADER = 26
_FROM_BEACON_HEADER = bytes([KIND_FROM_BEACON, VERSION])
_TAG_PERSON = b"pilot-relay-tag"


@attrs.frozen
class RelayToBeacon:
    sender: bytes
    destination: bytes
    counter: int
    payload: bytes
    tag: bytes = attrs.field(default=b"\x00" * TAG_SIZE, repr=False)


@attrs.frozen
class RelayFromBeacon:
    sender: bytes
    payload: bytes


def _header(frame: RelayToBeacon) -> bytes:
    return Writer().u8(KIND_TO_BEACON).u8(VERSION).raw(frame.sender).raw(frame.destination).u64(frame.counter).bytes()


def tag_hasher(key: bytes):
    """A keyed BLAKE2b ready for :func:`frame_tag_ok`: ``copy()`` of a keyed
    hasher is cheaper than keying a new one, so the beacon keeps one per node."""
    return hashlib.blake2b(key=key, digest_size=TAG_SIZE, person=_TAG_PERSON)


def compute_tag(key: bytes, header: bytes, payload: bytes) -> bytes:
    h = tag_hasher(key)
    h.update(header)
    h.update(payload)
    return h.digest()


def seal_to_beacon(key: bytes, sender: bytes, destination: bytes, counter: int, payload: bytes) -> bytes:
    frame = RelayToBeacon(sender, destination, counter, payload)
    header = _header(frame)
    return header + compute_tag(key, header, payload) + payload


def tag_ok(key: bytes, frame: RelayToBeacon) -> bool:
    return hmac.compare_digest(frame.tag, compute_tag(key, _header(frame), frame.payload))


def frame_tag_ok(hasher, data) -> bool:
    """Does the raw 0xD0 frame ``data`` (at least TO_BEACON_OVERHEAD bytes)
    carry the right tag?  ``hasher`` is the sender's :func:`tag_hasher`;
    the payload is hashed in place (a memoryview, no copy)."""
    view = memoryview(data)
    h = hasher.copy()
    h.update(view[:SIGNED_HEADER])
    h.update(view[TO_BEACON_OVERHEAD:])
    return hmac.compare_digest(h.digest(), data[TAG])


def forward_from_beacon(data) -> bytes:
    """The 0xD1 frame that carries the raw 0xD0 frame ``data`` on: the same
    sender and payload, built with one copy of the payload."""
    return b"".join((_FROM_BEACON_HEADER, data[SENDER], memoryview(data)[TO_BEACON_OVERHEAD:]))


def encode_to_beacon(frame: RelayToBeacon) -> bytes:
    return _header(frame) + frame.tag + frame.payload


def decode_to_beacon(data: bytes) -> RelayToBeacon:
    r = Reader(data)
    if r.u8() != KIND_TO_BEACON:
        raise DecodeError("not a relay frame for the beacon")
    if r.u8() != VERSION:
        raise DecodeError("unsupported relay version")
    sender, destination, counter = r.take(8), r.take(8), r.u64()
    tag = r.take(TAG_SIZE)
    return RelayToBeacon(sender, destination, counter, r.rest(), tag)


def encode_from_beacon(frame: RelayFromBeacon) -> bytes:
    return bytes([KIND_FROM_BEACON, VERSION]) + frame.sender + frame.payload


def decode_from_beacon(data: bytes) -> RelayFromBeacon:
    r = Reader(data)
    if r.u8() != KIND_FROM_BEACON:
        raise DecodeError("not a relay frame from the beacon")
    if r.u8() != VERSION:
        raise DecodeError("unsupported relay version")
    sender = r.take(8)
    return RelayFromBeacon(sender, r.rest())


def relay_key(our_x25519_private: bytes, their_x25519_public: bytes, node_ed25519_public: bytes, beacon_x25519_public: bytes) -> bytes:
    """The key a node and a beacon process share for tagging relay frames.

    Static-static X25519 between the node's identity (converted to X25519)
    and the beacon's per-process key; both sides compute the same value.
    """
    shared = crypto_scalarmult(our_x25519_private, their_x25519_public)
    if shared == b"\x00" * 32:
        raise DecodeError("degenerate relay key exchange")
    h = hashlib.blake2b(digest_size=32, person=b"pilot-relay-key")
    h.update(shared)
    h.update(node_ed25519_public)
    h.update(beacon_x25519_public)
    return h.digest()
