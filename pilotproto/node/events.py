"""
Port 1002: events, published on topics and delivered to subscribers.

Subscriptions live where the subscriber is: its daemon announces its set
of patterns to each trusted peer (a ``subscriptions`` item, through the
durable outbox, a newer set replacing an unsent older one) when the set
changes, when trust in a peer begins, and at every start.  A publisher
keeps each peer's last announced set (``MailStore``, on disk) and sends
each published event, through the same outbox (ids, acks, order), to every
trusted peer with a matching pattern.  The receiver logs events
(bounded; seqs that only grow) before it acks, drops duplicates by
(sender, id), and hands each to the local feeds whose pattern matches; a
feed that names ``after`` first replays the logged events after that seq.

A pattern stays announced ``linger`` seconds after its last feed closed
(persisted, so across a restart too): an SDK that reconnects after its
daemon restarted, with ``after`` = the last seq it saw, misses nothing.
The wire format is in ``docs/protocol.md`` (section 9).
"""

from __future__ import annotations

import hashlib

from twisted.logger import Logger
from zope.interface import implementer

from ..common.wiring import check_provides
from ..errors import InvalidArgument, ProtocolError
from ..interfaces import IMailPeers, IOutbox, ITrustListener
from ..trust.book import address_of
from .inbox import MAX_MESSAGE, ChecksumMismatch, load_header
from .topics import any_matches, check_pattern, check_topic, matches

EVENTS_PORT = 1002
#: seconds a pattern stays announced after its last local feed closed
LINGER = 600.0
#: patterns one announcement may carry
MAX_PATTERNS = 1000
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

log = Logger()


def parse_event_header(line: bytes) -> dict:
    """Check a port-1002 header line: an ``event`` or a ``subscriptions`` announcement."""
    doc = load_header(line)
    kind = doc.get("kind")
    if kind == "event":
        check_topic(doc.get("topic"))
        published = doc.get("published_at")
        if not isinstance(published, (int, float)) or isinstance(published, bool):
            raise ProtocolError("published_at must be a time in seconds")
        if doc["size"] > MAX_MESSAGE:
            raise InvalidArgument(f"an event is at most {MAX_MESSAGE} bytes; this one is {doc['size']}")
        if doc["id"] is None:
            raise ProtocolError("an event needs an id")
    elif kind == "subscriptions":
        patterns = doc.get("patterns")
        if not isinstance(patterns, list) or len(patterns) > MAX_PATTERNS:
            raise ProtocolError(f"patterns must be a list of at most {MAX_PATTERNS} patterns")
        for pattern in patterns:
            check_pattern(pattern)
        if doc["size"] != 0:
            raise ProtocolError("a subscriptions announcement has no body")
    else:
        raise ProtocolError(f"unknown kind {kind!r}; this port takes \"event\" or \"subscriptions\"")
    return doc


class Subscription:
    """A local feed: ``on_event(dict)`` for each matching event until :meth:`close`."""

    def __init__(self, events: "Events", pattern: str, on_event, last: int):
        self._events = events
        self.pattern = pattern
        self.on_event = on_event
        #: the newest logged seq when the feed began
        self.last = last
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._events.feed_closed(self)


@implementer(ITrustListener)
class Events:
    """
    Publish, subscribe, and the port-1002 sink.  ``store`` (MailStore) holds
    the log and the patterns, ``outbox`` (IOutbox) carries what we send,
    ``peers`` (IMailPeers) says whom we trust, ``ids()`` gives event ids.
    """

    def __init__(self, clock, store, outbox, peers, ids, hostname: str, address: str, linger: float = LINGER):
        self._clock = clock
        self.store = store
        self._outbox = check_provides(outbox, IOutbox, "Events.outbox")
        self._peers = check_provides(peers, IMailPeers, "Events.peers")
        self._ids = ids
        self.hostname = hostname
        self.address = address
        self.linger = linger
        self._feeds: dict[str, list[Subscription]] = {}
        self._timers: dict[str, object] = {}

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Patterns open when we stopped linger from now; announce our set to the peers that need to hear it.

        An announcement also says "I am up": a peer holding mail for us
        retries at once instead of waiting out its backoff.  With patterns,
        every trusted peer hears our set.  With none, only our recent
        correspondents do (those that sent us something within the dedup
        window, the likeliest to hold more): the last pattern that went
        withdrew itself already, and a session to every trusted peer at each
        start would cost a node with many peers far more than it is worth.
        """
        now = self._clock.seconds()
        ours = self.store.local_patterns()
        for pattern, until in ours.items():
            if until is None:
                until = now + self.linger
                self.store.set_local_pattern(pattern, until)
            self._linger(pattern, until)
        trusted = [p["address"] for p in self._peers.trusted_peers()]
        if not ours:
            recent = self.store.recent_senders()
            trusted = [address for address in trusted if address in recent]
        self._announce(trusted)

    def stop(self) -> None:
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        feeds, self._feeds = self._feeds, {}
        for subs in feeds.values():
            for sub in subs:
                sub.closed = True

    # -- our patterns --------------------------------------------------------------------

    def patterns(self) -> list[str]:
        """The set we announce: patterns with a feed, and those still lingering."""
        now = self._clock.seconds()
        return sorted(p for p, until in self.store.local_patterns().items() if until is None or until > now)

    def _announce(self, addresses) -> None:
        patterns = self.patterns()
        for address in addresses:
            id_ = f"{self._ids() & (2**64 - 1):016x}"
            header = {"kind": "subscriptions", "patterns": patterns, "size": 0, "sha256": _EMPTY_SHA256, "id": id_}
            self._outbox.enqueue(address, EVENTS_PORT, id_, "subscriptions", header, b"", replaces="subscriptions")

    def _announce_all(self) -> None:
        self._announce([p["address"] for p in self._peers.trusted_peers()])

    def _linger(self, pattern: str, until: float) -> None:
        old = self._timers.pop(pattern, None)
        if old is not None and old.active():
            old.cancel()
        self._timers[pattern] = self._clock.callLater(max(0.0, until - self._clock.seconds()), self._lingered, pattern)

    def _lingered(self, pattern: str) -> None:
        self._timers.pop(pattern, None)
        if self._feeds.get(pattern):
            return
        self.store.drop_local_pattern(pattern)
        self._announce_all()

    # -- subscribe -----------------------------------------------------------------------

    def subscribe(self, pattern, after, on_event) -> Subscription:
        check_pattern(pattern)
        if after is not None and (not isinstance(after, int) or isinstance(after, bool) or after < 0):
            raise InvalidArgument("after must be a seq: a whole number, 0 or more")
        before = self.patterns()
        sub = Subscription(self, pattern, on_event, self.store.last_event_seq())
        if after is not None:
            for event in self.store.events_after(after):
                if matches(pattern, event["topic"]):
                    on_event(event)
        self._feeds.setdefault(pattern, []).append(sub)
        timer = self._timers.pop(pattern, None)
        if timer is not None and timer.active():
            timer.cancel()
        self.store.set_local_pattern(pattern, None)
        if self.patterns() != before:
            self._announce_all()
        return sub

    def feed_closed(self, sub: Subscription) -> None:
        feeds = self._feeds.get(sub.pattern, [])
        if sub in feeds:
            feeds.remove(sub)
        if not feeds:
            self._feeds.pop(sub.pattern, None)
            until = self._clock.seconds() + self.linger
            self.store.set_local_pattern(sub.pattern, until)
            self._linger(sub.pattern, until)

    def _dispatch(self, event: dict) -> None:
        for pattern, subs in list(self._feeds.items()):
            if matches(pattern, event["topic"]):
                for sub in list(subs):
                    try:
                        sub.on_event(event)
                    except Exception:
                        log.failure("a subscriber of {pattern} failed on an event", pattern=pattern)

    # -- publish -------------------------------------------------------------------------

    def publish(self, topic, data) -> dict:
        check_topic(topic)
        if not isinstance(data, bytes) or len(data) > MAX_MESSAGE:
            raise InvalidArgument(f"an event is at most {MAX_MESSAGE} bytes")
        id_ = f"{self._ids() & (2**64 - 1):016x}"
        now = self._clock.seconds()
        header = {"kind": "event", "topic": topic, "published_at": now, "size": len(data),
                  "sha256": hashlib.sha256(data).hexdigest(), "id": id_}
        subscribers = []
        trusted = {p["address"]: p["hostname"] for p in self._peers.trusted_peers()}
        for address, patterns in sorted(self.store.peer_patterns().items()):
            if address in trusted and any_matches(patterns, topic):
                self._outbox.enqueue(address, EVENTS_PORT, id_, "event", header, data)
                subscribers.append(trusted[address] or address)
        # Our own feeds hear it through the log, as a peer's event.
        event, _ = self.store.add_event(id_=id_, topic=topic, sender=self.hostname, address=self.address,
                                        published_at=now, data=data)
        if any_matches(self.patterns(), topic):
            subscribers.append(self.hostname)
        self._dispatch(event)
        return {"id": id_, "topic": topic, "size": len(data), "subscribers": subscribers}

    # -- the port-1002 sink ----------------------------------------------------------------

    def parse_header(self, line: bytes) -> dict:
        return parse_event_header(line)

    def begin(self, peer, header: dict):
        self._outbox.peer_seen(peer.address)
        return None

    def complete(self, peer, header: dict, body: bytes, incoming) -> dict:
        if hashlib.sha256(body).hexdigest() != header["sha256"]:
            raise ChecksumMismatch("the event does not match its announced SHA-256")
        reply = {"status": "ok", "kind": header["kind"], "id": header["id"], "duplicate": False}
        if header["kind"] == "subscriptions":
            self.store.set_peer_patterns(peer.address, header["patterns"])
            log.info("events: {peer} subscribes to {patterns}", peer=str(peer), patterns=header["patterns"])
            return reply
        event, duplicate = self.store.add_event(id_=header["id"], topic=header["topic"], sender=peer.hostname or peer.address,
                                                address=peer.address, published_at=header["published_at"], data=body)
        reply["duplicate"] = duplicate
        if not duplicate:
            self._dispatch(event)
        return reply

    # -- ITrustListener ----------------------------------------------------------------------

    def trust_established(self, public_key: bytes) -> None:
        # A new peer has none of our patterns yet; with none, it needs no word (nor a session).
        if self.patterns():
            self._announce([address_of(public_key)])

    def trust_revoked(self, public_key: bytes) -> None:
        self.store.set_peer_patterns(address_of(public_key), [])
