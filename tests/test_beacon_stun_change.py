"""The beacon's RFC 5780 side: CHANGE-REQUEST answered from the socket it names."""

import os

import pytest
from twisted.internet.task import Clock

from pilotproto.beacon.server import BeaconServer, Reply
from pilotproto.beacon.service import BeaconService
from pilotproto.errors import InvalidArgument
from pilotproto.wire import Endpoint
from pilotproto.wire import stun

A1P1 = Endpoint("203.0.113.2", 9000)
A1P2 = Endpoint("203.0.113.2", 9001)
A2P1 = Endpoint("203.0.113.3", 9000)
A2P2 = Endpoint("203.0.113.3", 9001)
CLIENT = Endpoint("198.51.100.2", 40000)


def _ask(server, local, change_ip=False, change_port=False):
    txid = os.urandom(12)
    [reply] = server.datagram_received(stun.binding_request(txid, change_ip, change_port), CLIENT, local)
    return txid, reply


@pytest.fixture
def server():
    return BeaconServer(Clock(), primary_address=A1P1, other_address=A2P2)


@pytest.mark.parametrize(
    "local, change_ip, change_port, origin, other",
    [
        (A1P1, False, False, A1P1, A2P2),
        (A1P1, True, True, A2P2, A2P2),
        (A1P1, False, True, A1P2, A2P2),
        (A1P1, True, False, A2P1, A2P2),
        (A2P2, True, True, A1P1, A1P1),
        (A2P2, False, True, A2P1, A1P1),
        (A1P2, True, False, A2P2, A2P1),
        (A2P1, False, True, A2P2, A1P2),
    ],
)
def test_change_request_is_answered_from_the_changed_endpoint(server, local, change_ip, change_port, origin, other):
    txid, reply = _ask(server, local, change_ip, change_port)
    data, destination = reply
    assert destination == CLIENT
    assert reply.origin == origin
    result = stun.parse_binding_response(data)
    assert result.transaction_id == txid
    assert result.xor_mapped == CLIENT
    assert result.response_origin == origin
    # OTHER-ADDRESS is relative to where the request arrived, not where the answer leaves.
    assert result.other_address == other


def test_without_an_alternate_change_request_is_refused_with_420():
    server = BeaconServer(Clock())
    txid, (data, _) = _ask(server, A1P1, change_ip=True, change_port=True)
    with pytest.raises(stun.StunErrorResponse) as caught:
        stun.parse_binding_response(data)
    assert caught.value.error_code == 420
    assert stun.decode(data).find(stun.UnknownAttributes).types == (stun.ChangeRequest.TYPE,)
    assert server.counters["stun_change_refused"] == 1


def test_without_an_alternate_plain_binding_has_no_other_address():
    server = BeaconServer(Clock())
    _, (data, _) = _ask(server, A1P1)
    result = stun.parse_binding_response(data)
    assert result.other_address is None and result.response_origin == A1P1


def test_alternate_sharing_the_port_is_no_alternate():
    # One address differing is not enough for the RFC 5780 tests.
    server = BeaconServer(Clock(), primary_address=A1P1, other_address=A2P1)
    _, (data, _) = _ask(server, A1P1, change_port=True)
    with pytest.raises(stun.StunErrorResponse):
        stun.parse_binding_response(data)


def test_a_request_on_an_unknown_local_endpoint_gets_no_other_address(server):
    _, (data, _) = _ask(server, Endpoint("192.0.2.9", 9000))
    assert stun.parse_binding_response(data).other_address is None
    _, (data, _) = _ask(server, None, change_port=True)
    with pytest.raises(stun.StunErrorResponse):
        stun.parse_binding_response(data)


def test_reply_unpacks_as_a_pair():
    reply = Reply(b"x", CLIENT, A2P2)
    data, destination = reply
    assert (data, destination, reply.origin) == (b"x", CLIENT, A2P2)
    assert Reply(b"y", CLIENT).origin is None


# -- the service: four sockets, and routing between them ---------------------------


class FakeUDPTransport:
    def __init__(self):
        self.written = []

    def write(self, data, addr):
        self.written.append((data, addr))


def _four_socket_beacon():
    service = BeaconService(Clock(), interface=A1P1.host, port=A1P1.port, alt_port=A2P2.port, alt_address=A2P2.host)
    transports = {}
    for local, proto in service.sockets.items():
        transports[local] = FakeUDPTransport()
        proto.makeConnection(transports[local])
    return service, transports


def test_service_listens_on_all_four_combinations():
    service, _ = _four_socket_beacon()
    assert set(service.sockets) == {A1P1, A1P2, A2P1, A2P2}
    listening = {(udp.kwargs["interface"], udp.args[0]) for udp in service if hasattr(udp, "args")}
    assert listening == {(e.host, e.port) for e in (A1P1, A1P2, A2P1, A2P2)}


@pytest.mark.parametrize("change_ip, change_port, origin", [(True, True, A2P2), (False, True, A1P2), (True, False, A2P1), (False, False, A1P1)])
def test_service_sends_change_answers_from_the_named_socket(change_ip, change_port, origin):
    service, transports = _four_socket_beacon()
    txid = os.urandom(12)
    service.sockets[A1P1].datagramReceived(stun.binding_request(txid, change_ip, change_port), CLIENT.as_tuple())
    sent = {local: t.written for local, t in transports.items() if t.written}
    assert list(sent) == [origin]
    [(data, addr)] = sent[origin]
    assert addr == CLIENT.as_tuple()
    result = stun.parse_binding_response(data)
    assert result.transaction_id == txid and result.response_origin == origin and result.other_address == A2P2


def test_alt_address_needs_a_concrete_interface():
    with pytest.raises(InvalidArgument) as caught:
        BeaconService(Clock(), interface="0.0.0.0", port=9000, alt_port=9001, alt_address=A2P2.host)
    assert "--interface" in caught.value.hint


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(interface=A1P1.host, port=9000, alt_port=9000, alt_address=A2P2.host),
        dict(interface=A1P1.host, port=9000, alt_port=9001, alt_address=A1P1.host),
        dict(interface=A1P1.host, port=0, alt_port=9001, alt_address=A2P2.host),
    ],
)
def test_inconsistent_alternates_are_refused(kwargs):
    with pytest.raises(InvalidArgument):
        BeaconService(Clock(), **kwargs)


def test_alt_port_alone_serves_stun_but_refuses_change_requests():
    service = BeaconService(Clock(), interface="127.0.0.1", port=9000, alt_port=9001)
    assert set(service.sockets) == {Endpoint("127.0.0.1", 9000), Endpoint("127.0.0.1", 9001)}
    _, (data, _) = _ask(service.server, Endpoint("127.0.0.1", 9001), change_port=True)
    with pytest.raises(stun.StunErrorResponse):
        stun.parse_binding_response(data)
