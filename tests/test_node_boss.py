"""
PilotNode as a boss, without sockets: workers wired through interfaces,
child services in order, IPilotNode answered by asking the workers, and
two nodes registering, trusting each other and pinging over a fake
network with a sans-IO beacon on a Clock.
"""

from __future__ import annotations

import pytest
from twisted.internet import defer
from zope.interface.verify import verifyObject

from pilotproto.errors import InvalidArgument
from pilotproto.interfaces import (
    IDatagramSender,
    ILocalCandidates,
    IPeerDirectory,
    IPilotNode,
    IRelay,
    ISessions,
    IStreamAcceptor,
    ITrustListener,
    ITrustPolicy,
)
from pilotproto.node.service import PilotNode

from helpers import FakeNet, Recorder, UDPMemoryReactor


def _node(tmp_path, name="agent-a", reactor=None, **kw):
    reactor = reactor or UDPMemoryReactor()
    node = PilotNode(home=str(tmp_path / name), hostname=name, beacon="127.0.0.1:9000", reactor=reactor,
                     randbytes=_counting_bytes(), **kw)
    return node, reactor


def _counting_bytes():
    state = {"n": 0}

    def randbytes(n):
        state["n"] += 1
        return state["n"].to_bytes(n, "big")

    return randbytes


def _result(d):
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def test_workers_provide_their_interfaces(tmp_path):
    node, _ = _node(tmp_path)
    assert verifyObject(IPilotNode, node)
    assert ITrustListener.providedBy(node)
    assert IDatagramSender.providedBy(node.udp)
    assert IPeerDirectory.providedBy(node.link) and IRelay.providedBy(node.link)
    assert ILocalCandidates.providedBy(node.nat)
    assert ITrustPolicy.providedBy(node.trust)
    assert ISessions.providedBy(node.sessions)
    assert IStreamAcceptor.providedBy(node.ports)


def test_child_services_start_in_order_and_stop_in_reverse(tmp_path):
    node, reactor = _node(tmp_path)
    assert [type(child).__name__ for child in node] == ["UDPService", "PunchSockets", "BeaconSet", "NatService", "Mail", "Forwards", "McpServers"]
    node.startService()
    assert [p.listening for p in reactor.udp_ports] == [True, True]  # the IPv4 socket and the IPv6 one
    assert all(child.running for child in node)
    _result(defer.maybeDeferred(node.stopService))
    assert [p.listening for p in reactor.udp_ports] == [False, False]
    assert not any(child.running for child in node)


def test_the_node_needs_a_hostname_and_a_beacon(tmp_path):
    with pytest.raises(InvalidArgument, match="hostname"):
        PilotNode(home=str(tmp_path / "x"), beacon="127.0.0.1:9000", reactor=UDPMemoryReactor())
    with pytest.raises(InvalidArgument, match="beacon"):
        PilotNode(home=str(tmp_path / "y"), hostname="y", reactor=UDPMemoryReactor())


def test_wiring_refuses_the_wrong_collaborator(tmp_path):
    node, _ = _node(tmp_path)
    with pytest.raises(TypeError):
        node.ports.wire(node.trust)
    with pytest.raises(TypeError):
        node.udp.wire(node.sessions)


def test_ping_arguments_are_checked_before_anything_is_sent(tmp_path):
    node, _ = _node(tmp_path)
    for kwargs in ({"count": 0}, {"count": True}, {"interval": 61}, {"timeout": -1}, {"payload": b"x" * 1001}):
        failure = _result(node.ping("agent-b", **kwargs))
        assert failure.check(InvalidArgument), kwargs


def test_shutdown_answers_first_then_stops(tmp_path):
    stops = []
    node, reactor = _node(tmp_path, on_shutdown=lambda: stops.append("stop"))
    answer = _result(node.shutdown())
    assert answer["stopping"] is True and stops == []
    reactor.advance(0.05)
    assert stops == ["stop"]


def test_trust_changes_reach_the_sessions_through_the_boss(tmp_path):
    node, _ = _node(tmp_path)
    node.sessions = Recorder()
    node.trust_revoked(b"k" * 32)
    node.trust_established(b"k" * 32)
    assert node.sessions.calls == [("trust_revoked", b"k" * 32), ("trust_established", b"k" * 32)]


def test_registers_and_reports_itself(tmp_path):
    node, reactor = _node(tmp_path)
    net = FakeNet(reactor)
    node.startService()
    registered = node.when_registered()
    net.run(1.0)
    assert str(_result(registered)).startswith("127.0.0.1:")
    info = _result(node.info())
    assert info["registered"] is True
    assert info["hostname"] == "agent-a"
    assert info["beacon_transport"] == "udp"
    assert info["reflexive_endpoint"] == info["local_endpoint"].replace("0.0.0.0", "127.0.0.1")
    _result(defer.maybeDeferred(node.stopService))


def test_two_nodes_trust_each_other_and_ping(tmp_path):
    reactor = UDPMemoryReactor()
    a, _ = _node(tmp_path, "agent-a", reactor)
    b, _ = _node(tmp_path, "agent-b", reactor)
    net = FakeNet(reactor)
    a.startService()
    b.startService()
    net.run(1.0)
    asked = a.handshake("agent-b", "unit test")
    net.run(1.0)
    assert not isinstance(_result(asked), Exception)
    assert [p["hostname"] for p in _result(b.pending())["pending"]] == ["agent-a"]
    approved = b.approve("agent-a")
    net.run(1.0)
    assert not isinstance(_result(approved), Exception)
    pinged = a.ping("agent-b", count=2, interval=0.1)
    net.run(3.0)
    summary = _result(pinged)
    assert summary["received"] == 2, summary
    peers = _result(a.peers())["peers"]
    assert [p["hostname"] for p in peers] == ["agent-b"]
    revoked = a.revoke("agent-b")
    net.run(1.0)
    assert not isinstance(_result(revoked), Exception)
    assert _result(a.peers())["peers"] == []
    for node in (a, b):
        _result(defer.maybeDeferred(node.stopService))
