"""The beacon's Redis store against a real redis-server: rows written and read
back, names refereed between two beacons, writes kept while Redis is away."""

import pytest
import pytest_twisted
from fleet_support import redis_server  # noqa: F401 (a fixture)
from twisted.internet import defer, reactor, task
from zope.interface import implementer

from pilotproto.beacon.redis_store import IStoreListener, RedisAddress, RedisStore
from pilotproto.beacon.store import CardRow, MailRow, NameRow, VisibilityRow
from pilotproto.errors import InvalidArgument

K1, K2, K3 = b"1" * 32, b"2" * 32, b"3" * 32


@implementer(IStoreListener)
class Lost:
    def __init__(self):
        self.names = []

    def name_lost(self, hostname, loser, winner):
        self.names.append((hostname, loser, winner))


def connect(url):
    import txredisapi

    a = RedisAddress.parse(url)
    return txredisapi.Connection(a.host, a.port, dbid=a.db, charset="utf-8", convertNumbers=False, reconnect=True)


def store_for(name, redis, hold=3600):
    store = RedisStore(reactor, name, hold=hold)
    lost = Lost()
    store.set_listener(lost)
    store.connected(redis)
    return store, lost


def test_redis_addresses_are_checked():
    assert RedisAddress.parse("redis://127.0.0.1:6380/2") == RedisAddress("127.0.0.1", 6380, 2)
    assert RedisAddress.parse("redis://:s%40cret@db.example").password == "s@cret"
    for bad in ("http://x:1/0", "redis://", "redis://h:port/0", "redis://h:1/x", "redis://h:1/0?a=b"):
        with pytest.raises(InvalidArgument):
            RedisAddress.parse(bad)


@pytest_twisted.inlineCallbacks
def test_every_kind_of_row_is_written_at_once_and_read_back(redis_server):  # noqa: F811
    redis = yield connect(redis_server.url)
    try:
        store, _ = store_for("one", redis)
        mail = MailRow(2**64 - 1, K2, ("name", "agent-a"), ("answer", 9, b"r" * 32), b"\xb0signed", 99.5)
        store.put_name(NameRow(K1, "agent-a", 10.0))
        store.put_name(NameRow(K3, "gone", 5.0))
        store.delete_name(K3)
        store.put_visibility(VisibilityRow(K1, 7, frozenset({K2, K3})))
        store.put_card(CardRow(K1, 2**64 - 2, b'{"name":"a"}', b"s" * 64))
        store.put_mail(mail)
        store.put_mail(MailRow(5, K2, ("key", K1), ("revoke",), b"x", 50.0))
        store.delete_mail(5)
        yield store.drained()
        assert store.pending == 0 and store.writes == 8
        saved = yield store.read()
        assert saved.names == (NameRow(K1, "agent-a", 10.0),)
        assert saved.visibility == (VisibilityRow(K1, 7, frozenset({K2, K3})),)
        assert saved.cards == (CardRow(K1, 2**64 - 2, b'{"name":"a"}', b"s" * 64),)
        assert saved.mail == (mail,)
        assert (yield redis.get("pilot:holder:agent-a")) == K1.hex()
        assert (yield redis.get("pilot:holder:gone")) is None
    finally:
        yield redis.disconnect()


@pytest_twisted.inlineCallbacks
def test_redis_gives_a_name_to_one_key_and_tells_the_beacon_that_lost(redis_server):  # noqa: F811
    redis = yield connect(redis_server.url)
    try:
        one, lost_one = store_for("one", redis)
        two, lost_two = store_for("two", redis)
        now = reactor.seconds()
        one.put_name(NameRow(K1, "agent-a", now))
        yield one.drained()
        two.put_name(NameRow(K2, "agent-a", now))
        yield two.drained()
        assert lost_two.names == [("agent-a", K2, K1)] and lost_one.names == []
        assert (yield redis.get("pilot:holder:agent-a")) == K1.hex()
        # A key unseen past the hold time has lost its name: it may be taken.
        one.put_name(NameRow(K1, "agent-old", now - 7200))
        yield one.drained()
        assert (yield redis.get("pilot:holder:agent-a")) is None  # a key holds one name: the old one is freed
        two.put_name(NameRow(K2, "agent-old", now))
        yield two.drained()
        assert lost_two.names == [("agent-a", K2, K1)]
        assert (yield redis.get("pilot:holder:agent-old")) == K2.hex()
    finally:
        yield redis.disconnect()


@pytest_twisted.inlineCallbacks
def test_writes_made_while_redis_is_away_wait_in_order_and_are_sent_when_it_is_back(redis_server):  # noqa: F811
    redis = yield connect(redis_server.url)
    try:
        store, _ = store_for("one", redis)
        redis_server.kill()
        store.put_mail(MailRow(1, K2, ("key", K1), ("revoke",), b"x", 50.0))
        store.put_visibility(VisibilityRow(K1, 1, frozenset({K2})))
        store.delete_mail(1)
        for _ in range(20):
            yield task.deferLater(reactor, 0.05, lambda: None)
            store.flush()
        assert store.pending == 3
        redis_server.start()
        for _ in range(200):
            if store.pending == 0:
                break
            store.flush()
            yield task.deferLater(reactor, 0.05, lambda: None)
        assert store.pending == 0
        saved = yield store.read()
        assert saved.mail == () and saved.visibility == (VisibilityRow(K1, 1, frozenset({K2})),)
    finally:
        yield defer.maybeDeferred(redis.disconnect)
