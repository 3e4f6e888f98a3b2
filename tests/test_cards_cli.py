"""pilotctl card / find: reading the card file, the control commands' checks, and the human output."""

import json

import pytest
from helpers import FakePilotNode
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from pilotproto.cli.card_commands import read_card_file, render_card, render_find
from pilotproto.control.commands import ControlCommands
from pilotproto.control.server import ControlServerFactory
from pilotproto.errors import InvalidArgument

ENTRY = {"hostname": "agent-b", "address": "0:0000.0000.0002", "version": 7, "verified": True,
         "card": {"name": "summarizer", "description": "Summarises", "tags": ["nlp"], "capabilities": [],
                  "services": [{"kind": "mcp", "port": 80, "path": "/mcp"}], "tools": ["fetch"]}}


def exchange(node, request):
    protocol = ControlServerFactory(ControlCommands(node).table()).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(json.dumps(dict(request, id=1)).encode() + b"\n")
    return json.loads(transport.value().splitlines()[0])


@pytest.mark.parametrize("request_, call", [
    ({"cmd": "card_set", "args": {"card": {"name": "x"}}}, ("card_set", {"name": "x"})),
    ({"cmd": "card_show", "args": {}}, ("card_show", None)),
    ({"cmd": "card_show", "args": {"peer": "agent-b"}}, ("card_show", "agent-b")),
    ({"cmd": "card_delete", "args": {}}, ("card_delete",)),
    ({"cmd": "find", "args": {"tag": "nlp", "text": "sum"}}, ("find", "nlp", None, "sum")),
])
def test_each_card_command_calls_the_node(request_, call):
    node = FakePilotNode(Clock())
    assert exchange(node, request_)["status"] == "ok"
    assert node.calls == [call]


@pytest.mark.parametrize("request_", [
    {"cmd": "card_set", "args": {"card": "name"}},
    {"cmd": "card_show", "args": {"peer": 5}},
    {"cmd": "find", "args": {"tag": ""}},
])
def test_bad_arguments_never_reach_the_node(request_):
    node = FakePilotNode(Clock())
    answer = exchange(node, request_)
    assert answer["status"] == "error" and answer["code"] == "invalid_argument", answer
    assert node.calls == []


def test_the_card_file_must_hold_a_json_object(tmp_path):
    path = tmp_path / "card.json"
    path.write_text('{"name": "x"}')
    assert read_card_file(str(path)) == {"name": "x"}
    for text in ("[1]", "{nope"):
        path.write_text(text)
        with pytest.raises(InvalidArgument, match="card file"):
            read_card_file(str(path))
    with pytest.raises(InvalidArgument, match="cannot read"):
        read_card_file(str(tmp_path / "missing.json"))


def test_human_output():
    text = render_find({"cards": [ENTRY], "total": 1, "rejected": 1})
    assert "summarizer  (agent-b, 0:0000.0000.0002)" in text and "service: mcp on port 80/mcp" in text
    assert "tools: fetch" in text and "Dropped 1 card" in text
    assert "No card matches" in render_find({"cards": [], "total": 0, "rejected": 0})
    assert "signature verified" in render_card(ENTRY)
    assert "has no card" in render_card({"card": None, "published": False})
    assert "not published yet" in render_card(dict(ENTRY, hostname="agent-a", published=False))
    assert render_card({"deleted": True, "published": True}) == "Deleted this node's card."
