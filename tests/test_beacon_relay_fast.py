"""Issue 13 item 5: the beacon's UDP relay reads only a frame's header, builds
no Endpoint for a validated sender, and keeps every rule of the slow path."""

import sys

import pytest
from helpers import SignedNode
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from pilotproto.beacon import protocol as beacon_protocol
from pilotproto.beacon.limits import Limits, Rate
from pilotproto.beacon.protocol import BeaconDatagramProtocol
from pilotproto.beacon.registry import SEQS_KEPT
from pilotproto.beacon.server import BeaconServer
from pilotproto.beacon.tls import StreamEndpoint
from pilotproto.wire import Endpoint, relay
from pilotproto.wire import beacon as msgs

A = ("198.51.100.7", 40001)
B = ("203.0.113.9", 40002)
C = ("203.0.113.10", 40003)


class FakeUDP:
    def __init__(self):
        self.written = []

    def write(self, data, addr):
        self.written.append((bytes(data), addr))


class World:
    def __init__(self, **limits):
        self.clock = Clock()
        self.clock.advance(1000)
        self.server = BeaconServer(self.clock, limits=Limits(**limits))
        self.udp = BeaconDatagramProtocol(self.server)
        self.udp.transport = FakeUDP()
        self.server.send = self.udp.send

    def node(self, addr, hostname, public=True):
        node = SignedNode(self.server, Endpoint(*addr), hostname, public=public)
        assert isinstance(node.register(), msgs.Registered)
        return node

    def through_socket(self, frame, addr):
        """``frame`` arrives on the UDP socket from ``addr``; what the socket sent."""
        self.udp.transport.written.clear()
        self.udp.datagramReceived(frame, addr)
        return list(self.udp.transport.written)


@pytest.fixture
def world():
    return World()


def test_a_frame_is_forwarded_byte_exact_to_the_destination_without_building_an_endpoint(world, monkeypatch):
    a, b = world.node(A, "alpha"), world.node(B, "beta")
    frame = a.relay_frame(b, b"\xc4tunnel packet" * 50)

    def no_endpoints(*args):
        raise AssertionError("the relay fast path built an Endpoint")

    monkeypatch.setattr(beacon_protocol, "Endpoint", no_endpoints)
    sent = world.through_socket(frame, A)
    assert sent == [(b"\xd1\x01" + a.identity.address.to_bytes() + b"\xc4tunnel packet" * 50, B)]
    assert relay.decode_from_beacon(sent[0][0]) == relay.RelayFromBeacon(a.identity.address.to_bytes(), b"\xc4tunnel packet" * 50)
    assert world.server.counters["relayed_frames"] == 1 and world.server.counters["relayed_bytes"] == 700


def test_refusals_are_those_of_the_slow_path(world):
    a, b = world.node(A, "alpha"), world.node(B, "beta")
    private = world.node(C, "gamma", public=False)
    counters = world.server.counters
    # Unregistered sender: a key the beacon never saw.
    stranger = SignedNode(world.server, Endpoint("192.0.2.1", 9), "stranger")
    stranger.relay_key = b"k" * 32
    assert world.through_socket(stranger.relay_frame(b, b"x"), ("192.0.2.1", 9)) == []
    assert counters["relay_dropped_unknown_sender"] == 1
    # A flipped payload bit breaks the tag.
    frame = bytearray(a.relay_frame(b, b"payload"))
    frame[-1] ^= 1
    assert world.through_socket(bytes(frame), A) == [] and counters["relay_dropped_bad_tag"] == 1
    # Replay.
    frame = a.relay_frame(b, b"once")
    assert len(world.through_socket(frame, A)) == 1
    assert world.through_socket(frame, A) == [] and counters["relay_dropped_replay"] == 1
    # Forbidden pair: gamma is private and its list does not name alpha.
    assert world.through_socket(a.relay_frame(private, b"x"), A) == []
    assert counters["relay_dropped_no_destination"] == 1
    # Once gamma lists alpha, the same pair is carried.
    private.set_visibility([a.key], 1)
    assert [addr for _, addr in world.through_socket(a.relay_frame(private, b"x"), A)] == [C]
    # Truncated or of another version: malformed.
    assert world.through_socket(frame[: relay.TO_BEACON_OVERHEAD - 1], A) == []
    assert world.through_socket(frame[:1] + b"\x02" + frame[2:], A) == []
    assert counters["dropped_malformed"] == 2
    # An expired sender is unknown, however good its tag.
    world.clock.advance(world.server.registry.ttl + 1)
    assert world.through_socket(a.relay_frame(b, b"late"), A) == []
    assert counters["relay_dropped_unknown_sender"] == 2


def test_over_quota_frames_are_dropped_per_node_and_per_pair():
    world = World(relay_per_node=Rate(3000, 1), relay_per_pair=Rate(2000, 1))
    a, b, c = world.node(A, "alpha"), world.node(B, "beta"), world.node(C, "gamma")
    sizes = [len(world.through_socket(a.relay_frame(b, b"x" * 1000), A)) for _ in range(3)]
    assert sizes == [1, 1, 0]
    assert len(world.through_socket(a.relay_frame(c, b"x" * 1000), A)) == 1
    assert len(world.through_socket(a.relay_frame(c, b"x" * 1000), A)) == 0
    assert world.server.counters["relay_dropped_rate_limited"] == 2
    world.clock.advance(1)
    assert len(world.through_socket(a.relay_frame(b, b"x" * 1000), A)) == 1


def test_a_burst_over_quota_is_cut_where_frame_by_frame_would_cut_it():
    world = World(relay_per_node=Rate(10_000, 1), relay_per_pair=Rate(3500, 1))
    a, b = world.node(A, "alpha"), world.node(B, "beta")
    world.udp.datagramReceived(a.relay_frame(b, b"x" * 1000), A)  # the sender's relay state: 2500 left
    world.udp.transport.written.clear()
    world.server.relaying.forward_many([a.relay_frame(b, b"y" * 1000) for _ in range(4)], Endpoint(*A))
    forwarded = world.server.relaying.forward_many([a.relay_frame(b, b"z" * 1000) for _ in range(4)], Endpoint(*A))
    assert forwarded == []  # the first burst took what was left: 2 frames of 4
    counters = world.server.counters
    assert (counters["relayed_frames"], counters["relay_dropped_rate_limited"]) == (3, 6)
    world.clock.advance(1)
    quotas = world.server.relaying._quotas
    checks = []
    check = quotas.relay

    def counted(*args, **kwargs):
        checks.append(args[2])
        return check(*args, **kwargs)

    quotas.relay = counted
    fits = world.server.relaying.forward_many([a.relay_frame(b, b"w" * 1000) for _ in range(3)], Endpoint(*A))
    assert [relay.decode_from_beacon(frame).payload for frame, _ in fits] == [b"w" * 1000] * 3
    assert checks == [3000]  # a run the buckets hold: one check for all of it


def test_a_new_source_is_carried_but_challenged_and_a_tcp_lookalike_is_not_the_node(world):
    a, b = world.node(A, "alpha"), world.node(B, "beta")
    sent = world.through_socket(a.relay_frame(b, b"moved"), ("198.51.100.7", 51515))
    assert [addr for _, addr in sent] == [B, ("198.51.100.7", 51515)]
    assert isinstance(msgs.decode(sent[1][0]), msgs.PathChallenge)
    assert world.server.registry.get(a.key).endpoint == Endpoint(*A)
    # A node on the TLS relay is at a StreamEndpoint: a UDP datagram from the
    # same host and port is not it, and is challenged, not trusted.
    record = world.server.registry.get(b.key)
    record.endpoint = StreamEndpoint(*B, stream=1, sink=None)
    sent = world.through_socket(b.relay_frame(a, b"spoof?"), B)
    assert [addr for _, addr in sent] == [A, B]
    assert isinstance(msgs.decode(sent[1][0]), msgs.PathChallenge)


def test_relay_udp_and_datagram_received_agree(world):
    a, b = world.node(A, "alpha"), world.node(B, "beta")
    fast = world.server.relay_udp(a.relay_frame(b, b"one"), A)
    slow = world.server.datagram_received(a.relay_frame(b, b"two"), Endpoint(*A))
    assert [(relay.decode_from_beacon(d).payload, dest) for d, dest in fast + slow] == [(b"one", Endpoint(*B)), (b"two", Endpoint(*B))]


@given(st.binary(min_size=8, max_size=8), st.binary(min_size=8, max_size=8), st.integers(0, 2**64 - 1), st.binary(max_size=1500))
def test_raw_frame_helpers_agree_with_the_codec(sender, destination, counter, payload):
    key = bytes(range(32))
    data = relay.seal_to_beacon(key, sender, destination, counter, payload)
    hasher = relay.tag_hasher(key)
    assert relay.frame_tag_ok(hasher, data) and relay.tag_ok(key, relay.decode_to_beacon(data))
    assert not relay.frame_tag_ok(relay.tag_hasher(bytes(32)), data)
    assert relay.forward_from_beacon(data) == relay.encode_from_beacon(relay.RelayFromBeacon(sender, payload))
    assert relay.frame_tag_ok(hasher, data)  # the kept hasher is not consumed


def test_a_record_stays_small_however_long_it_keeps_alive(world):
    a = world.node(A, "alpha")
    record = world.server.registry.get(a.key)
    assert record.relay_window is None and record.relay_mac is None  # made on the first relay frame
    for _ in range(40):
        world.clock.advance(25)
        a.seq = int(world.clock.seconds() * 1e9)
        assert isinstance(a.keepalive()[0], msgs.KeepaliveAck)
    assert len(record.seen_seqs) <= SEQS_KEPT


def test_forwarded_frames_go_straight_to_the_socket(world):
    class Socket:
        def __init__(self):
            self.sent = []

        def sendto(self, data, addr):
            self.sent.append((bytes(data), addr))

    class Transport(FakeUDP):
        socket = Socket()

    world.udp.transport = Transport()
    a, b = world.node(A, "alpha"), world.node(B, "beta")
    world.udp.transport.written.clear()
    world.udp.datagramReceived(a.relay_frame(b, b"fast"), A)
    assert [addr for _, addr in Transport.socket.sent] == [B]
    assert relay.decode_from_beacon(Transport.socket.sent[0][0]).payload == b"fast"
    assert world.udp.transport.written == []  # not through Twisted's write


class _GSOSocket:
    """A socket that records plain and GSO sends."""

    def __init__(self):
        self.sends = []

    def sendto(self, data, addr):
        self.sends.append(([bytes(data)], addr))

    def sendmsg(self, buffers, ancdata, flags, addr):
        [(_, _, segment)] = ancdata
        data, size = b"".join(buffers), int.from_bytes(segment, sys.byteorder)
        self.sends.append(([data[i:i + size] for i in range(0, len(data), size)], addr))


def test_a_read_batch_forwards_a_burst_in_one_gso_send_the_same_frames_as_one_by_one(world):
    a, b = world.node(A, "alpha"), world.node(B, "beta")
    sock = _GSOSocket()
    world.udp.transport.socket = sock
    world.udp.gso = True
    world.udp.datagramReceived(a.relay_frame(b, b"\xc4first"), A)  # makes the sender's relay state
    replayed = a.relay_frame(b, b"\xc4" * 100)
    forged = bytearray(a.relay_frame(b, b"\xc4" * 100))
    forged[-1] ^= 1
    burst = [a.relay_frame(b, b"\xc4" * 100), replayed, replayed, bytes(forged), a.relay_frame(b, b"\xc4" * 100)]
    sock.sends.clear()
    world.udp.batch_started()
    world.udp.datagrams_received(burst, A)
    assert sock.sends == []  # held until the batch ends
    world.udp.batch_done()
    [(frames, addr)] = sock.sends
    assert addr == B and [relay.decode_from_beacon(f).payload for f in frames] == [b"\xc4" * 100] * 3
    counters = world.server.counters
    assert (counters["relay_dropped_replay"], counters["relay_dropped_bad_tag"], counters["relayed_frames"]) == (1, 1, 4)


def test_the_port_reads_a_gso_burst_in_one_call_and_hands_it_over_whole():
    import socket
    import struct

    from twisted.internet.testing import MemoryReactorClock

    from pilotproto.beacon.protocol import BatchingPort

    class Recording(BeaconDatagramProtocol):
        def __init__(self):
            super().__init__(server=None)
            self.got = []

        def startProtocol(self):
            """No buffers to ask for here."""

        def datagrams_received(self, packets, addr):
            self.got.append(list(packets))

        def datagramReceived(self, data, addr):
            self.got.append([data])

    proto = Recording()
    port = BatchingPort(0, proto, interface="127.0.0.1", reactor=MemoryReactorClock())
    port.startListening()
    try:
        if not port.gro:
            pytest.skip("no UDP_GRO on this kernel")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            try:
                sender.sendmsg([b"a" * 100 + b"b" * 100 + b"c" * 60], [(socket.SOL_UDP, 103, struct.pack("=H", 100))], 0, port.socket.getsockname())
            except OSError:
                pytest.skip("no UDP GSO on this kernel")
            sender.sendto(b"alone", port.socket.getsockname())
        port.doRead()
        assert proto.got == [[b"a" * 100, b"b" * 100, b"c" * 60], [b"alone"]]
    finally:
        port.stopListening()
