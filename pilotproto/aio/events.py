"""
Events (port 1002) as an async iterator: ``async for ev in node.subscribe("news.*")``.

A ``subscribe`` upgrades its control connection into a feed, one JSON line
per matching event (the contract, "Events").  Each event carries the
receiver's ``seq``; the iterator remembers the last one it yielded, and
when the feed ends (the daemon stopped or restarted) it subscribes again
with ``after`` = that seq, with backoff, so the daemon replays what arrived
meanwhile.  Events with a seq it already yielded are skipped: none is
yielded twice.  The first subscription starts at ``after`` if given, else
at the daemon's newest stored event (only new events).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from dataclasses import dataclass
from typing import AsyncIterator, Protocol

from ..control.codec import MAX_RESPONSE_LINE, BadResponse, decode_event
from ..errors import InvalidArgument, NotRunning, ProtocolError, Timeout
from .connection import read_line, upgrade
from .retry import Backoff

log = logging.getLogger(__name__)

_TOPIC = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
_PATTERN = re.compile(r"^[A-Za-z0-9_.*-]{1,200}$")


def check_topic(topic: str) -> str:
    if not isinstance(topic, str) or not _TOPIC.match(topic):
        raise InvalidArgument(f"not a topic: {topic!r}",
                              hint="A topic is 1-200 characters of letters, digits, '_', '-' and '.', such as news.weather")
    return topic


def check_pattern(pattern: str) -> str:
    if not isinstance(pattern, str) or not _PATTERN.match(pattern):
        raise InvalidArgument(f"not a topic pattern: {pattern!r}",
                              hint="A pattern is a topic that may hold '*' (any run of characters): news.*, *.alerts, *")
    return pattern


class Subscriber(Protocol):
    """What the iterator needs of a :class:`~pilotproto.aio.Node`: where its daemon is."""

    home: str
    socket_path: str
    command_timeout: float


@dataclass(frozen=True)
class Event:
    """One published event, as this node received it."""

    seq: int
    id: str
    topic: str
    #: the publisher's hostname, or its address when it has none (the line's ``from``)
    peer: str
    address: str
    published_at: float
    data: bytes
    #: the bytes as text when they are UTF-8, else None
    text: str | None

    @classmethod
    def from_line(cls, line: dict) -> "Event":
        try:
            return cls(
                seq=int(line["seq"]), id=str(line.get("id", "")), topic=str(line["topic"]),
                peer=line.get("from") or line.get("address", ""), address=line.get("address", ""),
                published_at=float(line.get("published_at", 0)),
                data=base64.b64decode(line.get("data", ""), validate=True), text=line.get("text"),
            )
        except (KeyError, TypeError, ValueError, binascii.Error) as e:
            raise ProtocolError(f"the daemon sent an event that is not valid: {e}") from None


async def follow(node: Subscriber, pattern: str, after: int | None) -> AsyncIterator[Event]:
    """The iterator behind :meth:`Node.subscribe <pilotproto.aio.Node.subscribe>`."""
    backoff = Backoff()
    last = after
    reached = False
    while True:
        args = {"pattern": pattern}
        if last is not None:
            args["after"] = last
        try:
            reader, transport, _protocol, data = await upgrade(
                node.socket_path, node.home, "subscribe", args, node.command_timeout, MAX_RESPONSE_LINE)
        except (NotRunning, Timeout):
            if not reached:
                raise  # no daemon at all: say so rather than wait for one forever
            await backoff.wait()
            continue
        reached = True
        backoff.reset()
        if last is None:
            newest = data.get("last", 0)
            last = newest if isinstance(newest, int) else 0
        try:
            while True:
                try:
                    line = await read_line(reader, "subscribe")
                except NotRunning:
                    break  # the feed ended: subscribe again and resume after `last`
                if not line:
                    continue
                try:
                    event = decode_event(line)
                except BadResponse as e:
                    log.warning("ignoring a subscription line from the daemon: %s", e)
                    continue
                if event["event"] != "event":
                    continue  # clients ignore events they do not know
                received = Event.from_line(event)
                if received.seq <= last:
                    continue
                last = received.seq
                yield received
        finally:
            transport.close()
        log.info("lost the pilot daemon at %s; subscribing to %r again after seq %d", node.home, pattern, last)
        await backoff.wait()

