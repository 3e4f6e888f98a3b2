"""Path MTU discovery wired end to end: probe messages, the per-peer search, black holes, the socket."""

from __future__ import annotations

import errno
import itertools
import socket
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from zope.interface import implementer

from pilotproto.node import udpsock
from pilotproto.session import pmtu
from pilotproto.session.peer_mtu import TLS_RELAY_FRAME, TLS_RELAY_PACKET, IMtuOwner, PeerMtu
from pilotproto.streams import MAX_PACKET, StreamConnection
from pilotproto.streams.blackhole import LOST_LARGE, PROBE_TIMEOUTS, SMALL_PACKET, BlackHoleDetector
from pilotproto.tunnel.record import Session, TransportKeys
from pilotproto.wire import DecodeError, Endpoint, relay
from pilotproto.wire import session as smsg
from pilotproto.wire.sources import Direct, Relayed

u64 = st.integers(0, 2**64 - 1)


# -- the codec ---------------------------------------------------------------------


@given(u64, st.integers(smsg.MTU_PROBE_HEAD, 9216))
def test_mtu_probe_round_trips_at_its_padded_size(nonce, size):
    data = smsg.encode(smsg.MtuProbe(nonce, size))
    assert len(data) == size and data[0] == smsg.MTU_PROBE
    assert smsg.decode(data) == smsg.MtuProbe(nonce, size)


@given(u64, st.integers(0, 65535))
def test_mtu_ack_round_trips(nonce, size):
    data = smsg.encode(smsg.MtuAck(nonce, size))
    assert len(data) == 11 and smsg.decode(data) == smsg.MtuAck(nonce, size)


@given(u64, st.integers(0, 65535), st.data())
def test_a_truncated_mtu_ack_or_probe_is_refused(nonce, size, data):
    for msg in (smsg.MtuAck(nonce, size), smsg.MtuProbe(nonce)):
        encoded = smsg.encode(msg)
        cut = data.draw(st.integers(1, len(encoded) - 1))
        with pytest.raises(DecodeError):
            smsg.decode(encoded[:cut])


def test_a_probe_smaller_than_its_head_is_not_encoded():
    with pytest.raises(ValueError):
        smsg.encode(smsg.MtuProbe(1, 5))


def test_a_sealed_probe_is_exactly_the_probed_ip_size():
    keys = TransportKeys(b"k" * 32, b"r" * 32, 1, 2, True)
    session = Session(keys, Clock())
    for family, mtu in ((4, 1500), (6, 1500), (4, 1280), (4, 9000)):
        plaintext = smsg.encode(smsg.MtuProbe(7, pmtu.plaintext_size(mtu, family)))
        assert len(session.seal(plaintext)) + pmtu.HEADERS[family] == mtu
    assert pmtu.plaintext_size(1500, 4) == 1442  # 1500 - 20 IPv4 - 8 UDP - 14 header - 16 tag


# -- one peer's search ---------------------------------------------------------------


@implementer(IMtuOwner)
class Owner:
    """Records what the search sends and sizes; a path of ``mtu`` bytes acks what fits
    (the relay: what fits in a 0xD0 frame to the beacon, whose route MTU is ``relay_mtu``)."""

    def __init__(self, clock, mtu=1500, relay_mtu=1500):
        self.clock = clock
        self.mtu = mtu
        self.relay_mtu = relay_mtu
        self.sent = []
        self.relayed = []
        self.sizes = []
        self.peer_mtu = None
        self.kind = "relay"
        self.beacon = BEACON
        self.peer_by_tcp = False

    def send_direct(self, plaintext, endpoint, via):
        self.sent.append((smsg.decode(plaintext), endpoint, via))
        msg = smsg.decode(plaintext)
        if isinstance(msg, smsg.MtuProbe) and msg.size + pmtu.TUNNEL_OVERHEAD + pmtu.HEADERS[pmtu.family_of(endpoint.host)] <= self.mtu:
            ack = smsg.MtuAck(msg.nonce, msg.size)
            self.clock.callLater(0.01, self.peer_mtu.ack_received, ack, Direct(endpoint))

    def send_relayed(self, plaintext):
        msg = smsg.decode(plaintext)
        self.relayed.append(msg)
        if isinstance(msg, smsg.MtuProbe) and msg.size + pmtu.TUNNEL_OVERHEAD + relay.TO_BEACON_OVERHEAD + 28 <= self.relay_mtu:
            self.clock.callLater(0.03, self.peer_mtu.ack_received, smsg.MtuAck(msg.nonce, msg.size), Relayed(b"\1" * 8))

    def relay_kind(self):
        return self.kind

    def relay_beacon(self):
        return self.beacon

    def peer_relays_by_tcp(self):
        return self.peer_by_tcp

    def set_packet_size(self, size):
        self.sizes.append(size)


def make(mtu=1500, ceiling=9000):
    clock = Clock()
    owner = Owner(clock, mtu)
    counter = itertools.count(1)
    owner.peer_mtu = PeerMtu(clock, owner, route_mtu=lambda host, port: ceiling, random_bytes=lambda n: next(counter).to_bytes(n, "big"))
    return clock, owner, owner.peer_mtu


def settle(clock, seconds=30.0):
    for _ in range(int(seconds / 0.05)):
        clock.advance(0.05)


PEER = Endpoint("198.51.100.7", 4000)
BEACON = Endpoint("203.0.113.1", 9000)


def test_a_direct_path_is_searched_and_the_stream_packet_size_follows():
    clock, owner, peer = make(mtu=1500, ceiling=1500)
    assert peer.pmtu is None and peer.packet_size() == MAX_PACKET
    peer.path_changed(PEER, None)
    # The base first, then the ceiling is probed to the direct route only.
    assert owner.sizes == [pmtu.plaintext_size(pmtu.BASE_MTU, 4)]
    probe, endpoint, via = owner.sent[0]
    assert isinstance(probe, smsg.MtuProbe) and endpoint == PEER and via is None
    assert probe.size == 1500 - 28 - 30
    settle(clock)
    assert peer.pmtu == 1500 and owner.sizes[-1] == 1442 == peer.packet_size()
    assert peer.describe()["pmtu_state"] == "complete"


@pytest.mark.parametrize("true_mtu", [1280, 1400, 1492, 9000])
def test_the_search_finds_paths_smaller_than_the_interface(true_mtu):
    clock, owner, peer = make(mtu=true_mtu, ceiling=9000)
    peer.path_changed(PEER, None)
    settle(clock)
    assert true_mtu - pmtu.GRANULARITY <= peer.pmtu <= true_mtu
    assert owner.sizes[-1] == pmtu.plaintext_size(peer.pmtu, 4)


def test_ipv6_paths_leave_room_for_the_larger_header():
    clock, owner, peer = make(mtu=1500, ceiling=1500)
    peer.path_changed(Endpoint("2001:db8::7", 4000), None)
    settle(clock)
    assert peer.pmtu == 1500 and owner.sizes[-1] == 1500 - 48 - 30


def test_the_udp_relay_is_searched_with_room_for_the_relay_frame():
    clock, owner, peer = make(mtu=0, ceiling=1500)  # nothing would be acked directly
    peer.path_changed(None, None)
    # Probes go through the relay, sized so the 0xD0 frame's IP packet to the beacon is the size tried.
    assert owner.sent == [] and owner.relayed[0].size == 1500 - 28 - relay.TO_BEACON_OVERHEAD - 30
    assert owner.sizes == [pmtu.plaintext_size(pmtu.BASE_MTU, 4, relay.TO_BEACON_OVERHEAD)]
    settle(clock)
    assert peer.pmtu == 1500 and owner.sizes[-1] == peer.packet_size() == 1400 > MAX_PACKET
    assert peer.describe()["pmtu_path"] == "relay"
    # A direct ack does not confirm a relay search's probe.
    peer.black_hole()
    peer.ack_received(smsg.MtuAck(owner.relayed[-1].nonce, 1400), Direct(PEER))
    assert peer.pmtu == pmtu.BASE_MTU


def test_a_narrow_beacon_route_is_found_and_direct_and_relay_each_keep_their_own_size():
    clock, owner, peer = make(mtu=1500, ceiling=1500)
    owner.relay_mtu = 1400
    peer.path_changed(None, None)
    settle(clock)
    assert 1400 - pmtu.GRANULARITY <= peer.pmtu <= 1400
    peer.path_changed(PEER, None)
    settle(clock)
    assert peer.pmtu == 1500 and owner.sizes[-1] == 1442
    peer.path_changed(None, None)  # the direct path went silent
    assert owner.sizes[-1] == pmtu.plaintext_size(pmtu.BASE_MTU, 4, relay.TO_BEACON_OVERHEAD)
    settle(clock)
    assert owner.sizes[-1] == pmtu.plaintext_size(peer.pmtu, 4, relay.TO_BEACON_OVERHEAD) < 1400


def test_the_tls_relay_is_not_searched():
    clock, owner, peer = make()
    owner.kind = "relay-tcp"
    peer.path_changed(None, None)
    assert peer.pmtu is None and owner.sizes == [MAX_PACKET] and owner.relayed == []
    # Both ends on TLS: the beacon's largest relay frame, nothing on the way has an IP MTU.
    owner.peer_by_tcp = True
    peer.path_changed(None, None)
    assert owner.sizes[-1] == TLS_RELAY_PACKET == peer.packet_size()
    assert not clock.getDelayedCalls()
    # The link went back to UDP: the next black hole sizes for that and searches.
    owner.kind = "relay"
    peer.black_hole()
    assert peer.machine is not None and owner.relayed


def test_the_tls_relay_size_is_the_beacons_largest_frame():
    from pilotproto.beacon import tls

    assert TLS_RELAY_FRAME == tls.MAX_FRAME
    assert TLS_RELAY_PACKET + pmtu.TUNNEL_OVERHEAD + relay.TO_BEACON_OVERHEAD == tls.MAX_FRAME


def test_the_same_route_again_keeps_the_search_and_a_new_one_restarts_it():
    clock, owner, peer = make(mtu=1500, ceiling=1500)
    peer.path_changed(PEER, None)
    settle(clock)
    machine = peer.machine
    peer.path_changed(PEER, None)
    assert peer.machine is machine
    peer.path_changed(Endpoint("198.51.100.7", 4001), None)
    assert peer.machine is not machine and machine.state == "stopped"


def test_an_unknown_route_mtu_starts_from_the_usual_ceiling():
    clock = Clock()
    owner = Owner(clock, 9000)
    owner.peer_mtu = PeerMtu(clock, owner, route_mtu=lambda host, port: None)
    owner.peer_mtu.path_changed(PEER, None)
    assert owner.peer_mtu.machine.ceiling == 1500


def test_probes_are_answered_the_way_they_came():
    clock, owner, peer = make()
    peer.probe_received(smsg.MtuProbe(5, 1400), Relayed(b"\0" * 6))
    assert owner.sent == [] and owner.relayed == [smsg.MtuAck(5, 1400)]
    peer.probe_received(smsg.MtuProbe(5, 1400), Direct(PEER))
    assert owner.sent == [(smsg.MtuAck(5, 1400), PEER, None)]


def test_a_relayed_ack_does_not_confirm_a_size():
    clock = Clock()
    owner = Owner(clock, 0)  # nothing is acked directly
    owner.peer_mtu = peer = PeerMtu(clock, owner, route_mtu=lambda host, port: 1500, random_bytes=lambda n: b"\0" * 7 + b"\x09")
    peer.path_changed(PEER, None)
    peer.ack_received(smsg.MtuAck(9, 1442), Relayed(b"\0" * 6))
    assert peer.pmtu == pmtu.BASE_MTU


def test_a_black_hole_drops_to_the_base_and_searches_again():
    clock, owner, peer = make(mtu=1500, ceiling=1500)
    peer.path_changed(PEER, None)
    settle(clock)
    owner.mtu = 1400  # a tunnel appeared on the way
    peer.black_hole()
    assert pmtu.plaintext_size(pmtu.BASE_MTU, 4) in owner.sizes[-3:]
    settle(clock)
    assert 1400 - pmtu.GRANULARITY <= peer.pmtu <= 1400


# -- black holes in the streams layer ----------------------------------------------------


class Sent:
    def __init__(self, size):
        self.size = size


def test_full_size_losses_while_small_packets_are_acked_are_a_black_hole():
    holes = []
    detector = BlackHoleDetector(SMALL_PACKET, lambda: holes.append(1))
    detector.on_acked([Sent(100)])
    detector.on_lost([Sent(1442)] * (LOST_LARGE - 1))
    assert holes == []
    detector.on_lost([Sent(1442)])
    assert holes == [1]


def test_a_full_size_packet_acked_clears_the_count():
    holes = []
    detector = BlackHoleDetector(SMALL_PACKET, lambda: holes.append(1))
    detector.on_acked([Sent(100)])
    detector.on_lost([Sent(1442)] * (LOST_LARGE - 1))
    detector.on_acked([Sent(1442)])
    detector.on_lost([Sent(1442)] * (LOST_LARGE - 1))
    assert holes == []
    # Losses alone, with nothing small acked either, are congestion, not a black hole.
    detector.on_lost([Sent(1442)] * LOST_LARGE)
    assert holes == []


def test_probe_timeouts_in_a_row_above_the_small_size_are_a_black_hole():
    holes = []
    detector = BlackHoleDetector(SMALL_PACKET, lambda: holes.append(1))
    for _ in range(PROBE_TIMEOUTS):
        detector.on_probe_timeout(SMALL_PACKET)
    assert holes == []
    for _ in range(PROBE_TIMEOUTS):
        detector.on_probe_timeout(1442)
    assert holes == [1]


def test_a_stream_connection_on_a_black_hole_path_calls_for_a_smaller_size():
    clock = Clock()
    sent = []
    conn = StreamConnection(clock, sent.append, True, max_packet=1442)
    holes = []
    conn.on_black_hole = lambda: holes.append(conn.max_packet)
    stream = conn.open_stream(7)
    stream.write(b"x" * 200_000)
    for _ in range(400):  # nothing ever arrives: every packet is full size
        clock.advance(0.05)
        if holes:
            break
    assert holes == [1442] and conn.stats["black_holes"] == 1
    assert max(len(p) for p in sent) == 1442


def test_set_max_packet_moves_everything_counted_in_packets():
    conn = StreamConnection(Clock(), lambda p: None, True)
    min_window = conn.cc.min_window
    conn.set_max_packet(1442)
    assert conn.max_packet == conn.cc.max_packet == conn.pacer.max_packet == conn.ack_frequency.max_packet == 1442
    assert conn.cc.min_window == min_window * 1442 // MAX_PACKET
    assert conn.pacer.capacity >= conn.pacer.burst_packets * 1442
    assert conn.max_datagram > MAX_PACKET - 20


# -- the socket ----------------------------------------------------------------------------


def test_the_node_socket_never_fragments():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert udpsock.set_dont_fragment(sock)
        assert sock.getsockopt(socket.IPPROTO_IP, udpsock.IP_MTU_DISCOVER) == udpsock.PMTUDISC_PROBE
    finally:
        sock.close()


def test_a_send_larger_than_the_interface_is_counted_too_big():
    class Reactor:
        def callLater(self, *a):
            raise AssertionError("not used")

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    counters = Counter()
    port = udpsock.SocketPort(Reactor(), sock, lambda d, a: None, counters, batching=False)
    try:
        port._send_failed(OSError(errno.EMSGSIZE, "Message too long"), 1, ("127.0.0.1", 9))
        assert counters["send_too_big"] == 1 and counters["send_errors"] == 0
    finally:
        sock.close()


def test_the_route_mtu_of_loopback_is_capped():
    assert pmtu.route_mtu("127.0.0.1", 9) == pmtu.MAX_MTU
    assert pmtu.route_mtu("192.0.2.1", 0) in (None, *range(pmtu.BASE_MTU - 600, pmtu.MAX_MTU + 1))


def test_a_relay_that_names_no_beacon_is_searched_from_the_usual_ceiling():
    clock, owner, peer = make(mtu=0, ceiling=9000)
    owner.beacon = None
    peer.path_changed(None, None)
    assert peer.machine.ceiling == 1500
    settle(clock)
    assert peer.pmtu == 1500 and owner.sizes[-1] == 1400
