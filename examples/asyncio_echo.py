"""
Two agents talking through the asyncio SDK: ``start_server`` on one,
``open_connection`` on the other, exactly like ``asyncio.start_server`` and
``asyncio.open_connection`` but addressed by agent name and virtual port.

    python examples/asyncio_echo.py                 # its own beacon and two agents
    python examples/asyncio_echo.py --server-home ~/.pilot-b --client-home ~/.pilot-a --peer agent-b

The server upper-cases each line it reads; the client sends three lines,
half-closes (``write_eof``) and prints what comes back.  No Twisted import
anywhere in this file: the SDK talks to each agent's daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import pilotproto.aio

PORT = 2000


async def shout(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The service: every line back in capitals, until the client half-closes."""
    peer = writer.get_extra_info("peername")
    async for line in reader:
        writer.write(line.upper())
        await writer.drain()
    writer.close()
    await writer.wait_closed()
    print(f"server: served {peer}")


async def main(server_home: str | None, client_home: str | None, peer: str) -> None:
    async with await pilotproto.aio.connect(server_home) as server_node, await pilotproto.aio.connect(client_home) as client_node:
        async with await server_node.start_server(shout, PORT):
            reader, writer = await client_node.open_connection(peer, PORT)
            for line in (b"hello\n", b"over the overlay\n", b"from asyncio\n"):
                writer.write(line)
            await writer.drain()
            writer.write_eof()
            replies = await reader.read()
            writer.close()
            await writer.wait_closed()
            print("client got:", *replies.decode().splitlines(), sep="\n  ")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--server-home", help="the serving agent's home (default: start a local net)")
    parser.add_argument("--client-home", help="the connecting agent's home")
    parser.add_argument("--peer", default="agent-b", help="the serving agent's name, as the client reaches it")
    options = parser.parse_args()
    if options.server_home and options.client_home:
        asyncio.run(main(options.server_home, options.client_home, options.peer))
    else:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from _local import LocalNet

        with LocalNet() as net:
            a, b = net.agents("agent-a", "agent-b")
            asyncio.run(main(b.home, a.home, b.name))
