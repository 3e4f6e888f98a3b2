"""
Agent cards end to end: real daemons and a real beacon on loopback, through
pilotctl and the asyncio SDK.  A private node's card is found only once it
trusts the caller; a public node's by anyone; delete hides it again.
"""

from __future__ import annotations

import asyncio
import json
import os

import pytest

import pilotproto.aio

from .conftest import pilotctl, wait_for

pytestmark = [pytest.mark.integration]


def write_card(home_dir, card) -> str:
    path = os.path.join(home_dir, "my-card.json")
    with open(path, "w") as f:
        json.dump(card, f)
    return path


def found(home, *args):
    code, doc = pilotctl(home, "find", *args)
    assert code == 0, doc
    return sorted(c["hostname"] for c in doc["data"]["cards"])


def test_card_set_find_show_delete_private_and_public(daemons, tmp_path):
    private = daemons.start("agent-a")
    public = daemons.start("agent-p", "--public")
    caller = daemons.start("agent-s")
    card_a = {"name": "secret summarizer", "tags": ["nlp"], "capabilities": ["summarize"],
              "services": [{"kind": "mcp", "port": 80, "path": "/mcp"}]}
    card_p = {"name": "public translator", "tags": ["nlp", "lang"], "tools": ["translate_text"]}
    for home, card in ((private, card_a), (public, card_p)):
        code, doc = pilotctl(home, "card", "set", "--file", write_card(str(tmp_path), card))
        assert code == 0 and doc["data"]["published"] is True, doc

    # The caller sees the public card, and not the private one (both ways of asking).
    assert found(caller, "--tag", "nlp") == ["agent-p"]
    assert found(caller, "summarizer") == []
    code, doc = pilotctl(caller, "card", "show", "agent-a")
    assert code != 0 and doc["code"] == "not_found", doc
    code, doc = pilotctl(caller, "card", "show", "agent-p")
    assert code == 0 and doc["data"]["card"]["tools"] == ["translate_text"] and doc["data"]["verified"] is True

    # The private node trusts the caller: now the caller finds it.
    assert pilotctl(caller, "handshake", "agent-a", "cards")[0] == 0
    assert wait_for(lambda: pilotctl(private, "pending")[1]["data"]["pending"], 5)
    assert pilotctl(private, "approve", "agent-s")[0] == 0
    assert wait_for(lambda: found(caller, "--tag", "NLP") == ["agent-a", "agent-p"], 5)
    assert found(caller, "--capability", "summarize", "SECRET") == ["agent-a"]

    # The SDK finds the same, verified.
    async def sdk():
        async with await pilotproto.aio.connect(caller) as node:
            cards = await node.find(tag="nlp")
            mine = await node.card_show()
            return cards, mine

    cards, mine = asyncio.run(sdk())
    assert sorted(c["hostname"] for c in cards) == ["agent-a", "agent-p"]
    assert all(c["verified"] for c in cards) and mine["card"] is None

    # Own card, then delete it: the public card is gone from find.
    code, doc = pilotctl(public, "card", "show")
    assert code == 0 and doc["data"]["card"]["name"] == "public translator" and doc["data"]["published"] is True
    code, doc = pilotctl(public, "card", "delete")
    assert code == 0 and doc["data"] == {"deleted": True, "published": True}, doc
    assert found(caller, "--tag", "nlp") == ["agent-a"]


def test_card_set_refuses_a_bad_card_with_a_hint(daemons, tmp_path):
    home = daemons.start("agent-a")
    code, doc = pilotctl(home, "card", "set", "--file", write_card(str(tmp_path), {"name": "x", "tags": ["t" * 100]}))
    assert code != 0 and doc["code"] == "invalid_argument" and "discovery.md" in doc["hint"], doc
    assert not os.path.exists(os.path.join(home, "card.json"))
