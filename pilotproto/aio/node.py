"""
:class:`Node`: the local daemon, seen from asyncio.

Every method is one control command (``docs/control.md``).  Plain commands
travel on one persistent JSON connection (:class:`~.link.ControlLink`), many
at a time; each stream, listener and subscription gets its own connection,
which the daemon upgrades into a byte pipe or a feed.  Results are the
daemon's ``data`` objects as plain dicts; the records whose shape the
contract fixes are small frozen dataclasses (:class:`~.inbox.Message`,
:class:`~.events.Event`) and :class:`~.connection.PilotAddress` tuples.
"""

from __future__ import annotations

import asyncio
import base64
import os
from typing import AsyncIterator, Awaitable, Callable, Union

from ..common import timeouts
from ..common.home import CONTROL_SOCKET, resolve_home
from ..common.names import check_port, check_target
from ..errors import InvalidArgument
from . import events, inbox
from .connection import STREAM_LIMIT, PilotStreamWriter, ends, upgrade
from .link import ControlLink
from .server import Server

#: the most a message or an event carries (the contract's limit, decoded)
MAX_PAYLOAD = 65536

ConnectedCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Union[Awaitable[None], None]]


def payload(data: bytes | str, what: str) -> str:
    """``data`` (bytes, or text sent as UTF-8) as the base64 the contract carries."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidArgument(f"{what} is bytes or str, not {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_PAYLOAD:
        raise InvalidArgument(f"{what} holds {len(data)} bytes; at most {MAX_PAYLOAD} fit",
                              hint="Send larger data as a file (pilotctl send-file) or over a stream.")
    return base64.b64encode(data).decode("ascii")


class Node:
    """The pilot daemon of one home; make it with :func:`connect`."""

    def __init__(self, home: str | None = None, *, command_timeout: float = timeouts.CONTROL_COMMAND,
                 connect_timeout: float = timeouts.CONTROL_CONNECT):
        self.home = resolve_home(home)
        self.socket_path = os.path.join(self.home, CONTROL_SOCKET)
        #: seconds a plain command may take (commands that wait longer add their own wait)
        self.command_timeout = command_timeout
        #: seconds ``open_connection`` waits for the peer to accept (lookup and handshake included)
        self.connect_timeout = connect_timeout
        self._link = ControlLink(self.socket_path, self.home, command_timeout)

    def __repr__(self) -> str:
        return f"<pilotproto.aio.Node home={self.home!r}>"

    async def __aenter__(self) -> "Node":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the JSON connection (streams and servers opened from this node close on their own)."""
        await self._link.close()

    # -- any command ------------------------------------------------------------------

    async def request(self, cmd: str, args: dict | None = None, timeout: float | None = None) -> dict:
        """Run any control command by name: its ``data``, or its PilotError."""
        return await self._link.request(cmd, dict(args or {}), self.command_timeout if timeout is None else timeout)

    # -- the node and its peers -------------------------------------------------------

    async def info(self) -> dict:
        return await self.request("info")

    async def lookup(self, name: str) -> dict:
        return await self.request("lookup", {"target": check_target(name)})

    async def peers(self) -> list[dict]:
        """One entry per session (the ``peers`` list of the answer)."""
        return (await self.request("peers")).get("peers", [])

    async def ping(self, name: str, count: int = 4, interval: float = 1.0, reply_timeout: float = 2.0,
                   payload: str = "") -> dict:
        wait = count * interval + reply_timeout + self.command_timeout
        args = {"target": check_target(name), "count": count, "interval": interval,
                "reply_timeout": reply_timeout, "payload": payload}
        return await self.request("ping", args, timeout=wait)

    # -- trust ------------------------------------------------------------------------

    async def handshake(self, name: str, reason: str) -> dict:
        return await self.request("handshake", {"target": check_target(name), "reason": reason})

    async def pending(self) -> dict:
        """``{"pending": [...], "outgoing": [...]}``: requests to us, and ours."""
        return await self.request("pending")

    async def approve(self, peer: str) -> dict:
        return await self.request("approve", {"peer": peer})

    async def reject(self, peer: str) -> dict:
        return await self.request("reject", {"peer": peer})

    async def trust(self) -> list[dict]:
        """The peers this node trusts (the ``trusted`` list of the answer)."""
        return (await self.request("trust")).get("trusted", [])

    async def revoke(self, peer: str) -> dict:
        return await self.request("revoke", {"peer": peer})

    # -- agent cards (docs/discovery.md) ------------------------------------------------

    async def card_set(self, card: dict) -> dict:
        """Sign, keep and publish this node's card; ``published`` says whether the beacon took it."""
        return await self.request("card_set", {"card": card}, timeout=timeouts.CONTROL_CONNECT)

    async def card_show(self, peer: str | None = None) -> dict:
        """This node's card, or ``peer``'s as the beacon shows it (its signature verified)."""
        return await self.request("card_show", {"peer": peer}, timeout=timeouts.CONTROL_CONNECT)

    async def card_delete(self) -> dict:
        return await self.request("card_delete", timeout=timeouts.CONTROL_CONNECT)

    async def find(self, text: str | None = None, *, tag: str | None = None,
                   capability: str | None = None) -> list[dict]:
        """The verified cards of nodes visible to this one that match (the ``cards`` list)."""
        args = {"tag": tag, "capability": capability, "text": text}
        return (await self.request("find", args, timeout=timeouts.CONTROL_CONNECT)).get("cards", [])

    # -- streams ----------------------------------------------------------------------

    async def open_connection(self, peer: str, port: int, *, limit: int = STREAM_LIMIT,
                              timeout: float | None = None) -> tuple[asyncio.StreamReader, PilotStreamWriter]:
        """
        A stream to ``port`` on ``peer``, like :func:`asyncio.open_connection`.

        Raises the daemon's error before the stream exists: ConnectionRefused
        (nothing listens), NotFound, NotTrusted, Timeout, NotRunning.
        """
        args = {"target": check_target(peer), "port": check_port(port)}
        wait = self.connect_timeout if timeout is None else timeout
        reader, transport, protocol, data = await upgrade(self.socket_path, self.home, "connect", args, wait, limit)
        sockname, peername = ends(data.get("local_hostname"), data.get("local_address"), 0,
                                  data.get("peer"), data.get("address"), data.get("port", port))
        writer = PilotStreamWriter(transport, protocol, reader, asyncio.get_running_loop(),
                                   sockname=sockname, peername=peername, info=data)
        return reader, writer

    async def start_server(self, client_connected_cb: ConnectedCallback, port: int, *,
                           limit: int = STREAM_LIMIT, start_serving: bool = True) -> Server:
        """
        Serve ``port``, like :func:`asyncio.start_server`: each stream a peer
        opens calls ``client_connected_cb(reader, writer)`` (a coroutine
        function runs as a task).  Raises AlreadyRunning if the port is taken.
        """
        server = Server(self.socket_path, self.home, check_port(port), client_connected_cb, limit, self.command_timeout)
        if start_serving:
            await server.start_serving()
        return server

    # -- messages (port 1001) and events (port 1002) -----------------------------------

    async def send_message(self, peer: str, data: bytes | str, wait: float = 10) -> dict:
        """
        Send one message (up to 64 KiB): ``{"id", "peer", "address", "size", "sha256", "state"}``,
        ``state`` ``"delivered"`` (the receiver stored it within ``wait`` s; then
        ``via`` says how: ``"stream"``, or ``"beacon"`` when its sealed copy's
        receipt came back) or ``"queued"`` (the daemon keeps it in its outbox,
        retries the stream, and after a few seconds leaves a sealed copy at the
        beacons for a peer that is offline; follow it with :meth:`outbox`).
        """
        args = {"target": check_target(peer), "data": payload(data, "a message"), "wait": wait}
        return await self.request("send_message", args, timeout=wait + self.command_timeout)

    async def outbox(self, id: str | None = None, wait: float = 0, count: int = 100) -> dict:
        """What became of sent messages: ``{"messages": [{"id", "peer", "address", "state", "via",
        "sealed", ...}], "queues": [...]}``, newest first; ``id``: that message only, waiting up to
        ``wait`` s while it is still ``queued`` (``delivered`` ends the wait)."""
        args = {"id": id, "wait": wait, "count": count}
        return await self.request("outbox", args, timeout=wait + self.command_timeout)

    async def inbox(self, after: int = 0, count: int = 1000, timeout: float = 0, kind: str | None = None) -> dict:
        """One ``inbox`` call: ``{"messages": [item...], "last"}`` (items stay until deleted)."""
        args = {"after": after, "count": count, "timeout": timeout}
        if kind is not None:
            args["kind"] = kind
        return await self.request("inbox", args, timeout=timeout + self.command_timeout)

    async def inbox_delete(self, seqs: list[int]) -> int:
        """Delete inbox items by seq; how many there were."""
        return (await self.request("inbox_delete", {"seqs": list(seqs)})).get("deleted", 0)

    def messages(self, *, after: int = 0, kind: str | None = None, poll: float = 30.0) -> AsyncIterator[inbox.Message]:
        """Every inbox item with a seq above ``after``, oldest first, waiting for more (see :mod:`.inbox`)."""
        return inbox.follow(self, after=after, kind=kind, poll=poll)

    async def publish(self, topic: str, data: bytes | str) -> dict:
        """``{"id", "topic", "size", "subscribers"}``: the peers whose subscriptions match."""
        return await self.request("publish", {"topic": events.check_topic(topic), "data": payload(data, "an event")})

    def subscribe(self, pattern: str, *, after: int | None = None) -> AsyncIterator[events.Event]:
        """The events whose topic matches ``pattern`` (``*``: any run of characters), as they come (see :mod:`.events`)."""
        return events.follow(self, events.check_pattern(pattern), after)


async def connect(home: str | None = None, **options) -> Node:
    """
    The daemon of ``home`` (default ``$PILOT_HOME``, else ``~/.pilot``),
    connected: raises NotRunning (a ConnectionRefusedError) if none runs.
    """
    node = Node(home, **options)
    await node._link.open()
    return node
