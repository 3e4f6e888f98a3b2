"""
MCP over the overlay with the official ``mcp`` SDK, unchanged, through two
real daemons: a stdio server published with ``pilotctl mcp serve`` and used
through ``pilotctl mcp connect`` (10 sequential and 5 concurrent sessions, a
server killed mid-request, an untrusted client, no daemon, a command that
does not exist), and a streamable-HTTP server reached through ``expose`` by
the asyncio SDK's HTTP transport and through ``forward`` by the SDK's own.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from .conftest import PILOTCTL, REPO, environment, pilotctl, wait_for

mcp = pytest.importorskip("mcp")
anyio = pytest.importorskip("anyio")
from mcp import ClientSession  # noqa: E402
from mcp.client.stdio import StdioServerParameters, stdio_client  # noqa: E402

pytestmark = pytest.mark.integration

SERVER = os.path.join(REPO, "examples", "mcp_behind_nat", "server.py")
try:
    from mcp import McpError as _McpError  # 1.x
except ImportError:  # 2.x
    from mcp.shared.exceptions import MCPError as _McpError


def connect_params(home, target="agent-b"):
    return StdioServerParameters(command=sys.executable, args=[*PILOTCTL[1:], "--home", home, "mcp", "connect", target],
                                 env=environment())


async def use(params, kill_after_pid=False):
    """One MCP session: initialize, a tool call, a resource read; (sum, greeting, server pid)."""
    with anyio.fail_after(60):
        async with stdio_client(params, errlog=sys.stderr) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                total = await session.call_tool("add", {"a": 2, "b": 3})
                resource = await session.read_resource("demo://greeting")
                pid = await session.call_tool("pid", {})
                return total.content[0].text, resource.contents[0].text, int(pid.content[0].text)


@pytest.fixture
def pair(daemons):
    a = daemons.start("agent-a")
    b = daemons.start("agent-b")
    assert pilotctl(a, "handshake", "agent-b", "mcp tests")[0] == 0
    assert wait_for(lambda: pilotctl(b, "pending")[1]["data"]["pending"], 5)
    assert pilotctl(b, "approve", "agent-a")[0] == 0
    assert wait_for(lambda: pilotctl(a, "lookup", "agent-b")[0] == 0, 5)
    return a, b


def serve(home, *args):
    code, doc = pilotctl(home, "mcp", "serve", *args)
    assert code == 0, doc
    return doc["data"]


def test_stdio_sessions_through_mcp_connect(pair):
    a, b = pair
    served = serve(b, "--", sys.executable, SERVER)
    assert served["port"] == 1003 and served["listening"] and served["argv"] == [sys.executable, SERVER]

    async def scenario():
        pids = []
        for _ in range(10):
            total, greeting, pid = await use(connect_params(a))
            assert (total, greeting) == ("5", "hello from behind the NAT")
            pids.append(pid)
        results = []

        async def one():
            results.append(await use(connect_params(a)))

        async with anyio.create_task_group() as group:
            for _ in range(5):
                group.start_soon(one)
        assert [r[:2] for r in results] == [("5", "hello from behind the NAT")] * 5
        return pids + [r[2] for r in results]

    pids = anyio.run(scenario)
    assert len(set(pids)) == 15  # a process per session

    def settled():
        servers = pilotctl(b, "mcp", "list")[1]["data"]["servers"]
        return servers if servers[0]["active"] == 0 else None

    servers = wait_for(settled, 15)
    assert servers and servers[0]["total"] == 15 and servers[0]["failed"] == 0 and servers[0]["bytes_sent"] > 0
    assert pilotctl(b, "status")[1]["data"]["mcp_servers"][0]["port"] == 1003
    # Saved for the next start; removed on request.
    saved = json.load(open(os.path.join(b, "config.json")))["mcp_servers"]
    assert saved == [{"port": 1003, "argv": [sys.executable, SERVER], "cwd": served["cwd"], "allow": []}]
    code, doc = pilotctl(b, "mcp", "remove")
    assert code == 0 and doc["data"]["removed"]["port"] == 1003
    assert "mcp_servers" not in json.load(open(os.path.join(b, "config.json")))


def test_a_killed_server_answers_the_request_in_flight_with_an_error(pair):
    a, b = pair
    serve(b, "--port", "7003", "--", sys.executable, SERVER)

    async def scenario():
        with anyio.fail_after(60):
            async with stdio_client(connect_params(a, "agent-b:7003")) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    pid = int((await session.call_tool("pid", {})).content[0].text)
                    async with anyio.create_task_group() as group:
                        group.start_soon(_kill_soon, pid)
                        with pytest.raises(_McpError) as caught:
                            await session.call_tool("slow", {"seconds": 60})
                    return str(caught.value)

    message = anyio.run(scenario)
    assert "pilot: [unavailable]" in message and "ended" in message


async def _kill_soon(pid):
    await anyio.sleep(0.5)
    os.kill(pid, signal.SIGKILL)


def raw_connect(home, target, lines, timeout=60):
    """Run ``pilotctl mcp connect`` with ``lines`` on stdin; (exit code, JSON lines out, stderr)."""
    stdin = "".join(json.dumps(line) + "\n" for line in lines)
    proc = subprocess.run(PILOTCTL + ["--home", home, "mcp", "connect", target], input=stdin, capture_output=True,
                          text=True, env=environment(), timeout=timeout)
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr


INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                         "clientInfo": {"name": "t", "version": "1"}}}
NOTIFICATION = {"jsonrpc": "2.0", "method": "notifications/initialized"}
LIST = {"jsonrpc": "2.0", "id": "two", "method": "tools/list"}


def test_an_untrusted_client_or_no_daemon_gets_json_rpc_errors(pair, daemons, tmp_path):
    _, b = pair
    serve(b, "--", sys.executable, SERVER)
    stranger = daemons.start("stranger", "--public")
    code, out, err = raw_connect(stranger, "agent-b", [INITIALIZE, NOTIFICATION, LIST])
    assert code != 0 and ("not_trusted" in err or "not_found" in err), err
    assert [m["id"] for m in out] == [1, "two"]  # the notification gets no answer
    assert all(m["error"]["code"] == -32000 and m["error"]["message"].startswith("pilot: [") for m in out)
    assert out[0]["error"]["data"]["pilot_code"] in ("not_trusted", "not_found")

    # The SDK client sees it as an error at once, not a hang.
    async def sdk():
        with anyio.fail_after(30):
            async with stdio_client(connect_params(stranger)) as (read, write):
                async with ClientSession(read, write) as session:
                    with pytest.raises(_McpError) as caught:
                        await session.initialize()
                    return str(caught.value)

    assert "pilot: [not_" in anyio.run(sdk)

    code, out, err = raw_connect(str(tmp_path / "nobody"), "agent-b", [INITIALIZE])
    assert code == 3 and out[0]["id"] == 1 and out[0]["error"]["data"]["pilot_code"] == "not_running", (out, err)


def test_a_command_that_does_not_exist_resets_the_session_and_is_counted(pair):
    a, b = pair
    serve(b, "--", "no-such-mcp-server-xyz", "--flag")
    code, out, _ = raw_connect(a, "agent-b", [INITIALIZE])
    # The reset comes before or after the stream is up: either way the host hears of it, with a way on.
    assert code != 0 and out and out[0]["id"] == 1 and out[0]["error"]["code"] in (-32000, -32001), out
    assert "pilotctl mcp list" in out[0]["error"]["message"] or "daemon log" in out[0]["error"]["message"]
    server = wait_for(lambda: pilotctl(b, "mcp", "list")[1]["data"]["servers"][0]["failed"] == 1 and
                      pilotctl(b, "mcp", "list")[1]["data"]["servers"][0], 10)
    assert server["last_error"]["code"] == "command_not_found" and server["active"] == 0
    assert "no-such-mcp-server-xyz" in server["last_error"]["message"]


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def http_server():
    """The example server over streamable HTTP on 127.0.0.1 (its own process, as users run it)."""
    port = free_tcp_port()
    proc = subprocess.Popen([sys.executable, SERVER, "--http", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=environment())

    def up():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False

    assert wait_for(up, 20), "the streamable-HTTP MCP server did not start"
    yield port
    proc.kill()
    proc.wait(5)


def http_client(transport=None):
    """The HTTP client the installed SDK takes (httpx2 for mcp 2.x, httpx for 1.x), with MCP's timeouts."""
    try:
        import httpx2 as module
    except ImportError:
        import httpx as module
    return module.AsyncClient(transport=transport, timeout=module.Timeout(30, read=300))


async def use_http(url, client):
    """One streamable-HTTP session; (sum, greeting, session id)."""
    from mcp.client.streamable_http import streamable_http_client

    with anyio.fail_after(60):
        async with streamable_http_client(url, http_client=client) as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write) as session:
                await session.initialize()
                total = await session.call_tool("add", {"a": 20, "b": 22})
                resource = await session.read_resource("demo://greeting")
                return total.content[0].text, resource.contents[0].text


def test_streamable_http_through_the_aio_transport_and_through_forward(pair, http_server):
    import pilotproto.aio
    from pilotproto.aio.http import HTTPX2Transport

    a, b = pair
    code, doc = pilotctl(b, "expose", "8080", f"127.0.0.1:{http_server}")
    assert code == 0, doc
    code, doc = pilotctl(a, "forward", "0", "agent-b:8080")
    assert code == 0, doc
    local = doc["data"]["local_port"]

    async def scenario():
        async with await pilotproto.aio.connect(a) as node:
            transport = HTTPX2Transport(node)
            async with http_client(transport) as client:
                for _ in range(3):
                    assert await use_http("http://agent-b:8080/mcp", client) == ("42", "hello from behind the NAT")
                results = []

                async def one():
                    results.append(await use_http("http://agent-b:8080/mcp", client))

                async with anyio.create_task_group() as group:
                    for _ in range(5):
                        group.start_soon(one)
                assert results == [("42", "hello from behind the NAT")] * 5
            # An unreachable peer fails at once with the pilot code.
            async with http_client(HTTPX2Transport(node)) as client:
                with pytest.raises(Exception) as caught:
                    await use_http("http://no-such-agent:8080/mcp", client)
                assert "not_found" in repr(caught.value) or "not_found" in str(getattr(caught.value, "exceptions", ""))
        # The SDK's own client, through a forward: nothing pilot-specific on the client side.
        async with http_client() as client:
            assert await use_http(f"http://127.0.0.1:{local}/mcp", client) == ("42", "hello from behind the NAT")

    anyio.run(scenario)
    exposed = pilotctl(b, "expose", "--list")[1]["data"]["exposes"][0]
    assert exposed["total"] >= 9 and exposed["failed"] == 0
