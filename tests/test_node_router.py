"""The node's one datagram classifier and its dispatch table."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st
from zope.interface import directlyProvides

from pilotproto.interfaces import INatDiscovery, IRendezvous, ISessions
from pilotproto.node.router import DatagramRouter
from pilotproto.wire import DecodeError, Endpoint, relay
from pilotproto.wire import beacon as msgs
from pilotproto.wire import stun
from pilotproto.wire.datagrams import BeaconMessage, RelayedPacket, StunMessage, TunnelPacket, classify
from pilotproto.wire.sources import BeaconStream, Direct, Relayed

from helpers import Recorder

BEACON = Endpoint("127.0.0.1", 9000)
PEER = Endpoint("127.0.0.2", 4000)
SENDER = b"\x00\x01\x02\x03\x04\x05\x06\x07"


def _relay_frame(payload=b"\xc4tunnel") -> bytes:
    return relay.encode_from_beacon(relay.RelayFromBeacon(SENDER, payload))


def _beacon_message() -> bytes:
    return msgs.encode(msgs.Hello(7))


def _stun() -> bytes:
    return stun.binding_request(b"\x01" * 12)


def _router():
    link = Recorder(is_beacon=lambda source: source in (Direct(BEACON), BeaconStream()), beacon_message_received=True)
    nat = Recorder(stun_received=True)
    sessions = Recorder()
    directlyProvides(link, IRendezvous)
    directlyProvides(nat, INatDiscovery)
    directlyProvides(sessions, ISessions)
    return DatagramRouter(link, nat, sessions), link, nat, sessions


def test_classify_each_kind():
    assert isinstance(classify(_beacon_message()), BeaconMessage)
    assert classify(_relay_frame(b"\xc4x")) == RelayedPacket(SENDER, b"\xc4x")
    assert isinstance(classify(_stun()), StunMessage)
    assert classify(b"\xc4\x01rest") == TunnelPacket(b"\xc4\x01rest")
    with pytest.raises(DecodeError):
        classify(b"")
    with pytest.raises(DecodeError):
        classify(b"\x99junk")


@given(st.binary(max_size=300))
def test_classify_random_bytes_raise_only_decode_error(data):
    try:
        classify(data)
    except DecodeError:
        pass


def test_wiring_is_checked():
    with pytest.raises(TypeError):
        DatagramRouter(object(), object(), object())


def test_relayed_packets_become_relayed_sources_only_from_the_beacon():
    router, link, nat, sessions = _router()
    router.datagram_received(_relay_frame(b"\xc4one"), Direct(BEACON))
    router.datagram_received(_relay_frame(b"\xc4two"), BeaconStream())
    router.datagram_received(_relay_frame(b"\xc4forged"), Direct(PEER))
    assert sessions.calls == [
        ("tunnel_packet_received", b"\xc4one", Relayed(SENDER)),
        ("tunnel_packet_received", b"\xc4two", Relayed(SENDER)),
    ]
    assert router.counters["dropped_unsolicited"] == 1


def test_tunnel_packets_only_straight_from_peers():
    router, link, nat, sessions = _router()
    router.datagram_received(b"\xc4\x01data", Direct(PEER))
    router.datagram_received(b"\xc4\x01data", BeaconStream())
    assert sessions.calls == [("tunnel_packet_received", b"\xc4\x01data", Direct(PEER))]
    assert router.counters["dropped_unsolicited"] == 1


def test_beacon_messages_and_stun_go_to_their_workers():
    router, link, nat, sessions = _router()
    router.datagram_received(_beacon_message(), Direct(BEACON))
    router.datagram_received(_stun(), Direct(BEACON))
    router.datagram_received(_stun(), BeaconStream())
    assert link.names() == ["beacon_message_received"]
    assert link.calls[0][2] == Direct(BEACON)
    assert nat.calls == [("stun_received", _stun(), BEACON)]
    assert router.counters["dropped_unsolicited"] == 1


def test_malformed_and_unknown_are_counted_not_raised():
    router, *_ = _router()
    router.datagram_received(b"\xb0", Direct(PEER))
    router.datagram_received(b"\x77nothing", Direct(PEER))
    router.datagram_received(b"", Direct(PEER))
    assert router.counters["dropped_malformed"] == 3


def test_a_worker_bug_is_counted_and_logged(logged_failures):
    router, link, nat, sessions = _router()
    sessions.results["tunnel_packet_received"] = lambda *a: 1 / 0
    router.datagram_received(b"\xc4\x01data", Direct(PEER))
    assert router.counters["internal_errors"] == 1
    assert [e["log_failure"].type for e in logged_failures] == [ZeroDivisionError]
    logged_failures.clear()


def test_a_burst_from_the_beacon_goes_to_the_sessions_as_one_run_per_relayed_sender():
    router, link, _nat, sessions = _router()
    other = b"\x09" * 8
    burst = [
        _relay_frame(b"\xc4a"),
        _relay_frame(b"\xc4b"),
        relay.encode_from_beacon(relay.RelayFromBeacon(other, b"\xc4c")),
        _beacon_message(),
        b"\xd1\x01short",  # a truncated relay frame: classified alone, dropped
        _relay_frame(b"\xc4d"),
    ]
    router.datagrams_received(burst, Direct(BEACON))
    relayed = [c for c in sessions.calls if c[0] != "tunnel_packet_received"]
    assert relayed == [
        ("tunnel_packets_received", [b"\xc4a", b"\xc4b"], Relayed(SENDER)),
        ("tunnel_packets_received", [b"\xc4c"], Relayed(other)),
        ("tunnel_packets_received", [b"\xc4d"], Relayed(SENDER)),
    ]
    assert link.names().count("beacon_message_received") == 1
    assert router.counters["dropped_malformed"] == 1
    # The same frames from anyone but the beacon are not relayed packets.
    sessions.calls.clear()
    router.datagrams_received(burst[:2], Direct(PEER))
    assert sessions.calls == [] and router.counters["dropped_unsolicited"] == 2
