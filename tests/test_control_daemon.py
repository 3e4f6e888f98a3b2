"""
DaemonNode against a real ControlService over a real UNIX socket, with a
fake node behind it: every IPilotNode method, streams both ways with real
overlay addresses, Twisted's failure conventions, and a pilot: server that
listens again after its daemon restarts (in this process, and in another).
"""

import os
import subprocess
import sys
import time

import pytest
import pytest_twisted
from twisted.internet import defer, error, reactor, task
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import globalLogPublisher
from twisted.protocols.basic import LineReceiver
from zope.interface.verify import verifyObject

from pilotproto.control.daemon import DaemonNode
from pilotproto.control.service import ControlService
from pilotproto.errors import NotFound, NotRunning, PilotError, Timeout
from pilotproto.interfaces import IPilotNode
from pilotproto.streams.transport import PilotAddress

from helpers import FakePilotNode

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
A = PilotAddress("agent-a", FakePilotNode.address, 0)


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


@pytest.fixture
def home(tmp_path):
    path = tmp_path / "h"
    path.mkdir(mode=0o700)
    return str(path)


@pytest.fixture
def node(home):
    return FakePilotNode(reactor, home)


@pytest_twisted.async_yield_fixture
async def served(node):
    service = ControlService(node)
    service.startService()
    yield service
    if service.running:
        await service.stopService()


@pytest.fixture
def log_lines():
    lines = []

    def observer(event):
        from twisted.logger import formatEvent

        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    yield lines
    globalLogPublisher.removeObserver(observer)


class Shout(LineReceiver):
    delimiter = b"\n"

    def lineReceived(self, line):
        host, peer = self.transport.getHost(), self.transport.getPeer()
        self.sendLine(line.upper() + f" to {host.hostname}:{host.port} from {peer.hostname}".encode())


class Collect(LineReceiver):
    delimiter = b"\n"

    def connectionMade(self):
        self.got = defer.Deferred()

    def lineReceived(self, line):
        self.got.callback(line)


async def round_trip(daemon, port, text=b"hello"):
    proto = await daemon.dial("agent-b", port, Factory.forProtocol(Collect))
    proto.sendLine(text)
    answer = await proto.got
    proto.transport.loseConnection()
    return proto, answer


async def eventually(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        await sleep(0.05)


def test_daemon_node_provides_ipilotnode(home):
    assert verifyObject(IPilotNode, DaemonNode(reactor, home))


@pytest_twisted.ensureDeferred
async def test_every_command_goes_through_the_control_socket(home, node, served):
    daemon = DaemonNode(reactor, home)
    assert (await daemon.info())["hostname"] == "agent-a"
    assert (await daemon.lookup("agent-b"))["address"] == FakePilotNode.peer_address
    assert (await daemon.ping("agent-b", 2, 0.0, 1.0, "hé".encode()))["received"] == 2
    assert await daemon.peers() == {"peers": []}
    assert (await daemon.handshake("agent-b", "why not"))["status"] == "sent"
    assert await daemon.pending() == {"pending": [], "outgoing": []}
    assert (await daemon.approve("agent-b"))["trusted"] is True
    await daemon.reject("agent-b")
    assert await daemon.trusted() == {"trusted": []}
    await daemon.revoke("agent-b")
    assert await daemon.recv(3, 0.5) == {"messages": []}
    assert (await daemon.shutdown())["stopping"] is True
    assert node.calls == [
        ("info",), ("lookup", "agent-b"), ("ping", "agent-b", 2, 0.0, 1.0, "hé".encode()), ("peers",),
        ("handshake", "agent-b", "why not"), ("pending",), ("approve", "agent-b"), ("reject", "agent-b"),
        ("trusted",), ("revoke", "agent-b"), ("recv", 3, 0.5), ("shutdown",),
    ]
    with pytest.raises(NotFound):
        await daemon.lookup("ghost")


@pytest_twisted.ensureDeferred
async def test_a_command_that_never_answers_times_out(home, node, served, monkeypatch):
    from pilotproto.common import timeouts

    monkeypatch.setattr(timeouts, "CONTROL_COMMAND", 0.3)
    node.results["peers"] = defer.Deferred()
    with pytest.raises(Timeout):
        await DaemonNode(reactor, home)._call("peers", timeout=0.3)


@pytest_twisted.ensureDeferred
async def test_streams_both_ways_with_real_overlay_addresses(home, node, served):
    daemon = DaemonNode(reactor, home)
    listening = await daemon.listen(4242, Factory.forProtocol(Shout))
    assert listening.getHost() == PilotAddress("agent-a", FakePilotNode.address, 4242)
    proto, answer = await round_trip(daemon, 4242)
    # The server saw itself on port 4242 and the dialler (here: agent-a itself) as its peer.
    assert answer == b"HELLO to agent-a:4242 from agent-a"
    assert proto.transport.getPeer() == PilotAddress("agent-b", FakePilotNode.peer_address, 4242)
    assert proto.transport.getHost() == A
    await listening.stopListening()
    await eventually(lambda: 4242 not in node.listeners)  # the daemon saw the listen connection close
    with pytest.raises(error.ConnectionRefusedError):
        await round_trip(daemon, 4242)


# -- Twisted's failure conventions through the daemon ------------------------------------


@pytest_twisted.ensureDeferred
async def test_nothing_listening_is_connection_refused(home, served):
    with pytest.raises(error.ConnectionRefusedError) as caught:
        await DaemonNode(reactor, home).dial("agent-b", 5555, Factory.forProtocol(Protocol))
    assert isinstance(caught.value, PilotError) and caught.value.code == "connection_refused"


@pytest_twisted.ensureDeferred
async def test_an_unknown_peer_is_a_dns_lookup_error(home, served):
    with pytest.raises(error.DNSLookupError) as caught:
        await DaemonNode(reactor, home).dial("ghost", 80, Factory.forProtocol(Protocol))
    assert isinstance(caught.value, error.ConnectError) and isinstance(caught.value, NotFound)
    assert caught.value.code == "not_found"


@pytest_twisted.ensureDeferred
async def test_a_timeout_is_a_timeout_error(home, node, served):
    node.results["dial"] = Timeout("agent-b did not accept a stream to port 80 within 30 s")
    with pytest.raises(error.TimeoutError) as caught:
        await DaemonNode(reactor, home).dial("agent-b", 80, Factory.forProtocol(Protocol))
    assert caught.value.code == "timeout" and "within 30 s" in str(caught.value)


@pytest_twisted.ensureDeferred
async def test_no_daemon_is_connection_refused_with_a_hint(home):
    with pytest.raises(error.ConnectionRefusedError) as caught:
        await DaemonNode(reactor, home).dial("agent-b", 80, Factory.forProtocol(Protocol))
    assert isinstance(caught.value, NotRunning) and "pilotctl daemon start" in caught.value.hint
    with pytest.raises(NotRunning):
        await DaemonNode(reactor, home).info()


def test_listen_without_a_daemon_has_already_failed_when_it_returns(home):
    d = DaemonNode(reactor, home).listen(80, Factory.forProtocol(Protocol))
    failures = []
    d.addErrback(failures.append)
    [failure] = failures
    assert failure.check(error.CannotListenError) and failure.value.code == "not_running"
    assert "no pilot daemon" in str(failure.value) and failure.value.port == 80


@pytest_twisted.ensureDeferred
async def test_a_taken_port_cannot_be_listened_on(home, served):
    daemon = DaemonNode(reactor, home)
    first = await daemon.listen(8080, Factory.forProtocol(Protocol))
    with pytest.raises(error.CannotListenError) as caught:
        await daemon.listen(8080, Factory.forProtocol(Protocol))
    assert caught.value.code == "already_running" and caught.value.port == 8080
    await first.stopListening()


# -- a pilot: server survives a daemon restart ------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_listens_again_after_the_daemon_restarts(home, node, served, log_lines):
    daemon = DaemonNode(reactor, home)
    listening = await daemon.listen(4242, Factory.forProtocol(Shout))
    await served.stopService()
    await eventually(lambda: any("lost the pilot daemon" in line for line in log_lines))
    assert 4242 not in node.listeners
    again = ControlService(node)
    again.startService()
    try:
        await eventually(lambda: any("listening again on pilot port 4242" in line for line in log_lines))
        _, answer = await round_trip(daemon, 4242)
        assert answer.startswith(b"HELLO")
        await listening.stopListening()
        await eventually(lambda: 4242 not in node.listeners)
    finally:
        await again.stopService()


FAKE_DAEMON = r"""
import sys
from twisted.internet import reactor
from helpers import FakePilotNode
from pilotproto.control.service import ControlService

node = FakePilotNode(reactor, sys.argv[1])
if len(sys.argv) > 2:
    node.listeners[int(sys.argv[2])] = object()  # taken
ControlService(node).startService()
reactor.callWhenRunning(lambda: print("ready", flush=True))
reactor.run()
"""


class FakeDaemonProcess:
    """A ControlService over a FakePilotNode in its own process (so listen can block)."""

    def __init__(self, home, *extra):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, REPO, os.environ.get("PYTHONPATH", "")]))
        self.process = subprocess.Popen([sys.executable, "-c", FAKE_DAEMON, home, *extra], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.process.stdout.readline().strip() == b"ready", self.process.stdout.read()

    def stop(self):
        self.process.kill()
        self.process.wait(5)
        self.process.stdout.close()


@pytest_twisted.ensureDeferred
async def test_listen_through_another_process_is_synchronous_and_survives_its_restart(home, log_lines):
    daemon = DaemonNode(reactor, home)
    other = FakeDaemonProcess(home)
    listening = None
    try:
        d = daemon.listen(4242, Factory.forProtocol(Shout))
        assert d.called  # twistd needs to know before listen() returns
        listening = await d
        assert listening.getHost() == PilotAddress("agent-a", FakePilotNode.address, 4242)
        _, answer = await round_trip(daemon, 4242)
        assert answer == b"HELLO to agent-a:4242 from agent-a"
        other.stop()
        await eventually(lambda: any("lost the pilot daemon" in line for line in log_lines))
        other = FakeDaemonProcess(home)
        await eventually(lambda: any("listening again on pilot port 4242" in line for line in log_lines))
        _, answer = await round_trip(daemon, 4242, b"again")
        assert answer.startswith(b"AGAIN")
    finally:
        if listening is not None:
            await listening.stopListening()
        other.stop()


@pytest_twisted.ensureDeferred
async def test_a_taken_port_in_another_process_has_already_failed_when_listen_returns(home):
    other = FakeDaemonProcess(home, "80")
    try:
        d = DaemonNode(reactor, home).listen(80, Factory.forProtocol(Protocol))
        failures = []
        d.addErrback(failures.append)
        [failure] = failures
        assert failure.check(error.CannotListenError) and failure.value.code == "already_running"
    finally:
        other.stop()


def test_every_listening_state_and_event_has_a_transition():
    from pilotproto.control import daemon

    events = [daemon.FeedUp, daemon.FeedLost, daemon.Stop, daemon.Stopped]
    assert set(daemon.LISTENING_TRANSITIONS) == {(s, e) for s in daemon.Listening for e in events}


@pytest_twisted.ensureDeferred
async def test_stop_listening_twice_and_after_the_daemon_went(home, node, served):
    daemon = DaemonNode(reactor, home)
    first = await daemon.listen(4242, Factory.forProtocol(Protocol))
    await defer.gatherResults([first.stopListening(), first.stopListening()])
    await first.stopListening()
    second = await daemon.listen(4243, Factory.forProtocol(Protocol))
    await served.stopService()
    await eventually(lambda: second.state.name == "WAITING")
    await second.stopListening()
    assert second.state.name == "STOPPED"
