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
