"""The control socket's message and event commands over a fake node: base64, checks, the subscribe feed."""

import base64
import json

import pytest
from twisted.internet import defer
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from pilotproto.control.commands import ControlCommands
from pilotproto.control.message_commands import MessageCommands
from pilotproto.errors import InvalidArgument
from pilotproto.interfaces import IPilotNode


class Handle:
    last = 2
    closed = False

    def close(self):
        self.closed = True


@implementer(IPilotNode)
class MailNode:
    reactor = None
    home = "/fake"

    def __init__(self):
        self.calls = []
        self.handle = Handle()
        self.on_event = None

    def send_message(self, target, data, wait=10):
        self.calls.append(("send_message", target, data, wait))
        return defer.succeed({"state": "queued"})

    def subscribe(self, pattern, after, on_event):
        self.on_event = on_event
        on_event({"event": "event", "seq": 1})  # the replay comes before the ok line
        on_event({"event": "event", "seq": 2})
        return defer.succeed(self.handle)


def test_the_commands_are_in_the_daemons_table():
    table = ControlCommands(MailNode()).table()
    assert {"send_message", "inbox", "inbox_delete", "publish", "subscribe"} <= set(table)
    assert table["subscribe"].upgrades and not table["send_message"].upgrades


def test_send_message_takes_base64_and_checks_it():
    node = MailNode()
    commands = MessageCommands(node)
    commands.send_message("agent-b", base64.b64encode(b"\x00hi").decode(), 0)
    assert node.calls == [("send_message", "agent-b", b"\x00hi", 0)]
    for data, wait in (("not base64!", 1), (base64.b64encode(b"x" * 65537).decode(), 1), ("aGk=", 61), (b"aGk=", 1)):
        with pytest.raises(InvalidArgument):
            commands.send_message("agent-b", data, wait)


def test_subscribe_sends_the_replay_after_the_ok_line_then_live_events():
    node = MailNode()
    upgrade = MessageCommands(node).subscribe("news.*", 0).result
    assert upgrade.data == {"pattern": "news.*", "last": 2}
    transport = StringTransport()
    owner = upgrade.take_over(transport)
    node.on_event({"event": "event", "seq": 3})
    assert [json.loads(line)["seq"] for line in transport.value().splitlines()] == [1, 2, 3]
    owner.connectionLost(None)
    assert node.handle.closed


@implementer(IPilotNode)
class LogNode:
    """A node with an event log: ``subscribe`` replays what is after ``after``, then sends live events."""

    reactor = None
    home = "/fake"

    def __init__(self):
        self.log = []
        self.feeds = []  # (handle, on_event)
        self.afters = []

    def subscribe(self, pattern, after, on_event):
        self.afters.append(after)
        for event in self.log:
            if after is not None and event["seq"] > after:
                on_event(event)
        handle = Handle()
        self.feeds.append((handle, on_event))
        return defer.succeed(handle)

    def publish(self, seq):
        event = {"event": "event", "seq": seq}
        self.log.append(event)
        for handle, on_event in self.feeds:
            if not handle.closed:
                on_event(event)


def test_a_feed_whose_client_stops_reading_holds_nothing_and_catches_up_from_the_log():
    node = LogNode()
    node.publish(1)
    upgrade = MessageCommands(node).subscribe("news.*", 0).result
    transport = StringTransport()
    owner = upgrade.take_over(transport)
    assert transport.producer is owner and transport.streaming
    owner.pauseProducing()  # the client's socket buffer is full
    for seq in (2, 3, 4):
        node.publish(seq)
    assert [json.loads(line)["seq"] for line in transport.value().splitlines()] == [1]
    owner.resumeProducing()
    node.publish(5)
    assert [json.loads(line)["seq"] for line in transport.value().splitlines()] == [1, 2, 3, 4, 5]
    assert node.afters == [0, 1]  # caught up from the last seq written
    assert node.feeds[0][0].closed and not node.feeds[1][0].closed
    owner.connectionLost(None)
    assert node.feeds[1][0].closed
