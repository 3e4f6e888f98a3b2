"""The control server and the blocking client over a real UNIX socket in a tmp dir."""

import json
import os
import socket
import stat

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads

from pilotproto.common.home import CONTROL_SOCKET
from pilotproto.control.client import ControlClient
from pilotproto.control.server import Command, ControlServerFactory, listen_control_socket
from pilotproto.errors import (
    AlreadyRunning,
    InvalidArgument,
    NameTaken,
    NotFound,
    NotRunning,
    PilotError,
    StateError,
    Timeout,
)


class Handler:
    def __init__(self):
        self.hanging = []

    def factory(self):
        return ControlServerFactory({"info": Command(self.info), "lookup": Command(self.lookup),
                                     "hang": Command(self.hang), "args": Command(self.args)})

    def info(self):
        return {"hostname": "agent-a", "registered": True, "pid": os.getpid()}

    def lookup(self, target):
        if target == "ghost":
            raise NotFound(f"no node called {target}")
        if target == "taken":
            return defer.fail(NameTaken())
        if target == "custom":
            error = PilotError("a code this client has no class for")
            error.code = "some_future_code"
            raise error
        d = defer.Deferred()
        reactor.callLater(0.05, d.callback, {"hostname": target})
        return d

    def hang(self):
        d = defer.Deferred()
        self.hanging.append(d)
        return d

    def args(self, timeout, cmd):
        return {"timeout": timeout, "cmd": cmd}


@pytest.fixture
def home(tmp_path):
    path = tmp_path / "h"
    path.mkdir(mode=0o700)
    return str(path)


@pytest.fixture
def server(home):
    handler = Handler()
    port = listen_control_socket(reactor, os.path.join(home, CONTROL_SOCKET), handler.factory())
    yield handler
    for d in handler.hanging:
        d.callback({})
    port.stopListening()


def in_thread(f, *args, **kwargs):
    return threads.deferToThread(f, *args, **kwargs)


def call_raises(client, cmd, **kwargs):
    try:
        client.call(cmd, **kwargs)
    except PilotError as e:
        return e
    raise AssertionError("no error raised")


@pytest_twisted.inlineCallbacks
def test_socket_has_mode_0600_and_answers(home, server):
    path = os.path.join(home, CONTROL_SOCKET)
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    data = yield in_thread(ControlClient(home).call, "info")
    assert data["hostname"] == "agent-a"


@pytest_twisted.inlineCallbacks
def test_client_rebuilds_daemon_errors_by_code(home, server):
    client = ControlClient(home)
    ghost = yield in_thread(call_raises, client, "lookup", target="ghost")
    assert type(ghost) is NotFound and ghost.message == "no node called ghost"
    taken = yield in_thread(call_raises, client, "lookup", target="taken")
    assert type(taken) is NameTaken and taken.hint == NameTaken.hint
    unknown = yield in_thread(call_raises, client, "fly")
    assert type(unknown) is InvalidArgument and "lookup" in unknown.hint
    custom = yield in_thread(call_raises, client, "lookup", target="custom")
    assert type(custom) is PilotError and custom.code == "some_future_code"


@pytest_twisted.inlineCallbacks
def test_request_passes_args_named_like_call_parameters(home, server):
    data = yield in_thread(ControlClient(home).request, "args", {"timeout": 1, "cmd": "x"})
    assert data == {"timeout": 1, "cmd": "x"}


@pytest_twisted.inlineCallbacks
def test_client_times_out_on_a_command_that_never_answers(home, server):
    error = yield in_thread(call_raises, ControlClient(home), "hang", timeout=0.3)
    assert isinstance(error, Timeout) and "'hang'" in error.message


@pytest_twisted.inlineCallbacks
def test_many_requests_in_flight_on_one_connection(home, server):
    def exchange():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(os.path.join(home, CONTROL_SOCKET))
            s.sendall(
                b'{"id": "slow", "cmd": "lookup", "args": {"target": "b"}}\n'
                b"not json\n"
                b'{"id": 2, "cmd": "info"}\n'
            )
            buffer = b""
            while buffer.count(b"\n") < 3:
                chunk = s.recv(4096)
                assert chunk
                buffer += chunk
            return [json.loads(line) for line in buffer.splitlines()]

    got = yield in_thread(exchange)
    assert [(r["id"], r["status"]) for r in got] == [(None, "error"), (2, "ok"), ("slow", "ok")]


def test_client_not_running_without_socket(home):
    with pytest.raises(NotRunning):
        ControlClient(home).call("info")


def make_stale_socket(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()  # the file stays; nobody listens
    assert os.path.exists(path)


def test_client_not_running_with_stale_socket(home):
    make_stale_socket(os.path.join(home, CONTROL_SOCKET))
    with pytest.raises(NotRunning, match="stale"):
        ControlClient(home).call("info")


@pytest_twisted.inlineCallbacks
def test_stale_socket_is_replaced(home):
    path = os.path.join(home, CONTROL_SOCKET)
    make_stale_socket(path)
    port = listen_control_socket(reactor, path, Handler().factory())
    try:
        data = yield in_thread(ControlClient(home).call, "info")
        assert data["registered"] is True
    finally:
        yield port.stopListening()


def test_live_socket_is_not_stolen(home, server):
    path = os.path.join(home, CONTROL_SOCKET)
    inode = os.stat(path).st_ino
    with pytest.raises(AlreadyRunning):
        listen_control_socket(reactor, path, Handler().factory())
    assert os.stat(path).st_ino == inode


def test_regular_file_in_the_way_is_not_deleted(home):
    path = os.path.join(home, CONTROL_SOCKET)
    with open(path, "w") as f:
        f.write("mine")
    with pytest.raises(StateError):
        listen_control_socket(reactor, path, Handler().factory())
    assert open(path).read() == "mine"


def test_too_long_socket_path_is_a_clear_error(tmp_path):
    home = tmp_path / ("d" * 120)
    with pytest.raises(InvalidArgument, match="too long"):
        listen_control_socket(reactor, str(home / CONTROL_SOCKET), Handler().factory())
    with pytest.raises(InvalidArgument, match="too long"):
        ControlClient(str(home)).call("info")


@pytest_twisted.inlineCallbacks
def test_blocking_streams_listen_connect_accept(home):
    import json as _json

    from pilotproto.control.service import ControlService

    from helpers import FakePilotNode

    service = ControlService(FakePilotNode(reactor, home))
    service.startService()

    def exchange():
        client = ControlClient(home)
        with client.listen(4242) as listener:
            assert listener.info == {"port": 4242, "hostname": "agent-a", "address": "0:0000.0000.0001"}
            with client.open_stream("agent-b", 4242) as dialled:
                assert dialled.info["peer"] == "agent-b" and dialled.info["local_hostname"] == "agent-a"
                event = _json.loads(listener.read_line(5))
                assert event["event"] == "incoming" and event["port"] == 4242
                with client.accept(event["stream_id"]) as accepted:
                    dialled.sendall(b"ping")
                    dialled.finish_sending()
                    assert accepted.read_to_end(5) == b"ping"
                    accepted.sendall(b"pong")
                    accepted.finish_sending()
                    return dialled.read_to_end(5)

    try:
        assert (yield threads.deferToThread(exchange)) == b"pong"
        refused = yield threads.deferToThread(call_raises_stream, ControlClient(home), "agent-b", 4343)
        assert refused.code == "connection_refused"
    finally:
        yield service.stopService()


def call_raises_stream(client, peer, port):
    try:
        client.open_stream(peer, port, timeout=5).close()
    except PilotError as e:
        return e
    raise AssertionError("no error raised")


# -- EACCES: another user's daemon is permission_denied, not not_running ----------------

_CALL_AS_NOBODY = """
import os, sys
from pilotproto.control.client import ControlClient
from pilotproto.errors import PilotError
if os.geteuid() == 0:
    # Imports first: the interpreter's own files need not be readable by nobody.
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
try:
    ControlClient(sys.argv[1]).call("info", timeout=5)
    print("ok")
except PilotError as e:
    print(e.code)
"""


def _call_as_another_user(home: str) -> str:
    """The error code a client sees calling ``info`` on ``home``'s socket as a user who
    is not the daemon's: as root the child drops to uid 65534 (root itself is never
    refused); otherwise the test made the socket or its directory unusable for us."""
    import subprocess
    import sys

    from pilotproto.cli.daemon import child_environment

    run = subprocess.run([sys.executable, "-c", _CALL_AS_NOBODY, home], env=child_environment(),
                         capture_output=True, text=True, timeout=60)
    assert "Traceback" not in run.stderr, run.stderr
    return run.stdout.strip()


@pytest.fixture
def listening():
    """A listening control socket in a directory every user can search (not under
    tmp_path, whose parents are private to us)."""
    import shutil
    import tempfile

    directory = tempfile.mkdtemp(prefix="pilot-eacces-")
    os.chmod(directory, 0o711)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(os.path.join(directory, CONTROL_SOCKET))
    sock.listen(5)
    yield directory
    sock.close()
    os.chmod(directory, 0o700)
    shutil.rmtree(directory)


def test_a_socket_we_may_not_open_is_permission_denied(listening):
    path = os.path.join(listening, CONTROL_SOCKET)
    os.chmod(path, 0o600 if os.geteuid() == 0 else 0o000)
    assert _call_as_another_user(listening) == "permission_denied"


def test_a_home_we_may_not_search_is_permission_denied_not_not_running(listening):
    # The socket is there, but the 0700 home (another user's) hides it:
    # the daemon may well run, so "not running" would be a lie.
    os.chmod(listening, 0o700 if os.geteuid() == 0 else 0o600)
    try:
        assert _call_as_another_user(listening) == "permission_denied"
    finally:
        os.chmod(listening, 0o711)


def test_the_twisted_client_reports_eacces_as_permission_denied_too():
    """DaemonNode's connections (control/link.py): the same EACCES, the same code."""
    import errno

    from twisted.internet.error import ConnectError
    from twisted.internet.testing import MemoryReactorClock
    from twisted.python.failure import Failure

    from pilotproto.control.link import open_link

    memory = MemoryReactorClock()
    d = open_link(memory, "/home/other/.pilot/control.sock", "/home/other/.pilot", "info", {}, 5)
    factory = memory.unixClients[0][1]
    factory.clientConnectionFailed(None, Failure(ConnectError(errno.EACCES, "Permission denied")))
    failures = []
    d.addErrback(failures.append)
    assert failures[0].value.code == "permission_denied"
