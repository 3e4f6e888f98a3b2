"""
Two A2A agents (the official a2a-sdk) behind their own daemons, talking to
each other by name over the overlay.

    python examples/a2a_pair/run.py

starts a beacon and two agents on this machine (``examples/_local.py``), and
on each runs an a2a-sdk agent under uvicorn on a loopback TCP port, put on
the overlay as the user would::

    python examples/a2a_pair/agent.py --name agent-b --port 8002 --skill upper   # card url: http://agent-b/
    pilotctl --home B expose 80 127.0.0.1:8002

then agent-a's a2a-sdk client reaches ``http://agent-b/`` (card, reply,
streamed reply) through ``httpx.AsyncClient(transport=HTTPTransport(node))``
(``client.py``), and agent-b's reaches agent-a's the same way.  Behind real
NATs it is the same commands on two machines.  Needs
``pip install 'pilotproto[aio]' 'a2a-sdk[http-server]' uvicorn``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
import client
from _local import LocalNet

import pilotproto.aio


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_tcp(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the agent did not listen on 127.0.0.1:{port} within {timeout} s")


def serve(net: LocalNet, agent, skill: str) -> None:
    """The agent's A2A server on loopback TCP, exposed on its virtual port 80."""
    port = free_tcp_port()
    net.say(f"$ python examples/a2a_pair/agent.py --name {agent.name} --port {port} --skill {skill}")
    net.spawn([sys.executable, os.path.join(HERE, "agent.py"), "--name", agent.name, "--port", str(port),
               "--skill", skill], cwd=net.workdir)  # fmt: skip
    wait_for_tcp(port)
    net.say(f"$ pilotctl --home {agent.home} expose 80 127.0.0.1:{port}")
    agent.ctl("expose", "80", f"127.0.0.1:{port}")


async def converse(asker, other, text: str) -> None:
    print(f"== {asker.name} -> http://{other.name}/")
    async with await pilotproto.aio.connect(asker.home) as node:
        await client.ask(node, f"http://{other.name}/", text)


if __name__ == "__main__":
    with LocalNet() as net:
        a, b = net.agents("agent-a", "agent-b")
        serve(net, a, "reverse")
        serve(net, b, "upper")
        asyncio.run(converse(a, b, "hello over the overlay"))
        asyncio.run(converse(b, a, "agents behind two NATs"))
