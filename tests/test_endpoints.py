"""
pilot: endpoints and Twisted's failure conventions, in process: the
converters, the node's port table, the endpoint classes and strings, and
``twistd web --listen pilot:...`` exiting with the reason when it cannot
listen.  (The same conventions through the daemon: test_control_daemon.py.)
"""

import os
import subprocess
import sys
import time

import pytest
from twisted.internet import defer, error
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from zope.interface import implementer

from pilotproto.common import timeouts
from pilotproto.control.daemon import DaemonNode
from pilotproto.endpoints import PilotClientEndpoint, PilotServerEndpoint
from pilotproto.errors import AlreadyRunning, InvalidArgument, NotFound, NotRunning, NotTrusted, PilotError, Timeout
from pilotproto.interfaces import ISessions
from pilotproto.node.failures import (
    ConnectTimeout,
    NoDaemon,
    PilotCannotListen,
    PilotConnectError,
    StreamRefused,
    UnknownPeer,
    as_connect_error,
    as_listen_error,
)
from pilotproto.node.ports import PortTable
from pilotproto.streams.errors import ConnectionRefused

from helpers import FakePilotNode
from test_control_daemon import TESTS, FakeDaemonProcess

REPO = os.path.dirname(TESTS)


def failure_of(d):
    failures = []
    d.addErrback(failures.append)
    [failure] = failures
    return failure


# -- the converters ------------------------------------------------------------------------


@pytest.mark.parametrize("original, twisted_class, house_class", [
    (ConnectionRefused(), error.ConnectionRefusedError, ConnectionRefused),
    (NotRunning("no daemon here"), error.ConnectionRefusedError, NotRunning),
    (NotFound("no node 'x'"), error.DNSLookupError, NotFound),
    (Timeout("too slow"), error.TimeoutError, Timeout),
    (NotTrusted("not trusted"), error.ConnectError, PilotError),
])
def test_connect_errors_are_both_twisteds_and_ours(original, twisted_class, house_class):
    converted = as_connect_error(original)
    assert isinstance(converted, twisted_class) and isinstance(converted, error.ConnectError)
    assert isinstance(converted, house_class)
    assert (converted.code, converted.message, converted.hint) == (original.code, original.message, original.hint)
    assert str(converted) == original.message
    assert as_connect_error(converted) is converted


def test_a_wire_error_is_converted_by_its_code():
    rebuilt = PilotError.from_dict({"code": "connection_refused", "message": "refused", "hint": None})
    assert isinstance(as_connect_error(rebuilt), StreamRefused)
    assert type(as_connect_error(NotRunning())) is NoDaemon
    assert type(as_connect_error(NotFound())) is UnknownPeer
    assert type(as_connect_error(defer.TimeoutError())) is ConnectTimeout
    assert type(as_connect_error(NotTrusted())) is PilotConnectError


def test_bugs_and_cancellations_pass_unchanged():
    for exc in (RuntimeError("bug"), defer.CancelledError(), error.ConnectionRefusedError()):
        assert as_connect_error(exc) is exc
        assert as_listen_error(80, exc) is exc


def test_listen_errors_are_cannot_listen_errors():
    converted = as_listen_error(80, AlreadyRunning("something already listens on port 80", hint="Choose another port."))
    assert isinstance(converted, error.CannotListenError) and isinstance(converted, PilotError)
    assert (converted.code, converted.port, converted.interface) == ("already_running", 80, "pilot")
    assert converted.message == "something already listens on port 80" and converted.hint == "Choose another port."
    assert str(converted) == "something already listens on port 80 (Choose another port.)"
    assert as_listen_error(80, converted) is converted
    assert PilotCannotListen(7).message == "Cannot listen on that virtual port."


# -- in process: the node's port table ----------------------------------------------------------


class FakeStream:
    def __init__(self):
        self.handler = None
        self.resets = []

    def set_handler(self, handler):
        self.handler = handler

    def reset(self, code=0):
        self.resets.append(code)


class PeerRecord:
    hostname = "agent-b"
    address = "0:0000.0000.0002"


@implementer(ISessions)
class FakeSessions:
    def __init__(self, result):
        self.result = result
        self.stream = FakeStream()

    def open_stream(self, target, port):
        if isinstance(self.result, BaseException):
            return defer.fail(self.result)
        return defer.succeed((PeerRecord(), self.stream))

    def tunnel_packet_received(self, data, source):
        """Not used here."""

    def ping(self, target, count, interval, timeout, payload):
        """Not used here."""

    def describe(self):
        return []

    def stop(self):
        """Not used here."""


def port_table(result=None, clock=None):
    table = PortTable("agent-a", "0:0000.0000.0001", clock or Clock())
    sessions = FakeSessions(result)
    table.wire(sessions)
    return table, sessions


@pytest.mark.parametrize("failure, expected", [
    (NotFound("no node 'ghost' is visible to this node"), error.DNSLookupError),
    (Timeout("the tunnel handshake with agent-b did not finish"), error.TimeoutError),
    (NotTrusted(), error.ConnectError),
])
def test_port_table_dial_fails_the_twisted_way(failure, expected):
    table, _ = port_table(failure)
    converted = failure_of(table.dial("agent-b", 80, Factory.forProtocol(Protocol))).value
    assert isinstance(converted, expected) and converted.code == failure.code


def test_port_table_dial_refused_by_the_peer():
    table, sessions = port_table()
    d = table.dial("agent-b", 80, Factory.forProtocol(Protocol))
    sessions.stream.handler.stream_failed(ConnectionRefused())
    refused = failure_of(d).value
    assert isinstance(refused, error.ConnectionRefusedError) and refused.code == "connection_refused"


def test_port_table_dial_that_is_never_accepted_times_out():
    clock = Clock()
    table, sessions = port_table(clock=clock)
    d = table.dial("agent-b", 80, Factory.forProtocol(Protocol))
    clock.advance(timeouts.STREAM_CONNECT - 0.1)
    assert not d.called
    clock.advance(0.2)
    timed_out = failure_of(d).value
    assert isinstance(timed_out, error.TimeoutError) and timed_out.code == "timeout"
    assert "agent-b did not accept a stream on port 80" in str(timed_out)
    assert sessions.stream.resets  # the half-open stream is given up, not left behind


def test_port_table_cannot_listen_twice():
    table, _ = port_table()
    table.listen(80, Factory.forProtocol(Protocol))
    with pytest.raises(error.CannotListenError) as caught:
        table.listen(80, Factory.forProtocol(Protocol))
    assert caught.value.code == "already_running" and caught.value.port == 80
    with pytest.raises(error.CannotListenError):
        table.listen(0, Factory.forProtocol(Protocol))


# -- the endpoint classes and strings ---------------------------------------------------------


@implementer(__import__("pilotproto.interfaces", fromlist=["IPilotNode"]).IPilotNode)
class RawFailingNode(FakePilotNode):
    """A node that fails with bare PilotErrors: the endpoints still hold Twisted's conventions."""

    def dial(self, target, port, factory):
        return defer.fail(NotFound("no such peer"))

    def listen(self, port, factory):
        raise AlreadyRunning("taken")


def test_client_endpoint_failures_are_connect_errors():
    node = FakePilotNode(Clock())
    refused = failure_of(PilotClientEndpoint(node, "agent-b", 80).connect(Factory.forProtocol(Protocol))).value
    assert isinstance(refused, error.ConnectionRefusedError) and refused.code == "connection_refused"
    unknown = failure_of(PilotClientEndpoint(node, "ghost", 80).connect(Factory.forProtocol(Protocol))).value
    assert isinstance(unknown, error.DNSLookupError)
    raw = failure_of(PilotClientEndpoint(RawFailingNode(Clock()), "agent-b", 80).connect(Factory()))
    assert raw.check(error.DNSLookupError) and raw.value.message == "no such peer"


def test_server_endpoint_failures_are_cannot_listen_errors_already_failed():
    node = FakePilotNode(Clock())
    assert PilotServerEndpoint(node, 80).listen(Factory.forProtocol(Protocol)).called
    taken = failure_of(PilotServerEndpoint(node, 80).listen(Factory.forProtocol(Protocol)))
    assert taken.check(error.CannotListenError) and taken.value.code == "already_running"
    raw = failure_of(PilotServerEndpoint(RawFailingNode(Clock()), 80).listen(Factory()))
    assert raw.check(error.CannotListenError) and raw.value.message == "taken"


def test_endpoints_take_only_nodes_and_check_their_arguments():
    node = FakePilotNode(Clock())
    with pytest.raises(TypeError, match="IPilotNode"):
        PilotClientEndpoint(object(), "agent-b", 80)
    with pytest.raises(TypeError, match="IPilotNode"):
        PilotServerEndpoint("/home", 80)
    for bad in (lambda: PilotClientEndpoint(node, "", 80), lambda: PilotClientEndpoint(node, "Not A Name", 80),
                lambda: PilotClientEndpoint(node, "agent-b", 0), lambda: PilotServerEndpoint(node, 70000)):
        with pytest.raises(InvalidArgument):
            bad()


def test_endpoint_strings_go_through_the_daemon_of_a_home(tmp_path, monkeypatch):
    reactor = Clock()
    client = clientFromString(reactor, f"pilot:agent-b:80:home={tmp_path}")
    assert isinstance(client._node, DaemonNode) and client._node.home == str(tmp_path)
    monkeypatch.setenv("PILOT_HOME", str(tmp_path / "env"))
    server = serverFromString(reactor, "pilot:port=8080")
    assert isinstance(server._node, DaemonNode) and server._node.home == str(tmp_path / "env")
    with pytest.raises(InvalidArgument, match="colour"):
        clientFromString(reactor, "pilot:agent-b:80:colour=red")
    with pytest.raises(InvalidArgument):
        serverFromString(reactor, "pilot:80:81")


def test_pilot_treq_through_a_node_or_a_home(tmp_path):
    from pilotproto.http import pilot_agent

    node = FakePilotNode(Clock())
    assert pilot_agent(Clock(), node=node)._endpointFactory._node is node
    assert pilot_agent(Clock(), home=str(tmp_path))._endpointFactory._node.home == str(tmp_path)


# -- twistd web --listen pilot:... --------------------------------------------------------------

TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]


def twistd_web(home, port, tmp_path, timeout=30):
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    env = dict(os.environ, PILOT_HOME=home, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    started = time.monotonic()
    proc = subprocess.run(TWISTD + ["-n", "--pidfile=", "web", "--listen", f"pilot:{port}", "--path", str(site)],
                          env=env, capture_output=True, text=True, timeout=timeout, cwd=str(tmp_path))
    return proc, time.monotonic() - started


def test_twistd_web_exits_with_the_reason_when_no_daemon_runs(tmp_path):
    home = tmp_path / "h"
    home.mkdir(mode=0o700)
    proc, seconds = twistd_web(str(home), 8080, tmp_path)
    assert proc.returncode != 0
    assert "no pilot daemon is running" in proc.stdout + proc.stderr
    assert "pilotctl daemon start" in proc.stdout + proc.stderr  # the hint says what to do
    assert seconds < 15


def test_twistd_web_exits_with_the_reason_when_the_port_is_taken(tmp_path):
    home = tmp_path / "h"
    home.mkdir(mode=0o700)
    daemon = FakeDaemonProcess(str(home), "8080")
    try:
        proc, seconds = twistd_web(str(home), 8080, tmp_path)
    finally:
        daemon.stop()
    assert proc.returncode != 0
    assert "something already listens on port 8080" in proc.stdout + proc.stderr
    assert seconds < 15
