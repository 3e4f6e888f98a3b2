"""
NAT discovery over real sockets on loopback: a four-socket beacon on
127.0.0.1 and 127.0.0.2 answers CHANGE-REQUEST from the socket asked for, and
a node on 127.0.0.1, which no NAT stands in front of, reports ``none``.
"""

import os
import socket

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from pilotproto.beacon.service import BeaconService
from pilotproto.node.service import PilotNode
from pilotproto.wire import stun

from .conftest import free_udp_port

pytestmark = pytest.mark.integration
PRIMARY, ALTERNATE = "127.0.0.1", "127.0.0.2"


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


def _free_port_pair():
    # Both ports must be free on both addresses; retry a few candidates.
    for _ in range(20):
        ports = (free_udp_port(), free_udp_port())
        sockets = []
        try:
            for host in (PRIMARY, ALTERNATE):
                for port in ports:
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    sockets.append(s)
                    s.bind((host, port))
            if ports[0] != ports[1]:
                return ports
        except OSError:
            pass
        finally:
            for s in sockets:
                s.close()
    raise AssertionError("no free pair of UDP ports on loopback")


@pytest.fixture
def beacon():
    port, alt_port = _free_port_pair()
    service = BeaconService(reactor, interface=PRIMARY, port=port, alt_port=alt_port, alt_address=ALTERNATE)
    service.startService()
    yield service
    service.stopService()


@pytest_twisted.inlineCallbacks
def test_change_requests_are_answered_from_the_other_sockets(beacon):
    port, alt_port = beacon.server.primary_address.port, beacon.server.other_address.port
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind((PRIMARY, 0))
    client.setblocking(False)
    try:
        expected = {
            (False, False): (PRIMARY, port),
            (True, True): (ALTERNATE, alt_port),
            (False, True): (PRIMARY, alt_port),
            (True, False): (ALTERNATE, port),
        }
        for (change_ip, change_port), origin in expected.items():
            txid = os.urandom(12)
            client.sendto(stun.binding_request(txid, change_ip, change_port), (PRIMARY, port))
            answer = None
            for _ in range(100):
                yield sleep(0.01)
                try:
                    answer = client.recvfrom(2048)
                    break
                except BlockingIOError:
                    continue
            assert answer is not None, (change_ip, change_port)
            data, source = answer
            result = stun.parse_binding_response(data)
            assert source == origin
            assert result.transaction_id == txid
            assert result.response_origin.as_tuple() == origin
            assert result.other_address.as_tuple() == (ALTERNATE, alt_port)
            assert result.xor_mapped.as_tuple() == client.getsockname()
    finally:
        client.close()


@pytest_twisted.inlineCallbacks
def test_a_node_without_nat_reports_none(tmp_path, beacon):
    node = PilotNode(
        home=str(tmp_path / "agent-a"),
        hostname="agent-a",
        beacon=f"{PRIMARY}:{beacon.port}",
        reactor=reactor,
    )
    node.startService()
    try:
        for _ in range(100):
            if node.nat.nat_type != "unknown":
                break
            yield sleep(0.05)
        assert (yield node.info())["nat_type"] == "none"
        assert node.nat.prober.reflexive == node.nat.source_endpoint()
    finally:
        yield node.stopService()
