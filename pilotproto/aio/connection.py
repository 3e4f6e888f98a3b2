"""
Control connections as asyncio streams: connecting to the socket, and the
upgrading commands (``connect``, ``accept``, ``listen``, ``subscribe``) that
turn one into a byte pipe or a feed (``docs/control.md``).

An upgraded connection *is* the stream: after the daemon's ``ok`` line every
byte on the UNIX socket belongs to the overlay stream, so the
:class:`asyncio.StreamReader` that read the answer goes on reading the
stream (bytes that came in the same read as the answer included), and
``write_eof()`` is ``shutdown(SHUT_WR)``, which the daemon turns into the
stream's FIN.  Back-pressure is the socket's: a writer's ``drain()`` waits
while the daemon (and behind it the peer's flow-control credit) does not read.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, NamedTuple

from ..control.codec import Response, decode_response, encode_request
from ..control.socketfile import check_reachable, connect_failure
from ..errors import NotRunning, PilotError, ProtocolError, Timeout

#: asyncio's own default, as for asyncio.open_connection: the limit of readline()/readuntil()
STREAM_LIMIT = 2**16


class PilotAddress(NamedTuple):
    """One end of an overlay stream, as ``get_extra_info("peername")`` / ``("sockname")`` give it.

    ``port`` is 0 where the daemon does not say (the virtual port a dialler sends from)."""

    hostname: str | None
    address: str
    port: int

    def __str__(self) -> str:
        return f"{self.hostname or self.address}:{self.port}"


def ends(local_hostname, local_address, local_port: int, peer_hostname, peer_address, peer_port: int):
    """``(sockname, peername)`` from the fields of an upgrade's answer."""
    return (PilotAddress(local_hostname or None, local_address or "", local_port),
            PilotAddress(peer_hostname or None, peer_address or "", peer_port))


class PilotStreamWriter(asyncio.StreamWriter):
    """
    A plain :class:`asyncio.StreamWriter` on the upgraded control connection,
    except that ``get_extra_info`` names the overlay ends: ``"peername"`` and
    ``"sockname"`` are :class:`PilotAddress` tuples, and ``"pilot"`` is the
    daemon's answer to the upgrade.  Everything else (``"socket"``...) is the
    UNIX socket's.
    """

    def __init__(self, transport, protocol, reader, loop, *, sockname: PilotAddress,
                 peername: PilotAddress, info: dict):
        super().__init__(transport, protocol, reader, loop)
        self._pilot_extra = {"sockname": sockname, "peername": peername, "pilot": info}

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in self._pilot_extra:
            return self._pilot_extra[name]
        return super().get_extra_info(name, default)

    def __repr__(self) -> str:
        return f"<PilotStreamWriter {self._pilot_extra['sockname']} -> {self._pilot_extra['peername']}>"


async def open_socket(path: str, home: str, timeout: float) -> socket.socket:
    """
    A connected, non-blocking UNIX socket to the daemon of ``home``.

    The outcomes of ``docs/control.md`` ("Where it is"): no file or a stale
    one is NotRunning, another user's socket or home is PermissionDenied.
    """
    check_reachable(path, home)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(timeout):
            await asyncio.get_running_loop().sock_connect(sock, path)
    except TimeoutError:
        sock.close()
        raise Timeout(f"the daemon did not accept a control connection within {timeout:g} s") from None
    except OSError as e:
        sock.close()
        failure = connect_failure(e, path, home)
        if failure is e:
            raise
        raise failure from None
    except BaseException:
        sock.close()
        raise
    return sock


async def open_streams(sock: socket.socket, limit: int):
    """``(reader, transport, protocol)`` for a connected socket; the caller makes the writer."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.create_unix_connection(lambda: protocol, sock=sock)
    return reader, transport, protocol


def closed_early(cmd: str) -> NotRunning:
    return NotRunning(
        f"the daemon closed the control connection before answering {cmd!r}",
        hint="It may be shutting down or restarting; check 'pilotctl daemon status' and the daemon log.",
    )


async def read_line(reader: asyncio.StreamReader, cmd: str) -> bytes:
    """The next line (without its newline); NotRunning at EOF, ProtocolError past the reader's limit."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError:
        raise closed_early(cmd) from None
    except asyncio.LimitOverrunError:
        raise ProtocolError("the daemon sent a line longer than this client accepts") from None
    except (ConnectionResetError, BrokenPipeError):
        raise closed_early(cmd) from None
    return line.rstrip(b"\r\n")


async def upgrade(path: str, home: str, cmd: str, args: dict, timeout: float, limit: int = STREAM_LIMIT):
    """
    Send one upgrading command on a new connection: ``(reader, transport,
    protocol, data)`` once the daemon answered ``ok`` (the connection is then
    the stream or feed), or raise the daemon's PilotError (the connection is
    closed).
    """
    line = encode_request(1, cmd, args)
    sock = await open_socket(path, home, timeout)
    try:
        reader, transport, protocol = await open_streams(sock, limit)
    except BaseException:
        sock.close()
        raise
    try:
        transport.write(line)
        async with asyncio.timeout(timeout):
            response = await _answer(reader, cmd)
        return reader, transport, protocol, response.result()
    except TimeoutError as e:
        transport.abort()
        if isinstance(e, PilotError):
            raise
        raise Timeout(f"the daemon did not answer {cmd!r} within {timeout:g} s",
                      hint="Check 'pilotctl daemon status' and the daemon log.") from None
    except BaseException:
        transport.abort()
        raise


async def _answer(reader: asyncio.StreamReader, cmd: str) -> Response:
    while True:
        line = await read_line(reader, cmd)
        if not line:
            continue
        response = decode_response(line)
        # Our id, or an id-less error: the daemon could not even read our request.
        if response.id == 1 or (response.id is None and not response.ok):
            return response
