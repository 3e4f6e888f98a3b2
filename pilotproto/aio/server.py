"""
:class:`Server`: a virtual port served through the daemon, shaped like
:class:`asyncio.Server`.

The daemon side (``docs/control.md``, "listen and accept"): a ``listen``
connection becomes a feed with one ``incoming`` line per stream a peer
opens; each stream is claimed within 5 s with ``accept`` on a new
connection, which then is the stream.  So the server is one feed task that
starts one accept task per event, and each accepted stream is handed to the
callback as ``(reader, writer)``.

If the daemon goes away (stopped, restarted), the feed ends: the server
listens again with backoff (0.1 s growing to 5 s) until it is closed, as the
Twisted ``pilot:`` server endpoint does, and logs both transitions.  Streams
already accepted are separate connections and are not touched by this.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import weakref

from ..control.codec import MAX_RESPONSE_LINE, BadResponse, decode_event
from ..errors import PilotError
from .connection import PilotStreamWriter, ends, read_line, upgrade
from .retry import Backoff

log = logging.getLogger(__name__)


class Server:
    """A listening virtual port; made by :meth:`Node.start_server <pilotproto.aio.Node.start_server>`."""

    def __init__(self, socket_path: str, home: str, port: int, callback, limit: int, command_timeout: float):
        if not callable(callback):
            raise TypeError(f"client_connected_cb must be callable, not {type(callback).__name__}")
        self._path = socket_path
        self._home = home
        self.port = port
        self._callback = callback
        self._limit = limit
        self._timeout = command_timeout
        self._host = None
        self._feed: asyncio.Task | None = None
        self._feed_transport = None
        self._tasks: set[asyncio.Task] = set()
        self._writers: weakref.WeakSet = weakref.WeakSet()
        self._closed = asyncio.Event()
        self._started = False

    def __repr__(self) -> str:
        return f"<pilotproto.aio.Server port={self.port} serving={self.is_serving()}>"

    # -- asyncio.Server's shape --------------------------------------------------------

    @property
    def sockets(self) -> tuple:
        """The listening end as a one-element tuple of PilotAddress (hostname, address, port)."""
        return (self._host,) if self._host is not None and self.is_serving() else ()

    def is_serving(self) -> bool:
        return self._started and not self._closed.is_set()

    async def start_serving(self) -> None:
        """Listen (raises the daemon's error: AlreadyRunning when the port is taken, NotRunning...)."""
        if self._closed.is_set():
            raise RuntimeError(f"{self!r} is closed")
        if self._started:
            return
        reader, transport = await self._listen()
        self._started = True
        self._feed = asyncio.create_task(self._serve(reader, transport), name=f"pilot-listen-{self.port}")

    async def serve_forever(self) -> None:
        """Serve until cancelled (which closes the server) or closed."""
        await self.start_serving()
        try:
            await self._closed.wait()
        except asyncio.CancelledError:
            self.close()
            await self.wait_closed()
            raise

    def close(self) -> None:
        """Stop listening: the daemon resets streams announced but not yet accepted.
        Streams already handed to the callback go on (see :meth:`close_clients`)."""
        self._closed.set()
        if self._feed_transport is not None:
            self._feed_transport.close()
        if self._feed is not None:
            self._feed.cancel()

    def close_clients(self) -> None:
        """Close every stream this server accepted (as asyncio.Server.close_clients)."""
        for writer in list(self._writers):
            writer.close()

    async def wait_closed(self) -> None:
        """Wait until the server is closed and its feed and accepts are done."""
        await self._closed.wait()
        pending = [t for t in ([self._feed] if self._feed else []) + list(self._tasks) if t is not asyncio.current_task()]
        await asyncio.gather(*pending, return_exceptions=True)

    async def __aenter__(self) -> "Server":
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()
        await self.wait_closed()

    # -- the feed -----------------------------------------------------------------------

    async def _listen(self):
        reader, transport, _protocol, data = await upgrade(
            self._path, self._home, "listen", {"port": self.port}, self._timeout, MAX_RESPONSE_LINE)
        self._host, _ = ends(data.get("hostname"), data.get("address"), self.port, None, None, 0)
        self._feed_transport = transport
        return reader, transport

    async def _serve(self, reader, transport) -> None:
        backoff = Backoff()
        while not self._closed.is_set():
            try:
                await self._events(reader)
                log.warning("lost the pilot daemon at %s: not listening on pilot port %d until it is back",
                            self._home, self.port)
            finally:
                transport.close()
            while not self._closed.is_set():
                await backoff.wait()
                try:
                    reader, transport = await self._listen()
                except PilotError as e:
                    log.debug("listening again on pilot port %d failed: %s", self.port, e)
                    continue
                log.warning("listening again on pilot port %d", self.port)
                backoff.reset()
                break

    async def _events(self, reader) -> None:
        """Start an accept for each ``incoming`` line until the feed ends."""
        while True:
            try:
                line = await read_line(reader, "listen")
            except PilotError:
                return
            if not line:
                continue
            try:
                event = decode_event(line)
            except BadResponse as e:
                log.warning("ignoring a listener line from the daemon: %s", e)
                continue
            if event["event"] == "incoming" and isinstance(event.get("stream_id"), int):
                self._spawn(self._accept(event))

    def _spawn(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, event: dict) -> None:
        try:
            reader, transport, protocol, data = await upgrade(
                self._path, self._home, "accept", {"stream_id": event["stream_id"]}, self._timeout, self._limit)
        except PilotError as e:
            # One stream lost (it expired, the peer gave up): the others go on.
            log.warning("could not accept stream %s on pilot port %d: %s", event.get("stream_id"), self.port, e)
            return
        host = self._host
        sockname, peername = ends(host.hostname if host else None, host.address if host else "", self.port,
                                  data.get("peer"), data.get("address"), 0)
        writer = PilotStreamWriter(transport, protocol, reader, asyncio.get_running_loop(),
                                   sockname=sockname, peername=peername, info=data)
        self._writers.add(writer)
        try:
            result = self._callback(reader, writer)
            if inspect.isawaitable(result):
                await result
        except Exception as e:
            asyncio.get_running_loop().call_exception_handler({
                "message": f"Unhandled exception in client_connected_cb of pilot port {self.port}",
                "exception": e,
                "transport": transport,
            })
            transport.close()
