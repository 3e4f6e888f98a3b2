"""
Connecting a beacon to its fleet's Redis: the Twisted side of
:mod:`pilotproto.beacon.fleet`.

At start, in this order, before the beacon answers anyone:

1. a command connection (txredisapi, reconnecting by itself);
2. a subscriber connection on the fleet's two channels (changes, and this
   beacon's relay frames), so that no change made from here on is missed;
3. a read of everything Redis holds (names, lists, cards, mail), restored
   into the beacon's workers as a single beacon restores its SQLite state;
4. then the listeners start (:attr:`ready` fires).

While running: the store's queued writes are retried, and the quotas
counted fleet-wide reported (:mod:`pilotproto.beacon.fleet_quotas`), every
``FLUSH_INTERVAL`` (nothing waits while Redis is up: each change is sent on
the next reactor turn), and the live registrations are renewed every
``LIVE_REFRESH``.  If the subscriber connection drops (Redis restarted), it
reconnects with backoff and the beacon reads Redis whole again
(:meth:`RedisFleet.catch_up`), since what was published meanwhile is lost.

At stop: queued writes are drained (up to a second), this beacon's live
registrations withdrawn, and both connections closed.
"""

from __future__ import annotations

from twisted.application import service
from twisted.application.internet import ClientService
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from .fleet import LIVE_REFRESH, REDIS_TIMEOUT
from .fleet_quotas import FleetQuotas
from .store import FLUSH_INTERVAL


def _txredisapi():
    # An optional extra (pip install pilotproto[fleet]): imported when a fleet is asked for.
    try:
        import txredisapi
    except ImportError:
        from ..errors import InvalidArgument

        raise InvalidArgument(
            "--store redis:// needs the txredisapi package", hint="Install it: pip install 'pilotproto[fleet]'."
        ) from None
    return txredisapi


def subscriber_factory(service_):
    """A txredisapi subscriber factory whose messages go to ``service_.message``."""
    txredisapi = _txredisapi()

    class Subscriber(txredisapi.SubscriberProtocol):
        def messageReceived(self, pattern, channel, message):
            self.factory.fleet_service.message(channel, message)

    factory = txredisapi.SubscriberFactory()
    factory.protocol = Subscriber
    # Relay frames are bytes: no decoding, and no "numbers" made of them.
    factory.charset = None
    factory.convertNumbers = False
    factory.password = service_.address.password
    factory.fleet_service = service_
    return factory


class FleetService(service.Service):
    log = Logger()

    def __init__(self, reactor, address, server, store, fleet):
        self._reactor = reactor
        self.address = address
        self._server = server
        self._store = store
        self.fleet = fleet
        #: the quotas counted fleet-wide (fleet_quotas.py)
        self.quotas = FleetQuotas(reactor, server.limits, store.prefix, server.counters, REDIS_TIMEOUT)
        server.quotas.share(self.quotas)
        #: fires once the beacon holds the fleet's state and may answer
        self.ready = defer.Deferred()
        self._redis = None
        self._subscriber = None
        self._subscriptions = 0
        self._first_subscription = defer.Deferred()
        self._flush = LoopingCall(self._tick)
        self._flush.clock = reactor
        self._ticks = 0

    def startService(self):
        super().startService()
        self._starting = self._start()
        self._starting.addErrback(lambda f: self.log.failure("the beacon cannot join its fleet", f))

    @defer.inlineCallbacks
    def _start(self):
        txredisapi = _txredisapi()
        a = self.address
        self.log.info("joining the fleet at {address} as beacon {id}", address=str(a), id=self.fleet.beacon_id)
        self._redis = yield txredisapi.Connection(
            a.host, a.port, dbid=a.db, password=a.password, charset="utf-8", convertNumbers=False, reconnect=True
        )
        endpoint = TCP4ClientEndpoint(self._reactor, a.host, a.port, timeout=10)
        self._subscriber = ClientService(endpoint, subscriber_factory(self), prepareConnection=self._subscribe, clock=self._reactor)
        self._subscriber.startService()
        yield self._first_subscription
        self._store.connected(self._redis)
        snapshot = yield self._store.read()
        server = self._server
        server.registry.restore(snapshot.names)
        server.visibility.restore(snapshot.visibility)
        server.mailbox.restore(snapshot.mail)
        server.cards.restore(snapshot.cards)
        self.fleet.connected(self._redis)
        self.quotas.connected(self._redis)
        self._flush.start(FLUSH_INTERVAL, now=False)
        self.log.info(
            "the fleet holds {names} names, {mail} mail; this beacon answers now", names=len(snapshot.names), mail=len(snapshot.mail)
        )
        self.ready.callback(None)

    def _subscribe(self, protocol):
        d = protocol.subscribe([self._store.channel, self._store.relay_channel(self.fleet.beacon_id)])
        d.addCallback(self._subscribed)
        return d

    def _subscribed(self, _):
        self._subscriptions += 1
        if self._subscriptions == 1:
            self._first_subscription.callback(None)
            return
        # Again, after Redis went away: what was published meanwhile is lost; read it all.
        self.log.info("the fleet's Redis is back; catching up")
        d = self._store.read()
        d.addCallback(self.fleet.catch_up)
        d.addErrback(lambda f: self.log.failure("cannot catch up with the fleet", f))

    def message(self, channel, message) -> None:
        channel = channel.decode("utf-8") if isinstance(channel, bytes) else channel
        if channel == self._store.channel:
            self.fleet.changed(message)
        else:
            self.fleet.relayed_in(message)

    def _tick(self) -> None:
        self._store.flush()
        self.quotas.flush()
        self._ticks += 1
        if self._ticks % max(1, int(LIVE_REFRESH / FLUSH_INTERVAL)) == 0:
            self.fleet.refresh()

    @defer.inlineCallbacks
    def stopService(self):
        super().stopService()
        if self._flush.running:
            self._flush.stop()
        if self._redis is not None:
            yield self._store.drained()
            yield self.fleet.withdraw_all()
        if self._subscriber is not None:
            yield self._subscriber.stopService()
        if self._redis is not None:
            yield self._redis.disconnect()
