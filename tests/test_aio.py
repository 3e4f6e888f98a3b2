"""
pilotproto.aio against an in-test control socket (tests/test_aio_fakes.py): one
JSON connection pipelining requests, errors as the hierarchy (and the
builtins), the ``connect``/``listen``/``accept`` upgrades with half-close
and back-pressure, reconnecting after the daemon went away, and importing
it without Twisted (or without httpx).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap

import httpx
import pytest
import pytest_asyncio

import pilotproto.aio as aio
from test_aio_fakes import FakeDaemon, error, ok
from pilotproto.aio.http import peer_for_host
from pilotproto.errors import ConnectionRefused, NotFound, PilotError, Timeout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADDRESS_B = "0:8EAC.9041.50DA"


@pytest_asyncio.fixture
async def daemon(tmp_path):
    fake = await FakeDaemon(str(tmp_path)).start()
    yield fake
    await fake.stop()


@pytest.mark.asyncio
async def test_requests_share_one_connection_and_answers_may_overtake(daemon):
    looked_up = asyncio.Event()

    async def info(args):
        await looked_up.wait()  # answered only after the later request
        return {"hostname": "agent-a"}

    async def lookup(args):
        looked_up.set()
        return {"hostname": args["target"], "address": ADDRESS_B}

    daemon.commands.update(info=info, lookup=lookup)
    async with await aio.connect(daemon.home) as node:
        got = await asyncio.wait_for(asyncio.gather(node.info(), node.lookup("agent-b")), 5)
    assert got == [{"hostname": "agent-a"}, {"hostname": "agent-b", "address": ADDRESS_B}]
    assert [r["cmd"] for r in daemon.requests] == ["info", "lookup"]
    assert len({r["id"] for r in daemon.requests}) == 2
    assert len(daemon.connections) == 1


@pytest.mark.asyncio
async def test_daemon_errors_are_the_hierarchy_and_the_builtins(daemon):
    async def lookup(args):
        raise NotFound(f"no node {args['target']!r} is visible to this node")

    async def ping(args):
        raise Timeout("no reply")

    async def peers(args):
        unknown = PilotError("something new", hint="upgrade")
        unknown.code = "brand_new_code"  # a code from a newer daemon
        raise unknown

    daemon.commands.update(lookup=lookup, ping=ping, peers=peers)
    async with await aio.connect(daemon.home) as node:
        with pytest.raises(aio.NotFound) as caught:
            await node.lookup("agent-z")
        assert isinstance(caught.value, LookupError) and caught.value.code == "not_found"
        assert caught.value.hint == NotFound.hint and "agent-z" in caught.value.message
        with pytest.raises(TimeoutError) as timed_out:
            await node.ping("agent-b", count=1)
        assert isinstance(timed_out.value, aio.Timeout)
        with pytest.raises(aio.PilotError) as unknown:
            await node.peers()
        assert unknown.value.code == "brand_new_code" and unknown.value.hint == "upgrade"
        with pytest.raises(aio.InvalidArgument):
            await node.lookup("Not A Name!")
        with pytest.raises(aio.InvalidArgument):
            await node.request("info", {"deep": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]})
    assert [r["cmd"] for r in daemon.requests] == ["lookup", "ping", "peers"]  # nothing sent for the bad ones


@pytest.mark.asyncio
async def test_no_daemon_and_a_stale_socket_are_not_running(tmp_path):
    with pytest.raises(aio.NotRunning) as caught:
        await aio.connect(str(tmp_path))
    assert isinstance(caught.value, ConnectionRefusedError) and caught.value.hint
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "control.sock"))
    stale.close()  # the file stays, nobody listens: a daemon that died
    with pytest.raises(ConnectionRefusedError, match="stale"):
        await aio.connect(str(tmp_path))


@pytest.mark.asyncio
async def test_a_slow_daemon_is_a_timeout(daemon):
    async def info(args):
        await asyncio.sleep(10)

    daemon.commands["info"] = info
    async with await aio.connect(daemon.home, command_timeout=0.2) as node:
        with pytest.raises(aio.Timeout, match="did not answer 'info'"):
            await node.info()


@pytest.mark.asyncio
async def test_losing_the_daemon_fails_what_is_pending_and_the_next_call_reconnects(daemon):
    hang = asyncio.Event()

    async def info(args):
        await hang.wait()

    daemon.commands["info"] = info
    async with await aio.connect(daemon.home) as node:
        pending = asyncio.create_task(node.info())
        await asyncio.sleep(0.05)
        await daemon.stop()
        with pytest.raises(aio.NotRunning, match="closed the control connection"):
            await asyncio.wait_for(pending, 5)
        with pytest.raises(aio.NotRunning):
            await node.info()  # nobody there yet

        async def answered(args):
            return {"hostname": "agent-a", "again": True}

        daemon.commands["info"] = answered
        await daemon.start()
        assert (await asyncio.wait_for(node.info(), 5))["again"] is True


# -- streams ------------------------------------------------------------------------------


def connect_handler(received: list, reply=b""):
    """A ``connect`` upgrade that answers ok, sends ``early`` at once, then echoes upper-case after the client's FIN."""

    async def connect(request_id, args, reader, writer):
        ok(writer, request_id, {"peer": args["target"], "address": ADDRESS_B, "port": args["port"],
                                "local_hostname": "agent-a", "local_address": "0:A91F.0000.7C2E"})
        writer.write(b"early;")
        data = await reader.read()  # to the client's half-close
        received.append(data)
        writer.write(data.upper() + reply)
        await writer.drain()
        writer.close()

    return connect


@pytest.mark.asyncio
async def test_open_connection_is_the_stream_after_the_ok_line(daemon):
    received = []
    daemon.upgrades["connect"] = connect_handler(received, b";bye")
    async with await aio.connect(daemon.home) as node:
        reader, writer = await node.open_connection("agent-b", 7)
        assert isinstance(reader, asyncio.StreamReader) and isinstance(writer, asyncio.StreamWriter)
        assert writer.get_extra_info("peername") == aio.PilotAddress("agent-b", ADDRESS_B, 7)
        assert writer.get_extra_info("sockname") == aio.PilotAddress("agent-a", "0:A91F.0000.7C2E", 0)
        assert writer.get_extra_info("pilot")["port"] == 7
        assert writer.get_extra_info("socket") is not None  # the rest is the UNIX socket's
        writer.write(b"hello ")
        writer.write(b"there")
        assert writer.can_write_eof()
        writer.write_eof()  # the stream's FIN: the far end reads EOF, and still answers
        assert await asyncio.wait_for(reader.read(), 5) == b"early;HELLO THERE;bye"
        writer.close()
        await writer.wait_closed()
    assert received == [b"hello there"]
    connect = [r for r in daemon.requests if r["cmd"] == "connect"]
    assert connect[0]["args"] == {"target": "agent-b", "port": 7}


@pytest.mark.asyncio
async def test_an_error_before_the_upgrade_raises_it(daemon):
    async def refuse(request_id, args, reader, writer):
        error(writer, request_id, ConnectionRefused())
        await writer.drain()

    daemon.upgrades["connect"] = refuse
    async with await aio.connect(daemon.home) as node:
        with pytest.raises(aio.ConnectionRefused) as caught:
            await node.open_connection("agent-b", 4444)
        with pytest.raises(aio.InvalidArgument):
            await node.open_connection("agent-b", 70000)
    assert isinstance(caught.value, ConnectionRefusedError) and caught.value.code == "connection_refused"


@pytest.mark.asyncio
async def test_drain_waits_while_the_far_end_does_not_read(daemon):
    """Back-pressure: a stream whose peer stops reading holds the writer, not an ever-growing buffer."""
    stalled = asyncio.Event()

    async def connect(request_id, args, reader, writer):
        ok(writer, request_id, {"peer": "agent-b", "address": ADDRESS_B, "port": 7})
        await stalled.wait()

    daemon.upgrades["connect"] = connect
    async with await aio.connect(daemon.home) as node:
        _, writer = await node.open_connection("agent-b", 7)
        chunk, written = b"x" * 65536, 0
        with pytest.raises(TimeoutError):
            for _ in range(512):  # 32 MiB at most
                writer.write(chunk)
                written += len(chunk)
                await asyncio.wait_for(writer.drain(), 0.5)
        assert written < 16 * 1024 * 1024
        stalled.set()
        writer.close()


@pytest.mark.asyncio
async def test_start_server_accepts_each_announced_stream(daemon):
    listen_closed = asyncio.Event()

    async def listen(request_id, args, reader, writer):
        ok(writer, request_id, {"port": args["port"], "hostname": "agent-a", "address": "0:A91F.0000.7C2E"})
        for stream_id in (3, 4):
            writer.write(f'{{"event":"incoming","stream_id":{stream_id},"peer":"agent-b","address":"{ADDRESS_B}","port":80}}\n'.encode())
        writer.write(b'{"event":"something_new"}\n')  # ignored, as the protocol asks
        await reader.read()
        listen_closed.set()

    async def accept(request_id, args, reader, writer):
        ok(writer, request_id, {"stream_id": args["stream_id"], "peer": "agent-b", "address": ADDRESS_B, "port": 80})
        writer.write(f"stream {args['stream_id']}".encode())
        writer.write_eof()
        replies.append(await reader.read())
        writer.close()

    replies, seen = [], []
    daemon.upgrades.update(listen=listen, accept=accept)

    async def handle(reader, writer):
        seen.append((await reader.read(), writer.get_extra_info("peername"), writer.get_extra_info("sockname")))
        writer.write(b"thanks")
        writer.close()

    async with await aio.connect(daemon.home) as node:
        async with await node.start_server(handle, 80) as server:
            assert server.is_serving() and server.sockets == (aio.PilotAddress("agent-a", "0:A91F.0000.7C2E", 80),)
            for _ in range(100):
                if len(replies) == 2:
                    break
                await asyncio.sleep(0.02)
        await asyncio.wait_for(listen_closed.wait(), 5)  # closing the server closed its listen connection
    assert not server.is_serving()
    assert sorted(replies) == [b"thanks", b"thanks"]
    assert sorted(s[0] for s in seen) == [b"stream 3", b"stream 4"]
    assert all(s[1] == aio.PilotAddress("agent-b", ADDRESS_B, 0) and s[2].port == 80 for s in seen)


@pytest.mark.asyncio
async def test_serve_forever_ends_by_cancellation_and_closes(daemon):
    async def listen(request_id, args, reader, writer):
        ok(writer, request_id, {"port": args["port"], "hostname": "agent-a", "address": "0:A91F.0000.7C2E"})
        await reader.read()

    daemon.upgrades["listen"] = listen
    async with await aio.connect(daemon.home) as node:
        server = await node.start_server(lambda r, w: None, 81, start_serving=False)
        assert not server.is_serving()
        serving = asyncio.create_task(server.serve_forever())
        await asyncio.sleep(0.1)
        assert server.is_serving()
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        assert not server.is_serving()


# -- httpx ---------------------------------------------------------------------------------


def test_url_hosts_name_peers():
    assert peer_for_host("agent-b") == "agent-b"
    assert peer_for_host("agent-b.pilot") == "agent-b"
    assert peer_for_host("0-8eac-9041-50da") == ADDRESS_B
    with pytest.raises(aio.InvalidArgument):
        peer_for_host("under_score")


@pytest.mark.asyncio
async def test_httpx_errors_carry_the_daemons_error(daemon):
    async def connect(request_id, args, reader, writer):
        error(writer, request_id, aio.NotTrusted())
        await writer.drain()

    daemon.upgrades["connect"] = connect
    async with await aio.connect(daemon.home) as node:
        async with httpx.AsyncClient(transport=aio.HTTPTransport(node)) as client:
            with pytest.raises(httpx.ConnectError) as caught:
                await client.get("http://agent-c:8080/x")
            with pytest.raises(httpx.UnsupportedProtocol, match="end-to-end encrypted"):
                await client.get("https://agent-c/")
    assert isinstance(caught.value.__cause__, aio.NotTrusted)
    assert "[not_trusted]" in str(caught.value) and "handshake" in str(caught.value)
    assert daemon.requests[-1]["args"] == {"target": "agent-c", "port": 8080}


def test_http_transport_checks_what_it_is_given():
    with pytest.raises(TypeError, match="pilotproto.aio Node"):
        aio.HTTPTransport("~/.pilot")


# -- what importing it costs ----------------------------------------------------------------

ROUND_TRIP = textwrap.dedent("""
    import asyncio, json, os, sys, tempfile

    import pilotproto.aio
    assert not [m for m in sys.modules if m.split(".")[0] == "twisted"], "import"

    async def serve(reader, writer):
        request = json.loads(await reader.readline())
        writer.write(json.dumps({"id": request["id"], "status": "ok", "data": {"hostname": "x"}}).encode() + b"\\n")
        await writer.drain()

    async def main():
        home = tempfile.mkdtemp()
        server = await asyncio.start_unix_server(serve, os.path.join(home, "control.sock"))
        async with await pilotproto.aio.connect(home) as node:
            assert (await node.info()) == {"hostname": "x"}
        server.close()

    asyncio.run(main())
    pilotproto.aio.HTTPTransport  # httpx is no Twisted either
    twisted = [m for m in sys.modules if m.split(".")[0] == "twisted"]
    assert not twisted, twisted
    print("clean")
""")


def _python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)


def test_importing_and_using_it_loads_no_twisted():
    run = _python(ROUND_TRIP)
    assert run.returncode == 0 and run.stdout.strip() == "clean", run.stderr


def test_without_httpx_only_the_transport_is_missing():
    run = _python(textwrap.dedent("""
        import sys

        class NoHttpx:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("httpx", "httpcore"):
                    raise ImportError(f"No module named {name!r}", name=name)

        sys.meta_path.insert(0, NoHttpx())
        import pilotproto.aio
        pilotproto.aio.Node
        try:
            pilotproto.aio.HTTPTransport
        except ImportError as e:
            print(e)
    """))
    assert run.returncode == 0, run.stderr
    assert "pip install 'pilotproto[aio]'" in run.stdout
