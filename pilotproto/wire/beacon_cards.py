"""
Beacon messages for agent cards (types 40-49): publish, delete, find.

Registered in the same type table as every other beacon message and
re-exported by :mod:`pilotproto.wire.beacon`; use them through that module.
The card itself (format, canonical bytes, signature) is
:mod:`pilotproto.wire.cards`.  Every datagram here stays within
``MAX_DATAGRAM`` bytes: a card (at most ``MAX_CARD_BYTES``) travels whole.
"""

from __future__ import annotations

import attrs

from .beacon_codec import KEY_SIZE, SIG_SIZE
from .beacon_codec import message as _message
from .cards import MAX_CARD_BYTES
from .codec import DecodeError, Reader, Writer

#: the largest card datagram: under the 1280-byte IPv6 minimum MTU with IP and UDP headers
MAX_DATAGRAM = 1232
#: a find answers at most this many cards in all (over every page)
MAX_FIND_RESULTS = 50
#: a find query (each of tag, capability, text, peer) is at most this many bytes
MAX_QUERY = 64


def _card(r: Reader) -> bytes:
    data = r.blob16()
    if len(data) > MAX_CARD_BYTES:
        raise DecodeError(f"a card is at most {MAX_CARD_BYTES} bytes")
    return data


def _query(r: Reader) -> str:
    text = r.text8()
    if len(text.encode("utf-8")) > MAX_QUERY:
        raise DecodeError(f"a find query is at most {MAX_QUERY} bytes")
    return text


def _write_card(w: Writer, card: bytes, signature: bytes) -> None:
    if len(card) > MAX_CARD_BYTES:
        raise ValueError(f"a card is at most {MAX_CARD_BYTES} bytes")
    if len(signature) != SIG_SIZE:
        raise ValueError("a card signature is 64 bytes")
    w.blob16(card).raw(signature)


@_message(40, signed=True)
@attrs.frozen
class SetCard:
    """node -> beacon: my card ``version``, and my signature over it (``wire/cards.py``)."""

    request_id: int
    version: int
    card: bytes
    card_signature: bytes
    public_key: bytes = b"\x00" * KEY_SIZE
    seq: int = 0
    signature: bytes = attrs.field(default=b"\x00" * SIG_SIZE, repr=False)

    def write_body(self, w: Writer) -> None:
        w.u64(self.version)
        _write_card(w, self.card, self.card_signature)

    @classmethod
    def read_body(cls, r: Reader, **kw):
        return cls(version=r.u64(), card=_card(r), card_signature=r.take(SIG_SIZE), **kw)


@_message(41, signed=True)
@attrs.frozen
class DeleteCard:
    """node -> beacon: forget my card."""

    request_id: int
    public_key: bytes = b"\x00" * KEY_SIZE
    seq: int = 0
    signature: bytes = attrs.field(default=b"\x00" * SIG_SIZE, repr=False)

    def write_body(self, w: Writer) -> None:
        """No body: the header (and signature) say it all."""

    @classmethod
    def read_body(cls, r: Reader, **kw):
        return cls(**kw)


@_message(42, signed=True)
@attrs.frozen
class FindCards:
    """node -> beacon: the cards I may see with ``tag``, ``capability`` and ``text``
    (empty: any), of the node named ``peer`` (hostname or address text; empty: any),
    from match number ``offset`` on."""

    request_id: int
    tag: str = ""
    capability: str = ""
    text: str = ""
    peer: str = ""
    offset: int = 0
    public_key: bytes = b"\x00" * KEY_SIZE
    seq: int = 0
    signature: bytes = attrs.field(default=b"\x00" * SIG_SIZE, repr=False)

    def write_body(self, w: Writer) -> None:
        for text in (self.tag, self.capability, self.text, self.peer):
            if len(text.encode("utf-8")) > MAX_QUERY:
                raise ValueError(f"a find query is at most {MAX_QUERY} bytes")
            w.text8(text)
        w.u16(self.offset)

    @classmethod
    def read_body(cls, r: Reader, **kw):
        return cls(tag=_query(r), capability=_query(r), text=_query(r), peer=_query(r), offset=r.u16(), **kw)


@attrs.frozen
class CardEntry:
    """One card in a FindResult, with whose it is."""

    hostname: str
    address: bytes
    public_key: bytes
    version: int
    card: bytes
    card_signature: bytes

    def write(self, w: Writer) -> None:
        if len(self.address) != 8 or len(self.public_key) != KEY_SIZE:
            raise ValueError("an entry holds an 8-byte address and a 32-byte key")
        w.text8(self.hostname).raw(self.address).raw(self.public_key).u64(self.version)
        _write_card(w, self.card, self.card_signature)

    @classmethod
    def read(cls, r: Reader) -> "CardEntry":
        return cls(r.text8(), r.take(8), r.take(KEY_SIZE), r.u64(), _card(r), r.take(SIG_SIZE))

    def size(self) -> int:
        return len(self.hostname.encode("utf-8")) + 1 + 8 + KEY_SIZE + 8 + 2 + len(self.card) + SIG_SIZE


@_message(43)
@attrs.frozen
class FindResult:
    """beacon -> node: one page of matches.  ``total`` matches in all (at most
    ``MAX_FIND_RESULTS``); ask again from ``next_offset`` unless it is 0."""

    request_id: int
    total: int
    next_offset: int
    entries: tuple = ()

    def write_body(self, w: Writer) -> None:
        w.u16(self.total).u16(self.next_offset).u8(len(self.entries))
        for entry in self.entries:
            entry.write(w)

    @classmethod
    def read_body(cls, r: Reader, **kw):
        total, next_offset, count = r.u16(), r.u16(), r.u8()
        return cls(total=total, next_offset=next_offset, entries=tuple(CardEntry.read(r) for _ in range(count)), **kw)


#: a FindResult's bytes before its entries (header 11, total, next_offset, count)
FIND_RESULT_OVERHEAD = 11 + 2 + 2 + 1
