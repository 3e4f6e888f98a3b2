"""
A small MCP server written with the official ``mcp`` SDK: one tool, one resource.

    python server.py                 # stdio (for: pilotctl mcp serve -- python server.py)
    python server.py --http 8765     # streamable HTTP on 127.0.0.1:8765/mcp (for: pilotctl expose)

It is an ordinary MCP server: nothing in it knows about pilot.  Works with
mcp 2.x (``MCPServer``) and 1.x (``FastMCP``).
"""

from __future__ import annotations

import argparse
import os

try:  # mcp 2.x
    from mcp.server.mcpserver import MCPServer as Server
except ImportError:  # mcp 1.x
    from mcp.server.fastmcp import FastMCP as Server

server = Server("pilot-demo")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two whole numbers."""
    return a + b


@server.tool()
def pid() -> int:
    """This server process's pid (each overlay stream gets its own process)."""
    return os.getpid()


@server.tool()
async def slow(seconds: float) -> str:
    """Answer after ``seconds`` (to have a request in flight)."""
    import asyncio

    await asyncio.sleep(seconds)
    return "done"


@server.resource("demo://greeting")
def greeting() -> str:
    """A fixed text, to show resources pass through."""
    return "hello from behind the NAT"


def _http_security():
    # The SDK refuses Host headers other than localhost when bound to
    # 127.0.0.1 (DNS-rebinding protection).  Through the overlay the Host is
    # the pilot name (agent-b:8080), and only trusted peers reach the port.
    try:
        from mcp.server.transport_security import TransportSecuritySettings
    except ImportError:
        return {}
    return {"transport_security": TransportSecuritySettings(enable_dns_rebinding_protection=False)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP on 127.0.0.1:PORT/mcp")
    args = parser.parse_args()
    if args.http is None:
        server.run("stdio")
        return
    try:
        server.run("streamable-http", host="127.0.0.1", port=args.http, **_http_security())
    except TypeError:  # mcp 1.x: host, port and security are settings
        server.settings.host, server.settings.port = "127.0.0.1", args.http
        for name, value in _http_security().items():
            setattr(server.settings, name, value)
        server.run("streamable-http")


if __name__ == "__main__":
    main()
