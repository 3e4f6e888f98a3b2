"""Agent cards: the format, its limits, the signature, and the beacon messages that carry them."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pilotproto.identity import Identity
from pilotproto.wire import DecodeError
from pilotproto.wire import beacon as msgs
from pilotproto.wire.beacon_cards import FIND_RESULT_OVERHEAD, MAX_DATAGRAM
from pilotproto.wire.cards import (
    MAX_CARD_BYTES,
    MAX_TAGS,
    CardError,
    SignedCard,
    canonical_bytes,
    card_from_bytes,
    matches,
    parse_card,
)

CARD = {
    "name": "summarizer",
    "description": "Summarises long documents",
    "tags": ["NLP", "text"],
    "capabilities": ["summarize"],
    "services": [{"kind": "mcp", "port": 80, "path": "/mcp"}, {"kind": "a2a", "port": 81}],
    "tools": ["summarize_url"],
}


def test_a_card_is_canonical_and_complete():
    card = parse_card({"name": " summarizer ", "tags": ["a", "a", "b"]})
    assert card == {"name": "summarizer", "description": "", "tags": ["a", "b"], "capabilities": [], "services": [], "tools": []}
    assert canonical_bytes(card) == json.dumps(card, sort_keys=True, separators=(",", ":")).encode()
    assert card_from_bytes(canonical_bytes(parse_card(CARD))) == parse_card(CARD)


@pytest.mark.parametrize("card, message", [
    ([], "JSON object"),
    ({}, "needs a name"),
    ({"name": "x", "colour": "red"}, "no field 'colour'"),
    ({"name": "x" * 65}, "longer than 64"),
    ({"name": "x", "tags": ["t"] * 2 + [str(i) for i in range(MAX_TAGS)]}, "at most 16 tags"),
    ({"name": "x", "tags": ["t" * 65]}, "longer than 64"),
    ({"name": "x", "tags": "nlp"}, "list of strings"),
    ({"name": "x", "services": [{"kind": "mcp", "port": 0}]}, "virtual port"),
    ({"name": "x", "services": [{"kind": "MCP!", "port": 80}]}, "lower-case word"),
    ({"name": "x", "services": [{"kind": "mcp", "port": 80, "path": "mcp"}]}, "starts with /"),
    ({"name": "x", "services": [{"kind": "mcp", "port": 80}] * 9}, "at most 8"),
    ({"name": "x", "description": "y" * 300, "tools": ["t" * 60 + str(i) for i in range(20)]}, "bytes as canonical JSON"),
])
def test_cards_that_break_a_limit_are_refused(card, message):
    with pytest.raises(CardError, match=message):
        parse_card(card)


def test_a_card_from_the_wire_must_be_canonical():
    data = json.dumps(parse_card(CARD), indent=1).encode()
    with pytest.raises(CardError, match="canonical"):
        card_from_bytes(data)
    with pytest.raises(CardError):
        card_from_bytes(b"\xff")
    with pytest.raises(CardError):
        card_from_bytes(b"x" * (MAX_CARD_BYTES + 1))


def test_the_signature_binds_key_address_version_and_bytes():
    a, b = Identity.generate(), Identity.generate()
    signed = SignedCard.make(a, CARD, 5)
    assert signed.verify(str(a.address)) == parse_card(CARD)
    tampered = canonical_bytes(dict(parse_card(CARD), name="evil"))
    for bad in (
        SignedCard(a.public_key, 5, tampered, signed.signature),  # altered card
        SignedCard(a.public_key, 6, signed.card, signed.signature),  # another version
        SignedCard(b.public_key, 5, signed.card, signed.signature),  # moved onto another node
    ):
        with pytest.raises(CardError, match="signature"):
            bad.verify()
    with pytest.raises(CardError, match="address"):
        signed.verify(str(b.address))


def test_matching_is_case_insensitive():
    card = parse_card(CARD)
    assert matches(card, tag="nlp") and matches(card, tag="TEXT") and not matches(card, tag="tex")
    assert matches(card, capability="SUMMARIZE") and not matches(card, capability="translate")
    assert matches(card, text="LONG doc") and matches(card, text="url") and not matches(card, text="image")
    assert matches(card, tag="nlp", capability="summarize", text="summar")
    assert not matches(card, tag="nlp", capability="translate")


# -- the beacon messages --------------------------------------------------------------

u64 = st.integers(0, 2**64 - 1)
key = st.binary(min_size=32, max_size=32)
sig = st.binary(min_size=64, max_size=64)
query = st.text(max_size=20)
card_bytes = st.binary(max_size=MAX_CARD_BYTES)
entries = st.builds(msgs.CardEntry, st.text(max_size=30), st.binary(min_size=8, max_size=8), key, u64, st.binary(max_size=200), sig)
card_messages = st.one_of(
    st.builds(msgs.SetCard, u64, u64, card_bytes, sig, key, u64, sig),
    st.builds(msgs.DeleteCard, u64, key, u64, sig),
    st.builds(msgs.FindCards, u64, query, query, query, query, st.integers(0, 65535), key, u64, sig),
    st.builds(msgs.FindResult, u64, st.integers(0, 65535), st.integers(0, 65535), st.lists(entries, max_size=4).map(tuple)),
)


@given(card_messages)
@settings(max_examples=150, deadline=None)
def test_round_trip(msg):
    assert msgs.decode(msgs.encode(msg)) == msg


@given(card_messages, st.data())
@settings(max_examples=150, deadline=None)
def test_truncation_and_garbage_raise_decode_error_only(msg, data):
    raw = msgs.encode(msg)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(DecodeError):
        msgs.decode(raw[:cut])
    noise = data.draw(st.binary(max_size=300))
    try:
        msgs.decode(raw[:11] + noise)
    except DecodeError:
        pass


def test_oversized_cards_and_queries_do_not_encode_or_decode():
    with pytest.raises(ValueError):
        msgs.encode(msgs.SetCard(1, 1, b"x" * (MAX_CARD_BYTES + 1), b"s" * 64))
    with pytest.raises(ValueError):
        msgs.encode(msgs.FindCards(1, tag="t" * 65))
    raw = msgs.encode(msgs.sign(msgs.SetCard(1, 1, b"x" * MAX_CARD_BYTES, b"s" * 64), Identity.generate(), 1))
    # Rewrite the card's length to one over the bound: the decoder refuses it.
    at = 11 + 32 + 8 + 8
    assert raw[at:at + 2] == MAX_CARD_BYTES.to_bytes(2, "big")
    forged = raw[:at] + (MAX_CARD_BYTES + 1).to_bytes(2, "big") + raw[at + 2:] + b"x"
    with pytest.raises(DecodeError):
        msgs.decode(forged)


def test_the_largest_card_fits_one_datagram_both_ways():
    identity = Identity.generate()
    biggest = msgs.sign(msgs.SetCard(1, 2**64 - 1, b"x" * MAX_CARD_BYTES, b"s" * 64), identity, 1)
    assert len(msgs.encode(biggest)) <= MAX_DATAGRAM
    entry = msgs.CardEntry("h" * 63, b"a" * 8, b"k" * 32, 1, b"x" * MAX_CARD_BYTES, b"s" * 64)
    result = msgs.FindResult(1, 50, 2, (entry,))
    assert len(msgs.encode(result)) == FIND_RESULT_OVERHEAD + entry.size() <= MAX_DATAGRAM
