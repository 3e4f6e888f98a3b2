"""
The TCP/TLS relay on loopback: a node whose UDP to the beacon goes nowhere
registers over TLS (certificate checked against a throwaway CA, or a pinned
fingerprint), and pings a normal UDP node through the relay; a certificate it
cannot trust is refused with a clear error, never used.
"""

import socket

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from pilotproto.beacon.service import BeaconService
from pilotproto.lab.pki import make_beacon_pki
from pilotproto.node.service import PilotNode

from .test_sessions import trust_each_other

pytestmark = pytest.mark.integration


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


def dead_udp_port() -> int:
    # A port nothing listens on: the node's UDP to "the beacon" vanishes.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def pki(tmp_path):
    return make_beacon_pki(str(tmp_path / "pki"), ["127.0.0.1"])


@pytest_twisted.async_yield_fixture
async def beacon(pki):
    service = BeaconService(reactor, interface="127.0.0.1", port=0, tls_port=0, tls_cert=pki.cert_file, tls_key=pki.key_file)
    service.startService()
    yield service
    await defer.maybeDeferred(service.stopService)


def node(tmp_path, beacon, name, udp_blocked=False, **kw):
    udp_port = dead_udp_port() if udp_blocked else beacon.port
    n = PilotNode(
        home=str(tmp_path / name),
        hostname=name,
        beacon=f"127.0.0.1:{udp_port}",
        beacon_tls=f"127.0.0.1:{beacon.tls.port}",
        reactor=reactor,
        # Loopback would let the peers find each other directly; keep them on the relay.
        allow_direct=False,
        **kw,
    )
    n.startService()
    return n


@defer.inlineCallbacks
def wait_until(predicate, timeout):
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return True
        yield sleep(0.05)
    return predicate()


@pytest_twisted.inlineCallbacks
def test_a_node_without_udp_registers_over_tls_and_pings_through_the_relay(tmp_path, beacon, pki):
    blocked = node(tmp_path, beacon, "agent-a", udp_blocked=True, beacon_ca=pki.ca_file)
    normal = node(tmp_path, beacon, "agent-b")
    try:
        started = reactor.seconds()
        assert (yield wait_until(lambda: blocked.link.registered and normal.link.registered, 10))
        took = reactor.seconds() - started
        assert took < 8, took
        info = yield blocked.info()
        assert info["beacon_transport"] == "tls" and info["registered"]
        assert info["reflexive_endpoint"] is None
        assert (yield normal.info())["beacon_transport"] == "udp"
        assert beacon.server.counters["tls_connections"] >= 1

        yield trust_each_other(blocked, normal)
        result = yield blocked.ping("agent-b", count=3, interval=0.1)
        assert result["received"] == 3, result
        assert {r["path"] for r in result["replies"]} == {"relay-tcp"}
        back = yield normal.ping("agent-a", count=2, interval=0.1)
        assert back["received"] == 2, back
        assert beacon.server.counters["relayed_frames"] >= 10
        [peer] = (yield blocked.peers())["peers"]
        assert peer["path"] == "relay-tcp"
    finally:
        yield defer.gatherResults([defer.maybeDeferred(blocked.stopService), defer.maybeDeferred(normal.stopService)])


@pytest_twisted.inlineCallbacks
def test_a_pinned_fingerprint_is_enough(tmp_path, beacon, pki):
    pinned = node(tmp_path, beacon, "agent-p", udp_blocked=True, beacon_fingerprint=pki.fingerprint.upper())
    try:
        assert (yield wait_until(lambda: pinned.link.registered, 10))
        assert pinned.link.kind == "tls"
    finally:
        yield pinned.stopService()


@pytest_twisted.inlineCallbacks
@pytest.mark.parametrize("trust", ["wrong-ca", "wrong-fingerprint", "no-ca"])
def test_an_untrusted_certificate_is_refused_with_a_clear_error(tmp_path, beacon, trust):
    other = make_beacon_pki(str(tmp_path / "other"), ["127.0.0.1"])
    options = {
        "wrong-ca": {"beacon_ca": other.ca_file},
        "wrong-fingerprint": {"beacon_fingerprint": ":".join(other.fingerprint[i : i + 2] for i in range(0, 64, 2))},
        "no-ca": {},
    }[trust]
    refused = node(tmp_path, beacon, "agent-r", udp_blocked=True, **options)
    try:
        assert (yield wait_until(lambda: refused.link.status()["beacon_error"], 8))
        error = refused.link.status()["beacon_error"]
        assert error["code"] == "beacon_untrusted", error
        assert ("pinned" in error["message"]) == (trust == "wrong-fingerprint"), error
        assert not refused.link.registered
        assert beacon.server.counters["rx_Register"] == 0
    finally:
        yield refused.stopService()


@pytest_twisted.inlineCallbacks
def test_a_certificate_for_another_address_is_refused(tmp_path):
    elsewhere = make_beacon_pki(str(tmp_path / "elsewhere"), ["127.0.0.2"], dns_names=["beacon.example"])
    beacon = BeaconService(reactor, interface="127.0.0.1", port=0, tls_port=0, tls_cert=elsewhere.cert_file, tls_key=elsewhere.key_file)
    beacon.startService()
    refused = node(tmp_path, beacon, "agent-w", udp_blocked=True, beacon_ca=elsewhere.ca_file)
    try:
        assert (yield wait_until(lambda: refused.link.status()["beacon_error"], 8))
        error = refused.link.status()["beacon_error"]
        assert error["code"] == "beacon_untrusted" and "does not name 127.0.0.1" in error["message"], error
    finally:
        yield refused.stopService()
        yield defer.maybeDeferred(beacon.stopService)
