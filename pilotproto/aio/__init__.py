"""
pilotproto for asyncio: a client of the local daemon's control socket.

::

    import pilotproto.aio

    async with await pilotproto.aio.connect() as node:      # $PILOT_HOME or ~/.pilot
        print(await node.info())
        reader, writer = await node.open_connection("agent-b", 7)
        writer.write(b"hello"); writer.write_eof()
        print(await reader.read())

It mirrors asyncio's own shapes (``open_connection``, ``start_server``,
``async for``) and talks to the daemon exactly as ``docs/control.md`` says
(see ``docs/aio.md``).  Importing it loads no Twisted and needs no reactor;
httpx is needed only for :class:`HTTPTransport` (``pip install
'pilotproto[aio]'``).

Errors are the one hierarchy of :mod:`pilotproto.errors`, re-exported here:
each has the daemon's ``code``, a message and a ``hint``; the connection
errors are also builtins (``NotRunning`` and ``ConnectionRefused`` are
``ConnectionRefusedError``, ``Timeout`` is ``TimeoutError``, ``NotFound`` is
``LookupError``, ``PermissionDenied`` is ``PermissionError``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import (
    AlreadyRunning,
    ConnectionRefused,
    Interrupted,
    InvalidArgument,
    NameTaken,
    NotFound,
    NotRegistered,
    NotRunning,
    NotTrusted,
    PermissionDenied,
    PilotError,
    ProtocolError,
    RateLimited,
    Refused,
    StateError,
    Timeout,
    Unavailable,
)
from .connection import PilotAddress, PilotStreamWriter
from .events import Event
from .inbox import Message
from .node import Node, connect
from .server import Server

if TYPE_CHECKING:
    from .http import HTTPTransport, HTTPX2Transport

__all__ = [
    "AlreadyRunning",
    "ConnectionRefused",
    "Event",
    "HTTPTransport",
    "HTTPX2Transport",
    "Interrupted",
    "InvalidArgument",
    "Message",
    "NameTaken",
    "Node",
    "NotFound",
    "NotRegistered",
    "NotRunning",
    "NotTrusted",
    "PermissionDenied",
    "PilotAddress",
    "PilotError",
    "PilotStreamWriter",
    "ProtocolError",
    "RateLimited",
    "Refused",
    "Server",
    "StateError",
    "Timeout",
    "Unavailable",
    "connect",
]


def __getattr__(name: str):
    # httpx is an optional extra: only HTTPTransport needs it, so it is
    # imported when first asked for, with a message naming the extra.
    if name in ("HTTPTransport", "HTTPX2Transport"):
        try:
            from . import http
        except ImportError as e:
            raise ImportError(
                f"pilotproto.aio.{name} needs httpx ({e}): pip install 'pilotproto[aio]'",
                name=e.name,
            ) from e
        return getattr(http, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
