"""
Issue 14, items 2 and 3: agent cards found fleet-wide (the liveness of
the cards' keys read from Redis in one round trip per query), and a clear
``unavailable`` answer, not silence, when Redis does not answer a lookup or
a find about a node live on another beacon.
"""

import pytest_twisted
from fleet_support import redis_server  # noqa: F401 (a fixture)
from test_beacon_fleet import A_EP, B_EP, fleet_of_two, sync

from pilotproto.beacon.fleet import REDIS_TIMEOUT
from pilotproto.wire import Endpoint
from pilotproto.wire import beacon as msgs
from pilotproto.wire.cards import SignedCard

C_EP = Endpoint("198.51.100.3", 4003)


def set_card(node, name, tags=("nlp",)):
    signed = SignedCard.make(node.identity, {"name": name, "tags": list(tags), "capabilities": ["summarize"]}, 10)
    assert node.ask(node.signed(msgs.SetCard(7, 10, signed.card, signed.signature))) == [msgs.Ok(7)]


def nodes_on_two_beacons():
    from helpers import SignedNode

    clock, redis, one, two = fleet_of_two()
    a = SignedNode(one.server, A_EP, "agent-a", public=True)
    b = SignedNode(two.server, B_EP, "agent-b", public=True)
    c = SignedNode(two.server, C_EP, "agent-c", public=True)
    for node in (a, b, c):
        assert isinstance(node.register(), msgs.Registered)
        set_card(node, node.hostname)
    sync(clock, one, two)
    return clock, redis, one, two, a, b, c


def test_find_on_one_beacon_lists_the_cards_of_nodes_live_on_the_other_in_one_redis_round_trip():
    clock, redis, one, two, a, b, c = nodes_on_two_beacons()
    redis.calls.clear()
    assert a.send(a.signed(msgs.FindCards(8, tag="nlp"))) == []  # answered when Redis says
    [(found, to)] = one.pushed
    assert to == A_EP and isinstance(found, msgs.FindResult)
    assert [e.hostname for e in found.entries] == ["agent-a", "agent-b", "agent-c"]
    assert redis.calls == ["mget"]  # one batched read for both keys live elsewhere
    assert one.server.counters["fleet_finds"] == 1


def test_a_card_whose_node_is_live_nowhere_is_not_found_and_a_private_one_only_by_who_may():
    clock, redis, one, two, a, b, c = nodes_on_two_beacons()
    # C's registration lapsed everywhere: its card stays (it is kept with the name) but is not listed.
    redis.values.pop(one.store.key("live", c.key.hex()))
    a.send(a.signed(msgs.FindCards(8)))
    [(found, _)] = one.pushed
    assert [e.hostname for e in found.entries] == ["agent-a", "agent-b"]


def test_a_node_live_here_is_found_without_asking_redis():
    clock, redis, one, two, a, b, c = nodes_on_two_beacons()
    redis.calls.clear()
    [found] = b.ask(b.signed(msgs.FindCards(8, text="agent-c")))
    assert [e.hostname for e in found.entries] == ["agent-c"] and redis.calls == []


def test_with_redis_down_a_lookup_or_find_of_a_node_on_another_beacon_is_answered_unavailable():
    clock, redis, one, two, a, b, c = nodes_on_two_beacons()
    redis.down = True
    assert a.send(a.signed(msgs.Lookup(5, False, b"agent-b"))) == []
    assert a.send(a.signed(msgs.FindCards(8))) == []
    assert one.pushed == []
    clock.advance(REDIS_TIMEOUT)
    errors = [m for m, _ in one.pushed]
    assert [(type(e), e.code) for e in errors] == [(msgs.Error, "unavailable")] * 2
    assert all("Redis" in e.message for e in errors)
    assert one.server.counters["fleet_redis_unavailable"] == 2
    # Nodes live here are still found: the beacon answers what it knows.
    [found] = b.ask(b.signed(msgs.Lookup(6, False, b"agent-c")))
    assert isinstance(found, msgs.LookupResult)
    # Redis back: the same lookup is answered.
    redis.down = False
    one.pushed.clear()
    a.send(a.signed(msgs.Lookup(5, False, b"agent-b")))
    [(result, _)] = one.pushed
    assert isinstance(result, msgs.LookupResult) and result.public_key == b.key


def test_the_live_registrations_of_a_beacon_are_renewed_in_one_command_and_the_gone_withdrawn():
    clock, redis, one, two, a, b, c = nodes_on_two_beacons()
    commands = []
    real_eval = redis.eval
    redis.eval = lambda script, keys, args: (commands.append((script, list(keys))), real_eval(script, keys, args))[1]
    two.server.registry.remove(c.key)
    two.fleet.refresh()
    live = two.store.key("live", b.key.hex())
    [(script, keys)] = [cmd for cmd in commands if cmd[0] is not None and "SET" in cmd[0] and "EX" in cmd[0]]
    assert keys == [live]  # B renewed; C, gone, withdrawn (its own command)
    assert redis.values[live] and two.store.key("live", c.key.hex()) not in redis.values
    assert len(commands) == 2


@pytest_twisted.inlineCallbacks
def test_the_renewal_script_sets_each_value_with_its_expiry_in_a_real_redis(redis_server):  # noqa: F811
    from test_beacon_redis_store import connect

    from pilotproto.beacon.fleet import LIVE_TTL, SET_LIVE

    redis = yield connect(redis_server.url)
    try:
        count = yield redis.eval(SET_LIVE, ["t:live:1", "t:live:2"], [LIVE_TTL, "one", "two"])
        assert count == 2
        assert redis_server.command("GET", "t:live:2").endswith(b"two\r\n")
        ttl = int(redis_server.command("TTL", "t:live:1")[1:].strip())
        assert 0 < ttl <= LIVE_TTL
    finally:
        yield redis.disconnect()
