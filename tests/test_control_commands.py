"""ControlCommands over a fake IPilotNode, reactor-free: names, arguments, result shapes, checks."""

import json

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from pilotproto.control.commands import ControlCommands
from pilotproto.control.server import ControlServerFactory
from pilotproto.errors import InvalidArgument, NotFound

from helpers import FakePilotNode

COMMANDS = ["accept", "approve", "connect", "handshake", "info", "listen", "lookup", "peers", "pending", "ping",
            "recv", "reject", "revoke", "shutdown", "trust"]
#: pilotproto/control/forward_commands.py's
COMMANDS = sorted(COMMANDS + ["forward", "forwards", "unforward", "expose", "exposes", "unexpose"])
#: pilotproto/control/message_commands.py's
COMMANDS = sorted(COMMANDS + ["send_message", "inbox", "inbox_delete", "outbox", "publish", "subscribe"])
#: pilotproto/control/card_commands.py's
COMMANDS = sorted(COMMANDS + ["card_set", "card_show", "card_delete", "find"])
#: pilotproto/control/mcp_commands.py's
COMMANDS = sorted(COMMANDS + ["mcp_serve", "mcp_servers", "mcp_unserve"])


@pytest.fixture
def node():
    return FakePilotNode(Clock())


def result_of(d):
    results = []
    d.addBoth(results.append)
    [result] = results
    return result


def exchange(node, *requests):
    """Send request dicts through the real protocol; the answers by id."""
    protocol = ControlServerFactory(ControlCommands(node).table()).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    for request in requests:
        protocol.dataReceived(json.dumps(request).encode() + b"\n")
    return {answer["id"]: answer for answer in map(json.loads, transport.value().splitlines())}


def test_the_table_is_todays_command_set(node):
    table = ControlCommands(node).table()
    assert sorted(table) == COMMANDS
    assert sorted(name for name, command in table.items() if command.upgrades) == ["accept", "connect", "listen", "subscribe"]


def test_the_node_must_provide_ipilotnode():
    with pytest.raises(TypeError, match="IPilotNode"):
        ControlCommands(object(), Clock())


@pytest.mark.parametrize("cmd, args, call, data", [
    ("info", {}, ("info",), {"hostname": "agent-a", "address": "0:0000.0000.0001", "pid": 1}),
    ("lookup", {"target": "agent-b"}, ("lookup", "agent-b"), {"hostname": "agent-b", "address": "0:0000.0000.0002"}),
    ("peers", {}, ("peers",), {"peers": []}),
    ("handshake", {"target": "agent-b", "reason": "hi"}, ("handshake", "agent-b", "hi"), {"peer": "agent-b", "status": "sent"}),
    ("pending", {}, ("pending",), {"pending": [], "outgoing": []}),
    ("approve", {"peer": "agent-b"}, ("approve", "agent-b"), {"peer": "agent-b", "trusted": True}),
    ("reject", {"peer": "agent-b"}, ("reject", "agent-b"), {"peer": "agent-b"}),
    ("trust", {}, ("trusted",), {"trusted": []}),
    ("revoke", {"peer": "agent-b"}, ("revoke", "agent-b"), {"peer": "agent-b"}),
    ("recv", {}, ("recv", None, 0), {"messages": []}),
    ("recv", {"count": 2, "timeout": 1.5}, ("recv", 2, 1.5), {"messages": []}),
    ("shutdown", {}, ("shutdown",), {"stopping": True, "pid": 1}),
])
def test_each_command_calls_the_node_and_answers_its_result(node, cmd, args, call, data):
    answers = exchange(node, {"id": 1, "cmd": cmd, "args": args})
    assert node.calls == [call]
    assert answers[1] == {"id": 1, "status": "ok", "data": data}


def test_ping_takes_todays_arguments_and_hands_the_node_bytes(node):
    answers = exchange(node, {"id": 1, "cmd": "ping", "args": {"target": "agent-b"}},
                       {"id": 2, "cmd": "ping", "args": {"target": "agent-b", "count": 2, "interval": 0,
                                                        "reply_timeout": 5, "payload": "hé"}})
    assert node.calls == [("ping", "agent-b", 4, 1.0, 2.0, b""), ("ping", "agent-b", 2, 0.0, 5.0, "hé".encode())]
    assert answers[2]["data"] == {"target": "agent-b", "sent": 2, "received": 2}


@pytest.mark.parametrize("args", [
    {"count": 0}, {"count": 10_001}, {"count": "4"}, {"interval": -1}, {"interval": 61}, {"reply_timeout": "2"},
    {"reply_timeout": True}, {"payload": 5}, {"payload": "x" * 1001}, {"target": ""}, {"target": 7},
])
def test_ping_checks_what_a_remote_caller_gets_wrong(node, args):
    commands = ControlCommands(node)
    with pytest.raises(InvalidArgument):
        commands.ping(**{"target": "agent-b", **args})
    assert node.calls == []


def test_node_errors_are_sent_with_their_code(node):
    answers = exchange(node, {"id": 1, "cmd": "lookup", "args": {"target": "ghost"}},
                       {"id": 2, "cmd": "lookup", "args": {}})
    assert answers[1]["code"] == "not_found" and answers[1]["hint"] == NotFound.hint
    assert answers[2]["code"] == "invalid_argument" and "target" in answers[2]["hint"]


def test_a_slow_node_answers_when_it_is_ready(node):
    node.results["info"] = slow = defer.Deferred()
    protocol = ControlServerFactory(ControlCommands(node).table()).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b'{"id":1,"cmd":"info"}\n')
    assert transport.value() == b""
    slow.callback({"hostname": "late"})
    assert json.loads(transport.value()) == {"id": 1, "status": "ok", "data": {"hostname": "late"}}


def test_listen_and_connect_go_through_the_nodes_dial_and_listen(node):
    commands = ControlCommands(node, Clock())
    upgrade = result_of(commands.streams.listen(4242))
    assert upgrade.data == {"port": 4242, "hostname": "agent-a", "address": "0:0000.0000.0001"}
    assert result_of(commands.streams.listen(4242)).value.code == "already_running"
    feed = StringTransport()
    upgrade.take_over(feed)
    connected = result_of(commands.streams.connect("agent-b", 4242))
    assert connected.data["peer"] == "agent-b" and connected.data["local_hostname"] == "agent-a"
    refused = result_of(commands.streams.connect("agent-b", 4343))
    assert refused.value.code == "connection_refused"
    assert json.loads(feed.value())["event"] == "incoming"
    assert node.calls == [("listen", 4242), ("listen", 4242), ("dial", "agent-b", 4242), ("dial", "agent-b", 4343)]
