"""Agent cards at the sans-IO beacon: who find shows a card to, the bounds, deletion, persistence."""

import pytest
from helpers import SignedNode
from twisted.internet.task import Clock

from pilotproto.beacon.limits import Limits, Rate
from pilotproto.beacon.server import BeaconServer
from pilotproto.beacon.store import SQLiteStore
from pilotproto.identity import Identity
from pilotproto.wire import Endpoint
from pilotproto.wire import beacon as msgs
from pilotproto.wire.beacon_cards import MAX_DATAGRAM, MAX_FIND_RESULTS
from pilotproto.wire.cards import SignedCard, canonical_bytes, parse_card

A_EP = Endpoint("198.51.100.7", 40001)
B_EP = Endpoint("203.0.113.9", 40002)
C_EP = Endpoint("192.0.2.5", 40003)


def card_of(name, **fields):
    return dict({"name": name, "tags": ["nlp"], "capabilities": ["summarize"]}, **fields)


def set_card(node, card, version=10, signer=None):
    signed = SignedCard.make(signer or node.identity, card, version)
    return node.ask(node.signed(msgs.SetCard(7, version, signed.card, signed.signature)))


def find(node, offset=0, **query):
    [reply] = node.ask(node.signed(msgs.FindCards(8, offset=offset, **query)))
    return reply


def found_names(node, **query):
    return [e.hostname for e in find(node, **query).entries]


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def server(clock):
    return BeaconServer(clock)


def registered(server, endpoint, name, public=False):
    node = SignedNode(server, endpoint, name, public=public)
    assert isinstance(node.register(), msgs.Registered)
    return node


def test_a_private_nodes_card_is_shown_only_to_itself_and_the_keys_it_trusts(server):
    private = registered(server, A_EP, "agent-a")
    stranger = registered(server, B_EP, "agent-b")
    friend = registered(server, C_EP, "agent-c")
    assert set_card(private, card_of("secret summarizer")) == [msgs.Ok(7)]
    for query in ({}, {"tag": "nlp"}, {"text": "secret"}, {"peer": "agent-a"}, {"peer": str(private.identity.address)}):
        assert found_names(stranger, **query) == []
        assert found_names(friend, **query) == []
        assert found_names(private, **query) == ["agent-a"]
    # Trust, as the visibility list says it: the friend sees the card, the stranger still does not.
    assert private.set_visibility([friend.key], version=1) == [msgs.Ok(6)]
    assert found_names(friend, tag="NLP") == ["agent-a"]
    assert found_names(friend, peer="agent-a") == ["agent-a"]
    assert found_names(stranger, tag="NLP") == []
    # And the answer is exactly what the node signed.
    [entry] = find(friend).entries
    signed = SignedCard(entry.public_key, entry.version, entry.card, entry.card_signature)
    assert entry.public_key == private.key and entry.address == private.identity.address.to_bytes()
    assert signed.verify(str(private.identity.address)) == parse_card(card_of("secret summarizer"))


def test_a_public_nodes_card_is_shown_to_anyone_matching_the_query(server):
    public = registered(server, A_EP, "agent-a", public=True)
    other = registered(server, B_EP, "agent-b", public=True)
    asker = registered(server, C_EP, "agent-c")
    set_card(public, card_of("Summarizer", description="Reads PDFs", tools=["fetch_url"]))
    set_card(other, card_of("translator", tags=["lang"], capabilities=["translate"]))
    assert found_names(asker) == ["agent-a", "agent-b"]
    assert found_names(asker, tag="LANG") == ["agent-b"]
    assert found_names(asker, capability="summarize") == ["agent-a"]
    assert found_names(asker, text="pdf") == ["agent-a"]
    assert found_names(asker, text="FETCH") == ["agent-a"]
    assert found_names(asker, tag="nlp", capability="translate") == []
    assert found_names(asker, peer="agent-b") == ["agent-b"]


def test_a_card_signed_by_another_key_or_altered_is_refused(server):
    node = registered(server, A_EP, "agent-a", public=True)
    asker = registered(server, B_EP, "agent-b")
    [error] = set_card(node, card_of("x"), signer=Identity.generate())
    assert error.code == "invalid_argument" and "signature" in error.message
    signed = SignedCard.make(node.identity, card_of("x"), 10)
    altered = canonical_bytes(parse_card(card_of("y")))
    [error] = node.ask(node.signed(msgs.SetCard(7, 10, altered, signed.signature)))
    assert error.code == "invalid_argument"
    assert found_names(asker) == []
    assert server.counters["error_invalid_argument"] == 2


def test_one_card_per_node_newer_versions_replace_and_older_ones_are_refused(server):
    node = registered(server, A_EP, "agent-a", public=True)
    asker = registered(server, B_EP, "agent-b")
    assert set_card(node, card_of("first"), version=10) == [msgs.Ok(7)]
    assert set_card(node, card_of("first"), version=10) == [msgs.Ok(7)]  # re-published after registration
    assert set_card(node, card_of("second"), version=11) == [msgs.Ok(7)]
    [error] = set_card(node, card_of("first"), version=10)  # a rollback
    assert error.code == "invalid_argument"
    [error] = set_card(node, card_of("third"), version=11)  # same version, other card
    assert error.code == "invalid_argument"
    [entry] = find(asker).entries
    assert entry.version == 11 and b"second" in entry.card
    assert len(server.cards) == 1


def test_card_updates_count_in_the_per_key_request_quota(clock):
    server = BeaconServer(clock, limits=Limits(requests_per_key=Rate(4, 10)))
    node = registered(server, A_EP, "agent-a")
    answers = [set_card(node, card_of("n"), version=v)[0] for v in range(10, 16)]
    assert [type(a).__name__ for a in answers[:4]] == ["Ok"] * 4
    assert answers[-1].code == "rate_limited" and answers[-1].retry_after > 0


def test_find_is_bounded_and_paged_in_datagrams_that_fit(server):
    asker = registered(server, A_EP, "asker")
    filler = "d" * 250
    for i in range(MAX_FIND_RESULTS + 10):
        node = registered(server, Endpoint("198.51.100.%d" % (i + 10), 5000), f"agent-{i:03d}", public=True)
        set_card(node, card_of(f"agent {i}", description=filler))
    seen, offset, pages = [], 0, 0
    while True:
        [data] = [d for d, _ in asker.send(asker.signed(msgs.FindCards(8, offset=offset)))]
        assert len(data) <= MAX_DATAGRAM
        page = msgs.decode(data)
        assert page.total == MAX_FIND_RESULTS and page.entries
        seen.extend(e.hostname for e in page.entries)
        pages += 1
        if not page.next_offset:
            break
        offset = page.next_offset
    assert seen == sorted(f"agent-{i:03d}" for i in range(MAX_FIND_RESULTS + 10))[:MAX_FIND_RESULTS]
    assert pages > 1


def test_delete_release_and_going_offline_hide_the_card(server, clock):
    a = registered(server, A_EP, "agent-a", public=True)
    b = registered(server, B_EP, "agent-b", public=True)
    asker = registered(server, C_EP, "agent-c")
    set_card(a, card_of("a"))
    set_card(b, card_of("b"))
    assert a.ask(a.signed(msgs.DeleteCard(9))) == [msgs.Ok(9)]
    assert a.ask(a.signed(msgs.DeleteCard(9))) == [msgs.Ok(9)]  # a resent delete is done too
    assert found_names(asker) == ["agent-b"]
    assert isinstance(b.release(), msgs.Ok)
    assert len(server.cards) == 0
    # A card outlives its registration (with the name) but is shown only while the node is online.
    set_card(a, card_of("a"), version=20)
    clock.advance(server.registry.ttl + 1)
    asker.register()
    assert found_names(asker) == []
    a.register()
    assert found_names(asker) == ["agent-a"]


def test_the_card_goes_with_the_name_when_the_hold_time_ends(clock):
    server = BeaconServer(clock, limits=Limits(name_hold=100))
    a = registered(server, A_EP, "agent-a", public=True)
    set_card(a, card_of("a"))
    clock.advance(101)
    server.expire()
    assert len(server.cards) == 0


def test_cards_survive_a_beacon_restart_with_a_state_directory(tmp_path, clock):
    server = BeaconServer(clock, store=SQLiteStore(str(tmp_path)))
    a = registered(server, A_EP, "agent-a", public=True)
    set_card(a, card_of("kept"), version=2**63 + 5)  # above SQLite's signed range
    server.store.close()
    again = BeaconServer(clock, store=SQLiteStore(str(tmp_path)))
    assert len(again.cards) == 1
    a.server = again
    asker = SignedNode(again, B_EP, "agent-b")
    asker.register()
    a.register()
    [entry] = find(asker).entries
    assert entry.version == 2**63 + 5 and b"kept" in entry.card
    # Released with the name, across a restart too.
    a.release()
    again.store.close()
    assert len(BeaconServer(clock, store=SQLiteStore(str(tmp_path))).cards) == 0


def test_without_registration_nothing_is_answered_but_an_error(server):
    stranger = SignedNode(server, A_EP, "agent-a")
    [reply] = stranger.ask(stranger.signed(msgs.FindCards(8)))
    assert reply.code == "not_registered"


def test_a_find_from_an_unproven_address_is_held_to_three_times_its_size(server):
    a = registered(server, A_EP, "agent-a", public=True)
    set_card(a, card_of("big", description="x" * 300))
    asker = registered(server, B_EP, "agent-b")
    request = msgs.encode(asker.signed(msgs.FindCards(8)))
    moved = Endpoint("192.0.2.99", 9999)  # a forged or rebound source
    replies = asker.send(request, source=moved)
    assert sum(len(d) for d, ep in replies if ep == moved) <= 3 * len(request)
    assert not any(isinstance(msgs.decode(d), msgs.FindResult) for d, _ in replies)
    assert server.counters["dropped_unvalidated_budget"] == 1
