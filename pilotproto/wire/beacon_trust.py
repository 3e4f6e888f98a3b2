"""
Beacon messages for trust (types 20-39): requests one node sends another
through the beacon's mailbox, visibility lists, and the beacon's deliveries.

Registered in the same type table as every other beacon message and
re-exported by :mod:`pilotproto.wire.beacon`; use them through that module.
"""

from __future__ import annotations

import attrs

from .beacon_codec import KEY_SIZE, SIG_SIZE
from .beacon_codec import message as _message
from .codec import DecodeError, Reader, Writer

# --- trust: requests carried by the beacon's mailbox (types 20-39) -------

#: A handshake reason is at most this many bytes of UTF-8.
MAX_REASON = 500
#: Keys per SetVisibility chunk, so that no chunk is larger than ~1100 bytes.
VISIBILITY_CHUNK_KEYS = 30
#: A Deliver carries another node's whole signed datagram (at most ~800 bytes).
MAX_DELIVERED = 1100


def _reason(r: Reader) -> str:
    raw = r.blob16()
    if len(raw) > MAX_REASON:
        raise DecodeError("handshake reason longer than 500 bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DecodeError(f"bad utf-8 text: {e}") from None


def _keys(r: Reader) -> tuple:
    count = r.u8()
    if count > VISIBILITY_CHUNK_KEYS:
        raise DecodeError("too many keys in one visibility chunk")
    return tuple(r.take(KEY_SIZE) for _ in range(count))


@_message(20, signed=True)
@attrs.frozen
class HandshakeRequest:
    """node -> beacon -> node: "please trust me", addressed by name or address.

    ``hostname`` is the requester's own registered name (the beacon checks
    it); ``handshake_id`` is echoed by the answer; ``expires_at`` (unix
    seconds, 0 = the beacon's default) bounds how long the beacon keeps it.
    """

    request_id: int
    handshake_id: int
    by_address: bool
    target: bytes
    hostname: str
    reason: str
    expires_at: int = 0
    public_key: bytes = b"\x00" * KEY_SIZE
    seq: int = 0
    signature: bytes = attrs.field(default=b"\x00" * SIG_SIZE, repr=False)

    def write_body(self, w: Writer) -> None:
        reason = self.reason.encode("utf-8")
        if len(reason) > MAX_REASON:
            raise ValueError("handshake reason longer than 500 bytes")
        w.u64(self.handshake_id).u8(1 if self.by_address else 0).blob8(self.target)
        w.text8(self.hostname).blob16(reason).u64(self.expires_at)

    @classmethod
    def read_body(cls, r: Reader, **kw):
        handshake_id = r.u64()
        by_address = r.u8()
        if by_address not in (0, 1):
            raise DecodeError("bad handshake target kind")
        return cls(
            handshake_id=handshake_id,
            by_address=bool(by_address),
            target=r.blob8(),
            hostname=r.text8(),
            reason=_reason(r),
            expires_at=r.u64(),
            **kw,
        )


@_message(21, signed=True)
@attrs.frozen
class HandshakeAnswer:
    """node -> beacon -> node: the answer to ``handshake_id`` from ``requester_key``."""

    request_id: int
    handshake_id: int
    requester_key: bytes
    approved: bool
    hostname: str
    public_key: bytes = b"\x00" * KEY_SIZE
    seq: int = 0
    signature: bytes = attrs.field(default=b"\x00" * SIG_SIZE, repr=False)

    def write_body(self, w: Writer) -> None:
        if len(self.requester_key) != KEY_SIZE:
            raise ValueError("requester key must be 32 bytes")
        w.u64(self.handshake_id).raw(self.requester_key).u8(1 if self.approved else 0).text8(self.hostname)

    @classmethod
    def read_body(cls, r: Reader, **kw):
        handshake_id = r.u64()
        requester_key = r.take(KEY_SIZE)
        approved = r.u8()
        if approved not in (0, 1):
            raise DecodeError("bad handshake answer")
        return cls(handshake_id=handshake_id, requester_key=requester_key, approved=bool(approved), hostname=r.text8(), **kw)


@_message(22, signed=True)
@attrs.frozen
class Revoke:
    """node -> beacon -> node: I no longer trust ``peer_key``."""

    request_id: int
    peer_key: bytes
    public_key: bytes = b"\x00" * KEY_SIZE
    seq: int = 0
    signature: bytes = attrs.field(default=b"\x00" * SIG_SIZE, repr=False)

    def write_body(self, w: Writer) -> None:
        if len(self.peer_key) != KEY_SIZE:
            raise ValueError("peer key must be 32 bytes")
        w.raw(self.peer_key)

    @classmethod
    def read_body(cls, r: Reader, **kw):
        return cls(peer_key=r.take(KEY_SIZE), **kw)


@_message(23, signed=True)
@attrs.frozen
class SetVisibility:
    """node -> beacon: chunk ``chunk`` of ``chunks`` of my visibility list ``version``."""

    request_id: int
    version: int
    chunk: int
    chunks: int
    keys: tuple = ()
    public_key: bytes = b"\x00" * KEY_SIZE
    seq: int = 0
    signature: bytes = attrs.field(default=b"\x00" * SIG_SIZE, repr=False)

    def write_body(self, w: Writer) -> None:
        if len(self.keys) > VISIBILITY_CHUNK_KEYS or any(len(k) != KEY_SIZE for k in self.keys):
            raise ValueError(f"a visibility chunk holds at most {VISIBILITY_CHUNK_KEYS} 32-byte keys")
        w.u64(self.version).u16(self.chunk).u16(self.chunks).u8(len(self.keys))
        for k in self.keys:
            w.raw(k)

    @classmethod
    def read_body(cls, r: Reader, **kw):
        version, chunk, chunks = r.u64(), r.u16(), r.u16()
        if chunks == 0 or chunk >= chunks:
            raise DecodeError("visibility chunk number out of range")
        return cls(version=version, chunk=chunk, chunks=chunks, keys=_keys(r), **kw)


@_message(24, signed=True)
@attrs.frozen
class MailAck:
    """node -> beacon: I have mail ``mail_id``; stop pushing it and forget it."""

    request_id: int
    mail_id: int
    public_key: bytes = b"\x00" * KEY_SIZE
    seq: int = 0
    signature: bytes = attrs.field(default=b"\x00" * SIG_SIZE, repr=False)

    def write_body(self, w: Writer) -> None:
        w.u64(self.mail_id)

    @classmethod
    def read_body(cls, r: Reader, **kw):
        return cls(mail_id=r.u64(), **kw)


@_message(30)
@attrs.frozen
class Deliver:
    """beacon -> node: mail ``mail_id``: another node's signed datagram, byte for byte.

    The receiver checks the inner signature itself, so the beacon can
    withhold mail but cannot forge it.
    """

    request_id: int
    mail_id: int
    datagram: bytes

    def write_body(self, w: Writer) -> None:
        if len(self.datagram) > MAX_DELIVERED:
            raise ValueError("delivered datagram too large")
        w.u64(self.mail_id).blob16(self.datagram)

    @classmethod
    def read_body(cls, r: Reader, **kw):
        mail_id = r.u64()
        datagram = r.blob16()
        if len(datagram) > MAX_DELIVERED:
            raise DecodeError("delivered datagram too large")
        return cls(mail_id=mail_id, datagram=datagram, **kw)
