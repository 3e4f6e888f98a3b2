"""
The inbox (port 1001) as an async iterator: ``async for msg in node.messages()``.

Exactly once to the application, on top of the daemon's at-least-once
delivery and durable store (the contract, "Messages"):

- items are read with a long-polling ``inbox`` call (``after`` = the last seq
  yielded, so a seq is never yielded twice by one iterator, even when the
  daemon returns it again);
- an item is deleted (``inbox_delete``) only when the application asks for
  the next one, i.e. after its loop body handled it; a deletion that fails
  because the daemon is away is retried before the next poll;
- when the daemon stops or restarts (NotRunning, a lost connection) the
  iterator waits with backoff, reconnects and resumes after the last seq:
  seqs are persisted by the daemon and never reused.

An item the application received but did not finish (it broke out of the
loop, or raised) stays in the inbox: the next ``messages()`` yields it
again.  Delete it yourself (``node.inbox_delete([msg.seq])``) if that is not
what you want.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from dataclasses import dataclass
from typing import AsyncIterator, Protocol

from ..errors import InvalidArgument, NotRunning, ProtocolError, Timeout
from .retry import Backoff

log = logging.getLogger(__name__)

#: items fetched per inbox call
BATCH = 100
#: seconds to wait before asking again after an empty answer
IDLE = 0.2


class InboxOwner(Protocol):
    """What the iterator needs of a :class:`~pilotproto.aio.Node`."""

    home: str

    async def inbox(self, after: int = 0, count: int = 1000, timeout: float = 0, kind: str | None = None) -> dict: ...

    async def inbox_delete(self, seqs: list[int]) -> int: ...


@dataclass(frozen=True)
class Message:
    """One inbox item: a message (``data`` holds its bytes) or a received file (``path``)."""

    seq: int
    id: str
    kind: str
    #: the sender's hostname, or its address when it has none (the item's ``from``)
    peer: str
    address: str
    received_at: float
    size: int
    sha256: str
    #: the message's bytes; None for a file (read it at ``path``)
    data: bytes | None
    #: the bytes as text when they are UTF-8, else None
    text: str | None
    #: files: the name it was stored under, and where
    name: str | None = None
    path: str | None = None

    @classmethod
    def from_item(cls, item: dict) -> "Message":
        try:
            data = item.get("data")
            return cls(
                seq=int(item["seq"]), id=str(item.get("id", "")), kind=str(item.get("kind", "message")),
                peer=item.get("from") or item.get("address", ""), address=item.get("address", ""),
                received_at=float(item.get("received_at", 0)), size=int(item.get("size", 0)),
                sha256=str(item.get("sha256", "")),
                data=None if data is None else base64.b64decode(data, validate=True),
                text=item.get("text"), name=item.get("name"), path=item.get("path"),
            )
        except (KeyError, TypeError, ValueError, binascii.Error) as e:
            raise ProtocolError(f"the daemon sent an inbox item that is not valid: {e}") from None


async def follow(node: InboxOwner, *, after: int = 0, kind: str | None = None, poll: float = 30.0) -> AsyncIterator[Message]:
    """The iterator behind :meth:`Node.messages <pilotproto.aio.Node.messages>`."""
    if not 0 < poll <= 60:
        raise InvalidArgument(f"poll is the long-poll wait in seconds, above 0 and at most 60, not {poll!r}")
    backoff = Backoff()
    #: seqs handled but not yet deleted (the daemon was away)
    handled: list[int] = []
    reached = False
    while True:
        try:
            if handled:
                await node.inbox_delete(handled)
                handled = []
            answer = await node.inbox(after=after, count=BATCH, timeout=poll, kind=kind)
        except Timeout:
            continue  # the long poll ended with nothing new (or the daemon was slow): ask again
        except NotRunning:
            if not reached:
                raise  # no daemon at all: say so rather than wait for one forever
            log.info("lost the pilot daemon at %s; reconnecting to resume the inbox after seq %d", node.home, after)
            await backoff.wait()
            continue
        reached = True
        backoff.reset()
        items = answer.get("messages")
        if not isinstance(items, list):
            raise ProtocolError("the daemon's inbox answer has no list of messages")
        if not items:
            await asyncio.sleep(IDLE)  # a daemon that answers at once with nothing: do not spin
        for item in items:
            message = Message.from_item(item)
            if message.seq <= after:
                continue
            after = message.seq
            yield message
            # The application asked for the next item: this one was handled.
            try:
                await node.inbox_delete([message.seq])
            except (NotRunning, Timeout):
                handled.append(message.seq)
