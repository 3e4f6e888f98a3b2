"""
An a2a-sdk client on one agent talking to an A2A agent on another, by name,
through pilotproto's httpx transport: the SDK is unchanged, it is only handed
an ``httpx.AsyncClient`` whose transport opens overlay streams.

    python examples/a2a_pair/client.py --home HOME http://agent-b/ "hello over the overlay"

fetches ``http://agent-b/.well-known/agent-card.json`` (A2ACardResolver),
sends the text once as ``message/send`` and prints the finished task's
answer, then again as ``message/stream`` and prints each SSE event as it
arrives.  Needs ``pip install 'pilotproto[aio]' a2a-sdk``.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.helpers.proto_helpers import get_stream_response_text, new_text_message
from a2a.types.a2a_pb2 import Role, SendMessageRequest, TaskState

import pilotproto.aio


def overlay_client(node: pilotproto.aio.Node) -> httpx.AsyncClient:
    """The httpx client the a2a-sdk gets: overlay streams underneath; no read timeout, so a long SSE stream is
    not cut between two events of a slow agent (connecting still fails fast: the daemon answers at once)."""
    return httpx.AsyncClient(transport=pilotproto.aio.HTTPTransport(node), timeout=httpx.Timeout(30, read=None))


async def ask(node: pilotproto.aio.Node, url: str, text: str, out=print) -> None:
    async with overlay_client(node) as http:
        card = await A2ACardResolver(http, url).get_agent_card()
        out(f"card: {card.name} at {card.supported_interfaces[0].url}: {card.description}")
        request = SendMessageRequest(message=new_text_message(text, role=Role.ROLE_USER))

        client = ClientFactory(ClientConfig(httpx_client=http, streaming=False)).create(card)
        async for response in client.send_message(request):
            out(f"reply: {get_stream_response_text(response, delimiter='')}")

        client = ClientFactory(ClientConfig(httpx_client=http, streaming=True)).create(card)
        start = time.monotonic()
        async for response in client.send_message(request):
            kind = response.WhichOneof("payload")
            state = f" {TaskState.Name(response.status_update.status.state)}" if kind == "status_update" else ""
            chunk = get_stream_response_text(response, delimiter="")
            out(f"  +{time.monotonic() - start:.2f}s {kind}{state}" + (f" {chunk!r}" if chunk else ""))


async def main(home: str | None, url: str, text: str) -> None:
    async with await pilotproto.aio.connect(home) as node:
        await ask(node, url, text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", help="the agent's pilot home (default $PILOT_HOME or ~/.pilot)")
    parser.add_argument("url", help="the other agent's overlay URL (http://agent-b/)")
    parser.add_argument("text")
    args = parser.parse_args()
    asyncio.run(main(args.home, args.url, args.text))
