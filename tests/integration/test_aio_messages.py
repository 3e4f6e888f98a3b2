"""
Messages (port 1001) and events (port 1002) through pilotproto.aio between
two real daemons: each arrives exactly once at the application, across a
restart of the receiver's daemon.
"""

from __future__ import annotations

import asyncio

import pytest

import pilotproto.aio

from .conftest import pilotctl
from .test_aio import pair  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.integration]


def restart(daemons, home, hostname):
    assert pilotctl(home, "daemon", "stop")[0] == 0
    code, doc = pilotctl(home, "daemon", "start", "--hostname", hostname, "--beacon", daemons.beacon.address)
    assert code == 0, doc


@pytest.mark.asyncio
async def test_messages_arrive_exactly_once_across_a_receiver_restart(pair, daemons):  # noqa: F811
    a, b = pair
    async with await pilotproto.aio.connect(a) as sender, await pilotproto.aio.connect(b) as receiver:
        for text in ("one", "two"):
            sent = await sender.send_message("agent-b", text)
            assert sent["state"] == "delivered" and sent["size"] == len(text), sent
        messages = receiver.messages(poll=5)
        first = await asyncio.wait_for(messages.__anext__(), 30)
        assert (first.text, first.data, first.peer, first.kind) == ("one", b"one", "agent-a", "message")
        await asyncio.to_thread(restart, daemons, b, "agent-b")
        sent = await sender.send_message("agent-b", b"three\xff", wait=30)
        assert sent["state"] in ("delivered", "queued"), sent
        rest = [await asyncio.wait_for(messages.__anext__(), 60) for _ in range(2)]
        assert [(m.text, m.data) for m in rest] == [("two", b"two"), (None, b"three\xff")]
        assert len({first.seq, *(m.seq for m in rest)}) == 3
        await messages.aclose()
        # "one" and "two" were handled (deleted); "three" was not asked past, so it stays.
        left = await receiver.inbox(kind="message")
        assert [m["seq"] for m in left["messages"]] == [rest[1].seq]


@pytest.mark.asyncio
async def test_events_arrive_exactly_once_across_a_subscriber_restart(pair, daemons):  # noqa: F811
    a, b = pair
    async with await pilotproto.aio.connect(a) as publisher, await pilotproto.aio.connect(b) as subscriber:
        events = subscriber.subscribe("news.*")
        next_event = asyncio.ensure_future(events.__anext__())
        # The subscription reaches the publisher's daemon in its own time.
        for _ in range(100):
            if "agent-b" in str((await publisher.publish("news.warmup", b"warm"))["subscribers"]):
                break
            await asyncio.sleep(0.2)
        else:
            pytest.fail("agent-b's subscription never reached agent-a")
        received = [await asyncio.wait_for(next_event, 30)]
        await publisher.publish("news.one", b"1")
        received.append(await asyncio.wait_for(events.__anext__(), 30))
        while received[-1].topic == "news.warmup":
            received.append(await asyncio.wait_for(events.__anext__(), 30))
        await asyncio.to_thread(restart, daemons, b, "agent-b")
        await publisher.publish("news.two", b"2")
        received.append(await asyncio.wait_for(events.__anext__(), 60))
        await events.aclose()
    topics = [e.topic for e in received if e.topic != "news.warmup"]
    assert topics == ["news.one", "news.two"]
    assert len({e.seq for e in received}) == len(received)
    # The receiver names the sender by hostname when its session knows it, else by address.
    address = pilotctl(a, "info")[1]["data"]["address"]
    assert all(e.address == address and e.peer in ("agent-a", address) for e in received), received
