"""
An A2A agent written against the official a2a-sdk, served by uvicorn on
loopback TCP, the way any A2A agent is run.  Nothing in it knows about pilot:
``pilotctl expose 80 127.0.0.1:PORT`` puts it on the overlay, where peers
reach it as ``http://NAME/`` whatever NATs sit between them.

    python examples/a2a_pair/agent.py --name agent-b --port 8001 [--skill upper|reverse]

The one thing to get right is the card's URL (``--url``, default
``http://NAME/``): it is where clients send their requests after reading the
card, so it must be the agent's overlay URL, not ``http://127.0.0.1:PORT/``,
which means nothing to a peer.

The agent answers each message with a task whose artifact is the text
transformed (upper-cased or reversed), streamed a word at a time
(``--delay`` seconds apart) before the task completes: a non-streaming
``send_message`` gets the finished task, ``message/stream`` sees each word as
an SSE event as it is made.
"""

from __future__ import annotations

import argparse
import asyncio

import uvicorn
from a2a.helpers.proto_helpers import new_task_from_user_message, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types.a2a_pb2 import AgentCapabilities, AgentCard, AgentInterface, AgentSkill
from a2a.utils.constants import PROTOCOL_VERSION_CURRENT, TransportProtocol
from starlette.applications import Starlette

SKILLS = {
    "upper": ("upper-cases your text", lambda word: word.upper()),
    "reverse": ("reverses your text", lambda word: word[::-1]),
}


class WordAgent(AgentExecutor):
    """Transforms the user's text and streams the result one word per artifact chunk."""

    def __init__(self, skill: str, delay: float):
        self.transform = SKILLS[skill][1]
        self.reverse_words = skill == "reverse"
        self.delay = delay

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        task = context.current_task
        if task is None:
            task = new_task_from_user_message(context.message)
            await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        await updater.start_work()
        words = context.get_user_input().split()
        if self.reverse_words:
            words.reverse()
        for i, word in enumerate(words):
            await asyncio.sleep(self.delay)  # "thinking": a streaming client sees each word as it comes
            text = self.transform(word) + (" " if i < len(words) - 1 else "")
            await updater.add_artifact([new_text_part(text)], artifact_id="answer", name="answer",
                                       append=i > 0, last_chunk=i == len(words) - 1)  # fmt: skip
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        task = context.current_task
        if task is not None:
            await TaskUpdater(event_queue, task.id, task.context_id).cancel()


def agent_card(name: str, url: str, skill: str) -> AgentCard:
    """The card served at /.well-known/agent-card.json; ``url`` is the overlay URL peers use."""
    description, _ = SKILLS[skill]
    return AgentCard(
        name=name,
        description=f"{name} {description}, one word at a time",
        version="1.0.0",
        supported_interfaces=[AgentInterface(url=url, protocol_binding=TransportProtocol.JSONRPC.value,
                                             protocol_version=PROTOCOL_VERSION_CURRENT)],
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(id=skill, name=skill, description=description, tags=["text", skill],
                           examples=["hello over the overlay"])],
    )


def make_app(name: str, url: str, skill: str = "upper", delay: float = 0.05) -> Starlette:
    """The agent as an ASGI app: the card route and the JSON-RPC endpoint at the card's URL path (/)."""
    card = agent_card(name, url, skill)
    handler = DefaultRequestHandler(agent_executor=WordAgent(skill, delay), task_store=InMemoryTaskStore(),
                                    agent_card=card)  # fmt: skip
    return Starlette(routes=[*create_agent_card_routes(card), *create_jsonrpc_routes(handler, rpc_url="/")])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="the agent's pilot hostname (agent-b)")
    parser.add_argument("--port", type=int, required=True, help="the loopback TCP port uvicorn listens on")
    parser.add_argument("--url", help="the URL in the card (default http://NAME/, its overlay URL)")
    parser.add_argument("--skill", choices=sorted(SKILLS), default="upper")
    parser.add_argument("--delay", type=float, default=0.05, help="seconds between streamed words")
    args = parser.parse_args(argv)
    app = make_app(args.name, args.url or f"http://{args.name}/", args.skill, args.delay)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
