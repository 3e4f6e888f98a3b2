"""
The beacon's TLS transport without sockets: datagrams framed over a stream
reach the same server, and replies, relayed frames and pushes for a node
registered over TLS go down its stream, never by UDP to its TCP address.
"""

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from pilotproto.beacon.protocol import BeaconDatagramProtocol
from pilotproto.beacon.server import BeaconServer
from pilotproto.beacon.tls import BeaconStreamFactory, StreamEndpoint, server_tls_options
from pilotproto.errors import InvalidArgument
from pilotproto.identity import Identity
from pilotproto.lab.pki import make_beacon_pki
from pilotproto.wire import Endpoint, stun
from pilotproto.wire import beacon as msgs
from pilotproto.wire import relay
from pilotproto.wire.framing import FrameDecoder, encode_frame

# The TLS node's TCP peer address and the UDP node's source are the same
# IP and port on purpose: only the kind of endpoint tells them apart.
SHARED = ("198.51.100.7", 40001)


class FakeUDP:
    def __init__(self):
        self.written = []

    def write(self, data, addr):
        self.written.append((data, addr))


class Client:
    """A node speaking to the server through ``deliver(datagram) -> [replies]``."""

    def __init__(self, hostname, deliver, received):
        self.identity = Identity.generate()
        self.hostname = hostname
        self.deliver = deliver
        self.received = received
        self.seq = 1000
        self.relay_key = None
        self.counter = 0

    def ask(self, msg):
        self.deliver(msgs.encode(msg))
        return [msgs.decode(d) for d in self.received() if d[0] == msgs.KIND]

    def signed(self, msg):
        self.seq += 1
        return msgs.sign(msg, self.identity, self.seq)

    def register(self):
        [challenge] = self.ask(msgs.Hello(1))
        [registered] = self.ask(self.signed(msgs.Register(2, challenge.nonce, self.hostname, msgs.FLAG_PUBLIC)))
        assert isinstance(registered, msgs.Registered)
        key = challenge.beacon_key
        self.relay_key = relay.relay_key(self.identity.x25519_private(), key, self.identity.public_key, key)
        return challenge, registered

    def relay_to(self, other, payload):
        self.counter += 1
        frame = relay.seal_to_beacon(self.relay_key, self.identity.address.to_bytes(), other.identity.address.to_bytes(), self.counter, payload)
        self.deliver(frame)


@pytest.fixture
def world():
    server = BeaconServer(Clock())
    udp = BeaconDatagramProtocol(server)
    udp.transport = FakeUDP()
    server.send = udp.send
    stream = BeaconStreamFactory(server).buildProtocol(None)
    tcp = StringTransport(peerAddress=IPv4Address("TCP", *SHARED))
    stream.makeConnection(tcp)
    decoder = FrameDecoder()

    def from_stream():
        frames = decoder.feed(tcp.value())
        tcp.clear()
        return frames

    def from_udp():
        out = [d for d, addr in udp.transport.written if addr == SHARED]
        udp.transport.written.clear()
        return out

    tls_node = Client("over-tls", lambda d: stream.dataReceived(encode_frame(d)), from_stream)
    udp_node = Client("over-udp", lambda d: udp.datagramReceived(d, SHARED), from_udp)
    return server, udp, stream, tcp, tls_node, udp_node, from_stream, from_udp


def test_a_node_registers_over_the_stream_and_is_at_a_stream_endpoint(world):
    server, udp, stream, tcp, tls_node, udp_node, from_stream, from_udp = world
    challenge, registered = tls_node.register()
    assert challenge.observed == Endpoint(*SHARED) and registered.observed == Endpoint(*SHARED)
    record = server.registry.find_by_name("over-tls")
    assert isinstance(record.endpoint, StreamEndpoint)
    assert record.endpoint != Endpoint(*SHARED)
    assert udp.transport.written == []
    assert server.counters["tls_datagrams"] == 2


def test_relayed_frames_and_pushes_follow_each_node_to_its_own_transport(world):
    server, udp, stream, tcp, tls_node, udp_node, from_stream, from_udp = world
    tls_node.register()
    udp_node.register()
    udp_node.relay_to(tls_node, b"to the tls node")
    assert [relay.decode_from_beacon(f).payload for f in from_stream()] == [b"to the tls node"]
    assert from_udp() == []
    tls_node.relay_to(udp_node, b"to the udp node")
    assert [relay.decode_from_beacon(f).payload for f in from_udp()] == [b"to the udp node"]
    assert from_stream() == []
    # Unsolicited datagrams (mail pushes) use the same routing.
    server.send(b"\xb0push", server.registry.find_by_name("over-tls").endpoint)
    assert from_stream() == [b"\xb0push"] and from_udp() == []


def test_lookup_offers_no_udp_endpoint_for_a_node_on_tls(world):
    server, udp, stream, tcp, tls_node, udp_node, from_stream, from_udp = world
    tls_node.register()
    udp_node.register()
    [result] = udp_node.ask(udp_node.signed(msgs.Lookup(3, False, b"over-tls")))
    assert isinstance(result, msgs.LookupResult) and result.endpoints == ()
    [result] = tls_node.ask(tls_node.signed(msgs.Lookup(4, False, b"over-udp")))
    assert result.endpoints == (Endpoint(*SHARED),)


def test_a_dropped_connection_drops_frames_for_it_and_breaks_nothing(world):
    server, udp, stream, tcp, tls_node, udp_node, from_stream, from_udp = world
    tls_node.register()
    udp_node.register()
    stream.connectionLost(None)
    udp_node.relay_to(tls_node, b"lost")
    assert server.counters["tls_dropped_closed"] == 1
    assert udp.transport.written == []
    # The registration stays until it expires like any other.
    assert server.registry.find_by_name("over-tls") is not None


def test_a_full_stream_drops_datagrams_instead_of_queueing_them(world):
    server, udp, stream, tcp, tls_node, udp_node, from_stream, from_udp = world
    tls_node.register()
    udp_node.register()
    stream.pauseProducing()
    udp_node.relay_to(tls_node, b"dropped")
    stream.resumeProducing()
    udp_node.relay_to(tls_node, b"delivered")
    assert [relay.decode_from_beacon(f).payload for f in from_stream()] == [b"delivered"]
    assert server.counters["tls_dropped_backpressure"] == 1


def test_stun_over_the_stream_is_ignored_and_bad_framing_closes_it(world):
    server, udp, stream, tcp, tls_node, udp_node, from_stream, from_udp = world
    stream.dataReceived(encode_frame(stun.binding_request(b"\x01" * 12)))
    assert server.counters["tls_dropped_stun"] == 1 and from_stream() == []
    stream.dataReceived(b"\x00\x00")
    assert tcp.disconnecting
    assert server.counters["tls_dropped_bad_framing"] == 1


def test_an_idle_connection_is_closed():
    clock = Clock()
    server = BeaconServer(clock)
    stream = BeaconStreamFactory(server).buildProtocol(None)
    stream.callLater = clock.callLater
    tcp = StringTransport(peerAddress=IPv4Address("TCP", *SHARED))
    stream.makeConnection(tcp)
    clock.advance(59)
    assert not tcp.disconnecting
    clock.advance(2)
    assert server.counters["tls_idle_closed"] == 1


def test_unusable_certificate_files_are_a_clear_error(tmp_path):
    pki = make_beacon_pki(str(tmp_path / "a"), ["127.0.0.1"])
    other = make_beacon_pki(str(tmp_path / "b"), ["127.0.0.1"])
    server_tls_options(pki.cert_file, pki.key_file)
    with pytest.raises(InvalidArgument, match="unusable"):
        server_tls_options(pki.cert_file, other.key_file)
    with pytest.raises(InvalidArgument, match="cannot read"):
        server_tls_options(str(tmp_path / "missing.pem"), pki.key_file)


def test_twistd_beacon_options_need_both_files_with_a_tls_port(tmp_path):
    from twisted.internet.testing import MemoryReactorClock
    from twisted.python import usage

    from pilotproto import tap

    with pytest.raises(usage.UsageError, match="--tls-cert"):
        tap.Options().parseOptions(["beacon", "--tls-port", "443"])
    pki = make_beacon_pki(str(tmp_path), ["127.0.0.1"])
    options = tap.Options()
    # UDP port 0: the UDP side binds a real loopback socket; never a fixed port in tests.
    options.parseOptions(["beacon", "--interface", "127.0.0.1", "--port", "0", "--tls-port", "8443", "--tls-cert", pki.cert_file, "--tls-key", pki.key_file])
    reactor = MemoryReactorClock()
    service = tap.makeService(options, reactor=reactor)
    service.startService()
    [(port, factory, _, _, interface)] = reactor.sslServers
    assert (port, interface) == (8443, "127.0.0.1") and isinstance(factory, BeaconStreamFactory)
    service.stopService()
