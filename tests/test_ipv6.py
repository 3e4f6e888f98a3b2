"""
IPv6: candidates from the kernel's address table and the beacon's view,
happy-eyeballs racing of the families, and the node's two sockets (the send
picks the socket by the destination's family; both deliver to the router).
"""

from __future__ import annotations

import socket

import pytest
from twisted.internet.task import Clock
from zope.interface import implementer

from pilotproto.interfaces import IDatagramRouter, IDatagramSender
from pilotproto.node.ipv6 import HostAddresses, ReflexiveV6, parse_if_inet6
from pilotproto.node.nat import NatService
from pilotproto.session import happy_eyeballs
from pilotproto.session.paths import PeerPath
from pilotproto.wire import Endpoint, stun
from pilotproto.wire.sources import Direct

# /proc/net/if_inet6 as a dual-stack host shows it: ADDRESS IFINDEX PREFIXLEN SCOPE FLAGS DEVICE
IF_INET6 = """\
20010db8000100000000000000000002 02 40 00 80     eth0
20010db8000100000000000000000099 02 40 00 20     eth0
20010db8000100000000000000000098 02 40 00 c0     eth0
20010db8000100000000000000000097 02 40 00 08     eth0
20010db800010000a1b2c3d4e5f60708 02 40 00 01     eth0
fd000000000000000000000000000002 02 40 00 80     eth0
fe800000000000000000000000000001 02 40 20 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
garbage line
"""


def test_global_usable_addresses_are_candidates_and_ula_ones_lan():
    public, local = parse_if_inet6(IF_INET6)
    # Deprecated (0x20), tentative (0x40) and failed-DAD (0x08) addresses are
    # not sources; a temporary (privacy, 0x01) one is.  Link-local and
    # loopback are never candidates.
    assert public == ["2001:db8:1::2", "2001:db8:1:0:a1b2:c3d4:e5f6:708"]
    assert local == ["fd00::2"]


def test_no_ipv6_means_no_candidates():
    assert parse_if_inet6("") == ([], [])
    assert HostAddresses(lambda: IF_INET6).candidates(None) == ([], [])


@implementer(IDatagramSender)
class FakeUDP:
    def __init__(self, v6_port=4242):
        self.local_endpoint = Endpoint("0.0.0.0", 4000)
        self.local_endpoint6 = Endpoint("::", v6_port) if v6_port else None
        self.sent = []

    def send(self, data, destination, ttl=None):
        self.sent.append((data, destination))

    def send_many(self, packets, destination):
        for p in packets:
            self.send(p, destination)

    def flush(self):
        """Nothing is queued."""


def _nat(udp, text=IF_INET6, beacon6=None):
    clock = Clock()
    nat = NatService(clock, udp, port_mapping=False, host_addresses=HostAddresses(lambda: text), beacon6=beacon6)
    nat.public_endpoint_seen(Endpoint("198.51.100.2", 40000))
    return clock, nat


def test_the_node_advertises_its_global_ipv6_addresses_at_its_ipv6_port():
    _, nat = _nat(FakeUDP())
    _, public, lan = nat.local_candidates()
    assert public == [Endpoint("198.51.100.2", 40000), Endpoint("2001:db8:1::2", 4242),
                      Endpoint("2001:db8:1:0:a1b2:c3d4:e5f6:708", 4242)]
    assert Endpoint("fd00::2", 4242) in lan


def test_without_an_ipv6_socket_nothing_ipv6_is_advertised():
    _, nat = _nat(FakeUDP(v6_port=None))
    _, public, lan = nat.local_candidates()
    assert public == [Endpoint("198.51.100.2", 40000)] and not any(":" in ep.host for ep in lan)


BEACON6 = Endpoint("2001:db8:ffff::2", 9000)


def _answer(request: bytes, observed: Endpoint) -> bytes:
    return stun.binding_response(stun.decode(request), observed)


def test_the_beacons_view_over_ipv6_becomes_the_first_ipv6_candidate():
    udp = FakeUDP()
    clock, nat = _nat(udp, beacon6=BEACON6)
    nat.startService()
    try:
        request, where = udp.sent[-1]
        assert where == BEACON6
        seen = Endpoint("2001:db8:77::5", 61000)  # NPTv6 on the way: not our own address
        # Someone else's answer, or one to another request, plants nothing.
        assert not nat.stun_received(_answer(request, Endpoint("2001:db8::bad", 1)), Endpoint("2001:db8::66", 9000))
        other = stun.binding_request(b"x" * 12)
        assert not nat.stun_received(_answer(other, Endpoint("2001:db8::bad", 1)), BEACON6)
        assert nat.stun_received(_answer(request, seen), BEACON6)
        assert nat.local_candidates()[1][1] == seen
        clock.advance(60)
        assert len([s for s in udp.sent if s[1] == BEACON6]) == 2  # asked again: addresses change
    finally:
        nat.stopService()


def test_reflexive_v6_needs_an_ipv6_beacon():
    with pytest.raises(ValueError):
        ReflexiveV6(Clock(), lambda d, e: None).start(Endpoint("203.0.113.2", 9000))


# -- happy eyeballs --------------------------------------------------------------------

V4 = Endpoint("198.51.100.10", 5000)
V4B = Endpoint("198.51.100.11", 5000)
V6 = Endpoint("2001:db8:2::2", 5000)


def test_ipv6_candidates_go_first_and_ipv4_ones_later():
    assert happy_eyeballs.by_family({V4, V6, V4B}) == ([V6], [V4, V4B])
    assert happy_eyeballs.by_family({V4B, V4}) == ([V4, V4B], [])


@implementer(__import__("pilotproto.session.paths", fromlist=["IPathOwner"]).IPathOwner)
class Owner:
    def __init__(self, clock):
        self.clock = clock
        self.probes = []
        self.changes = []

    def send_datagram(self, packet, endpoint, via=None):
        """Data is not what these tests look at."""

    def send_relay(self, packet):
        """Data is not what these tests look at."""

    def send_probe(self, endpoint, ttl=None, via=None):
        self.probes.append((round(self.clock.seconds(), 3), endpoint, ttl))

    def request_punch(self):
        """No coordinated punch in these tests."""

    def relay_kind(self):
        return "relay"

    def label(self):
        return "peer"

    def path_changed(self, direct, via):
        self.changes.append(direct)


def _punching(candidates):
    clock = Clock()
    owner = Owner(clock)
    path = PeerPath(clock, owner)
    path.add_candidates(candidates)
    path.start_punch()
    return clock, owner, path


def test_each_round_probes_ipv6_first_and_ipv4_fifty_ms_later():
    clock, owner, path = _punching([V4, V6])
    owner.probes.clear()  # the priming probes
    clock.advance(path.timers.burst_interval / 2)  # the first full round
    t0 = clock.seconds()
    assert [(ep, t) for _, ep, t in owner.probes] == [(V6, None)]
    clock.advance(happy_eyeballs.FAMILY_DELAY)
    assert owner.probes[1:] == [(round(t0 + happy_eyeballs.FAMILY_DELAY, 3), V4, None)]


def test_ipv4_probes_are_called_off_once_ipv6_won():
    clock, owner, path = _punching([V4, V6])
    clock.advance(path.timers.burst_interval / 2)
    path.acked(Direct(V6))
    owner.probes.clear()
    clock.advance(happy_eyeballs.FAMILY_DELAY)
    assert path.direct == V6 and owner.probes == []


def test_the_first_verified_family_wins_and_a_late_ack_of_the_other_does_not_move_the_path():
    clock, owner, path = _punching([V4, V6])
    clock.advance(path.timers.burst_interval / 2)
    path.acked(Direct(V6))
    clock.advance(0.06)
    path.acked(Direct(V4))  # the IPv4 route proved itself too, a moment late
    assert path.direct == V6 and owner.changes == [True]
    # Within a family a newly proven route still replaces the old (roaming).
    other6 = Endpoint("2001:db8:2::3", 5000)
    path.acked(Direct(other6))
    assert path.direct == other6


def test_a_silent_winner_is_replaced_by_the_other_family():
    clock, owner, path = _punching([V4, V6])
    clock.advance(path.timers.burst_interval / 2)
    path.acked(Direct(V6))
    clock.advance(path.timers.silence_after + 0.01)
    path.acked(Direct(V4))
    assert path.direct == V4


# -- the node's two sockets -----------------------------------------------------------------


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@implementer(IDatagramRouter)
class Router:
    def __init__(self):
        self.received = []

    def datagram_received(self, data, source):
        self.received.append((data, source.endpoint))


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
@pytest.mark.parametrize("batching", [True, False])
def test_the_send_picks_the_socket_of_the_destinations_family_and_both_receive(batching):
    from twisted.internet.selectreactor import SelectReactor

    from pilotproto.node.udp import UDPService

    reactor = SelectReactor()  # never run: reads are driven here, sends are flushed by hand
    service = UDPService(reactor, 0, batching=batching)
    router = Router()
    service.wire(router)
    service.startService()
    peers = {}
    try:
        v4, v6 = service.local_endpoint, service.local_endpoint6
        assert v6 is not None and v6.port == v4.port  # one port number for both families
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            peer = peers[family] = socket.socket(family, socket.SOCK_DGRAM)
            peer.bind((host, 0))
            peer.settimeout(2)
        to4 = Endpoint("127.0.0.1", peers[socket.AF_INET].getsockname()[1])
        to6 = Endpoint("::1", peers[socket.AF_INET6].getsockname()[1])
        service.send(b"four", to4)
        service.send(b"six", to6)
        service.flush()
        data, addr = peers[socket.AF_INET6].recvfrom(100)
        assert data == b"six" and addr[1] == v6.port
        data, addr = peers[socket.AF_INET].recvfrom(100)
        assert data == b"four" and addr[1] == v4.port
        # Both sockets deliver to the router, with the sender's endpoint.
        peers[socket.AF_INET6].sendto(b"from six", ("::1", v6.port))
        peers[socket.AF_INET].sendto(b"from four", ("127.0.0.1", v4.port))
        for sock in (service._socket6, service._socket):
            for _ in range(50):
                sock.doRead()
                if len(router.received) == (1 if sock is service._socket6 else 2):
                    break
        assert router.received == [(b"from six", to6), (b"from four", to4)]
        assert service.status()["ipv6_port"] == v6.port
    finally:
        service.stopService()
        for peer in peers.values():
            peer.close()


def test_an_ipv6_destination_without_an_ipv6_socket_is_counted_not_raised():
    from twisted.internet.selectreactor import SelectReactor

    from pilotproto.node.udp import UDPService

    service = UDPService(SelectReactor(), 0, ipv6=False)
    service.wire(Router())
    service.startService()
    try:
        assert service.local_endpoint6 is None
        service.send(b"x", V6)
        assert service.counters["send_no_socket"] == 1
    finally:
        service.stopService()


# -- the beacon on IPv6 ------------------------------------------------------------------


class RecordingTransport:
    def __init__(self):
        self.written = []

    def write(self, data, addr):
        self.written.append((data, addr))


def test_the_beacon_takes_an_ipv6_listener_and_each_family_leaves_from_its_own_socket():
    from pilotproto.beacon.service import BeaconService
    from pilotproto.tap import Options

    options = Options()
    options.parseOptions(["beacon", "--interface", "127.0.0.1", "--port", "9000", "--interface6", "::"])
    assert options.subOptions["interface6"] == "::"
    service = BeaconService(Clock(), interface="127.0.0.1", port=9000, interface6="::")
    v4, v6 = service.protocol, service.protocol6
    assert v6 is not None
    v4.transport, v6.transport = RecordingTransport(), RecordingTransport()
    # A pushed letter (server.send) or a relayed frame to an IPv6 node leaves from the IPv6 socket.
    service.server.send(b"mail", Endpoint("2001:db8:1::2", 4000))
    v4._forward(b"frame", Endpoint("2001:db8:1::2", 4000))
    v6.send(b"back", Endpoint("198.51.100.2", 5000))
    assert v6.transport.written == [(b"mail", ("2001:db8:1::2", 4000)), (b"frame", ("2001:db8:1::2", 4000))]
    assert v4.transport.written == [(b"back", ("198.51.100.2", 5000))]


@pytest.mark.parametrize("kwargs", [dict(interface6="127.0.0.2"), dict(interface6="::", port=0)])
def test_the_beacons_ipv6_listener_needs_an_ipv6_address_and_a_fixed_port(kwargs):
    from pilotproto.beacon.service import BeaconService
    from pilotproto.errors import InvalidArgument

    with pytest.raises(InvalidArgument):
        BeaconService(Clock(), **{"interface": "127.0.0.1", "port": 9000, **kwargs})


def test_the_beacon_listens_and_answers_stun_on_ipv6_loopback():
    if not _has_ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    from twisted.internet.selectreactor import SelectReactor

    from pilotproto.beacon.service import BeaconService, _UDP6Service

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reactor = SelectReactor()  # never run: the read is driven here
    service = BeaconService(reactor, interface="127.0.0.1", port=port, interface6="::1")
    listener = next(s for s in service if isinstance(s, _UDP6Service))
    listener.startService()
    client = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        client.bind(("::1", 0))
        client.settimeout(2)
        request = stun.binding_request(b"t" * 12)
        client.sendto(request, ("::1", port))
        for _ in range(50):
            listener._port.doRead()
            client.setblocking(False)
            try:
                answer = client.recv(2048)
                break
            except BlockingIOError:
                continue
        result = stun.parse_binding_response(answer)
        assert result.xor_mapped == Endpoint("::1", client.getsockname()[1])
    finally:
        client.close()
        listener.stopService()


def test_a_beacon_given_by_address_is_not_looked_up_for_ipv6():
    from twisted.internet.testing import MemoryReactorClock

    from pilotproto.node.ipv6 import resolve_ipv6

    for literal in ("192.0.2.1", "2001:db8::1"):
        found = resolve_ipv6(MemoryReactorClock(), literal, 9000)
        assert found.called and found.result is None

