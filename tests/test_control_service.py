"""ControlService: the control socket as a child service of a node (a fake IPilotNode here)."""

import os
import socket
import stat

import pytest
import pytest_twisted
from twisted.application.service import MultiService
from twisted.internet import reactor, threads

from pilotproto.common.home import CONTROL_SOCKET
from pilotproto.control.client import ControlClient
from pilotproto.control.service import ControlService
from pilotproto.errors import AlreadyRunning, NotRunning

from helpers import FakePilotNode


@pytest.fixture
def home(tmp_path):
    path = tmp_path / "h"
    path.mkdir(mode=0o700)
    return str(path)


def test_the_node_must_provide_ipilotnode(home):
    with pytest.raises(TypeError, match="IPilotNode"):
        ControlService(object(), os.path.join(home, CONTROL_SOCKET), reactor)


@pytest_twisted.inlineCallbacks
def test_a_child_service_of_the_node_serves_its_commands_while_it_runs(home):
    node = FakePilotNode(reactor, home)
    parent = MultiService()
    ControlService(node).setServiceParent(parent)
    parent.startService()
    path = os.path.join(home, CONTROL_SOCKET)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        data = yield threads.deferToThread(ControlClient(home).call, "trust")
        assert data == {"trusted": []} and node.calls == [("trusted",)]
    finally:
        yield parent.stopService()
    assert not os.path.exists(path)
    with pytest.raises(NotRunning):
        ControlClient(home).call("info")


@pytest_twisted.inlineCallbacks
def test_a_second_daemon_on_one_home_does_not_start(home):
    first = ControlService(FakePilotNode(reactor, home))
    first.startService()
    try:
        second = ControlService(FakePilotNode(reactor, home))
        with pytest.raises(AlreadyRunning):
            second.startService()
        assert not second.running
    finally:
        yield first.stopService()


@pytest_twisted.inlineCallbacks
def test_a_stale_socket_is_replaced(home):
    path = os.path.join(home, CONTROL_SOCKET)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()
    service = ControlService(FakePilotNode(reactor, home))
    service.startService()
    try:
        data = yield threads.deferToThread(ControlClient(home).call, "info")
        assert data["hostname"] == "agent-a"
    finally:
        yield service.stopService()


@pytest_twisted.inlineCallbacks
def test_stopping_closes_the_open_connections(home):
    service = ControlService(FakePilotNode(reactor, home))
    service.startService()
    client = ControlClient(home)
    listener = yield threads.deferToThread(client.listen, 8080)
    try:
        yield service.stopService()
        # The listen connection ends: a client notices the daemon went.
        data = yield threads.deferToThread(listener.recv, 5.0)
        assert data == b""
    finally:
        listener.close()
