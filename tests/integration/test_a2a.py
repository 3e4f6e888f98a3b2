"""
A2A over the overlay with the official a2a-sdk, unchanged, on both sides.

agent-b runs an a2a-sdk agent (examples/a2a_pair/agent.py: an AgentExecutor
that upper-cases the text and streams it a word at a time) under uvicorn on
loopback TCP, put on the overlay with ``pilotctl expose 80 127.0.0.1:PORT``
as a user would.  agent-a's a2a-sdk client is handed
``httpx.AsyncClient(transport=pilotproto.aio.HTTPTransport(node))``: it
fetches the card from ``http://agent-b/.well-known/agent-card.json``, follows
the card's URL (``http://agent-b/``) for ``message/send``, and for
``message/stream`` gets each SSE event as the agent makes it, not all at the
end.  agent-c, which agent-b does not trust, fails at once with the daemon's
error (agent-b is private, so to agent-c it is ``not_found``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("httpx")
pytest.importorskip("a2a.client", reason="a2a-sdk is not installed (pip install 'a2a-sdk[http-server]')")
pytest.importorskip("uvicorn", reason="uvicorn is not installed (the A2A agent's server)")

import httpx
from a2a.client import (
    A2ACardResolver,
    A2AClientError,
    AgentCardResolutionError,
    ClientConfig,
    ClientFactory,
)
from a2a.helpers.proto_helpers import get_stream_response_text, new_text_message
from a2a.types.a2a_pb2 import Role, SendMessageRequest, TaskState

import pilotproto.aio
from pilotproto.errors import PilotError

from .conftest import REPO, environment, pilotctl, wait_for

pytestmark = [pytest.mark.integration]

AGENT = os.path.join(REPO, "examples", "a2a_pair", "agent.py")
#: seconds between the agent's streamed words: long enough to tell streamed from buffered
DELAY = 0.4
TEXT = "hello over the overlay"


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


@pytest.fixture
def agent_b(daemons, tmp_path):
    """agent-a and agent-b trusting each other, agent-c trusting nobody; agent-b's A2A agent exposed on port 80."""
    a = daemons.start("agent-a")
    b = daemons.start("agent-b")
    c = daemons.start("agent-c")
    assert pilotctl(a, "handshake", "agent-b", "a2a tests")[0] == 0
    assert wait_for(lambda: pilotctl(b, "pending")[1]["data"]["pending"], 5)
    assert pilotctl(b, "approve", "agent-a")[0] == 0
    assert wait_for(lambda: pilotctl(a, "lookup", "agent-b")[0] == 0, 5)
    port = free_tcp_port()
    log = open(tmp_path / "a2a-agent.log", "w")
    server = subprocess.Popen(
        [sys.executable, AGENT, "--name", "agent-b", "--port", str(port), "--delay", str(DELAY)],
        env=environment(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert wait_for(lambda: _listening(port) or server.poll() is not None, 20) and server.poll() is None, \
            (tmp_path / "a2a-agent.log").read_text()
        code, doc = pilotctl(b, "expose", "80", f"127.0.0.1:{port}")
        assert code == 0, doc
        yield a, b, c
    finally:
        server.terminate()
        try:
            server.wait(5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        log.close()
        text = (tmp_path / "a2a-agent.log").read_text()
        assert "Traceback" not in text, text


def overlay_client(node) -> httpx.AsyncClient:
    # No read timeout: a slow agent's SSE stream may be quiet for longer than httpx's default 5 s.
    return httpx.AsyncClient(transport=pilotproto.aio.HTTPTransport(node), timeout=httpx.Timeout(20, read=None))


def request(text: str = TEXT) -> SendMessageRequest:
    return SendMessageRequest(message=new_text_message(text, role=Role.ROLE_USER))


@pytest.mark.asyncio
async def test_a2a_card_reply_and_streamed_reply_through_the_httpx_transport(agent_b):
    a, _, _ = agent_b
    async with await pilotproto.aio.connect(a) as node, overlay_client(node) as http:
        card = await A2ACardResolver(http, "http://agent-b/").get_agent_card()
        assert card.name == "agent-b" and card.capabilities.streaming
        assert [i.url for i in card.supported_interfaces] == ["http://agent-b/"]  # what the client follows

        client = ClientFactory(ClientConfig(httpx_client=http, streaming=False)).create(card)
        replies = [r async for r in client.send_message(request())]
        assert len(replies) == 1 and replies[0].WhichOneof("payload") == "task", replies
        assert replies[0].task.status.state == TaskState.TASK_STATE_COMPLETED
        assert get_stream_response_text(replies[0], delimiter="") == TEXT.upper()

        client = ClientFactory(ClientConfig(httpx_client=http, streaming=True)).create(card)
        start, events = time.monotonic(), []
        async for response in client.send_message(request()):
            events.append((time.monotonic() - start, response))
        kinds = [r.WhichOneof("payload") for _, r in events]
        assert kinds[0] == "task" and kinds[-1] == "status_update", kinds
        assert events[-1][1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
        chunks = [(t, get_stream_response_text(r, delimiter="")) for t, r in events if r.HasField("artifact_update")]
        assert "".join(text for _, text in chunks) == TEXT.upper()
        assert len(chunks) == len(TEXT.split())
        # Streamed, not buffered: each word arrived when the agent made it, DELAY apart, not all at the end.
        arrivals = [t for t, _ in chunks]
        assert arrivals[-1] - arrivals[0] >= (len(chunks) - 1) * DELAY * 0.5, arrivals

        # The connection is kept alive across the three requests and a second stream works on it too.
        again = [r async for r in client.send_message(request("again"))]
        assert get_stream_response_text(again[-2], delimiter="") == "AGAIN"


@pytest.mark.asyncio
async def test_a2a_untrusted_client_gets_a_clear_connect_error_fast(agent_b):
    a, _, c = agent_b
    async with await pilotproto.aio.connect(a) as node, overlay_client(node) as http:
        card = await A2ACardResolver(http, "http://agent-b/").get_agent_card()  # a card agent-c got somehow
    async with await pilotproto.aio.connect(c) as node, overlay_client(node) as http:
        start = time.monotonic()
        with pytest.raises(AgentCardResolutionError) as caught:
            await A2ACardResolver(http, "http://agent-b/").get_agent_card()
        assert time.monotonic() - start < 5
        message = str(caught.value)
        # agent-b is private: to a node it does not trust it does not exist (the daemon's code, message, hint)
        assert "[not_found] no node 'agent-b' is visible" in message and "hint:" in message, message
        connect_error = caught.value.__cause__  # the SDK wraps httpx's error, which carries the daemon's
        assert isinstance(connect_error, httpx.ConnectError) and isinstance(connect_error.__cause__, PilotError)
        assert connect_error.__cause__.code == "not_found"

        client = ClientFactory(ClientConfig(httpx_client=http, streaming=True)).create(card)
        start = time.monotonic()
        with pytest.raises(A2AClientError) as caught:
            [r async for r in client.send_message(request())]
        assert time.monotonic() - start < 5
        assert "[not_found] no node 'agent-b' is visible" in str(caught.value), caught.value
