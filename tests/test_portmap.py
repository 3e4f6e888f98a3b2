"""Port mapping: the NAT-PMP/PCP/UPnP codecs, the request exchange and the mapper machine."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock

from pilotproto.errors import Timeout
from pilotproto.node import portmap
from pilotproto.node.portmap import PortMapper
from pilotproto.node.portmap_pcp import MappingRefused, _Exchange
from pilotproto.wire import Endpoint
from pilotproto.wire import portmap as pm
from pilotproto.wire import upnp
from pilotproto.wire.codec import DecodeError

NONCE = bytes(range(12))


def pcp_answer(result=0, lifetime=600, nonce=NONCE, external_port=40000, external_ip="198.51.100.7", op=0x81):
    header = struct.pack("!BBxBII12x", 2, op, result, lifetime, 77)
    body = struct.pack("!12sB3xHH16s", nonce, 17, 4000, external_port, pm._ip16(external_ip))
    return header + body


# -- codecs -------------------------------------------------------------------------------


def test_pcp_request_layout():
    wire = pm.pcp_map_request("10.1.0.2", 4000, 4000, 7200, NONCE)
    assert len(wire) == 60
    assert wire[:2] == b"\x02\x01"
    assert struct.unpack_from("!I", wire, 4)[0] == 7200
    assert wire[8:24] == b"\0" * 10 + b"\xff\xff" + bytes((10, 1, 0, 2))
    assert wire[24:36] == NONCE and wire[36] == 17
    assert struct.unpack_from("!HH", wire, 40) == (4000, 4000)


def test_pcp_granted_mapping():
    mapping = pm.decode_pcp(pcp_answer(), NONCE)
    assert mapping == pm.Mapping("pcp", 4000, 40000, 600, "198.51.100.7", 77)


def test_pcp_answer_for_another_request_is_not_ours():
    with pytest.raises(DecodeError, match="nonce"):
        pm.decode_pcp(pcp_answer(nonce=b"x" * 12), NONCE)


def test_pcp_refusal_names_the_reason():
    answer = pm.decode_pcp(pcp_answer(result=8), NONCE)
    assert answer == pm.Failure("pcp", 8, "no resources")


def test_natpmp_router_answering_pcp_means_fall_back():
    # A NAT-PMP-only router answers version 2 with version 0, result 1.
    answer = pm.decode_pcp(struct.pack("!BBHI", 0, 129, 1, 5), NONCE)
    assert isinstance(answer, pm.Failure) and answer.unsupported_version


def test_natpmp_messages():
    assert pm.natpmp_external_address_request() == b"\0\0"
    assert pm.natpmp_map_request(4000, 4001, 3600) == struct.pack("!BBHHHI", 0, 1, 0, 4000, 4001, 3600)
    address = pm.decode_natpmp(struct.pack("!BBHI4s", 0, 128, 0, 9, bytes((198, 51, 100, 7))))
    assert address == pm.ExternalAddress("198.51.100.7", 9)
    mapping = pm.decode_natpmp(struct.pack("!BBHIHHI", 0, 129, 0, 9, 4000, 40001, 3600))
    assert mapping == pm.Mapping("nat-pmp", 4000, 40001, 3600, epoch=9)
    refused = pm.decode_natpmp(struct.pack("!BBHI", 0, 129, 2, 9))
    assert refused == pm.Failure("nat-pmp", 2, "not authorized or refused")


@given(st.binary(max_size=80))
def test_random_bytes_only_raise_decode_error(data):
    for decode in (pm.decode_natpmp, lambda d: pm.decode_pcp(d, NONCE), lambda d: upnp.ssdp_location(d, "10.0.0.1")):
        try:
            decode(data)
        except DecodeError:
            pass


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1))
def test_pcp_answer_round_trip(external_port, internal_port, lifetime):
    header = struct.pack("!BBxBII12x", 2, 0x81, 0, lifetime, 1)
    body = struct.pack("!12sB3xHH16s", NONCE, 17, internal_port, external_port, pm._ip16("203.0.113.9"))
    mapping = pm.decode_pcp(header + body, NONCE)
    assert (mapping.internal_port, mapping.external_port, mapping.lifetime) == (internal_port, external_port, lifetime)


# -- UPnP ---------------------------------------------------------------------------------

DESCRIPTION = b"""<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0"><device><deviceList><device><deviceList><device>
<serviceList>
<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType><controlURL>/ctl/v1</controlURL></service>
<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:2</serviceType><controlURL>/ctl/v2</controlURL></service>
</serviceList></device></deviceList></device></deviceList></device></root>"""


def test_ssdp_location_must_name_the_responder():
    answer = b"HTTP/1.1 200 OK\r\nLOCATION: http://10.1.0.1:5000/rootDesc.xml\r\n\r\n"
    assert upnp.ssdp_location(answer, "10.1.0.1") == "http://10.1.0.1:5000/rootDesc.xml"
    with pytest.raises(DecodeError, match="responder"):
        upnp.ssdp_location(answer, "10.1.0.9")


def test_control_point_prefers_the_newest_service_and_stays_on_the_gateway():
    point = upnp.control_point(DESCRIPTION, "http://10.1.0.1:5000/rootDesc.xml")
    assert point == upnp.ControlPoint("http://10.1.0.1:5000/ctl/v2", "urn:schemas-upnp-org:service:WANIPConnection:2")
    elsewhere = DESCRIPTION.replace(b"/ctl/v2", b"http://192.0.2.50/ctl").replace(b"/ctl/v1", b"http://192.0.2.50/ctl")
    with pytest.raises(DecodeError, match="not on the gateway"):
        upnp.control_point(elsewhere, "http://10.1.0.1:5000/rootDesc.xml")


def test_documents_with_entities_are_refused():
    with pytest.raises(DecodeError, match="DTD"):
        upnp.control_point(b'<!DOCTYPE x [<!ENTITY a "aaaa">]><root/>', "http://10.1.0.1/")


def test_soap_answers_and_faults():
    body, headers = upnp.soap_request("urn:x:service:WANIPConnection:1", "AddPortMapping", upnp.add_port_mapping("10.1.0.2", 4000, 4000, 0))
    assert b"<NewInternalClient>10.1.0.2</NewInternalClient>" in body
    assert headers[b"SOAPAction"] == [b'"urn:x:service:WANIPConnection:1#AddPortMapping"']
    ok = upnp.soap_response(b'<s:Envelope xmlns:s="x"><s:Body><u:R xmlns:u="y"><NewExternalIPAddress>198.51.100.7</NewExternalIPAddress></u:R></s:Body></s:Envelope>')
    assert ok["NewExternalIPAddress"] == "198.51.100.7"
    fault = upnp.soap_response(
        b'<s:Envelope xmlns:s="x"><s:Body><s:Fault><detail><UPnPError><errorCode>718</errorCode>'
        b"<errorDescription>ConflictInMappingEntry</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>"
    )
    assert fault == upnp.SoapFault(718, "ConflictInMappingEntry")


# -- one exchange -------------------------------------------------------------------------


class _Transport:
    def __init__(self):
        self.sent = []

    def write(self, data, addr):
        self.sent.append((data, addr))


def test_exchange_resends_on_schedule_then_times_out():
    clock = Clock()
    exchange = _Exchange(clock, "10.1.0.1", b"ask", pm.decode_natpmp)
    exchange.transport = _Transport()
    exchange.startProtocol()
    clock.advance(0.25)
    clock.advance(0.5)
    assert len(exchange.transport.sent) == 3
    assert exchange.transport.sent[0] == (b"ask", ("10.1.0.1", 5351))
    failures = []
    exchange.done.addErrback(failures.append)
    clock.advance(1.0)
    assert failures and failures[0].check(Timeout)
    assert len(exchange.transport.sent) == 3


def test_exchange_reads_only_the_gateway():
    clock = Clock()
    exchange = _Exchange(clock, "10.1.0.1", b"ask", pm.decode_natpmp)
    exchange.transport = _Transport()
    exchange.startProtocol()
    answer = struct.pack("!BBHI4s", 0, 128, 0, 1, bytes((198, 51, 100, 7)))
    exchange.datagramReceived(answer, ("10.1.0.66", 5351))
    exchange.datagramReceived(answer, ("10.1.0.1", 5352))
    assert not exchange.done.called
    exchange.datagramReceived(answer, ("10.1.0.1", 5351))
    assert exchange.done.result == pm.ExternalAddress("198.51.100.7", 1)
    assert not clock.getDelayedCalls()


# -- the mapper ---------------------------------------------------------------------------


class FakeClient:
    def __init__(self, protocol, answers):
        self.protocol = protocol
        self.answers = list(answers)
        self.requests = []
        self.released = []

    def request(self, internal_port, lifetime, suggested_port=0):
        self.requests.append((internal_port, lifetime, suggested_port))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(answer)

    def release(self, mapping):
        self.released.append(mapping)
        return defer.succeed(None)


def mapper(clients, clock=None, gateway="10.1.0.1"):
    clock = clock or Clock()
    made = []

    def factory(reactor, gw, host):
        made.append((gw, host))
        return clients

    m = PortMapper(clock, 4000, gateway=lambda: gateway, client_host=lambda gw: "10.1.0.2", clients=factory)
    return m, clock, made


def granted(protocol="nat-pmp", port=40000, lifetime=600, host="198.51.100.7"):
    return pm.Mapping(protocol, 4000, port, lifetime, host)


def test_first_protocol_that_grants_is_kept():
    pcp = FakeClient("pcp", [MappingRefused("pcp: unsupported version")])
    natpmp = FakeClient("nat-pmp", [granted()])
    upnp_client = FakeClient("upnp", [])
    m, clock, made = mapper([pcp, natpmp, upnp_client])
    m.start()
    assert made == [("10.1.0.1", "10.1.0.2")]
    assert m.state == "mapped" and m.mapping == granted()
    assert m.tried == ["pcp", "nat-pmp"] and upnp_client.requests == []
    assert m.candidate(Endpoint("198.51.100.7", 1234)) == Endpoint("198.51.100.7", 40000)
    assert m.status()["protocol"] == "nat-pmp"


def test_behind_another_nat_the_mapping_is_no_candidate():
    m, clock, _ = mapper([FakeClient("pcp", [granted(host="100.64.0.9")])])
    m.start()
    assert m.mapping is not None
    assert m.candidate(Endpoint("198.51.100.7", 1234)) is None


def test_renewed_at_half_the_lifetime_with_the_same_protocol():
    natpmp = FakeClient("nat-pmp", [granted(), granted(lifetime=600)])
    m, clock, _ = mapper([natpmp])
    m.start()
    clock.advance(299)
    assert len(natpmp.requests) == 1
    clock.advance(1)
    assert natpmp.requests[1] == (4000, portmap.LIFETIME, 40000)
    assert m.state == "mapped"


def test_failed_renewal_starts_over_later():
    natpmp = FakeClient("nat-pmp", [granted(), Timeout("gone"), granted(port=40002)])
    m, clock, made = mapper([natpmp])
    m.start()
    clock.advance(300)
    assert m.state == "unmapped" and m.mapping is None and "renewal" in m.last_error
    clock.advance(portmap.RETRY_INTERVAL)
    assert m.state == "mapped" and m.mapping.external_port == 40002
    assert len(made) == 2


def test_nothing_works_asks_again_only_after_the_retry_interval():
    clients = [FakeClient("pcp", [Timeout("t")] * 2), FakeClient("nat-pmp", [Timeout("t")] * 2), FakeClient("upnp", [Timeout("t")] * 2)]
    m, clock, made = mapper(clients)
    m.start()
    assert m.state == "unmapped" and m.tried == ["pcp", "nat-pmp", "upnp"]
    assert "pcp" in m.last_error and "upnp" in m.last_error
    clock.advance(portmap.RETRY_INTERVAL - 1)
    assert len(made) == 1
    clock.advance(1)
    assert len(made) == 2


def test_no_gateway_is_a_failure_not_a_crash():
    m, clock, made = mapper([], gateway=None)
    m.start()
    clock.advance(0)
    assert m.state == "unmapped" and m.last_error == "no router between this node and its beacon" and made == []


def test_stop_deletes_the_mapping():
    natpmp = FakeClient("nat-pmp", [granted()])
    m, clock, _ = mapper([natpmp])
    m.start()
    m.stop()
    assert natpmp.released == [granted()]
    assert m.state == "stopped" and m.mapping is None and not clock.getDelayedCalls()


def test_a_grant_arriving_after_stop_is_deleted():
    late = defer.Deferred()

    class Slow(FakeClient):
        def request(self, *args):
            return late

    slow = Slow("pcp", [])
    m, clock, _ = mapper([slow])
    m.start()
    m.stop()
    late.callback(granted("pcp"))
    assert slow.released == [granted("pcp")]
    assert m.mapping is None


def test_the_gateway_is_the_router_on_the_way_to_the_beacon(tmp_path):
    table = tmp_path / "route"
    table.write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
        "eth0\t0000010A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
        "eth0\t00000000\t0100010A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        "eth1\t0000A8C0\t0200A8C0\t0003\t0\t0\t0\t0000FFFF\t0\t0\t0\n"
    )
    assert portmap.gateway_towards("203.0.113.2", str(table)) == "10.1.0.1"
    assert portmap.gateway_towards("192.168.7.7", str(table)) == "192.168.0.2"  # the longest prefix wins
    assert portmap.gateway_towards("10.1.0.77", str(table)) is None  # on our own link
    # On this machine: no router to ask, whatever the table says.
    assert portmap.gateway_towards("127.0.0.1", str(table)) is None
    assert portmap.gateway_towards("::1", str(table)) is None
    assert portmap.gateway_towards("203.0.113.2", str(tmp_path / "missing")) is None
