"""The control socket's codec: round trips, limits, and garbage that only ever raises the codec's errors."""

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pilotproto.control.codec import (
    MAX_REQUEST_LINE,
    MAX_RESPONSE_LINE,
    BadRequest,
    BadResponse,
    LineSplitter,
    Request,
    Response,
    decode_event,
    decode_request,
    decode_response,
    encode_error,
    encode_event,
    encode_ok,
    encode_request,
    split_line,
)
from pilotproto.errors import InvalidArgument, NotFound, PilotError

ids = st.one_of(st.integers(min_value=-(2**53), max_value=2**53), st.text(max_size=20))
commands = st.from_regex(r"\A[a-z][a-z0-9_]{0,20}\Z")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
objects = st.dictionaries(st.text(max_size=10), json_values, max_size=6)


@settings(max_examples=300, deadline=None)
@given(ids, commands, objects)
def test_request_round_trip(request_id, cmd, args):
    line = encode_request(request_id, cmd, args)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_request(line[:-1]) == Request(request_id, cmd, args)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), ids), objects)
def test_ok_response_round_trip(request_id, data):
    line = encode_ok(request_id, data)
    assert line.count(b"\n") == 1
    assert decode_response(line[:-1]) == Response(request_id, data)


@given(ids, st.text(min_size=1, max_size=50), st.one_of(st.none(), st.text(max_size=50)))
def test_error_response_round_trip_rebuilds_the_class_by_code(request_id, message, hint):
    response = decode_response(encode_error(request_id, NotFound(message, hint))[:-1])
    assert response.id == request_id and not response.ok
    assert type(response.error) is NotFound
    assert (response.error.message, response.error.hint) == (message, hint if hint is not None else NotFound.hint)
    with pytest.raises(NotFound):
        response.result()


@given(objects)
def test_event_round_trip(extra):
    event = {**extra, "event": "incoming"}
    assert decode_event(encode_event(event)[:-1]) == event


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_the_codecs_errors(data):
    for decode, error in ((decode_request, BadRequest), (decode_response, BadResponse), (decode_event, BadResponse)):
        try:
            decode(data)
        except error:
            pass


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_value_only_raises_the_codecs_errors(value):
    data = json.dumps(value).encode()
    for decode, error in ((decode_request, BadRequest), (decode_response, BadResponse), (decode_event, BadResponse)):
        try:
            decode(data)
        except error:
            pass


def test_a_bad_request_knows_which_id_to_answer():
    with pytest.raises(BadRequest) as caught:
        decode_request(b'{"id": 3, "cmd": "Info!"}')
    assert caught.value.request_id == 3 and caught.value.code == "invalid_argument"
    with pytest.raises(BadRequest) as caught:
        decode_request(b"not json")
    assert caught.value.request_id is None and "not JSON" in caught.value.message
    assert decode_request(b'{"id": "x", "cmd": "info", "args": null}') == Request("x", "info", {})


@pytest.mark.parametrize("request_id, cmd, args", [
    (True, "info", {}), (1.5, "info", {}), (1, "Info", {}), (1, "info", {"x": float("nan")}),
    (1, "info", {"x": object()}), (1, "info", {"x": "a" * MAX_REQUEST_LINE}),
])
def test_encoding_refuses_what_the_daemon_would(request_id, cmd, args):
    with pytest.raises(InvalidArgument):
        encode_request(request_id, cmd, args)


@pytest.mark.parametrize("line", [
    b'{"id": 1, "status": "maybe"}',
    b'{"id": 1, "status": "error", "message": "no code"}',
    b'{"id": 1.5, "status": "ok"}',
    b"[1]",
])
def test_malformed_responses_are_bad_responses(line):
    with pytest.raises(BadResponse):
        decode_response(line)


def test_an_unknown_error_code_keeps_its_code():
    response = decode_response(b'{"id":1,"status":"error","code":"some_future_code","message":"m","hint":null}')
    assert type(response.error) is PilotError and response.error.code == "some_future_code"


def test_split_line_guards_the_response_limit():
    assert split_line(b"partial") is None
    assert split_line(b'{"a":1}\r\nrest') == (b'{"a":1}', b"rest")
    with pytest.raises(BadResponse):
        split_line(b"x" * MAX_RESPONSE_LINE)
    with pytest.raises(BadResponse):
        split_line(b"x" * 10 + b"\n", limit=5)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_line_splitter_reassembles_any_chunking(chunks):
    limit = 128
    data = b"".join(chunks)
    splitter = LineSplitter(limit)
    got = []
    for chunk in chunks:
        got.extend(splitter.feed(chunk))
    expected = []
    for line in data.split(b"\n")[:-1]:
        expected.append(LineSplitter.TOO_LONG if len(line) + 1 > limit else line.rstrip(b"\r"))
    # An unterminated over-long tail is reported as soon as it passes the limit.
    if len(data.split(b"\n")[-1]) >= limit:
        expected.append(LineSplitter.TOO_LONG)
    assert got == expected


# -- hostile values: whatever decodes can be answered, and nothing else decodes ----------

hostile_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.integers(), st.text(max_size=5), hostile_values), hostile_values)
def test_a_request_that_decodes_holds_only_values_the_daemon_can_send_back(request_id, args):
    # json.dumps writes NaN, Infinity, huge integers and lone surrogates (as
    # \ud800 escapes): exactly what a hostile client may send.
    line = json.dumps({"id": request_id, "cmd": "echo", "args": {"value": args}}).encode()
    try:
        request = decode_request(line)
    except BadRequest as e:
        assert decode_response(encode_error(e.request_id, e)[:-1]).error.code == "invalid_argument"
        return
    assert decode_response(encode_ok(request.id, request.args)[:-1]).data == request.args


@pytest.mark.parametrize("digits", [20, 5000, 100_000])
def test_huge_integers_are_refused_without_converting_them(digits):
    started = time.perf_counter()
    with pytest.raises(BadRequest, match="integer"):
        decode_request(b'{"id": ' + b"7" * digits + b', "cmd": "info"}')
    assert time.perf_counter() - started < 0.1


def test_a_response_with_hostile_values_is_a_bad_response_on_the_client_too():
    for line in (b'{"id": 1, "status": "ok", "data": {"x": NaN}}', b'{"id": 1, "status": "ok", "data": ' + b"[" * 40 + b"]" * 40 + b"}"):
        with pytest.raises(BadResponse):
            decode_response(line)


def test_an_error_line_never_raises():
    error = InvalidArgument("unexpected keyword '\ud800'", hint="\udfff")
    line = encode_error("\ud800", error)
    response = decode_response(line[:-1])
    assert response.id is None and response.error.message == "unexpected keyword '?'" and response.error.hint == "?"
