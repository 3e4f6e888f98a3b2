"""``HTTPX2Transport``: the asyncio SDK's overlay transport for httpx2 clients (the mcp SDK 2.x's).

A fake node whose ``open_connection`` reaches a small asyncio HTTP server on loopback stands in for
the daemon; the streamable-HTTP round trips through real daemons are tests/integration/test_mcp.py's.
"""

from __future__ import annotations

import asyncio

import pytest

from pilotproto.errors import NotFound

httpx2 = pytest.importorskip("httpx2")
from pilotproto.aio.http import HTTPX2Transport  # noqa: E402


class FakeNode:
    """What the transport needs of a Node: ``open_connection(peer, port)``; records what it was asked."""

    def __init__(self, port=None, error=None):
        self.port, self.error, self.asked = port, error, []

    async def open_connection(self, peer, port, timeout=None):
        self.asked.append((peer, port))
        if self.error is not None:
            raise self.error
        return await asyncio.open_connection("127.0.0.1", self.port)


async def sse_server(release: asyncio.Event):
    """Answers one POST with a session id and an SSE body in two events, the second after ``release``."""

    async def handle(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0].split(b":")[1])
        body = await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nmcp-session-id: abc123\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")
        first = b"data: " + body + b"\n\n"
        writer.write(b"%x\r\n%s\r\n" % (len(first), first))
        await writer.drain()
        await release.wait()
        second = b"data: second\n\n"
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(second), second))
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.mark.asyncio
async def test_an_httpx2_client_streams_sse_over_the_transport():
    release = asyncio.Event()
    server = await sse_server(release)
    node = FakeNode(server.sockets[0].getsockname()[1])
    async with server, httpx2.AsyncClient(transport=HTTPX2Transport(node)) as client:
        async with client.stream("POST", "http://agent-b:8080/mcp", content=b'{"id":1}') as response:
            assert response.status_code == 200 and response.headers["mcp-session-id"] == "abc123"
            chunks = response.aiter_bytes()
            assert await asyncio.wait_for(chunks.__anext__(), 5) == b'data: {"id":1}\n\n'  # before the rest exists
            release.set()
            rest = b"".join([part async for part in chunks])
            assert rest == b"data: second\n\n"
    assert node.asked == [("agent-b", 8080)]


@pytest.mark.asyncio
async def test_an_unreachable_peer_is_an_httpx2_connect_error_naming_the_pilot_code():
    node = FakeNode(error=NotFound("no node 'agent-z' is visible to this node", hint="Check the name."))
    async with httpx2.AsyncClient(transport=HTTPX2Transport(node)) as client:
        with pytest.raises(httpx2.ConnectError) as caught:
            await client.get("http://agent-z/mcp")
    assert "[not_found] no node 'agent-z'" in str(caught.value) and "Check the name." in str(caught.value)
    assert isinstance(caught.value.__cause__, NotFound) and caught.value.pilot_error is caught.value.__cause__
    with pytest.raises(httpx2.UnsupportedProtocol):
        async with httpx2.AsyncClient(transport=HTTPX2Transport(node)) as client:
            await client.get("https://agent-z/mcp")
