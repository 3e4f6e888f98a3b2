"""
Two nodes' session layers joined by an in-memory network and one Clock:
pings across rekeys, the relay-first start, direct-path upgrade, and
fallback to the relay when the direct path goes silent.
"""

import base64

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from pilotproto.identity import Identity
from pilotproto.session.sessions import Sessions
from pilotproto.wire import Endpoint

A_EP = Endpoint("198.51.100.1", 4000)
B_EP = Endpoint("203.0.113.1", 5000)
HOP = 0.005


class Net:
    def __init__(self, clock):
        self.clock = clock
        self.nodes = {}
        self.direct_up = True
        self.relayed = 0

    def add(self, name, identity, endpoint):
        net = self

        def send_datagram(data, destination, ttl=None):
            if not net.direct_up or (ttl is not None and ttl < 3):
                return
            for other_name, (other, other_ep, _) in net.nodes.items():
                if other_ep == destination:
                    net.clock.callLater(HOP, other.datagram_received, data, endpoint)

        def send_relay(address, data):
            net.relayed += 1
            for other, _, other_id in net.nodes.values():
                if other_id.address.to_bytes() == address:
                    net.clock.callLater(2 * HOP, other.relay_received, identity.address.to_bytes(), data)

        def lookup(target):
            for other_name, (_, other_ep, other_id) in net.nodes.items():
                if other_name == target:
                    return defer.succeed(
                        {
                            "hostname": other_name,
                            "address": str(other_id.address),
                            "public_key": base64.b64encode(other_id.public_key).decode(),
                            "endpoints": [str(other_ep)],
                        }
                    )
            return defer.fail(KeyError(target))

        sessions = Sessions(
            self.clock,
            identity,
            is_trusted=lambda key: True,
            send_datagram=send_datagram,
            send_relay=send_relay,
            lookup=lookup,
            local_candidates=lambda: ("none", (endpoint,), ()),
        )
        self.nodes[name] = (sessions, endpoint, identity)
        return sessions


def run_until(clock, d, limit_seconds):
    results = []
    d.addBoth(results.append)
    steps = int(limit_seconds / 0.05)
    for _ in range(steps):
        if results:
            break
        clock.advance(0.05)
    assert results, "did not finish in time"
    if isinstance(results[0], Exception) or hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


@pytest.fixture
def world():
    clock = Clock()
    net = Net(clock)
    a = net.add("agent-a", Identity.generate(), A_EP)
    b = net.add("agent-b", Identity.generate(), B_EP)
    return clock, net, a, b


def test_first_ping_goes_over_the_relay_then_traffic_moves_direct(world):
    clock, net, a, b = world
    result = run_until(clock, a.ping("agent-b", count=5, interval=1.0), 30)
    paths = [r["path"] for r in result["replies"]]
    assert result["received"] == 5
    assert paths[0] == "relay" and paths[-1] == "direct"


def test_pings_survive_rekeys_without_loss(world):
    clock, net, a, b = world
    first = run_until(clock, a.ping("agent-b", count=1), 10)
    assert first["received"] == 1
    tunnel = a.endpoint.peers[net.nodes["agent-b"][2].public_key]
    index_before = tunnel.current.local_index
    result = run_until(clock, a.ping("agent-b", count=40, interval=10.0, timeout=3.0), 500)
    assert result["received"] == 40, result
    assert tunnel.current.local_index != index_before
    assert a.endpoint.stats["data_auth_failed"] == 0 and b.endpoint.stats["data_auth_failed"] == 0


def test_silent_direct_path_falls_back_to_the_relay(world):
    clock, net, a, b = world
    run_until(clock, a.ping("agent-b", count=3, interval=1.0), 30)
    state = a.peers[net.nodes["agent-b"][2].public_key]
    assert state.path.kind == "direct"
    net.direct_up = False
    for _ in range(int(a.path_timers.stale_after / 0.05) + 10):
        clock.advance(0.05)
    assert state.path.kind == "relay"
    result = run_until(clock, a.ping("agent-b", count=2, interval=0.5), 20)
    assert result["received"] == 2 and all(r["path"] == "relay" for r in result["replies"])
