"""Reactor-free tests of the process bridge (one stream <-> one process) and the McpServers worker."""

from __future__ import annotations

import json
import os
import sys

import pytest
from twisted.internet import defer, error
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from pilotproto.control.mcp_commands import McpCommands
from pilotproto.control.upgrade import StreamEnd as UpgradeStreamEnd
from pilotproto.errors import AlreadyRunning, InvalidArgument, NotFound, PilotError
from pilotproto.node import mcp_bridge
from pilotproto.node.mcp_bridge import KILL_GRACE, IProcessOwner, ProcessBridge, State
from pilotproto.node.mcp_servers import MAX_PROCESSES, CommandNotFound, McpServers
from pilotproto.node.mcp_specs import McpServerSpec, load_mcp_servers
from pilotproto.streams.transport import PilotAddress

from helpers import FakePilotNode, HalfCloseTransport

PEER = PilotAddress("agent-b", "0:0000.0000.0002", 1003)


class FakeProcess:
    """An IProcessTransport in memory: stdin bytes, signals, producers."""

    pid = 4242

    def __init__(self):
        self.stdin = b""
        self.stdin_closed = False
        self.signals = []
        self.producer = None
        self.reading = []

    def write(self, data):
        self.stdin += data

    def closeStdin(self):
        self.stdin_closed = True

    def signalProcess(self, name):
        if self.signals and self.signals[-1] == "gone":
            raise error.ProcessExitedAlready()
        self.signals.append(name)

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def pauseProducing(self):
        self.reading.append("pause")

    def resumeProducing(self):
        self.reading.append("resume")


class StreamTransport(HalfCloseTransport):
    def __init__(self):
        super().__init__()
        self.reading = []
        self.lost = False

    def pauseProducing(self):
        self.reading.append("pause")

    def resumeProducing(self):
        self.reading.append("resume")

    def unregisterProducer(self):
        self.producer = None


@implementer(IProcessOwner)
class Owner:
    def __init__(self, fail=None):
        self.fail = fail
        self.events = []
        self.process = FakeProcess()
        self.protocol = None
        self.stderr = []
        self.moved = {True: 0, False: 0}

    def spawn(self, bridge, protocol):
        if self.fail is not None:
            raise self.fail
        self.protocol = protocol
        return self.process

    def bridge_failed(self, bridge, problem):
        self.events.append(("failed", problem.code))

    def bridge_closed(self, bridge):
        self.events.append(("closed",))

    def stderr_line(self, bridge, line):
        self.stderr.append(line)

    def bytes_moved(self, bridge, to_overlay, count):
        self.moved[to_overlay] += count


def started(owner=None):
    owner = owner or Owner()
    clock = Clock()
    bridge = ProcessBridge(owner, clock, PEER)
    stream = StreamTransport()
    end = bridge.stream_protocol()
    end.makeConnection(stream)
    return bridge, owner, stream, clock, end


def test_bytes_and_half_closes_pass_both_ways_with_back_pressure():
    bridge, owner, stream, clock, end = started()
    assert bridge.state is State.OPEN
    end.dataReceived(b'{"jsonrpc":"2.0","id":1,"method":"initialize"}\n')
    assert owner.process.stdin.endswith(b"initialize\"}\n")
    owner.protocol.outReceived(b'{"jsonrpc":"2.0","id":1,"result":{}}\n')
    assert stream.value() == b'{"jsonrpc":"2.0","id":1,"result":{}}\n'
    assert owner.moved == {False: 47, True: 37}
    # A full stream pauses the stdout reading; a full stdin pauses the stream.
    stream.producer.pauseProducing()
    stream.producer.resumeProducing()
    stream.producer.stopProducing()  # the stream's end is the bridge's to act on
    assert owner.process.reading == ["pause", "resume"]
    assert owner.process.producer is stream
    end.readConnectionLost()
    assert owner.process.stdin_closed and not stream.write_closed
    owner.protocol.outConnectionLost()
    assert stream.write_closed
    owner.protocol.processEnded(Failure(error.ProcessDone(0)))
    assert bridge.state is State.EXITED and stream.disconnecting and stream.producer is None
    end.connectionLost(Failure(error.ConnectionDone()))
    assert bridge.state is State.CLOSED and owner.events == [("closed",)]


def test_the_stream_ending_ends_the_process_term_then_kill():
    bridge, owner, stream, clock, end = started()
    end.connectionLost(Failure(error.ConnectionLost()))
    assert bridge.state is State.STOPPING and owner.process.signals == ["TERM"] and owner.process.stdin_closed
    end.dataReceived(b"late")  # nothing reaches a process being ended
    assert owner.process.stdin == b""
    clock.advance(KILL_GRACE - 0.1)
    assert owner.process.signals == ["TERM"]
    clock.advance(0.2)
    assert owner.process.signals == ["TERM", "KILL"]
    owner.protocol.processEnded(Failure(error.ProcessTerminated(signal=9)))
    assert bridge.state is State.CLOSED and owner.events == [("closed",)]


def test_a_process_that_ends_in_time_is_not_killed():
    bridge, owner, stream, clock, end = started()
    end.connectionLost(None)
    owner.protocol.processEnded(Failure(error.ProcessDone(0)))
    clock.advance(KILL_GRACE * 2)
    assert owner.process.signals == ["TERM"] and not clock.getDelayedCalls()


def test_a_spawn_that_fails_resets_the_stream_and_tells_the_owner():
    bridge, owner, stream, clock, end = started(Owner(fail=CommandNotFound("no program 'x'")))
    assert stream.aborted and bridge.state is State.CLOSED
    assert owner.events == [("failed", "command_not_found")]
    end.connectionLost(Failure(error.ConnectionLost()))
    assert owner.events == [("failed", "command_not_found")]


def test_stderr_becomes_lines_bounded_and_flushed_at_the_end():
    bridge, owner, stream, clock, end = started()
    owner.protocol.errReceived(b"one\r\ntw")
    owner.protocol.errReceived(b"o\n" + b"x" * (mcp_bridge.MAX_STDERR_LINE + 10))
    assert owner.stderr == ["one", "two", "x" * mcp_bridge.MAX_STDERR_LINE]
    owner.protocol.errReceived(b"tail without newline")
    owner.protocol.processEnded(Failure(error.ProcessDone(0)))
    end.connectionLost(None)
    assert owner.stderr[-1] == "x" * 10 + "tail without newline"


def test_every_state_and_event_has_a_transition():
    events = [mcp_bridge.StreamUp, mcp_bridge.SpawnFailed, mcp_bridge.StreamLost, mcp_bridge.ProcessEnded,
              mcp_bridge.GraceOver]
    assert set(mcp_bridge.PROCESS_BRIDGE_TRANSITIONS) == {(s, e) for s in State for e in events}


# -- the worker ---------------------------------------------------------------------------


def result(d):
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred did not fire"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


class SpawningReactor(Clock):
    def __init__(self):
        super().__init__()
        self.spawned = []

    def spawnProcess(self, protocol, executable, args, env, path):
        self.spawned.append((executable, args, env, path))
        process = FakeProcess()
        protocol.makeConnection(process)
        return process


@pytest.fixture
def worker(tmp_path):
    reactor = SpawningReactor()
    node = FakePilotNode(reactor, str(tmp_path))
    servers = McpServers(reactor, node, str(tmp_path), environ={"PATH": os.path.dirname(sys.executable)})
    servers.startService()
    return servers, node, reactor, tmp_path


def open_stream(node, port, peer=PEER):
    protocol = node.listeners[port].factory.buildProtocol(peer)
    if protocol is not None:
        protocol.makeConnection(StreamTransport())
    return protocol


def test_serve_spawns_a_process_per_stream_and_is_saved(worker):
    servers, node, reactor, home = worker
    python = os.path.basename(sys.executable)
    served = result(servers.serve(1003, [python, "server.py"], str(home)))
    assert served["listening"] and served["argv"] == [python, "server.py"]
    open_stream(node, 1003)
    open_stream(node, 1003)
    assert len(reactor.spawned) == 2
    executable, args, env, path = reactor.spawned[0]
    assert executable == sys.executable and args == [python, "server.py"] and path == str(home)
    assert env["PILOT_PEER"] == "agent-b" and env["PILOT_PEER_ADDRESS"] == PEER.address and env["PILOT_PORT"] == "1003"
    assert servers.servers()["servers"][0]["active"] == 2
    saved = json.load(open(home / "config.json"))["mcp_servers"]
    assert saved == [{"port": 1003, "argv": [python, "server.py"], "cwd": str(home), "allow": []}]
    with pytest.raises(AlreadyRunning):
        result(servers.serve(1003, [python], str(home)))
    # Restored by the next worker from config.json.
    again = McpServers(reactor, FakePilotNode(reactor, str(home)), str(home), saved)
    again.startService()
    assert again.servers()["servers"][0]["listening"]
    removed = result(servers.unserve(1003))
    assert removed["removed"]["port"] == 1003 and 1003 not in node.listeners
    assert "mcp_servers" not in json.load(open(home / "config.json"))
    with pytest.raises(NotFound):
        servers.unserve(1003)


def test_a_missing_command_is_counted_not_fatal(worker):
    servers, node, reactor, home = worker
    result(servers.serve(1003, ["no-such-program-xyz"], str(home)))
    open_stream(node, 1003)
    entry = servers.servers()["servers"][0]
    assert entry["failed"] == 1 and entry["active"] == 0 and entry["last_error"]["code"] == "command_not_found"
    assert reactor.spawned == []
    result(servers.serve(1004, ["./missing.sh"], str(home)))
    open_stream(node, 1004)
    assert servers.servers()["servers"][1]["last_error"]["code"] == "command_not_found"


def test_allow_and_the_process_cap_refuse_streams(worker):
    servers, node, reactor, home = worker
    python = os.path.basename(sys.executable)
    result(servers.serve(1003, [python], str(home), ["0:0000.0000.0009"]))
    assert open_stream(node, 1003) is None
    assert servers.servers()["servers"][0]["refused"] == 1
    result(servers.serve(1005, [python], str(home)))
    for _ in range(MAX_PROCESSES):
        assert open_stream(node, 1005) is not None
    assert open_stream(node, 1005) is None


def test_specs_and_commands_check_their_arguments(tmp_path):
    with pytest.raises(InvalidArgument):
        McpServerSpec.checked(1003, [], str(tmp_path))
    with pytest.raises(InvalidArgument):
        McpServerSpec.checked(1003, ["a\0b"], str(tmp_path))
    with pytest.raises(InvalidArgument):
        McpServerSpec.checked(1003, ["x"], "relative/dir")
    with pytest.raises(InvalidArgument):
        load_mcp_servers([{"port": 1, "argv": ["x"], "cwd": "/"}, {"port": 1, "argv": ["y"], "cwd": "/"}])
    node = FakePilotNode(Clock())
    commands = McpCommands(node)
    with pytest.raises(InvalidArgument):
        commands.mcp_serve(argv="python", cwd="/")
    with pytest.raises(InvalidArgument):
        commands.mcp_serve(argv=["python"], cwd="/", allow="agent-b")
    result(commands.mcp_serve(argv=["python"], cwd="/"))
    result(commands.mcp_unserve())
    assert node.calls == [("mcp_serve", 1003, ["python"], "/", []), ("mcp_unserve", 1003)]


def test_an_upgraded_stream_whose_client_left_ignores_the_peers_fin():
    """The control socket closed first (an HTTP client dropping a connection); the peer's FIN comes later."""
    end = UpgradeStreamEnd()
    stream = StreamTransport()
    end.makeConnection(stream)
    socket_side = HalfCloseTransport()
    end.attach(socket_side)
    socket_side.connected = False
    end.readConnectionLost()
    assert not socket_side.write_closed
