"""
Forwards and exposes in config.json: checked on load, saved only when an add
succeeds, removed on --remove, restored at start (a taken port is reported,
not fatal); and the control commands' argument checks.
"""

from __future__ import annotations

import json
import os

import pytest
from helpers import FakePilotNode
from twisted.internet import error
from twisted.internet.testing import MemoryReactorClock

from pilotproto.control.commands import ControlCommands
from pilotproto.errors import AlreadyRunning, InvalidArgument, NotFound, StateError
from pilotproto.node.bridge_entries import PortInUse
from pilotproto.node.config import NodeConfig
from pilotproto.node.forwards import Forwards


class TakenPortsReactor(MemoryReactorClock):
    """A memory reactor on which some TCP ports are taken; port 0 gets 40000, 40001, ..."""

    def __init__(self, taken=()):
        super().__init__()
        self.taken = set(taken)
        self._next = 40000

    def listenTCP(self, port, factory, backlog=50, interface=""):
        if port in self.taken:
            raise error.CannotListenError(interface, port, OSError(98, "Address already in use"))
        if port == 0:
            port, self._next = self._next, self._next + 1
        listening = super().listenTCP(port, factory, backlog, interface)
        self.taken.add(port)
        return listening


def result(d):
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def saved(home) -> dict:
    with open(os.path.join(home, "config.json")) as f:
        return json.load(f)


@pytest.fixture
def home(tmp_path):
    path = str(tmp_path / "home")
    NodeConfig(hostname="agent-a", beacon="127.0.0.1:9000").save(path)
    return path


def test_saved_forwards_and_exposes_are_checked_on_load(home):
    doc = saved(home)
    doc["forwards"] = [{"bind": "localhost", "local_port": 8080, "target": "agent-b", "port": 80}]
    doc["exposes"] = [{"port": 80, "host": "127.0.0.1", "tcp_port": 8000}]
    json.dump(doc, open(os.path.join(home, "config.json"), "w"))
    config = NodeConfig.load(home)
    assert config.forwards == [{"bind": "127.0.0.1", "local_port": 8080, "target": "agent-b", "port": 80}]
    assert config.exposes == [{"port": 80, "host": "127.0.0.1", "tcp_port": 8000, "allow": []}]
    for bad in ([{"bind": "127.0.0.1", "local_port": 8080, "target": "agent b", "port": 80}],
                [{"bind": "127.0.0.1", "local_port": 70000, "target": "agent-b", "port": 80}],
                [{"bind": "127.0.0.1", "local_port": 8080, "target": "agent-b"}],
                {"not": "a list"}):
        doc["forwards"] = bad
        json.dump(doc, open(os.path.join(home, "config.json"), "w"))
        with pytest.raises(StateError):
            NodeConfig.load(home)


def test_a_config_without_forwards_does_not_grow_empty_lists(home):
    NodeConfig.load(home).save(home)
    assert "forwards" not in saved(home) and "exposes" not in saved(home)


def test_an_added_forward_is_saved_with_its_real_port_and_removed_on_unforward(home):
    reactor = TakenPortsReactor()
    forwards = Forwards(reactor, FakePilotNode(reactor), home)
    answer = forwards.forward(None, 0, "agent-b", 80)
    assert answer["local_port"] == 40000 and answer["listening"]
    assert saved(home)["forwards"] == [{"bind": "127.0.0.1", "local_port": 40000, "target": "agent-b", "port": 80}]
    assert saved(home)["hostname"] == "agent-a"  # every other setting kept
    with pytest.raises(AlreadyRunning):
        forwards.forward("127.0.0.1", 40000, "agent-c", 80)
    removed = result(forwards.unforward(None, 40000))["removed"]
    assert removed["local_port"] == 40000
    assert "forwards" not in saved(home)
    with pytest.raises(NotFound):
        forwards.unforward(None, 40000)


def test_a_forward_that_cannot_listen_changes_nothing_saved(home):
    reactor = TakenPortsReactor(taken={8080})
    forwards = Forwards(reactor, FakePilotNode(reactor), home)
    before = saved(home)
    with pytest.raises(PortInUse) as caught:
        forwards.forward(None, 8080, "agent-b", 80)
    assert caught.value.code == "port_in_use" and "8080" in caught.value.hint
    with pytest.raises(InvalidArgument):
        forwards.forward(None, 8081, "not a name", 80)
    assert saved(home) == before and forwards.forwards() == {"forwards": []}


def test_restored_at_start_and_a_taken_port_is_listed_with_its_error(home):
    reactor = TakenPortsReactor(taken={8080})
    specs = [{"bind": "127.0.0.1", "local_port": 8080, "target": "agent-b", "port": 80},
             {"bind": "127.0.0.1", "local_port": 8081, "target": "agent-b", "port": 81}]
    node = FakePilotNode(reactor)
    forwards = Forwards(reactor, node, home, specs, [{"port": 80, "host": "127.0.0.1", "tcp_port": 8000, "allow": []}])
    forwards.startService()
    listed = forwards.forwards()["forwards"]
    assert [(f["local_port"], f["listening"]) for f in listed] == [(8080, False), (8081, True)]
    assert listed[0]["error"]["code"] == "port_in_use"
    assert forwards.exposes()["exposes"][0]["listening"] and 80 in node.listeners
    # Added again once the port is free, the failed one is replaced.
    reactor.taken.discard(8080)
    assert forwards.forward(None, 8080, "agent-b", 80)["listening"]
    assert len(forwards.forwards()["forwards"]) == 2
    result(forwards.stopService())
    assert 80 not in node.listeners


def test_expose_resolves_allow_names_through_trust_and_saves_addresses(home):
    reactor = TakenPortsReactor()
    node = FakePilotNode(reactor)
    node.results["trusted"] = {"trusted": [{"hostname": "agent-b", "address": "0:0000.0000.0002"}]}
    forwards = Forwards(reactor, node, home)
    answer = result(forwards.expose(80, None, 8000, ["agent-b", "0:0000.0000.0007"]))
    assert answer["allow"] == [{"address": "0:0000.0000.0002", "name": "agent-b"},
                               {"address": "0:0000.0000.0007", "name": None}]
    assert saved(home)["exposes"] == [{"port": 80, "host": "127.0.0.1", "tcp_port": 8000,
                                       "allow": ["0:0000.0000.0002", "0:0000.0000.0007"]}]
    # Unknown to trust and to the beacon: refused, nothing more saved.
    with pytest.raises(NotFound):
        result(forwards.expose(81, None, 8001, ["agent-z"]))
    # Something else listens on the port: already_running, nothing saved.
    node.listeners[82] = object()
    with pytest.raises(error.CannotListenError):
        result(forwards.expose(82, None, 8002))
    assert [e["port"] for e in saved(home)["exposes"]] == [80]
    result(forwards.unexpose(80))
    assert "exposes" not in saved(home)


def test_control_commands_check_their_arguments(home):
    reactor = TakenPortsReactor()
    node = FakePilotNode(reactor)
    table = ControlCommands(node, reactor).table()
    for command, args in [("forward", {"local_port": "80", "target": "agent-b", "port": 80}),
                          ("forward", {"local_port": 80, "target": "", "port": 80}),
                          ("forward", {"local_port": 80, "target": "agent-b", "port": 0}),
                          ("expose", {"port": 80, "tcp_port": 0}),
                          ("expose", {"port": 80, "tcp_port": 8000, "allow": "agent-b"}),
                          ("unexpose", {"port": 70000})]:
        with pytest.raises(InvalidArgument):
            table[command].run(**args)
    assert node.calls == []
    result(table["forward"].run(local_port=0, target="agent-b", port=80))
    result(table["expose"].run(port=80, tcp_port=8000, allow=["agent-b"]))
    assert node.calls == [("forward", None, 0, "agent-b", 80), ("expose", 80, None, 8000, ["agent-b"])]
