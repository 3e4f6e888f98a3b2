"""
An MCP server behind one NAT, used by MCP clients behind another, with the
official ``mcp`` SDK on both sides and nothing pilot-specific in the server:

- agent-b publishes ``server.py`` (a stdio MCP server) with
  ``pilotctl mcp serve -- python server.py``; agent-a's client runs
  ``pilotctl mcp connect agent-b`` as its stdio server (``mcp.client.stdio``),
  exactly what an MCP host's config would say:
  ``{"command": "pilotctl", "args": ["mcp", "connect", "agent-b"]}``;
- agent-b also runs ``server.py --http`` (streamable HTTP) on loopback and
  exposes it on overlay port 8080; agent-a's client reaches
  ``http://agent-b:8080/mcp`` through the asyncio SDK's HTTP transport.

    python examples/mcp_behind_nat/run.py

Here both agents run on this machine (``_local.py``); behind real NATs the
commands are the same.  Needs ``pip install mcp 'pilotproto[aio]'``.
"""

from __future__ import annotations

import os
import socket
import sys
import time

import anyio
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from _local import PILOTCTL, LocalNet  # noqa: E402

import pilotproto.aio  # noqa: E402


async def show(session: ClientSession, how: str) -> None:
    await session.initialize()
    tools = [tool.name for tool in (await session.list_tools()).tools]
    total = await session.call_tool("add", {"a": 2, "b": 40})
    greeting = await session.read_resource("demo://greeting")
    print(f"{how}: tools {', '.join(sorted(tools))}; add(2, 40) = {total.content[0].text}; "
          f"demo://greeting = {greeting.contents[0].text!r}", flush=True)


async def over_stdio(home: str) -> None:
    # What an MCP host's config says: {"command": "pilotctl", "args": ["mcp", "connect", "agent-b"]}
    params = StdioServerParameters(command=PILOTCTL[0], args=[*PILOTCTL[1:], "--home", home, "mcp", "connect", "agent-b"],
                                   env=dict(os.environ))
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await show(session, "stdio via pilotctl mcp connect")


def http_client(node):
    """The HTTP client the installed SDK takes: httpx2 (mcp 2.x) or httpx (1.x), on the overlay."""
    try:
        import httpx2

        return httpx2.AsyncClient(transport=pilotproto.aio.http.HTTPX2Transport(node),
                                  timeout=httpx2.Timeout(30, read=300))
    except ImportError:
        import httpx

        return httpx.AsyncClient(transport=pilotproto.aio.HTTPTransport(node), timeout=httpx.Timeout(30, read=300))


async def over_http(home: str) -> None:
    from mcp.client.streamable_http import streamable_http_client

    async with await pilotproto.aio.connect(home) as node:
        async with http_client(node) as client:
            async with streamable_http_client("http://agent-b:8080/mcp", http_client=client) as streams:
                async with ClientSession(streams[0], streams[1]) as session:
                    await show(session, "streamable HTTP to http://agent-b:8080/mcp")


def wait_for_tcp(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the streamable-HTTP server did not listen on {port} within {timeout} s")


def main() -> None:
    import pilotproto.aio.http  # noqa: F401  (HTTPX2Transport)

    with LocalNet() as net:
        a, b = net.agents("agent-a", "agent-b")
        server = [sys.executable, os.path.join(HERE, "server.py")]
        net.say(f"$ pilotctl --home {b.home} mcp serve -- {' '.join(server)}")
        b.ctl("mcp", "serve", "--cwd", HERE, "--", *server)
        anyio.run(over_stdio, a.home)

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        net.say(f"$ python server.py --http {port} &   # on agent-b's machine")
        net.spawn([*server, "--http", str(port)], stdout=open(os.devnull, "w"), stderr=open(os.devnull, "w"))
        wait_for_tcp(port)
        net.say(f"$ pilotctl --home {b.home} expose 8080 127.0.0.1:{port}")
        b.ctl("expose", "8080", f"127.0.0.1:{port}")
        anyio.run(over_http, a.home)
        served = b.ctl("mcp", "list")["servers"][0]
        print(f"agent-b's mcp list: port {served['port']}, {served['total']} session(s), {served['failed']} failed")


if __name__ == "__main__":
    main()
