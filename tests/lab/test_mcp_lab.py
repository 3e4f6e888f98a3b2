"""
Issue 12's MCP acceptance across real NATs: an ``mcp`` SDK server behind a
symmetric NAT, used by ``mcp`` SDK clients behind a port-restricted one, over
stdio bridging (``pilotctl mcp serve`` / ``pilotctl mcp connect``) and over
streamable HTTP (``expose`` + the asyncio SDK's transport): the tool result
and the resource arrive, 10 sequential and 5 concurrent stdio sessions, and
a killed server process gives the client a JSON-RPC error, not a hang.  The
clients run inside the client site's namespace, as a user's programs would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.lab

needs_lab = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip"),
    reason="the lab needs root, ip and nft",
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVER = os.path.join(REPO, "examples", "mcp_behind_nat", "server.py")
HTTP_PORT = 8000

CLIENT = r'''
import json, os, signal, sys
import anyio
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
import pilotproto.aio
from pilotproto.aio.http import HTTPX2Transport

home = sys.argv[1]
params = StdioServerParameters(command=sys.executable, args=["-m", "pilotproto.cli", "--home", home, "mcp", "connect",
                                                             "agent-b"], env=dict(os.environ))

async def session_calls(session):
    await session.initialize()
    total = (await session.call_tool("add", {"a": 2, "b": 3})).content[0].text
    text = (await session.read_resource("demo://greeting")).contents[0].text
    return total, text

async def stdio_once():
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            return await session_calls(session)

async def killed():
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            pid = int((await session.call_tool("pid", {})).content[0].text)
            async def kill():
                await anyio.sleep(0.5)
                os.kill(pid, signal.SIGKILL)
            async with anyio.create_task_group() as group:
                group.start_soon(kill)
                try:
                    await session.call_tool("slow", {"seconds": 120})
                except Exception as e:
                    return str(e)
            return "no error"

async def http_once(node):
    import httpx2
    from mcp.client.streamable_http import streamable_http_client
    async with httpx2.AsyncClient(transport=HTTPX2Transport(node), timeout=httpx2.Timeout(30, read=300)) as client:
        async with streamable_http_client("http://agent-b:8080/mcp", http_client=client) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                return await session_calls(session)

async def main():
    out = {"sequential": [], "concurrent": [], "http": []}
    with anyio.fail_after(240):
        for _ in range(10):
            out["sequential"].append(await stdio_once())
        async def one():
            out["concurrent"].append(await stdio_once())
        async with anyio.create_task_group() as group:
            for _ in range(5):
                group.start_soon(one)
        out["killed"] = await killed()
        async with await pilotproto.aio.connect(home) as node:
            for _ in range(3):
                out["http"].append(await http_once(node))
    print(json.dumps(out))

anyio.run(main)
'''


@needs_lab
def test_mcp_sdk_across_a_symmetric_and_a_port_restricted_nat(tmp_path):
    pytest.importorskip("mcp")
    pytest.importorskip("httpx2")
    from pilotproto.lab import Lab
    from pilotproto.lab.matrix import establish_trust
    from pilotproto.lab.pilot import LabBeacon, LabNode

    with Lab() as lab:
        beacon = LabBeacon(lab, str(tmp_path)).start()
        client_site, server_site = lab.add_site("port-restricted-cone"), lab.add_site("symmetric")
        a = LabNode(lab, client_site.hosts[0], str(tmp_path), "agent-a", beacon).start()
        b = LabNode(lab, server_site.hosts[0], str(tmp_path), "agent-b", beacon).start()
        http = lab.popen(server_site.hosts[0], [sys.executable, SERVER, "--http", str(HTTP_PORT)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            establish_trust(a, b)
            b.ctl("mcp_serve", port=1003, argv=[sys.executable, SERVER], cwd=str(tmp_path), allow=[])
            b.ctl("expose", port=8080, host="127.0.0.1", tcp_port=HTTP_PORT, allow=[])
            done = lab.run(client_site.hosts[0], [sys.executable, "-c", CLIENT, a.home], capture_output=True,
                           text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-3000:]
            out = json.loads(done.stdout.strip().splitlines()[-1])
            expected = ["5", "hello from behind the NAT"]
            assert out["sequential"] == [expected] * 10 and out["concurrent"] == [expected] * 5
            assert out["http"] == [expected] * 3
            assert "pilot: [unavailable]" in out["killed"], out["killed"]
            served = b.ctl("mcp_servers")["servers"][0]
            assert served["total"] == 16 and served["failed"] == 0
        finally:
            http.kill()
            http.wait(5)
            for node in (a, b):
                node.stop()
            beacon.kill()
