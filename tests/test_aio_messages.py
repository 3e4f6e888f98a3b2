"""
Messages and events in pilotproto.aio against an in-test control socket
(tests/test_aio_fakes.py) that follows the contract: each inbox item is yielded
once and deleted only when the next is asked for; both iterators survive the
daemon going away and resume after the last seq without a duplicate.
"""

from __future__ import annotations

import asyncio
import base64

import pytest
import pytest_asyncio

import pilotproto.aio as aio
from test_aio_fakes import FakeDaemon, line, ok
from pilotproto.errors import Timeout

ADDRESS_A = "0:A91F.0000.7C2E"


@pytest_asyncio.fixture
async def daemon(tmp_path):
    fake = await FakeDaemon(str(tmp_path)).start()
    yield fake
    await fake.stop()


def item(seq: int, text: str) -> dict:
    data = text.encode()
    return {"seq": seq, "id": f"{seq:016x}", "kind": "message", "from": "agent-a", "address": ADDRESS_A,
            "received_at": 1700000000 + seq, "size": len(data), "sha256": "0" * 64, "text": text,
            "data": base64.b64encode(data).decode()}


class Inbox:
    """The daemon's store, as the contract describes it (items stay until deleted)."""

    def __init__(self, daemon: FakeDaemon, items: list[dict]):
        self.items = {i["seq"]: i for i in items}
        self.deleted: list[int] = []
        self.polls: list[int] = []
        self.arrived = asyncio.Event()
        daemon.commands.update(inbox=self.inbox, inbox_delete=self.delete)

    async def inbox(self, args):
        self.polls.append(args["after"])
        for _ in range(int(args["timeout"] * 50) + 1):
            found = [self.items[s] for s in sorted(self.items) if s > args["after"]][: args["count"]]
            if found:
                return {"messages": found, "last": max(self.items)}
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), 0.02)
            except TimeoutError:
                pass
        raise Timeout("no message arrived")

    async def delete(self, args):
        gone = [s for s in args["seqs"] if self.items.pop(s, None) is not None]
        self.deleted += gone
        return {"deleted": len(gone)}

    def add(self, entry: dict) -> None:
        self.items[entry["seq"]] = entry
        self.arrived.set()


@pytest.mark.asyncio
async def test_each_item_is_yielded_once_and_deleted_when_the_next_is_asked_for(daemon):
    inbox = Inbox(daemon, [item(1, "one"), item(2, "two")])
    async with await aio.connect(daemon.home) as node:
        messages = node.messages(poll=0.2)
        first = await asyncio.wait_for(messages.__anext__(), 5)
        assert (first.seq, first.text, first.data, first.peer, first.kind) == (1, "one", b"one", "agent-a", "message")
        assert inbox.deleted == []  # not yet handled: still in the inbox
        second = await asyncio.wait_for(messages.__anext__(), 5)
        assert second.seq == 2 and inbox.deleted == [1]
        inbox.add(item(3, "three"))
        third = await asyncio.wait_for(messages.__anext__(), 5)
        assert third.text == "three" and inbox.deleted == [1, 2]
        await messages.aclose()
    assert inbox.deleted == [1, 2]  # three was not asked past: it stays


@pytest.mark.asyncio
async def test_messages_resume_after_the_daemon_restarts_without_duplicates(daemon):
    inbox = Inbox(daemon, [item(1, "one"), item(2, "two")])
    got = []
    async with await aio.connect(daemon.home) as node:
        messages = node.messages(poll=0.2)
        got.append(await asyncio.wait_for(messages.__anext__(), 5))
        got.append(await asyncio.wait_for(messages.__anext__(), 5))
        await daemon.stop()  # the receiver's daemon restarts while 2 is being handled
        following = asyncio.create_task(messages.__anext__())
        await asyncio.sleep(0.5)
        assert not following.done()  # waiting for the daemon, not failing
        # Back, with the durable store: 2 (its delete failed) and a new 3.
        restarted = Inbox(daemon, [item(2, "two"), item(3, "three")])
        await daemon.start()
        got.append(await asyncio.wait_for(following, 10))
        await messages.aclose()
    assert [m.seq for m in got] == [1, 2, 3]
    assert inbox.deleted == [1] and restarted.deleted == [2]
    assert restarted.polls[0] == 2  # resumed after the last seq it yielded


@pytest.mark.asyncio
async def test_messages_without_a_daemon_say_so(tmp_path):
    node = aio.Node(str(tmp_path))
    with pytest.raises(aio.NotRunning):
        await node.messages().__anext__()


@pytest.mark.asyncio
async def test_send_message_and_publish_carry_base64(daemon):
    async def send_message(args):
        return {"id": "00000000000000aa", "peer": args["target"], "address": ADDRESS_A,
                "size": len(base64.b64decode(args["data"])), "sha256": "", "state": "delivered", "wait": args["wait"]}

    async def publish(args):
        return {"id": "00000000000000bb", "topic": args["topic"], "size": len(base64.b64decode(args["data"])),
                "subscribers": ["agent-b"]}

    daemon.commands.update(send_message=send_message, publish=publish)
    async with await aio.connect(daemon.home) as node:
        sent = await node.send_message("agent-b", "héllo", wait=3)
        assert sent["state"] == "delivered" and sent["size"] == len("héllo".encode()) and sent["wait"] == 3
        published = await node.publish("news.weather", b"\x00\xff")
        assert published["size"] == 2 and published["subscribers"] == ["agent-b"]
        with pytest.raises(aio.InvalidArgument, match="at most 65536"):
            await node.send_message("agent-b", b"x" * 65537)
        with pytest.raises(aio.InvalidArgument):
            await node.publish("no spaces", b"")
    assert [r["args"]["data"] for r in daemon.requests] == [base64.b64encode("héllo".encode()).decode(), "AP8="]


def event(seq: int, topic: str) -> bytes:
    return line({"event": "event", "seq": seq, "id": f"{seq:016x}", "topic": topic, "from": "agent-a",
                 "address": ADDRESS_A, "published_at": 1700000000.5, "data": base64.b64encode(topic.encode()).decode(),
                 "text": topic})


@pytest.mark.asyncio
async def test_subscribe_resumes_after_the_last_seq_across_a_restart(daemon):
    subscriptions = []

    async def first(request_id, args, reader, writer):
        subscriptions.append(args)
        ok(writer, request_id, {"pattern": args["pattern"], "last": 5})
        writer.write(event(6, "news.a") + b'{"event":"something_new"}\n' + event(7, "news.b"))
        await writer.drain()
        # then the daemon goes away (below)

    async def second(request_id, args, reader, writer):
        subscriptions.append(args)
        ok(writer, request_id, {"pattern": args["pattern"], "last": 9})
        # The replay after `after` may repeat what the client already has.
        writer.write(event(7, "news.b") + event(8, "news.c") + event(9, "news.d"))
        await writer.drain()
        await reader.read()

    daemon.upgrades["subscribe"] = first
    got = []
    async with await aio.connect(daemon.home) as node:
        events = node.subscribe("news.*")
        for _ in range(2):
            got.append(await asyncio.wait_for(events.__anext__(), 5))
        await daemon.stop()
        daemon.upgrades["subscribe"] = second
        following = asyncio.create_task(events.__anext__())
        await asyncio.sleep(0.3)
        await daemon.start()
        got.append(await asyncio.wait_for(following, 10))
        got.append(await asyncio.wait_for(events.__anext__(), 5))
        await events.aclose()
    assert [(e.seq, e.topic, e.data, e.peer) for e in got] == [
        (6, "news.a", b"news.a", "agent-a"), (7, "news.b", b"news.b", "agent-a"),
        (8, "news.c", b"news.c", "agent-a"), (9, "news.d", b"news.d", "agent-a")]
    assert subscriptions == [{"pattern": "news.*"}, {"pattern": "news.*", "after": 7}]


@pytest.mark.asyncio
async def test_subscribe_checks_the_pattern_and_says_when_no_daemon_runs(tmp_path):
    node = aio.Node(str(tmp_path))
    with pytest.raises(aio.InvalidArgument):
        node.subscribe("news/*")
    with pytest.raises(aio.NotRunning):
        await node.subscribe("news.*").__anext__()


@pytest.mark.asyncio
async def test_outbox_is_one_control_request_waiting_as_long_as_asked(daemon):
    async def outbox(args):
        return {"messages": [{"id": args["id"], "state": "delivered", "via": "beacon", "sealed": True}],
                "queues": [], "asked": args}

    daemon.commands.update(outbox=outbox)
    async with await aio.connect(daemon.home) as node:
        found = await node.outbox("00000000000000aa", wait=2)
        assert found["messages"][0]["via"] == "beacon"
        assert found["asked"] == {"id": "00000000000000aa", "wait": 2, "count": 100}
        assert (await node.outbox())["asked"] == {"id": None, "wait": 0, "count": 100}
    assert [r["cmd"] for r in daemon.requests] == ["outbox", "outbox"]
