"""The node's agent card worker: card.json, publishing, and verifying what a beacon returns."""

import json
import os
import stat

import attrs
import pytest
from helpers import SignedNode
from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface import implementer

from pilotproto.beacon.server import BeaconServer
from pilotproto.errors import NotFound, StateError
from pilotproto.interfaces import ISignedRequests
from pilotproto.rendezvous.cards import CARD_FILE, AgentCards
from pilotproto.rendezvous.requests import error_from
from pilotproto.wire import Endpoint
from pilotproto.wire import beacon as msgs
from pilotproto.wire.cards import CardError, SignedCard, canonical_bytes, parse_card

A_EP = Endpoint("198.51.100.7", 40001)
B_EP = Endpoint("203.0.113.9", 40002)
CARD = {"name": "summarizer", "tags": ["nlp"], "services": [{"kind": "mcp", "port": 80}]}


@implementer(ISignedRequests)
class BeaconRequests:
    """ISignedRequests straight into a sans-IO BeaconServer, as ``node`` (a SignedNode).
    ``tamper(reply)`` may rewrite each answer (a hostile beacon); ``silent`` drops sends."""

    def __init__(self, node, tamper=None):
        self.node = node
        self.tamper = tamper or (lambda reply: reply)
        self.silent = False
        self.pending = []

    def _round(self, request):
        [reply] = self.node.ask(self.node.signed(attrs.evolve(request, request_id=1)))
        return self.tamper(reply)

    def ask(self, request):
        reply = self._round(request)
        return defer.fail(error_from(reply)) if isinstance(reply, msgs.Error) else defer.succeed(reply)

    def send(self, what, request, on_ok, on_error=None, on_give_up=None):
        if self.silent:
            self.pending.append(on_give_up)
            return
        reply = self._round(request)
        on_ok() if isinstance(reply, msgs.Ok) else on_error(error_from(reply))

    def post(self, request):
        self._round(request)

    def in_flight(self, what):
        return False

    def cancel(self, what):
        """Nothing waits."""

    def cancel_matching(self, prefix):
        """Nothing waits."""

    def message_received(self, msg):
        return False

    def stop(self):
        """Nothing waits."""


def result_of(d):
    out = []
    d.addBoth(out.append)
    [result] = out
    return result


class World:
    def __init__(self, tmp_path):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.server = BeaconServer(self.clock)
        self.a = SignedNode(self.server, A_EP, "agent-a", public=True)
        self.b = SignedNode(self.server, B_EP, "agent-b")
        self.a.register()
        self.b.register()
        self.home_a, self.home_b = str(tmp_path / "a"), str(tmp_path / "b")
        os.makedirs(self.home_a)
        os.makedirs(self.home_b)
        self.requests_a = BeaconRequests(self.a)
        self.requests_b = BeaconRequests(self.b)
        self.cards_a = AgentCards(self.clock, self.a.identity, self.home_a, self.requests_a, hostname="agent-a")
        self.cards_b = AgentCards(self.clock, self.b.identity, self.home_b, self.requests_b, hostname="agent-b")


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


def test_set_keeps_the_card_in_the_home_and_publishes_it(world):
    shown = result_of(world.cards_a.set(CARD))
    assert shown["published"] is True and shown["card"] == parse_card(CARD) and shown["hostname"] == "agent-a"
    path = os.path.join(world.home_a, CARD_FILE)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert json.load(open(path))["card"] == parse_card(CARD)
    found = result_of(world.cards_b.find(tag="NLP"))
    assert [c["hostname"] for c in found["cards"]] == ["agent-a"] and found["rejected"] == 0
    assert found["cards"][0]["card"] == parse_card(CARD) and found["cards"][0]["address"] == str(world.a.identity.address)
    assert result_of(world.cards_b.show("agent-a"))["card"] == parse_card(CARD)


def test_a_bad_card_is_refused_before_anything_is_written(world):
    failure = result_of(world.cards_a.set({"name": "x", "tags": "nlp"}))
    assert failure.check(CardError)
    assert not os.path.exists(os.path.join(world.home_a, CARD_FILE))
    assert len(world.server.cards) == 0


def test_the_card_is_published_again_after_registration_and_kept_across_restarts(world):
    world.requests_a.silent = True
    answers = []
    world.cards_a.set(CARD).addBoth(answers.append)
    assert answers == []  # not answered yet
    world.requests_a.pending.pop()()  # the beacon never answered: published false
    assert answers[0]["published"] is False and len(world.server.cards) == 0
    # The node restarts: card.json is read back; registering publishes it.
    world.requests_a.silent = False
    again = AgentCards(world.clock, world.a.identity, world.home_a, world.requests_a)
    again.beacon_registered(A_EP)
    assert again.published is True and len(world.server.cards) == 1
    first = again.signed.version
    world.clock.advance(1)
    result_of(again.set(dict(CARD, name="v2")))
    assert again.signed.version > first
    assert world.server.cards.get(world.a.key).version == again.signed.version


def test_delete_forgets_the_card_here_and_at_the_beacon(world):
    result_of(world.cards_a.set(CARD))
    assert result_of(world.cards_a.delete()) == {"deleted": True, "published": True}
    assert not os.path.exists(os.path.join(world.home_a, CARD_FILE))
    assert result_of(world.cards_b.find())["cards"] == []
    assert result_of(world.cards_a.show())["card"] is None
    assert result_of(world.cards_b.show("agent-a")).check(NotFound)


def _rewrite_entries(change):
    def tamper(reply):
        if isinstance(reply, msgs.FindResult):
            return attrs.evolve(reply, entries=tuple(change(e) for e in reply.entries))
        return reply

    return tamper


@pytest.mark.parametrize("change", [
    # the card's bytes altered (still a valid card)
    lambda e: attrs.evolve(e, card=canonical_bytes(dict(json.loads(e.card), name="evil"))),
    # a rollback: the version changed under the signature
    lambda e: attrs.evolve(e, version=e.version - 1),
    # moved onto another node's address
    lambda e: attrs.evolve(e, address=bytes(8)),
])
def test_a_tampered_card_from_the_beacon_is_dropped_counted_and_never_shown(world, change):
    result_of(world.cards_a.set(CARD))
    world.requests_b.tamper = _rewrite_entries(change)
    found = result_of(world.cards_b.find(tag="nlp"))
    assert found == {"cards": [], "total": 1, "rejected": 1}
    assert world.cards_b.counters["cards_rejected"] == 1
    failure = result_of(world.cards_b.show("agent-a"))
    assert failure.check(NotFound) and "failed verification" in failure.value.message


def test_a_card_signed_by_another_key_for_this_node_is_dropped(world):
    result_of(world.cards_a.set(CARD))
    forged = SignedCard.make(world.b.identity, dict(CARD, name="forged"), 99)
    world.requests_b.tamper = _rewrite_entries(
        lambda e: attrs.evolve(e, version=99, card=forged.card, card_signature=forged.signature)
    )
    found = result_of(world.cards_b.find())
    assert found["cards"] == [] and found["rejected"] == 1


def test_only_good_cards_survive_a_mixed_answer(world):
    result_of(world.cards_a.set(CARD))
    c = SignedNode(world.server, Endpoint("192.0.2.5", 40003), "agent-c", public=True)
    c.register()
    cards_c = AgentCards(world.clock, c.identity, world.home_b + "c", BeaconRequests(c))
    os.makedirs(world.home_b + "c")
    result_of(cards_c.set(dict(CARD, name="other")))
    world.requests_b.tamper = _rewrite_entries(
        lambda e: attrs.evolve(e, card_signature=bytes(64)) if e.hostname == "agent-c" else e
    )
    found = result_of(world.cards_b.find())
    assert [c["hostname"] for c in found["cards"]] == ["agent-a"] and found["rejected"] == 1


def test_a_corrupt_card_file_stops_the_worker_loudly(world):
    with open(os.path.join(world.home_a, CARD_FILE), "w") as f:
        f.write("{not json")
    with pytest.raises(StateError, match="card"):
        AgentCards(world.clock, world.a.identity, world.home_a, world.requests_a)
