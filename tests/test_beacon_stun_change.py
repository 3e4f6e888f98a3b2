"""
The beacon's STUN server: CHANGE-REQUEST answered from the socket it names,
RESPONSE-PORT and PADDING (RFC 5780), RFC 3489 clients, and answers never
more than three times their request.
"""

import collections
import os

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from pilotproto.beacon.server import BeaconServer, Reply
from pilotproto.beacon.service import BeaconService
from pilotproto.beacon.stun import PADDING_MTU, StunResponder
from pilotproto.beacon.tls import StreamEndpoint
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


# -- RFC 5780 RESPONSE-PORT (§7.5) and PADDING (§7.6) -------------------------------


def _request(*attributes, fingerprint=False, txid=None) -> bytes:
    txid = txid or os.urandom(12)
    return stun.Message(stun.StunClass.REQUEST, txid, attributes, fingerprint=fingerprint).encode()


def _one(server, data, local=A1P1, source=CLIENT):
    [reply] = server.datagram_received(data, source, local)
    return reply


def test_response_port_sends_the_answer_to_the_requesters_host_at_that_port(server):
    # turnutils_stunclient's RFC 5780 mode: CHANGE-REQUEST with RESPONSE-PORT,
    # listening only on that port.
    reply = _one(server, _request(stun.ResponsePort(5555), stun.ChangeRequest(True, True)))
    data, destination = reply
    assert destination == Endpoint(CLIENT.host, 5555)
    assert reply.origin == A2P2
    result = stun.parse_binding_response(data)
    # The mapping is still the request's source: RFC 5780 §4.6 measures it so.
    assert result.xor_mapped == CLIENT and result.response_origin == A2P2
    assert server.counters["stun_response_port"] == 1


def test_response_port_carries_errors_too():
    # Without alternates CHANGE-REQUEST is refused, and the client hears it
    # on the port it listens on, instead of waiting for ever.
    server = BeaconServer(Clock())
    data, destination = _one(server, _request(stun.ResponsePort(5555), stun.ChangeRequest(True, True)))
    assert destination == Endpoint(CLIENT.host, 5555)
    assert stun.decode(data).find(stun.UnknownAttributes).types == (stun.ChangeRequest.TYPE,)


def test_response_port_zero_is_a_bad_request(server):
    data, destination = _one(server, _request(stun.ResponsePort(0)))
    assert destination == CLIENT
    assert stun.decode(data).find(stun.ErrorCode).code == 400


@pytest.mark.parametrize("length", [0, 100, 1500])
def test_padding_is_answered_with_padding(server, length):
    request = _request(stun.Padding(length), stun.ChangeRequest(True, True))
    reply = _one(server, request)
    message = stun.decode(reply[0])
    assert message.message_class is stun.StunClass.SUCCESS and reply.origin == A2P2
    assert message.find(stun.XorMappedAddress).endpoint == CLIENT
    padding = message.find(stun.Padding)
    assert padding is not None
    # The interface MTU (§6.1), as far as three times the request allows.
    assert len(reply[0]) <= 3 * len(request)
    if length == 1500:
        assert padding.length == PADDING_MTU
    else:
        assert len(reply[0]) > 3 * len(request) - 4
    assert server.counters["stun_padding"] == 1


def test_padding_with_response_port_is_a_bad_request(server):
    data, destination = _one(server, _request(stun.Padding(100), stun.ResponsePort(5555)))
    assert stun.decode(data).find(stun.ErrorCode).code == 400
    assert destination == Endpoint(CLIENT.host, 5555)


@pytest.mark.parametrize(
    "attribute",
    [
        stun.RawAttribute(0x0024, bytes(4)),  # ICE's PRIORITY: not a server's business
        stun.XorMappedAddress(CLIENT),  # modelled by the codec, meaningless in a request
        stun.RawAttribute(stun.RESPONSE_ADDRESS, bytes(8)),
    ],
)
def test_request_attributes_the_beacon_does_not_act_on_get_420(server, attribute):
    data, destination = _one(server, _request(attribute))
    message = stun.decode(data)
    assert message.find(stun.ErrorCode).code == 420
    assert message.find(stun.UnknownAttributes).types == (attribute.TYPE,)
    assert destination == CLIENT


def test_credentials_are_carried_unchecked(server):
    request = _request(stun.RawAttribute(stun.USERNAME, b"user"), stun.RawAttribute(stun.MESSAGE_INTEGRITY, bytes(20)))
    assert stun.parse_binding_response(_one(server, request)[0]).xor_mapped == CLIENT


def test_indications_and_responses_are_not_answered(server):
    indication = stun.Message(stun.StunClass.INDICATION, os.urandom(12)).encode()
    response = stun.binding_response(stun.decode(_request()), CLIENT)
    assert server.datagram_received(indication, CLIENT, A1P1) == []
    assert server.datagram_received(response, CLIENT, A1P1) == []
    assert server.counters["dropped_stun_not_binding_request"] == 2


def test_stun_over_a_tls_stream_is_not_answered(server):
    stream = StreamEndpoint(CLIENT.host, CLIENT.port, stream=1, sink=object())
    assert server.datagram_received(_rfc3489_request(), stream, None) == []
    assert server.counters["stun_dropped_not_udp"] == 1


# -- amplification: never more than three times the request, never to another host ---


def test_a_minimal_request_gets_the_attributes_that_matter_most(server):
    # 20 bytes earn 60: XOR-MAPPED-ADDRESS, then OTHER-ADDRESS (NAT discovery
    # starts from it), then MAPPED-ADDRESS; RESPONSE-ORIGIN, FINGERPRINT and
    # SOFTWARE do not fit.
    request = _request()
    data = _one(server, request)[0]
    assert len(request) == 20 and len(data) <= 60
    message = stun.decode(data)
    assert [type(a) for a in message.attributes] == [stun.XorMappedAddress, stun.OtherAddress, stun.MappedAddress]
    assert not message.fingerprint
    assert server.counters["stun_trimmed"] == 3


def test_our_own_request_gets_everything_discovery_reads(server):
    # The node's requests carry FINGERPRINT: 28 bytes, room for all four addresses.
    message = stun.decode(_one(server, stun.binding_request(os.urandom(12)))[0])
    assert {type(a) for a in message.attributes} >= {
        stun.XorMappedAddress, stun.MappedAddress, stun.ResponseOrigin, stun.OtherAddress
    }
    assert message.fingerprint


def test_an_answer_whose_required_part_does_not_fit_is_not_sent():
    responder = StunResponder(collections.Counter(), amplification_limit=1)
    assert responder.answer(_request(), CLIENT, A1P1) is None
    assert responder.counters["stun_dropped_amplification"] == 1


_request_attributes = st.one_of(
    st.builds(stun.ChangeRequest, st.booleans(), st.booleans()),
    st.builds(stun.ResponsePort, st.integers(0, 0xFFFF)),
    st.builds(stun.Padding, st.integers(0, 1600)),
    st.builds(stun.Software, st.text(max_size=20)),
    st.builds(stun.RawAttribute, st.sampled_from([0x0002, 0x0006, 0x0008, 0x0024, 0x7777, 0x8029]), st.binary(max_size=24)),
)
_sources = st.sampled_from([CLIENT, Endpoint("2001:db8::2", 40000)])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_request_attributes, max_size=4),
    st.booleans(),
    st.one_of(st.none(), st.binary(min_size=4, max_size=4)),
    _sources,
    st.sampled_from([A1P1, A1P2, A2P1, A2P2, None]),
    st.booleans(),
)
def test_no_answer_is_over_three_times_its_request_nor_for_another_host(attributes, fingerprint, cookie, source, local, alternates):
    server = BeaconServer(Clock(), primary_address=A1P1, other_address=A2P2) if alternates else BeaconServer(Clock())
    message = stun.Message(stun.StunClass.REQUEST, os.urandom(12), attributes, fingerprint=fingerprint)
    if cookie is not None and cookie != stun.MAGIC_COOKIE.to_bytes(4, "big"):
        message = attrs.evolve(message, cookie=cookie)
    request = message.encode()
    replies = server.datagram_received(request, source, local)
    assert len(replies) <= 1
    for data, destination in replies:
        assert len(data) <= 3 * len(request)
        assert destination.host == source.host
        answer = stun.decode(data, rfc3489=True)
        assert answer.transaction_id == message.transaction_id and answer.cookie == message.cookie
    assert server.counters["internal_errors"] == 0


# -- RFC 3489 clients (no magic cookie), answered as RFC 8489 §12.2 allows --------


def _rfc3489_request(*attributes, cookie=b"\x0b\xad\xca\xfe"):
    return stun.Message(stun.StunClass.REQUEST, os.urandom(12), attributes, cookie=cookie).encode()


def _rfc3489_answer(data):
    message = stun.decode(data, rfc3489=True)
    # Nothing a 3489 client cannot parse: it fails on any type below 0x8000
    # it does not know, and FINGERPRINT or SOFTWARE would be bytes for nothing.
    assert {a.TYPE for a in message.attributes} <= {0x0001, 0x0004, 0x0005, 0x0009, 0x000A}
    assert not message.fingerprint
    return message


def test_rfc3489_request_gets_mapped_address_and_its_cookie_field_back(server):
    request = _rfc3489_request()
    reply = _one(server, request)
    assert reply[1] == CLIENT and reply.origin == A1P1
    assert reply[0][4:20] == request[4:20]
    message = _rfc3489_answer(reply[0])
    assert message.message_class is stun.StunClass.SUCCESS
    assert message.find(stun.MappedAddress).endpoint == CLIENT
    assert message.find(stun.SourceAddress).endpoint == A1P1
    assert message.find(stun.ChangedAddress).endpoint == A2P2
    assert server.counters["stun_rfc3489_requests"] == 1


def test_rfc3489_change_request_is_honoured(server):
    reply = _one(server, _rfc3489_request(stun.ChangeRequest(True, False)))
    assert reply.origin == A2P1
    assert _rfc3489_answer(reply[0]).find(stun.SourceAddress).endpoint == A2P1


def test_rfc3489_without_alternates():
    server = BeaconServer(Clock())
    message = _rfc3489_answer(_one(server, _rfc3489_request(stun.ChangeRequest(False, False)))[0])
    assert [type(a) for a in message.attributes] == [stun.MappedAddress, stun.SourceAddress]
    refused = _rfc3489_answer(_one(server, _rfc3489_request(stun.ChangeRequest(True, True)))[0])
    assert refused.find(stun.ErrorCode).code == 420
    # RFC 3489 §11.2.9: an odd list of types repeats one instead of padding.
    assert refused.find(stun.UnknownAttributes).types == (stun.ChangeRequest.TYPE, stun.ChangeRequest.TYPE)


@pytest.mark.parametrize(
    "attribute",
    [
        # RESPONSE-ADDRESS would send the answer to any host.
        stun.RawAttribute(stun.RESPONSE_ADDRESS, bytes.fromhex("00010016c0000201")),
        # RFC 5780's own attributes are not RFC 3489's.
        stun.ResponsePort(5555),
        stun.Padding(8),
    ],
)
def test_rfc3489_attributes_beyond_change_request_get_420_at_the_source(server, attribute):
    data, destination = _one(server, _rfc3489_request(attribute))
    assert destination == CLIENT
    assert _rfc3489_answer(data).find(stun.UnknownAttributes).types == (attribute.TYPE, attribute.TYPE)


def test_the_service_sends_a_response_port_answer_from_the_named_socket():
    service, transports = _four_socket_beacon()
    request = _request(stun.ResponsePort(5555), stun.ChangeRequest(False, True))
    service.sockets[A1P1].datagramReceived(request, CLIENT.as_tuple())
    sent = {local: t.written for local, t in transports.items() if t.written}
    assert list(sent) == [A1P2]
    [(data, addr)] = sent[A1P2]
    assert addr == (CLIENT.host, 5555)
    assert stun.parse_binding_response(data).xor_mapped == CLIENT
