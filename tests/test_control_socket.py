"""The control server and the blocking client over a real UNIX socket in a tmp dir."""

import json
import os
import socket
import stat

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads

from pilotproto.control.client import ControlClient
from pilotproto.control.server import listen_control_socket
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
from pilotproto.node.config import CONTROL_SOCKET


class Handler:
    def __init__(self):
        self.hanging = []

    def ctl_info(self):
        return {"hostname": "agent-a", "registered": True, "pid": os.getpid()}

    def ctl_lookup(self, target):
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

    def ctl_hang(self):
        d = defer.Deferred()
        self.hanging.append(d)
        return d

    def ctl_args(self, timeout, cmd):
        return {"timeout": timeout, "cmd": cmd}


@pytest.fixture
def home(tmp_path):
    path = tmp_path / "h"
    path.mkdir(mode=0o700)
    return str(path)


@pytest.fixture
def server(home):
    handler = Handler()
    port = listen_control_socket(reactor, os.path.join(home, CONTROL_SOCKET), handler)
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
    port = listen_control_socket(reactor, path, Handler())
    try:
        data = yield in_thread(ControlClient(home).call, "info")
        assert data["registered"] is True
    finally:
        yield port.stopListening()


def test_live_socket_is_not_stolen(home, server):
    path = os.path.join(home, CONTROL_SOCKET)
    inode = os.stat(path).st_ino
    with pytest.raises(AlreadyRunning):
        listen_control_socket(reactor, path, Handler())
    assert os.stat(path).st_ino == inode


def test_regular_file_in_the_way_is_not_deleted(home):
    path = os.path.join(home, CONTROL_SOCKET)
    with open(path, "w") as f:
        f.write("mine")
    with pytest.raises(StateError):
        listen_control_socket(reactor, path, Handler())
    assert open(path).read() == "mine"


def test_too_long_socket_path_is_a_clear_error(tmp_path):
    home = tmp_path / ("d" * 120)
    with pytest.raises(InvalidArgument, match="too long"):
        listen_control_socket(reactor, str(home / CONTROL_SOCKET), Handler())
    with pytest.raises(InvalidArgument, match="too long"):
        ControlClient(str(home)).call("info")
