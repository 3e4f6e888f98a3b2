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

The per-packet paths never build the frame objects: a node seals with a
:class:`RelaySealer` (its keyed hasher made once, the header one slice and
one ``to_bytes``), the beacon reads fields by offset, and a node reads a
0xD1 frame with :func:`split_from_beacon`.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

import attrs
from nacl.bindings import crypto_scalarmult

from .codec import DecodeError, Reader

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
_TO_BEACON_HEADER = struct.Struct(">BB8s8sQ")
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
    if len(frame.sender) != 8 or len(frame.destination) != 8:
        raise DecodeError("a relay frame's addresses are 8 bytes")
    return _TO_BEACON_HEADER.pack(KIND_TO_BEACON, VERSION, frame.sender, frame.destination, frame.counter)


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
    return RelaySealer(key, sender).seal(destination, counter, payload)


class RelaySealer:
    """Seals one node's 0xD0 frames under its relay ``key``: the keyed hasher
    is made once and copied per frame (keying costs more than the copy)."""

    __slots__ = ("_hasher", "_prefix", "_destination", "_sender")

    def __init__(self, key: bytes, sender: bytes):
        if len(sender) != 8:
            raise DecodeError("a relay frame's addresses are 8 bytes")
        self._hasher = tag_hasher(key)
        self._sender = sender
        self._destination = b""
        self._prefix = b""

    def _prefix_for(self, destination: bytes) -> bytes:
        # kind | version | sender | destination: the same for every frame of a burst.
        if destination != self._destination:
            if len(destination) != 8:
                raise DecodeError("a relay frame's addresses are 8 bytes")
            self._prefix = bytes((KIND_TO_BEACON, VERSION)) + self._sender + destination
            self._destination = destination
        return self._prefix

    def seal(self, destination: bytes, counter: int, payload) -> bytes:
        """The 0xD0 frame carrying ``payload`` to ``destination`` as frame number ``counter``."""
        header = self._prefix_for(destination) + counter.to_bytes(8, "big")
        h = self._hasher.copy()
        h.update(header)
        h.update(payload)
        return b"".join((header, h.digest(), payload))

    def seal_many(self, destination: bytes, first_counter: int, payloads) -> list[bytes]:
        """Frames for ``payloads`` in order, numbered from ``first_counter`` up."""
        prefix, hasher = self._prefix_for(destination), self._hasher
        frames = []
        counter = first_counter
        for payload in payloads:
            header = prefix + counter.to_bytes(8, "big")
            h = hasher.copy()
            h.update(header)
            h.update(payload)
            frames.append(b"".join((header, h.digest(), payload)))
            counter += 1
        return frames


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


def split_from_beacon(data) -> tuple[bytes, bytes]:
    """``(sender, payload)`` of a 0xD1 frame, by offset (no Reader, no object)."""
    if type(data) is not bytes:
        data = bytes(data)
    if len(data) < FROM_BEACON_OVERHEAD:
        raise DecodeError("truncated relay frame")
    if data[0] != KIND_FROM_BEACON:
        raise DecodeError("not a relay frame from the beacon")
    if data[1] != VERSION:
        raise DecodeError("unsupported relay version")
    return data[2:FROM_BEACON_OVERHEAD], data[FROM_BEACON_OVERHEAD:]


def decode_from_beacon(data: bytes) -> RelayFromBeacon:
    sender, payload = split_from_beacon(data)
    return RelayFromBeacon(sender, payload)


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
