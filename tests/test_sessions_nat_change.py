"""
A node whose NAT discovery changes its answer while sessions are up tells
the peers still on the relay at once (a new CallMeMaybe), instead of leaving
them to the path's retry seconds later.
"""

import random

from helpers import StaticTrust
from test_sessions_clock import (
    A_EP,
    B_EP,
    FixedCandidates,
    Net,
    NetDirectory,
    NetRelay,
    NetUDP,
    RecordingAcceptor,
    run_until,
)
from twisted.internet.task import Clock
from zope.interface import implementer

from pilotproto.common.ids import RandomIds
from pilotproto.identity import Identity
from pilotproto.interfaces import ILocalCandidates
from pilotproto.session.sessions import Sessions


@implementer(ILocalCandidates)
class ChangingCandidates(FixedCandidates):
    nat_type = "unknown"

    def local_candidates(self):
        return self.nat_type, (self.endpoint,), ()


def _world():
    clock = Clock()
    net = Net(clock)
    net.direct_up = False  # the pair stays on the relay
    candidates = ChangingCandidates(A_EP)
    identity = Identity.from_seed(b"a" * 32)
    a = Sessions(
        clock,
        identity,
        trust=StaticTrust(),
        udp=NetUDP(net, A_EP),
        relay=NetRelay(net, identity),
        directory=NetDirectory(net),
        candidates=candidates,
        acceptor=RecordingAcceptor(),
        ids=RandomIds(random.Random(1).randbytes),
    )
    net.nodes["agent-a"] = (a, A_EP, identity)
    b = net.add("agent-b", Identity.from_seed(b"b" * 32), B_EP, seed=2)
    return clock, net, a, b, candidates


def _b_view_of_a(net, b):
    return b.peers[net.nodes["agent-a"][2].public_key].path


def test_a_changed_nat_type_reaches_peers_on_the_relay_at_once():
    clock, net, a, b, candidates = _world()
    assert run_until(clock, a.ping("agent-b", count=1), 10)["received"] == 1
    clock.advance(1.0)
    assert _b_view_of_a(net, b).peer_nat == "unknown"
    candidates.nat_type = "symmetric"
    a.local_nat_changed()
    clock.advance(0.1)  # a relay hop, far below the path's retry
    assert _b_view_of_a(net, b).peer_nat == "symmetric"


def test_peers_on_a_direct_path_are_left_alone():
    clock, net, a, b, candidates = _world()
    net.direct_up = True
    run_until(clock, a.ping("agent-b", count=3, interval=1.0), 30)
    peer = a.peers[net.nodes["agent-b"][2].public_key]
    assert peer.path.using_direct()
    relayed = net.relayed
    candidates.nat_type = "symmetric"
    a.local_nat_changed()
    clock.advance(0.1)
    assert net.relayed == relayed and _b_view_of_a(net, b).peer_nat == "unknown"


def test_nat_type_watchers_hear_only_changes():
    from twisted.internet.testing import MemoryReactorClock

    from pilotproto.node.nat import NatService
    from pilotproto.node.udp import UDPService

    nat = NatService(MemoryReactorClock(), UDPService(MemoryReactorClock(), 0), port_mapping=False)
    heard = []
    nat.watch_nat_type(heard.append)
    nat._discovered("symmetric")
    nat._discovered("symmetric")
    nat._discovered("port_restricted_cone")
    assert heard == ["symmetric", "port_restricted_cone"]
