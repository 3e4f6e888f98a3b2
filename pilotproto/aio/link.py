"""
One persistent JSON-lines control connection carrying many requests at once.

The protocol lets a client send requests without waiting and answers each
when it is done, matched by ``id`` (``docs/control.md``, "Concurrency and
ordering"): :class:`ControlLink` keeps one future per request id, and one
reader task hands each answer to its future.  The connection is opened on
the first request and again on the first request after it was lost (the
daemon stopped or restarted), so a long-lived :class:`~pilotproto.aio.Node`
outlives its daemon; the requests in flight when it is lost fail with
NotRunning, as the blocking client's do.
"""

from __future__ import annotations

import contextlib
import asyncio
import itertools
import logging

from ..control.codec import MAX_RESPONSE_LINE, BadRequest, decode_request, decode_response, encode_request
from ..errors import Interrupted, InvalidArgument, PilotError, Timeout
from .connection import closed_early, open_socket, open_streams, read_line

log = logging.getLogger(__name__)


def checked_request(request_id: int, cmd: str, args: dict) -> bytes:
    """
    The request line, refused here if the daemon would refuse it.

    The daemon answers a line it cannot read (an integer beyond 2**64, nesting
    deeper than 32) with ``id: null``, which a pipelining client cannot pin on
    a request; the daemon's own decoder run on our line first means that never
    happens to us.
    """
    line = encode_request(request_id, cmd, args)
    try:
        decode_request(line.rstrip(b"\n"))
    except BadRequest as e:
        raise InvalidArgument(f"the arguments of {cmd!r} cannot be sent: {e.message}") from None
    return line


class ControlLink:
    """The JSON connection of one :class:`~pilotproto.aio.Node`."""

    def __init__(self, socket_path: str, home: str, connect_timeout: float):
        self._path = socket_path
        self._home = home
        self._connect_timeout = connect_timeout
        self._ids = itertools.count(1)
        #: request id -> the future its answer resolves
        self._waiting: dict[int, asyncio.Future] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task | None = None
        self._connecting = asyncio.Lock()
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._writer is not None

    async def open(self) -> None:
        """Connect now (``connect()`` does, so that a missing daemon is said at once)."""
        async with self._connecting:
            if self._closed:
                raise Interrupted("this pilotproto.aio node was closed")
            if self._writer is None:
                sock = await open_socket(self._path, self._home, self._connect_timeout)
                reader, transport, protocol = await open_streams(sock, MAX_RESPONSE_LINE)
                self._writer = asyncio.StreamWriter(transport, protocol, reader, asyncio.get_running_loop())
                self._reading = asyncio.create_task(self._read(reader, self._writer), name="pilot-control-reader")

    async def request(self, cmd: str, args: dict, timeout: float) -> dict:
        """Run ``cmd``; its data, or the daemon's PilotError (Timeout after ``timeout`` s)."""
        request_id = next(self._ids)
        line = checked_request(request_id, cmd, args)
        await self.open()
        writer = self._writer
        if writer is None:  # lost again between connecting and now
            raise closed_early(cmd)
        future = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            writer.write(line)
            try:
                await writer.drain()
            except (ConnectionError, RuntimeError):
                pass  # the reader task sees the loss too and fails the future
            try:
                async with asyncio.timeout(timeout):
                    response = await future
            except TimeoutError:
                raise Timeout(f"the daemon did not answer {cmd!r} within {timeout:g} s",
                              hint="Check 'pilotctl daemon status' and the daemon log.") from None
        finally:
            self._waiting.pop(request_id, None)
        # Outside the timeout block: the daemon's own "timeout" answer is a
        # TimeoutError too, and must reach the caller as the daemon said it.
        return response.result()

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        error: PilotError = closed_early("a request")
        try:
            while True:
                line = await read_line(reader, "a request")
                if not line:
                    continue
                response = decode_response(line)
                if response.id is None:
                    # Cannot happen to lines checked_request let through; if a
                    # daemon does it anyway, no waiting request can be told.
                    log.warning("the pilot daemon answered a line it could not read: %s", response.error)
                    continue
                future = self._waiting.get(response.id)
                if future is not None and not future.done():
                    future.set_result(response)
        except PilotError as e:
            error = e
        except asyncio.CancelledError:
            error = Interrupted("this pilotproto.aio node was closed")
            raise
        except (ConnectionError, OSError) as e:
            error = closed_early("a request")
            error.__cause__ = e
        finally:
            self._lost(writer, error)

    def _lost(self, writer: asyncio.StreamWriter, error: PilotError) -> None:
        if self._writer is writer:
            self._writer = None
            self._reading = None
        writer.close()
        for future in list(self._waiting.values()):
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        self._closed = True
        reading, writer = self._reading, self._writer
        if reading is not None:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
