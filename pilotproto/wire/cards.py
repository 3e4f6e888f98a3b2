"""
Agent cards: what a node says it can do, signed by its own key.

A card is a small JSON document (``docs/discovery.md``)::

    {"name": "summarizer", "description": "Summarises documents",
     "tags": ["nlp"], "capabilities": ["summarize"],
     "services": [{"kind": "mcp", "port": 80, "path": "/mcp"}],
     "tools": ["summarize_url"]}

:func:`parse_card` checks it against the bounds below (on the node before
it signs, on the beacon before it stores, on the caller before it shows)
and returns it in one canonical form; :func:`canonical_bytes` encodes that
form (sorted keys, no spaces, UTF-8), so the same card is the same bytes
everywhere.  The signature covers ``CARD_CONTEXT``, the node's public key,
the address derived from it and the card's ``version`` before the bytes:
a card cannot be moved onto another node (its key and address are in the
signed bytes), and a beacon cannot roll a node back to an older card
without the caller seeing the older ``version``, which the beacon refuses
to install over a newer one.

Why 1024 bytes: a card travels whole in one datagram (a ``SetCard``, and
an entry of a ``FindResult`` page), and a datagram stays under the
1232 bytes that cross any path without IP fragmentation.

Twisted-free: the node, the beacon and tests all use it.
"""

from __future__ import annotations

import json
import re
import struct

import attrs

from ..errors import InvalidArgument
from ..identity import Address, verify_signature

CARD_CONTEXT = b"pilotproto agent card v1\x00"
#: the canonical JSON of a card is at most this many bytes
MAX_CARD_BYTES = 1024
MAX_NAME = 64
MAX_DESCRIPTION = 300
MAX_TAGS = 16
MAX_CAPABILITIES = 16
MAX_TOOLS = 32
#: each tag, capability and tool name
MAX_WORD = 64
MAX_SERVICES = 8
MAX_KIND = 16
MAX_PATH = 128
SIGNATURE_SIZE = 64

FIELDS = ("name", "description", "tags", "capabilities", "services", "tools")
_KIND = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_HINT = "See docs/discovery.md for the card format and its limits."


class CardError(InvalidArgument):
    """A card that breaks the format or its limits."""


def _text(card: dict, key: str, limit: int, required: bool = False) -> str:
    value = card.get(key, "")
    if not isinstance(value, str):
        raise CardError(f"card {key} must be a string", hint=_HINT)
    value = value.strip()
    if required and not value:
        raise CardError(f"a card needs a {key}", hint=_HINT)
    if len(value) > limit:
        raise CardError(f"card {key} is longer than {limit} characters", hint=_HINT)
    if any(ord(c) < 0x20 for c in value):
        raise CardError(f"card {key} holds control characters", hint=_HINT)
    return value


def _words(card: dict, key: str, count: int) -> list:
    values = card.get(key, [])
    if not isinstance(values, list):
        raise CardError(f"card {key} must be a list of strings", hint=_HINT)
    if len(values) > count:
        raise CardError(f"a card lists at most {count} {key}, not {len(values)}", hint=_HINT)
    out = []
    for value in values:
        if not isinstance(value, str) or not value.strip():
            raise CardError(f"each of a card's {key} must be a non-empty string", hint=_HINT)
        value = value.strip()
        if len(value) > MAX_WORD or any(ord(c) < 0x20 for c in value):
            raise CardError(f"card {key} entry {value[:20]!r}... is longer than {MAX_WORD} characters or holds control characters", hint=_HINT)
        if value not in out:
            out.append(value)
    return out


def _service(entry) -> dict:
    if not isinstance(entry, dict) or set(entry) - {"kind", "port", "path"}:
        raise CardError("a card service is {\"kind\": ..., \"port\": N, \"path\"?: ...}", hint=_HINT)
    kind, port = entry.get("kind"), entry.get("port")
    if not isinstance(kind, str) or not _KIND.match(kind) or len(kind) > MAX_KIND:
        raise CardError(f"a card service kind is a short lower-case word (mcp, a2a, http, ...), not {kind!r}", hint=_HINT)
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 0xFFFF:
        raise CardError(f"a card service port is a virtual port 1-65535, not {port!r}", hint=_HINT)
    out = {"kind": kind, "port": port}
    if "path" in entry:
        path = entry["path"]
        if not isinstance(path, str) or not path.startswith("/") or len(path) > MAX_PATH or any(ord(c) <= 0x20 for c in path):
            raise CardError(f"a card service path starts with / and is at most {MAX_PATH} characters", hint=_HINT)
        out["path"] = path
    return out


def parse_card(card) -> dict:
    """``card`` (a dict) checked and in canonical form; CardError if it breaks a rule."""
    if not isinstance(card, dict):
        raise CardError("a card is a JSON object", hint=_HINT)
    unknown = sorted(set(card) - set(FIELDS))
    if unknown:
        raise CardError(f"a card has no field {unknown[0]!r}; its fields are {', '.join(FIELDS)}", hint=_HINT)
    services = card.get("services", [])
    if not isinstance(services, list) or len(services) > MAX_SERVICES:
        raise CardError(f"card services must be a list of at most {MAX_SERVICES}", hint=_HINT)
    out = {
        "name": _text(card, "name", MAX_NAME, required=True),
        "description": _text(card, "description", MAX_DESCRIPTION),
        "tags": _words(card, "tags", MAX_TAGS),
        "capabilities": _words(card, "capabilities", MAX_CAPABILITIES),
        "services": [_service(s) for s in services],
        "tools": _words(card, "tools", MAX_TOOLS),
    }
    size = len(canonical_bytes(out))
    if size > MAX_CARD_BYTES:
        raise CardError(f"the card is {size} bytes as canonical JSON; at most {MAX_CARD_BYTES}", hint=_HINT)
    return out


def canonical_bytes(card: dict) -> bytes:
    return json.dumps(card, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def card_from_bytes(data: bytes) -> dict:
    """The card ``data`` encodes; CardError unless it is a valid card in canonical form."""
    if len(data) > MAX_CARD_BYTES:
        raise CardError(f"a card is at most {MAX_CARD_BYTES} bytes")
    try:
        card = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise CardError("a card is UTF-8 JSON") from None
    card = parse_card(card)
    if canonical_bytes(card) != data:
        raise CardError("a card must travel in canonical form")
    return card


def signing_bytes(public_key: bytes, version: int, card: bytes) -> bytes:
    """What the card's signature covers: the node's key and address, the version, the card."""
    address = Address.from_public_key(public_key).to_bytes()
    return CARD_CONTEXT + public_key + address + struct.pack("!Q", version) + card


@attrs.frozen
class SignedCard:
    """A card as its node signed it: ``card`` is the canonical bytes."""

    public_key: bytes
    version: int
    card: bytes
    signature: bytes

    @classmethod
    def make(cls, identity, card: dict, version: int) -> "SignedCard":
        data = canonical_bytes(parse_card(card))
        return cls(identity.public_key, version, data, identity.sign(signing_bytes(identity.public_key, version, data)))

    def verify(self, address: str | None = None) -> dict:
        """The card, if the signature is the key's over these bytes (and the key
        is ``address``'s, when given); CardError otherwise."""
        if len(self.public_key) != 32 or len(self.signature) != SIGNATURE_SIZE:
            raise CardError("a card signature is 64 bytes by a 32-byte key")
        if address is not None and str(Address.from_public_key(self.public_key)) != address:
            raise CardError("the card's key is not the address's")
        if not verify_signature(self.public_key, signing_bytes(self.public_key, self.version, self.card), self.signature):
            raise CardError("the card's signature does not verify")
        return card_from_bytes(self.card)


def matches(card: dict, tag: str | None = None, capability: str | None = None, text: str | None = None) -> bool:
    """Does ``card`` carry ``tag`` and ``capability`` (exact, any case) and contain
    ``text`` (any case) in its name, description, tags, capabilities or tools?"""
    if tag and tag.casefold() not in {t.casefold() for t in card["tags"]}:
        return False
    if capability and capability.casefold() not in {c.casefold() for c in card["capabilities"]}:
        return False
    if text:
        needle = text.casefold()
        haystack = [card["name"], card["description"], *card["tags"], *card["capabilities"], *card["tools"]]
        if not any(needle in h.casefold() for h in haystack):
            return False
    return True
