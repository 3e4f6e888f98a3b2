"""
The control socket's message and event commands (``docs/control.md``):
``send_message``, ``inbox``, ``inbox_delete``, ``outbox``, ``publish``, and the
upgrading ``subscribe``, as an adapter over any :class:`IPilotNode`.

Bytes travel as base64 text in ``data``.  ``subscribe`` turns its
connection into an event feed, as ``listen`` does: after the ok line, one
JSON line per event.  Events the node hands over before the ok line went
out (the replay of ``after``) wait in order and follow it.
"""

from __future__ import annotations

import base64
import binascii

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from zope.interface import implementer

from ..common.wiring import check_provides
from ..errors import InvalidArgument
from ..interfaces import IPilotNode
from .codec import MAX_RESPONSE_LINE, BadResponse, decode_event, encode_event
from .server import Command, Upgrade

#: a message's or an event's limit in bytes (decoded)
MAX_DATA = 64 * 1024
#: the longest a control call may wait (send_message's wait, inbox's timeout)
MAX_WAIT = 60

log = Logger()


def decode_data(data) -> bytes:
    """``data`` as the bytes its base64 text stands for; InvalidArgument if it is not."""
    if not isinstance(data, str):
        raise InvalidArgument("data must be base64 text")
    try:
        raw = base64.b64decode(data.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise InvalidArgument("data is not valid base64", hint="Encode the bytes with standard base64 (with padding).") from None
    if len(raw) > MAX_DATA:
        raise InvalidArgument(f"data is at most {MAX_DATA} bytes; this is {len(raw)}",
                              hint="Send larger data with send-file.")
    return raw


def _seconds(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_WAIT:
        raise InvalidArgument(f"{name} must be a number of seconds from 0 to {MAX_WAIT}")
    return value


def _seq(name: str, value, none_ok: bool = False):
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"{name} must be a seq: a whole number, 0 or more")
    return value


@implementer(IPushProducer)
class _Feed:
    """
    The owner of a ``subscribe`` connection: it only ever sends event lines.

    A client that stops reading does not make the daemon hold its events:
    while the connection's buffer is full (the transport paused us), events
    are not written, only noted; when it drains, the feed subscribes again
    from the last seq it wrote, and the daemon's event log replays what was
    missed.  Seqs only grow, so nothing is written twice.
    """

    def __init__(self, node, pattern: str):
        self._node = node
        self._pattern = pattern
        self.transport = None
        self.held: list[dict] = []
        self.subscription = None
        self._last_sent = 0
        self._paused = False
        self._missed = False
        self._closed = False

    def on_event(self, event: dict) -> None:
        if self.transport is None:
            self.held.append(event)
        elif self._paused:
            self._missed = True
        elif event["seq"] > self._last_sent:
            self._last_sent = event["seq"]
            self.transport.write(encode_event(event))

    def take_over(self, transport) -> "_Feed":
        self.transport = transport
        transport.registerProducer(self, True)
        held, self.held = self.held, []
        for event in held:
            self.on_event(event)
        return self

    # -- IPushProducer: the connection's buffer ------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self._missed and not self._closed:
            self._missed = False
            old, self.subscription = self.subscription, None
            if old is not None:
                old.close()
            d = self._node.subscribe(self._pattern, self._last_sent, self.on_event)
            d.addCallbacks(self._resubscribed, self._failed)

    def stopProducing(self) -> None:
        self.close()

    def _resubscribed(self, subscription) -> None:
        if self._closed:
            subscription.close()
        else:
            self.subscription = subscription

    def _failed(self, failure) -> None:
        log.failure("a subscribe feed could not catch up; closing it", failure)
        if self.transport is not None:
            self.transport.loseConnection()

    # -- the connection ----------------------------------------------------------------------

    def dataReceived(self, data):
        pass  # nothing is asked of a feed after "subscribe"

    def readConnectionLost(self):
        self.transport.loseConnection()

    def connectionLost(self, reason=None):
        self.close()

    def close(self) -> None:
        self._closed = True
        if self.subscription is not None:
            subscription, self.subscription = self.subscription, None
            subscription.close()


class MessageCommands:
    """The message and event commands of the daemon running ``node``."""

    def __init__(self, node):
        self._node = check_provides(node, IPilotNode, "MessageCommands.node")

    def table(self) -> dict[str, Command]:
        return {
            "send_message": Command(self.send_message),
            "inbox": Command(self.inbox),
            "inbox_delete": Command(self.inbox_delete),
            "outbox": Command(self.outbox),
            "publish": Command(self.publish),
            "subscribe": Command(self.subscribe, upgrades=True),
        }

    def send_message(self, target, data, wait=10):
        """``{"id", "peer", "address", "size", "sha256", "state": "delivered"|"queued"}``."""
        if not isinstance(target, str) or not target:
            raise InvalidArgument("target must be a peer's hostname or address")
        return self._node.send_message(target, decode_data(data), _seconds("wait", wait))

    def inbox(self, after=0, count=1000, timeout=0, kind=None):
        """``{"messages": [ITEM...], "last": SEQ}``, oldest first; nothing is removed."""
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 1000:
            raise InvalidArgument("count must be a whole number from 1 to 1000")
        if kind not in (None, "message", "file"):
            raise InvalidArgument('kind must be "message" or "file"')
        return self._node.inbox(_seq("after", after), count, _seconds("timeout", timeout), kind)

    def inbox_delete(self, seqs):
        """``{"deleted": N}``; unknown seqs are ignored."""
        if not isinstance(seqs, list) or len(seqs) > 1000:
            raise InvalidArgument("seqs must be a list of at most 1000 seqs")
        return self._node.inbox_delete([_seq("seqs", s) for s in seqs])

    def outbox(self, id=None, wait=0, count=100):
        """``{"messages": [{"id", "peer", "address", "state", "via", "sealed", ...}], "queues": [...]}``."""
        if id is not None and (not isinstance(id, str) or len(id) != 16 or any(c not in "0123456789abcdef" for c in id)):
            raise InvalidArgument("id must be a message id: 16 lower-case hex digits")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 1000:
            raise InvalidArgument("count must be a whole number from 1 to 1000")
        return self._node.outbox(id, _seconds("wait", wait), count)

    def publish(self, topic, data):
        """``{"id", "topic", "size", "subscribers": [PEER...]}``."""
        if not isinstance(topic, str):
            raise InvalidArgument("topic must be a string")
        return self._node.publish(topic, decode_data(data))

    def subscribe(self, pattern, after=None) -> defer.Deferred:
        """Upgrades: ``{"pattern", "last"}``, then one ``event`` line per matching event."""
        if not isinstance(pattern, str):
            raise InvalidArgument("pattern must be a string")
        feed = _Feed(self._node, pattern)
        d = self._node.subscribe(pattern, _seq("after", after, none_ok=True), feed.on_event)

        def subscribed(subscription):
            feed.subscription = subscription
            return Upgrade({"pattern": pattern, "last": subscription.last}, feed.take_over, feed.close)

        return d.addCallback(subscribed)


# -- the client's side (DaemonNode) ---------------------------------------------------------


class _FeedReader(LineOnlyReceiver):
    """The protocol of a ``subscribe`` connection in a client: one event line each."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_RESPONSE_LINE

    def __init__(self, on_event):
        self._on_event = on_event

    def lineReceived(self, line):
        try:
            event = decode_event(line)
        except BadResponse as e:
            log.error("{e}: {line!r}", e=e.message, line=line[:200])
            return
        if event.get("event") == "event":
            self._on_event(event)

    def lineLengthExceeded(self, line):
        log.error("the daemon sent an event longer than {n} bytes", n=self.MAX_LENGTH)
        self.transport.loseConnection()


class DaemonSubscription:
    """A subscription through the daemon: ``last`` (the newest stored seq when it began), ``close()``."""

    def __init__(self, protocol, pattern: str, last: int):
        self._protocol = protocol
        self.pattern = pattern
        self.last = last

    def close(self) -> None:
        if self._protocol.transport is not None:
            self._protocol.transport.loseConnection()


def subscribe_through(endpoint_for, pattern, after, on_event) -> defer.Deferred:
    """Subscribe over an upgraded control connection; ``endpoint_for(cmd, args, addresses)`` makes its endpoint."""
    answered = {}

    def addresses(data):
        answered.update(data)
        return None, None

    endpoint = endpoint_for("subscribe", {"pattern": pattern, "after": after}, addresses)
    d = endpoint.connect(Factory.forProtocol(lambda: _FeedReader(on_event)))
    return d.addCallback(lambda protocol: DaemonSubscription(protocol, pattern, answered.get("last", 0)))
