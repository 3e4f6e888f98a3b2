"""
Encrypted sessions between two in-process nodes and a beacon, over real UDP
on loopback: ping over the relay and over a direct path, no plaintext at the
relay, tampered and replayed packets dropped, revocation.
"""

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from pilotproto.errors import NotFound, NotTrusted, Refused
from pilotproto.wire import Endpoint

from .inproc import make_node, sleep, start_beacon, stop_all, trust_each_other

pytestmark = pytest.mark.integration
DIRECT_KINDS = {"direct", "punched", "lan"}


@pytest.fixture
def beacon():
    service = start_beacon()
    yield service
    service.stopService()


@pytest_twisted.async_yield_fixture
async def pair(tmp_path, beacon, request):
    allow_direct = getattr(request, "param", True)
    a = make_node(tmp_path, beacon, "agent-a", allow_direct=allow_direct)
    b = make_node(tmp_path, beacon, "agent-b", allow_direct=allow_direct)
    yield a, b
    await stop_all(a, b)


@pytest_twisted.inlineCallbacks
def test_ping_needs_trust_and_then_moves_to_a_direct_path(pair):
    a, b = pair
    yield defer.gatherResults([a.when_registered(), b.when_registered()])
    with pytest.raises(NotFound):  # private by default: not even visible
        yield a.ping("agent-b", count=1)
    yield trust_each_other(a, b)
    result = yield a.ping("agent-b", count=4, interval=0.2)
    assert result["received"] == 4 and result["loss_pct"] == 0.0
    assert result["replies"][0]["path"] == "relay"  # the first byte never waits for a direct path
    for _ in range(20):
        if a.sessions.peers[b.identity.public_key].path.using_direct():
            break
        yield sleep(0.1)
    later = yield a.ping("agent-b", count=2, interval=0.1)
    assert all(r["path"] in DIRECT_KINDS for r in later["replies"]), later
    [peer] = (yield a.peers())["peers"]
    assert peer["hostname"] == "agent-b" and peer["path"] in DIRECT_KINDS and peer["bytes_sent"] > 0


@pytest.mark.parametrize("pair", [False], indirect=True)
@pytest_twisted.inlineCallbacks
def test_relay_never_sees_plaintext(pair, beacon):
    a, b = pair
    yield defer.gatherResults([a.when_registered(), b.when_registered()])
    yield trust_each_other(a, b)
    marker = b"PLAINTEXT-MARKER-7f3a9c"
    result = yield a.ping("agent-b", count=3, interval=0.1, payload=marker)
    assert result["received"] == 3
    assert all(r["path"] == "relay" for r in result["replies"])
    assert beacon.server.counters["relayed_frames"] >= 6
    assert not any(marker in datagram for datagram in beacon.seen)


@pytest_twisted.inlineCallbacks
def test_tampered_and_replayed_packets_are_dropped_and_counted(pair):
    a, b = pair
    yield defer.gatherResults([a.when_registered(), b.when_registered()])
    yield trust_each_other(a, b)
    yield a.ping("agent-b", count=1)
    for _ in range(40):
        if a.sessions.peers[b.identity.public_key].path.using_direct():
            break
        yield sleep(0.05)
    held = []
    original = a.udp.send

    def hold_data_packets(data, destination, ttl=None):
        # Keep A's data packets to B back, so the test decides what B sees.
        if data[0] == 0xC4 and destination.port == b.udp.local_endpoint.port:
            held.append((data, destination))
        else:
            original(data, destination, ttl)

    def hold_bursts(packets, destination):
        for data in packets:
            hold_data_packets(data, destination)

    # Every layer sends through the one IDatagramSender it was wired with
    # (the tunnel's data packets as bursts, with send_many).
    a.udp.send = hold_data_packets
    a.udp.send_many = hold_bursts
    ping = a.ping("agent-b", count=1, timeout=3)
    yield sleep(0.1)
    assert held, "expected A to send B a direct data packet"
    packet, destination = held[0]
    stats = b.sessions.endpoint.stats
    tampered = bytearray(packet)
    tampered[-1] ^= 0x40
    for datagram in (bytes(tampered), packet, packet):
        original(datagram, destination)
    result = yield ping
    assert result["received"] == 1
    assert stats["data_auth_failed"] == 1
    assert stats["data_replayed"] == 1


@pytest_twisted.inlineCallbacks
def test_revoke_tears_the_session_down_at_once(pair):
    a, b = pair
    yield defer.gatherResults([a.when_registered(), b.when_registered()])
    yield trust_each_other(a, b)
    yield b.ping("agent-a", count=1)
    a.trust.revoke("agent-b")
    started = reactor.seconds()
    with pytest.raises((Refused, NotTrusted, NotFound)):
        yield b.ping("agent-a", count=3, interval=0.2)
    assert reactor.seconds() - started < 1.0
    with pytest.raises((NotTrusted, NotFound)):
        yield a.ping("agent-b", count=1)
    # Packets from the revoked peer are dropped and counted: B's tunnel
    # initiations now get no answer at all.
    a_key = a.identity.public_key
    b.sessions.endpoint.remove_peer(a_key)
    yield sleep(0.3)
    a_direct = Endpoint("127.0.0.1", a.udp.local_endpoint.port)
    # Straight to A's socket: the beacon no longer relays between these two.
    b.sessions.tunnel_send = lambda key, packet: b.udp.send(packet, a_direct)
    tunnel = b.sessions.endpoint.peer(a_key)
    before = a.sessions.endpoint.stats["init_untrusted"]
    attempt = tunnel.connect()
    attempt.addErrback(lambda f: None)
    yield sleep(0.5)
    assert a.sessions.endpoint.stats["init_untrusted"] > before
    assert tunnel.current is None
    b.sessions.endpoint.remove_peer(a_key)
