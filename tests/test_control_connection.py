"""
The control connection's lifecycle machine, reactor-free: reading requests,
holding bytes while an upgrading command runs, piped, draining, closed.
"""

import json

import pytest
from twisted.internet import defer

from pilotproto.control import connection
from pilotproto.control.connection import State
from pilotproto.control.server import Command, ControlServerFactory, Upgrade
from pilotproto.errors import NotFound
from pilotproto.streams.errors import ConnectionRefused

from helpers import HalfCloseTransport


class RecordingPipe:
    def __init__(self, transport):
        self.transport = transport
        self.events = []

    def dataReceived(self, data):
        self.events.append(("data", data))

    def readConnectionLost(self):
        self.events.append(("eof",))

    def connectionLost(self, reason=None):
        self.events.append(("lost",))


class Commands:
    """``connect`` and ``slow`` hang until the test fires them; ``info`` answers at once."""

    def __init__(self):
        self.pending = []
        self.pipes = []
        self.abandoned = []

    def connect(self, target, port):
        d = defer.Deferred()
        self.pending.append(d)
        return d

    def info(self):
        return {"hostname": "agent-a"}

    def slow(self):
        d = defer.Deferred()
        self.pending.append(d)
        return d

    def table(self):
        return {"connect": Command(self.connect, upgrades=True), "info": Command(self.info),
                "slow": Command(self.slow)}

    def upgrade(self, data=None):
        def take_over(transport):
            pipe = RecordingPipe(transport)
            self.pipes.append(pipe)
            return pipe

        return Upgrade(data or {"peer": "agent-b", "port": 7}, take_over, lambda: self.abandoned.append(True))


def connected(commands):
    protocol = ControlServerFactory(commands.table()).buildProtocol(None)
    transport = HalfCloseTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def lines(transport):
    return [json.loads(line) for line in transport.value().splitlines() if line]


CONNECT = b'{"id":1,"cmd":"connect","args":{"target":"agent-b","port":7}}\n'


def test_every_state_and_event_has_a_transition():
    events = [connection.BytesReceived, connection.Upgrading, connection.Answered, connection.Upgraded,
              connection.UpgradeFailed, connection.ReadClosed, connection.Lost]
    assert set(connection.TRANSITIONS) == {(state, event) for state in State for event in events}


def test_connect_upgrades_and_early_bytes_reach_the_pipe():
    commands = Commands()
    protocol, transport = connected(commands)
    protocol.dataReceived(CONNECT + b'early {"id":2,"cmd":"info"}\n')
    assert transport.value() == b""  # held: neither answered nor parsed as a request
    assert protocol.connection.state is State.HOLDING
    commands.pending[0].callback(commands.upgrade())
    assert lines(transport) == [{"id": 1, "status": "ok", "data": {"peer": "agent-b", "port": 7}}]
    assert protocol.connection.state is State.PIPED
    [pipe] = commands.pipes
    assert pipe.events == [("data", b'early {"id":2,"cmd":"info"}\n')]
    protocol.dataReceived(b"more\n")
    protocol.readConnectionLost()
    assert pipe.events[1:] == [("data", b"more\n"), ("eof",)]
    protocol.connectionLost(None)
    assert pipe.events[-1] == ("lost",)
    assert protocol.connection.state is State.CLOSED


def test_upgrade_in_the_same_chunk_when_the_command_answers_at_once():
    commands = Commands()
    commands.connect = lambda target, port: commands.upgrade()
    protocol, transport = connected(commands)
    protocol.dataReceived(CONNECT + b"raw\n")
    assert lines(transport)[0]["status"] == "ok"
    assert commands.pipes[0].events == [("data", b"raw\n")]


def test_failed_upgrade_answers_an_error_and_the_connection_stays_json():
    commands = Commands()
    protocol, transport = connected(commands)
    protocol.dataReceived(CONNECT + b"stream bytes\n")
    commands.pending[0].errback(ConnectionRefused())
    assert protocol.connection.state is State.READING
    protocol.dataReceived(b'{"id":2,"cmd":"info"}\n')
    answers = lines(transport)
    assert answers[0]["id"] == 1 and answers[0]["code"] == "connection_refused"
    assert answers[1] == {"id": 2, "status": "ok", "data": {"hostname": "agent-a"}}
    assert len(answers) == 2  # "stream bytes" were dropped, not parsed
    assert commands.pipes == []


def test_an_upgrading_command_that_returns_no_upgrade_is_a_bug():
    commands = Commands()
    protocol, transport = connected(commands)
    protocol.dataReceived(CONNECT)
    commands.pending[0].callback({"peer": "agent-b"})
    assert lines(transport)[0]["code"] == "internal"
    assert protocol.connection.state is State.READING


def test_half_close_before_the_answer_reaches_the_pipe_after_it():
    commands = Commands()
    protocol, transport = connected(commands)
    protocol.dataReceived(CONNECT + b"hello")
    protocol.readConnectionLost()
    assert protocol.connection.state is State.HOLDING_EOF
    assert not transport.disconnecting  # the answer is still to come
    commands.pending[0].callback(commands.upgrade())
    assert commands.pipes[0].events == [("data", b"hello"), ("eof",)]


def test_half_close_then_failure_closes_after_the_error():
    commands = Commands()
    protocol, transport = connected(commands)
    protocol.dataReceived(CONNECT)
    protocol.readConnectionLost()
    commands.pending[0].errback(NotFound("no node 'b'"))
    assert lines(transport)[0]["code"] == "not_found"
    assert transport.disconnecting


def test_half_close_waits_for_the_answers_still_owed():
    commands = Commands()
    protocol, transport = connected(commands)
    protocol.dataReceived(b'{"id":1,"cmd":"slow"}\n{"id":2,"cmd":"slow"}\n')
    protocol.readConnectionLost()
    assert protocol.connection.state is State.DRAINING and not transport.disconnecting
    commands.pending[1].callback({"second": True})
    assert not transport.disconnecting
    commands.pending[0].callback({"first": True})
    assert [r["id"] for r in lines(transport)] == [2, 1]
    assert transport.disconnecting


def test_half_close_with_nothing_owed_closes_at_once():
    commands = Commands()
    protocol, transport = connected(commands)
    protocol.dataReceived(b'{"id":1,"cmd":"info"}\n')
    protocol.readConnectionLost()
    assert lines(transport)[0]["id"] == 1 and transport.disconnecting


def test_client_gone_before_the_answer_abandons_the_upgrade():
    commands = Commands()
    protocol, transport = connected(commands)
    protocol.dataReceived(CONNECT)
    protocol.connectionLost(None)
    commands.pending[0].callback(commands.upgrade())
    assert commands.abandoned == [True] and commands.pipes == []


def test_an_ok_line_that_cannot_be_sent_abandons_the_upgrade():
    commands = Commands()
    protocol, transport = connected(commands)
    protocol.dataReceived(CONNECT)
    commands.pending[0].callback(commands.upgrade({"raw": b"not json"}))
    assert lines(transport)[0]["code"] == "internal"
    assert commands.abandoned == [True] and protocol.connection.state is State.READING


def test_answers_to_earlier_requests_are_dropped_after_the_upgrade():
    commands = Commands()
    protocol, transport = connected(commands)
    protocol.dataReceived(b'{"id":1,"cmd":"slow"}\n' + CONNECT.replace(b'"id":1', b'"id":2'))
    slow, connect = commands.pending
    connect.callback(commands.upgrade())
    before = transport.value()
    slow.callback({"late": True})
    assert transport.value() == before  # no JSON inside the raw pipe


def test_answers_to_earlier_requests_still_go_out_while_holding():
    commands = Commands()
    protocol, transport = connected(commands)
    protocol.dataReceived(b'{"id":1,"cmd":"slow"}\n' + CONNECT.replace(b'"id":1', b'"id":2'))
    commands.pending[0].callback({"early": True})
    assert lines(transport) == [{"id": 1, "status": "ok", "data": {"early": True}}]


@pytest.mark.parametrize("chunk", [300 * 1024])
def test_held_bytes_beyond_the_limit_pause_reading(chunk):
    commands = Commands()
    protocol, transport = connected(commands)
    protocol.dataReceived(CONNECT)
    protocol.dataReceived(b"x" * chunk)
    assert transport.producerState == "paused"
    commands.pending[0].callback(commands.upgrade())
    assert transport.producerState == "producing"
    assert commands.pipes[0].events == [("data", b"x" * chunk)]


def test_held_bytes_beyond_the_limit_resume_after_a_failure_too():
    commands = Commands()
    protocol, transport = connected(commands)
    protocol.dataReceived(CONNECT + b"x" * (300 * 1024))
    assert transport.producerState == "paused"
    commands.pending[0].errback(ConnectionRefused())
    assert transport.producerState == "producing"


def test_the_factory_closes_every_connection_when_the_daemon_stops():
    commands = Commands()
    factory = ControlServerFactory(commands.table())
    transports = []
    for _ in range(2):
        protocol = factory.buildProtocol(None)
        transport = HalfCloseTransport()
        protocol.makeConnection(transport)
        transports.append(transport)
    factory.close_connections()
    assert all(t.disconnecting for t in transports)
