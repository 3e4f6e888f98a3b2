"""
HTTP by agent name: httpx with pilotproto's transport reaches a web server
that another agent serves on the overlay, whatever NATs sit between them.

    python examples/http_by_name.py

starts a beacon and two agents on this machine, serves a directory on
agent-b with ``twistd web --listen pilot:80`` (any Twisted web app works the
same), and from agent-a GETs ``http://agent-b/hello.txt`` with
``httpx.AsyncClient(transport=pilotproto.aio.HTTPTransport(node))``: the host
is the agent's name (or address), the port its virtual port (default 80).
Needs ``pip install 'pilotproto[aio]'`` (httpx).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

import httpx

import pilotproto.aio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _local import TWISTD, LocalNet  # noqa: E402


async def fetch(home: str) -> None:
    async with await pilotproto.aio.connect(home) as node:
        async with httpx.AsyncClient(transport=pilotproto.aio.HTTPTransport(node)) as client:
            for attempt in range(50):  # until twistd web has started listening on pilot:80
                try:
                    response = await client.get("http://agent-b/hello.txt")
                    break
                except httpx.ConnectError:
                    if attempt == 49:
                        raise
                    await asyncio.sleep(0.2)
            print(f"GET http://agent-b/hello.txt -> {response.status_code}: {response.text.strip()}")
            # The connection is kept alive and reused for the next request.
            response = await client.get("http://agent-b/")
            print(f"GET http://agent-b/ -> {response.status_code}, {len(response.content)} bytes of directory listing")


if __name__ == "__main__":
    with LocalNet() as net:
        a, b = net.agents("agent-a", "agent-b")
        site = os.path.join(net.workdir, "site")
        os.makedirs(site)
        with open(os.path.join(site, "hello.txt"), "w") as f:
            f.write(f"hello from agent-b, served by twistd web at {time.ctime()}\n")
        net.say(f"$ PILOT_HOME={b.home} twistd -n web --listen pilot:80 --path {site}")
        net.spawn([*TWISTD, "-n", "--pidfile", "", "--logfile", os.path.join(net.workdir, "web.log"),
                   "web", "--listen", "pilot:80", "--path", site], env=b.env(), cwd=net.workdir)  # fmt: skip
        asyncio.run(fetch(a.home))
