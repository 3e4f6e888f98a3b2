"""
The asyncio SDK (pilotproto.aio) against real daemons on loopback: streams
to the echo port moved hash-exact, a start_server serving 20 clients at
once, untrusted peers failing fast, and the httpx transport GETting and
POSTing (bodies streamed both ways) to ``twistd web --listen pilot:80``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import subprocess
import textwrap
import time

import httpx
import pytest

import pilotproto.aio

from .conftest import TWISTD, environment, pilotctl, wait_for

pytestmark = [pytest.mark.integration]


@pytest.fixture
def pair(daemons):
    a = daemons.start("agent-a")
    b = daemons.start("agent-b")
    assert pilotctl(a, "handshake", "agent-b", "aio tests")[0] == 0
    assert wait_for(lambda: pilotctl(b, "pending")[1]["data"]["pending"], 5)
    assert pilotctl(b, "approve", "agent-a")[0] == 0
    assert wait_for(lambda: pilotctl(a, "lookup", "agent-b")[0] == 0, 5)
    assert wait_for(lambda: pilotctl(b, "lookup", "agent-a")[0] == 0, 5)
    return a, b


async def _pump(writer, data: bytes, chunk: int = 256 * 1024):
    for i in range(0, len(data), chunk):
        writer.write(data[i : i + chunk])
        await writer.drain()
    writer.write_eof()


@pytest.mark.asyncio
async def test_open_connection_to_echo_moves_mib_hash_exact(pair):
    a, _ = pair
    data = random.Random(11).randbytes(4 * 1024 * 1024)
    async with await pilotproto.aio.connect(a) as node:
        assert (await node.info())["hostname"] == "agent-a"
        reader, writer = await node.open_connection("agent-b", 7)
        peer = writer.get_extra_info("peername")
        assert (peer.hostname, peer.port) == ("agent-b", 7) and peer.address.startswith("0:")
        assert writer.get_extra_info("sockname").hostname == "agent-a"
        sending = asyncio.create_task(_pump(writer, data))
        echoed = await asyncio.wait_for(reader.read(), 60)  # to EOF: the echo ends after our FIN
        await sending
        writer.close()
        await writer.wait_closed()
    assert len(echoed) == len(data)
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest()


@pytest.mark.asyncio
async def test_start_server_serves_20_concurrent_clients(pair):
    a, b = pair
    seen = []

    async def shout(reader, writer):
        seen.append(writer.get_extra_info("peername").hostname)
        data = await reader.read()  # to the client's FIN
        writer.write(data.upper() + f" to {writer.get_extra_info('sockname').port}".encode())
        await writer.drain()
        writer.close()

    async def client(node, i):
        reader, writer = await node.open_connection("agent-b", 5050)
        writer.write(f"client {i}".encode())
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), 30)

    async with await pilotproto.aio.connect(b) as server_node, await pilotproto.aio.connect(a) as client_node:
        async with await server_node.start_server(shout, 5050) as server:
            assert server.is_serving() and server.sockets[0].port == 5050
            with pytest.raises(pilotproto.aio.AlreadyRunning):
                await server_node.start_server(shout, 5050)
            replies = await asyncio.wait_for(asyncio.gather(*(client(client_node, i) for i in range(20))), 60)
        assert not server.is_serving()
    assert replies == [f"CLIENT {i} to 5050".encode() for i in range(20)]
    assert seen == ["agent-a"] * 20


@pytest.mark.asyncio
async def test_nothing_listening_is_connection_refused(pair):
    a, _ = pair
    async with await pilotproto.aio.connect(a) as node:
        with pytest.raises(pilotproto.aio.ConnectionRefused) as caught:
            await node.open_connection("agent-b", 4444)
    assert isinstance(caught.value, ConnectionRefusedError) and caught.value.code == "connection_refused"


@pytest.mark.asyncio
async def test_an_untrusted_peer_fails_fast_with_the_daemons_code(daemons):
    a = daemons.start("agent-a")
    daemons.start("agent-c")
    async with await pilotproto.aio.connect(a) as node:
        started = time.monotonic()
        with pytest.raises(pilotproto.aio.PilotError) as caught:
            await node.open_connection("agent-c", 7)
        assert caught.value.code in ("not_found", "not_trusted") and caught.value.hint
        async with httpx.AsyncClient(transport=pilotproto.aio.HTTPTransport(node)) as client:
            with pytest.raises(httpx.ConnectError) as failed:
                await client.get("http://agent-c/")
        assert time.monotonic() - started < 15
    cause = failed.value.__cause__
    assert isinstance(cause, pilotproto.aio.PilotError) and cause.code in ("not_found", "not_trusted")
    assert f"[{cause.code}]" in str(failed.value)


@pytest.mark.asyncio
async def test_no_daemon_is_not_running_and_a_connection_refused_error(tmp_path):
    with pytest.raises(pilotproto.aio.NotRunning) as caught:
        await pilotproto.aio.connect(str(tmp_path / "nobody"))
    assert isinstance(caught.value, ConnectionRefusedError) and "pilotctl daemon start" in caught.value.hint


# -- httpx over the overlay, to twistd web -----------------------------------------------

WEB_APP = textwrap.dedent('''
    import hashlib, json, random

    from twisted.internet import task
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET

    BIG = random.Random(5).randbytes(3 * 1024 * 1024)

    class Root(Resource):
        isLeaf = True

        def render_POST(self, request):
            digest, size = hashlib.sha256(), 0
            while part := request.content.read(65536):
                digest.update(part)
                size += len(part)
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"size": size, "sha256": digest.hexdigest(), "path": request.path.decode()}).encode()

        def render_GET(self, request):
            if request.path == b"/big":
                # Streamed out in parts (chunked), as a large download is.
                def parts():
                    for i in range(0, len(BIG), 65536):
                        request.write(BIG[i:i + 65536])
                        yield
                    request.finish()
                task.cooperate(parts())
                return NOT_DONE_YET
            request.setHeader(b"content-type", b"text/plain")
            return b"hello from " + request.path
''')


@pytest.fixture
def web(pair, tmp_path):
    """``twistd web --listen pilot:80`` on agent-b's daemon, serving WEB_APP."""
    _, b = pair
    (tmp_path / "aio_web_app.py").write_text(WEB_APP)
    env = environment()
    env["PILOT_HOME"] = b
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env["PYTHONPATH"]
    log = tmp_path / "web.log"
    proc = subprocess.Popen(
        TWISTD + ["-n", "--pidfile=", "--logfile", str(log), "web", "--listen", "pilot:80", "--class", "aio_web_app.Root"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=str(tmp_path),
    )
    try:
        assert wait_for(lambda: log.exists() and "Starting factory <twisted.web.server.Site" in log.read_text(), 20), log.read_text()
        yield pair
    finally:
        proc.terminate()
        proc.wait(10)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


async def _body(size: int, chunk: int = 100_000):
    rng = random.Random(3)
    sent = 0
    while sent < size:
        part = rng.randbytes(min(chunk, size - sent))
        sent += len(part)
        yield part


@pytest.mark.asyncio
async def test_httpx_gets_and_posts_streaming_both_ways(web):
    a, _ = web
    async with await pilotproto.aio.connect(a) as node:
        address = (await node.lookup("agent-b"))["address"]
        transport = pilotproto.aio.HTTPTransport(node)
        async with httpx.AsyncClient(transport=transport, timeout=30) as client:
            first = await client.get("http://agent-b/index")
            assert (first.status_code, first.text) == (200, "hello from /index")
            dashed = address.replace(":", "-").replace(".", "-").lower()
            assert (await client.get(f"http://{dashed}:80/by-address")).text == "hello from /by-address"

            # A streamed response: read in parts, never whole in one buffer.
            digest, size = hashlib.sha256(), 0
            async with client.stream("GET", "http://agent-b/big") as response:
                assert response.status_code == 200
                async for part in response.aiter_bytes():
                    digest.update(part)
                    size += len(part)
            expected = random.Random(5).randbytes(3 * 1024 * 1024)
            assert size == len(expected) and digest.digest() == hashlib.sha256(expected).digest()

            # A streamed request body of several MiB (chunked, from an async iterator).
            total = 5 * 1024 * 1024
            posted = await client.post("http://agent-b/upload", content=_body(total))
            want = hashlib.sha256(b"".join([p async for p in _body(total)])).hexdigest()
            assert json.loads(posted.text) == {"size": total, "sha256": want, "path": "/upload"}

            # Keep-alive: these went over few overlay streams, not one each.
            again = [await client.get(f"http://agent-b/n{i}") for i in range(5)]
            assert [r.text for r in again] == [f"hello from /n{i}" for i in range(5)]
            assert len(transport._pool.connections) <= 2

            with pytest.raises(httpx.UnsupportedProtocol, match="http://agent-b/"):
                await client.get("https://agent-b/")
            with pytest.raises(httpx.ConnectError, match="connection_refused"):
                await client.get("http://agent-b:8081/")
