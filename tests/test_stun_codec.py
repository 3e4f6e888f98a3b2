import zlib

import attrs

import pytest
from aioice import stun as aioice_stun
from hypothesis import given
from hypothesis import strategies as st

from pilotproto.errors import InvalidArgument
from pilotproto.wire import is_stun
from pilotproto.wire.codec import DecodeError, Endpoint
from pilotproto.wire.stun import (
    BINDING,
    MAGIC_COOKIE,
    MESSAGE_INTEGRITY,
    USERNAME,
    ChangedAddress,
    ChangeRequest,
    ErrorCode,
    MappedAddress,
    Message,
    OtherAddress,
    Padding,
    RawAttribute,
    ResponseOrigin,
    ResponsePort,
    Software,
    SourceAddress,
    StunClass,
    StunDecodeError,
    StunErrorResponse,
    UnknownAttributes,
    XorMappedAddress,
    attribute_size,
    binding_error,
    binding_request,
    binding_response,
    decode,
    is_rfc3489,
    parse_binding_response,
    unknown_comprehension_required,
)

# RFC 5769 test vectors, sections 2.1-2.3.  Their SOFTWARE and USERNAME
# padding is 0x20 rather than zero; receivers must ignore padding contents.
TXID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
RFC5769_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "802200105354554e207465737420636c69656e74"
    "002400046e0001ff"
    "80290008932ff9b151263b36"
    "000600096576746a3a68367659202020"
    "000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"
    "80280004e57a3bcf"
)
RFC5769_IPV4_RESPONSE = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000080001a147e112a643"
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96"
)
RFC5769_IPV6_RESPONSE = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d9"
    "00080014a382954e4be67bf11784c97c8292c275bfe3ed41"
    "80280004c8fb0b4c"
)
RFC5769_IPV4_MAPPED = Endpoint("192.0.2.1", 32853)
RFC5769_IPV6_MAPPED = Endpoint("2001:db8:1234:5678:11:2233:4455:6677", 32853)


def _with_zero_padding(vector: bytes, padding_at: range) -> bytes:
    """The vector as a zero-padding encoder writes it: pad bytes zeroed, FINGERPRINT recomputed."""
    data = bytearray(vector)
    for i in padding_at:
        data[i] = 0
    crc = zlib.crc32(bytes(data[:-8])) ^ 0x5354554E
    return bytes(data[:-4]) + crc.to_bytes(4, "big")


# --- RFC 5769 vectors, exact bytes -------------------------------------------


def test_rfc5769_request_decodes():
    message = decode(RFC5769_REQUEST)
    assert message.message_class is StunClass.REQUEST
    assert message.method == BINDING
    assert message.transaction_id == TXID
    assert message.fingerprint is True
    assert message.find(Software) == Software("STUN test client")
    assert message.attributes[1:] == (
        RawAttribute(0x0024, bytes.fromhex("6e0001ff")),  # PRIORITY
        RawAttribute(0x8029, bytes.fromhex("932ff9b151263b36")),  # ICE-CONTROLLED
        RawAttribute(0x0006, b"evtj:h6vY"),  # USERNAME
        RawAttribute(0x0008, bytes.fromhex("9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2")),
    )
    # PRIORITY is comprehension-required: a server that does not do ICE answers 420.
    assert unknown_comprehension_required(message, {USERNAME, MESSAGE_INTEGRITY}) == (0x0024,)


def test_rfc5769_request_reencodes_exactly_up_to_padding():
    username_end = RFC5769_REQUEST.index(b"evtj:h6vY") + 9
    username_padding = range(username_end, username_end + 3)
    assert decode(RFC5769_REQUEST).encode() == _with_zero_padding(RFC5769_REQUEST, username_padding)


@pytest.mark.parametrize(
    "vector, mapped, xor_value",
    [
        (RFC5769_IPV4_RESPONSE, RFC5769_IPV4_MAPPED, "0001a147e112a643"),
        (RFC5769_IPV6_RESPONSE, RFC5769_IPV6_MAPPED, "0002a1470113a9faa5d3f179bc25f4b5bed2b9d9"),
    ],
)
def test_rfc5769_responses(vector, mapped, xor_value):
    message = decode(vector)
    assert message.message_class is StunClass.SUCCESS
    assert message.transaction_id == TXID
    assert message.fingerprint is True
    assert message.find(Software) == Software("test vector")
    assert message.find(XorMappedAddress) == XorMappedAddress(mapped)
    assert message.attributes[2].type == 0x0008
    assert parse_binding_response(vector) == (TXID, mapped, None, None)
    assert XorMappedAddress(mapped).encode_value(TXID) == bytes.fromhex(xor_value)
    # Built from our own attribute objects, it comes out byte for byte (but for
    # the vector's non-zero padding byte after "test vector").
    rebuilt = Message(
        StunClass.SUCCESS,
        TXID,
        [Software("test vector"), XorMappedAddress(mapped), message.attributes[2]],
        fingerprint=True,
    )
    assert rebuilt.encode() == _with_zero_padding(vector, range(35, 36))


def test_corrupted_fingerprint_is_detected():
    broken = RFC5769_IPV4_RESPONSE[:-1] + bytes([RFC5769_IPV4_RESPONSE[-1] ^ 1])
    with pytest.raises(StunDecodeError, match="FINGERPRINT"):
        decode(broken)


def test_fingerprint_must_be_last():
    fingerprinted = Message(StunClass.REQUEST, TXID, fingerprint=True).encode()
    extra = bytes.fromhex("80220004") + b"test"  # SOFTWARE after FINGERPRINT
    data = bytearray(fingerprinted + extra)
    data[3] += len(extra)
    with pytest.raises(StunDecodeError, match="last"):
        decode(bytes(data))


# --- property tests ------------------------------------------------------------

ports = st.integers(0, 0xFFFF)
endpoints = st.builds(lambda ip, port: Endpoint(str(ip), port), st.ip_addresses(), ports)
texts = st.text(max_size=40)
_MODELLED = {0x0001, 0x0003, 0x0004, 0x0005, 0x0009, 0x000A, 0x0020, 0x0026, 0x0027, 0x8022, 0x8028, 0x802B, 0x802C}
raw_attributes = st.builds(
    RawAttribute,
    st.integers(0, 0xFFFF).filter(lambda t: t not in _MODELLED),
    st.binary(max_size=40),
)
attribute_strategies = {
    "mapped": st.builds(MappedAddress, endpoints),
    "xor_mapped": st.builds(XorMappedAddress, endpoints),
    "response_origin": st.builds(ResponseOrigin, endpoints),
    "other_address": st.builds(OtherAddress, endpoints),
    "source_address": st.builds(SourceAddress, endpoints),
    "changed_address": st.builds(ChangedAddress, endpoints),
    "change_request": st.builds(ChangeRequest, st.booleans(), st.booleans()),
    "response_port": st.builds(ResponsePort, ports),
    "padding": st.builds(Padding, st.integers(0, 600)),
    "software": st.builds(Software, texts),
    "error_code": st.builds(ErrorCode, st.integers(300, 699), texts),
    "unknown_attributes": st.builds(UnknownAttributes, st.lists(ports, max_size=10)),
    "raw": raw_attributes,
}
any_attribute = st.one_of(*attribute_strategies.values())
transaction_ids = st.binary(min_size=12, max_size=12)
MAGIC = MAGIC_COOKIE.to_bytes(4, "big")
classic_cookies = st.binary(min_size=4, max_size=4).filter(lambda c: c != MAGIC)
messages = st.builds(
    Message,
    st.sampled_from(StunClass),
    transaction_ids,
    st.lists(any_attribute, max_size=8),
    st.integers(0, 0xFF),
    st.booleans(),
)
classic_messages = st.builds(
    Message,
    st.sampled_from(StunClass),
    transaction_ids,
    st.lists(any_attribute, max_size=8),
    st.integers(0, 0xFF),
    st.booleans(),
    classic_cookies,
)


@given(messages)
def test_message_round_trip(message):
    data = message.encode()
    assert is_stun(data) and not is_rfc3489(data)
    assert len(data) % 4 == 0
    assert decode(data) == message
    assert not message.rfc3489


@given(classic_messages)
def test_rfc3489_message_round_trip_only_when_asked(message):
    data = message.encode()
    assert is_rfc3489(data) and not is_stun(data)
    assert data[4:8] == message.cookie
    assert decode(data, rfc3489=True) == message
    assert message.rfc3489
    with pytest.raises(StunDecodeError, match="magic cookie"):
        decode(data)


@given(any_attribute)
def test_attribute_size_is_what_encoding_adds(attribute):
    empty = len(Message(StunClass.SUCCESS, TXID).encode())
    assert len(Message(StunClass.SUCCESS, TXID, [attribute]).encode()) - empty == attribute_size(attribute)


@pytest.mark.parametrize("name", sorted(attribute_strategies))
def test_each_attribute_round_trips(name):
    @given(attribute_strategies[name], transaction_ids)
    def check(attribute, transaction_id):
        message = Message(StunClass.SUCCESS, transaction_id, [attribute])
        assert decode(message.encode()).attributes == (attribute,)

    check()


@given(messages, st.data())
def test_any_single_bit_flip_of_a_fingerprinted_message_is_rejected(message, data):
    encoded = bytearray(_fingerprinted(message).encode())
    # A flip in FINGERPRINT's own type bytes turns it into an unknown optional
    # attribute, which no receiver can tell from a message sent without one.
    type_bits = range((len(encoded) - 8) * 8, (len(encoded) - 6) * 8)
    bit = data.draw(st.integers(0, len(encoded) * 8 - 1).filter(lambda b: b not in type_bits))
    encoded[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(StunDecodeError):
        decode(bytes(encoded))


def _fingerprinted(message):
    return attrs.evolve(message, fingerprint=True)


@given(messages, st.data())
def test_truncated_messages_raise_only_decode_error(message, data):
    encoded = message.encode()
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(StunDecodeError):
        decode(encoded[:cut])


@given(st.binary(max_size=200))
def test_random_bytes_raise_only_decode_error(data):
    try:
        decode(data)
    except StunDecodeError:
        pass


stun_shaped = st.builds(
    lambda message_type, txid, body: message_type.to_bytes(2, "big")
    + len(body).to_bytes(2, "big")
    + bytes.fromhex("2112a442")
    + txid
    + body,
    st.integers(0, 0x3FF),
    transaction_ids,
    st.binary(max_size=120).map(lambda b: b[: len(b) - len(b) % 4]),
)


@given(stun_shaped)
def test_random_attribute_sections_raise_only_decode_error(data):
    # Header valid, attributes random: this reaches every attribute decoder.
    try:
        decode(data)
    except StunDecodeError as e:
        assert isinstance(e, DecodeError)


def test_validation_on_construction():
    with pytest.raises(InvalidArgument):
        Message(StunClass.REQUEST, b"short")
    with pytest.raises(InvalidArgument):
        Message(StunClass.REQUEST, TXID, cookie=b"abc")
    with pytest.raises(InvalidArgument):
        Software("x" * 128)
    with pytest.raises(InvalidArgument):
        RawAttribute(0x8028, b"")  # FINGERPRINT is the message's flag
    with pytest.raises(ValueError):
        ErrorCode(200, "not an error")


# --- Binding helpers -----------------------------------------------------------


def test_binding_request_flags():
    plain = decode(binding_request(TXID))
    assert plain.message_class is StunClass.REQUEST and plain.attributes == () and plain.fingerprint
    both = decode(binding_request(TXID, change_ip=True, change_port=True))
    assert both.attributes == (ChangeRequest(True, True),)
    port_only = decode(binding_request(TXID, change_port=True))
    assert port_only.attributes == (ChangeRequest(False, True),)


def test_binding_response_carries_everything_given():
    request = decode(binding_request(TXID))
    observed = Endpoint("203.0.113.9", 40001)
    origin = Endpoint("198.51.100.1", 3478)
    other = Endpoint("198.51.100.2", 3479)
    data = binding_response(request, observed, origin, other, "pilot-beacon 1")
    message = decode(data)
    assert message.attributes == (
        XorMappedAddress(observed),
        MappedAddress(observed),
        ResponseOrigin(origin),
        OtherAddress(other),
        Software("pilot-beacon 1"),
    )
    assert message.fingerprint
    assert parse_binding_response(data) == (TXID, observed, other, origin)


def test_binding_response_refuses_non_requests():
    response = decode(binding_response(decode(binding_request(TXID)), Endpoint("::1", 1)))
    with pytest.raises(InvalidArgument):
        binding_response(response, Endpoint("::1", 1))


def test_420_lists_unknown_required_attributes():
    request = Message(
        StunClass.REQUEST,
        TXID,
        [
            RawAttribute(0x7777, b"x"),
            RawAttribute(0x8077, b"optional"),
            RawAttribute(0x0008, bytes(20)),  # MESSAGE-INTEGRITY: carried, not refused
            RawAttribute(0x7777, b"y"),
        ],
    )
    assert unknown_comprehension_required(request, {MESSAGE_INTEGRITY}) == (0x7777,)
    # Parsing an attribute does not make it understood: the server says what it honours.
    assert unknown_comprehension_required(request, set()) == (0x7777, 0x0008)
    error = binding_error(request, 420, "Unknown Attribute", [0x7777])
    message = decode(error)
    assert message.message_class is StunClass.ERROR
    assert message.attributes == (ErrorCode(420, "Unknown Attribute"), UnknownAttributes([0x7777]))
    with pytest.raises(StunErrorResponse) as caught:
        parse_binding_response(error)
    assert (caught.value.error_code, caught.value.transaction_id) == (420, TXID)


# --- RFC 3489 (classic STUN) ----------------------------------------------------

# An RFC 3489 Binding request and coturn 4.6.1's answer to it (captured on
# loopback, the server on 127.0.0.1:13478 and 127.0.0.2:13479): the cookie
# field is the first four bytes of the 16-byte transaction id, copied back.
RFC3489_ID = bytes.fromhex("3da310f7c63053129900987a3eb176d2")
RFC3489_REQUEST = bytes.fromhex("00010000") + RFC3489_ID
COTURN_RFC3489_RESPONSE = bytes.fromhex(
    "01010040" + RFC3489_ID.hex()
    + "00010008000184287f000001"
    "00040008000134a67f000001"
    "00050008000134a77f000002"
    "80220018436f7475726e2d342e362e312027476f7273742700000000"
)


def test_rfc3489_request_decodes_with_its_cookie_field():
    assert is_rfc3489(RFC3489_REQUEST) and not is_stun(RFC3489_REQUEST)
    request = decode(RFC3489_REQUEST, rfc3489=True)
    assert request.rfc3489
    assert (request.cookie, request.transaction_id) == (RFC3489_ID[:4], RFC3489_ID[4:])
    assert (request.message_class, request.method, request.attributes) == (StunClass.REQUEST, BINDING, ())
    assert request.encode() == RFC3489_REQUEST


def test_rfc3489_response_from_coturn_decodes():
    response = decode(COTURN_RFC3489_RESPONSE, rfc3489=True)
    assert response.message_class is StunClass.SUCCESS and response.cookie == RFC3489_ID[:4]
    assert response.attributes[:3] == (
        MappedAddress(Endpoint("127.0.0.1", 33832)),
        SourceAddress(Endpoint("127.0.0.1", 13478)),
        ChangedAddress(Endpoint("127.0.0.2", 13479)),
    )
    assert response.find(Software).text.startswith("Coturn-4.6.1")


@pytest.mark.parametrize(
    "data",
    [
        RFC3489_REQUEST[:-1],  # too short
        bytes.fromhex("00010004") + RFC3489_ID,  # length says 4, nothing follows
        bytes.fromhex("00010002") + RFC3489_ID + b"ab",  # not a multiple of 4
        bytes.fromhex("c0010000") + RFC3489_ID,  # first byte outside RFC 7983's STUN range
    ],
)
def test_rfc3489_shape_is_checked(data):
    assert not is_rfc3489(data)
    with pytest.raises(StunDecodeError):
        decode(data, rfc3489=True)


def test_helpers_answer_only_magic_cookie_requests():
    classic = decode(RFC3489_REQUEST, rfc3489=True)
    with pytest.raises(InvalidArgument, match="3489"):
        binding_response(classic, Endpoint("192.0.2.1", 1))
    with pytest.raises(InvalidArgument, match="3489"):
        binding_error(classic, 400, "Bad Request")


def test_our_rfc3489_attributes_parse_with_aioice():
    message = Message(
        StunClass.SUCCESS,
        RFC3489_ID[4:],
        [MappedAddress(Endpoint("192.0.2.1", 4000)), SourceAddress(Endpoint("198.51.100.1", 3478)),
         ChangedAddress(Endpoint("198.51.100.2", 3479))],
        cookie=RFC3489_ID[:4],
    )
    parsed = aioice_stun.parse_message(message.encode())
    assert parsed.transaction_id == RFC3489_ID[4:]
    assert parsed.attributes["MAPPED-ADDRESS"] == ("192.0.2.1", 4000)
    assert parsed.attributes["SOURCE-ADDRESS"] == ("198.51.100.1", 3478)
    assert parsed.attributes["CHANGED-ADDRESS"] == ("198.51.100.2", 3479)


def test_parse_binding_response_rejects_other_messages():
    with pytest.raises(StunDecodeError, match="not a Binding response"):
        parse_binding_response(binding_request(TXID))
    without_address = Message(StunClass.SUCCESS, TXID, [Software("x")]).encode()
    with pytest.raises(StunDecodeError, match="XOR-MAPPED-ADDRESS"):
        parse_binding_response(without_address)


# --- interop with aioice ---------------------------------------------------------


def test_aioice_request_decodes_with_ours():
    theirs = aioice_stun.Message(
        message_method=aioice_stun.Method.BINDING,
        message_class=aioice_stun.Class.REQUEST,
        attributes={"CHANGE-REQUEST": 0x06, "SOFTWARE": "aioice"},
    )
    theirs.add_fingerprint()
    message = decode(bytes(theirs))
    assert message.message_class is StunClass.REQUEST
    assert message.method == BINDING
    assert message.transaction_id == theirs.transaction_id
    assert message.attributes == (ChangeRequest(True, True), Software("aioice"))
    assert message.fingerprint
    assert unknown_comprehension_required(message, {ChangeRequest.TYPE}) == ()


@pytest.mark.parametrize("observed", [Endpoint("203.0.113.9", 40001), Endpoint("2001:db8::9", 1)])
def test_our_response_parses_with_aioice(observed):
    request = decode(binding_request(TXID))
    origin, other = Endpoint("198.51.100.1", 3478), Endpoint("198.51.100.2", 3479)
    parsed = aioice_stun.parse_message(binding_response(request, observed, origin, other, "pilot"))
    assert parsed.message_class == aioice_stun.Class.RESPONSE
    assert parsed.message_method == aioice_stun.Method.BINDING
    assert parsed.transaction_id == TXID
    assert parsed.attributes["XOR-MAPPED-ADDRESS"] == observed.as_tuple()
    assert parsed.attributes["MAPPED-ADDRESS"] == observed.as_tuple()
    assert parsed.attributes["RESPONSE-ORIGIN"] == origin.as_tuple()
    assert parsed.attributes["OTHER-ADDRESS"] == other.as_tuple()
    assert parsed.attributes["SOFTWARE"] == "pilot"
    assert "FINGERPRINT" in parsed.attributes  # aioice verified it while parsing


def test_our_request_and_error_parse_with_aioice():
    request = aioice_stun.parse_message(binding_request(TXID, change_ip=True))
    assert request.message_class == aioice_stun.Class.REQUEST
    assert request.attributes["CHANGE-REQUEST"] == 0x04
    error = aioice_stun.parse_message(binding_error(decode(binding_request(TXID)), 400, "Bad Request"))
    assert error.message_class == aioice_stun.Class.ERROR
    assert error.attributes["ERROR-CODE"] == (400, "Bad Request")


def test_aioice_response_parses_with_ours():
    theirs = aioice_stun.Message(
        message_method=aioice_stun.Method.BINDING,
        message_class=aioice_stun.Class.RESPONSE,
        transaction_id=TXID,
        attributes={"XOR-MAPPED-ADDRESS": ("2001:db8::7", 5000), "OTHER-ADDRESS": ("192.0.2.7", 3479)},
    )
    theirs.add_fingerprint()
    assert parse_binding_response(bytes(theirs)) == (
        TXID,
        Endpoint("2001:db8::7", 5000),
        Endpoint("192.0.2.7", 3479),
        None,
    )
