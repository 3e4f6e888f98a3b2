"""Reactor-free tests of the control protocol and its command table: StringTransport and fake commands."""

import json
import time

import pytest
from twisted.internet import defer
from twisted.internet.testing import StringTransport

from pilotproto.control.codec import MAX_REQUEST_LINE
from pilotproto.control.server import Command, ControlServerFactory, Dispatcher
from pilotproto.errors import NotFound, PilotError


class FakeCommands:
    def __init__(self):
        self.calls = []
        self.pending = {}

    def info(self):
        self.calls.append(("info",))
        return {"hostname": "agent-a", "registered": True}

    def echo(self, text, repeat=1):
        self.calls.append(("echo", text, repeat))
        return {"text": text * repeat}

    def lookup(self, target):
        self.calls.append(("lookup", target))
        d = defer.Deferred()
        self.pending[target] = d
        return d

    def missing(self):
        raise NotFound("no node called ghost")

    def broken(self):
        raise RuntimeError("kaboom")

    def typo(self):
        # A TypeError inside a command is a bug, not the caller's bad arguments.
        return len(5)

    def nothing(self):
        return None

    def wrong_type(self):
        return ["not", "a", "dict"]

    def unencodable(self):
        return {"raw": b"bytes"}

    def not_a_command(self):
        raise AssertionError("must not be reachable")

    def table(self):
        names = ["info", "echo", "lookup", "missing", "broken", "typo", "nothing", "wrong_type", "unencodable"]
        return {name: Command(getattr(self, name)) for name in names}


def connect(commands=None):
    commands = commands or FakeCommands()
    table = commands.table() if hasattr(commands, "table") else commands
    protocol = ControlServerFactory(table).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return commands, protocol, transport


def responses(transport):
    raw = transport.value()
    assert raw == b"" or raw.endswith(b"\n")
    return [json.loads(line) for line in raw.splitlines()]


def send(protocol, doc):
    protocol.dataReceived(json.dumps(doc).encode() + b"\n")


def test_ok_response_echoes_id_and_data():
    commands, protocol, transport = connect()
    send(protocol, {"id": 7, "cmd": "info", "args": {}})
    assert responses(transport) == [{"id": 7, "status": "ok", "data": {"hostname": "agent-a", "registered": True}}]


def test_string_id_and_missing_args():
    commands, protocol, transport = connect()
    send(protocol, {"id": "abc", "cmd": "info"})
    assert responses(transport)[0]["id"] == "abc"


def test_args_are_passed_as_keywords():
    commands, protocol, transport = connect()
    send(protocol, {"id": 1, "cmd": "echo", "args": {"text": "hé", "repeat": 2}})
    assert commands.calls == [("echo", "hé", 2)]
    assert responses(transport)[0]["data"] == {"text": "héhé"}


def test_requests_split_across_reads_and_batched_in_one():
    commands, protocol, transport = connect()
    line = json.dumps({"id": 1, "cmd": "info"}).encode() + b"\n"
    for byte in line:
        protocol.dataReceived(bytes([byte]))
    protocol.dataReceived(line.replace(b"1", b"2") + line.replace(b"1", b"3"))
    assert [r["id"] for r in responses(transport)] == [1, 2, 3]


def test_crlf_line_endings_are_accepted():
    commands, protocol, transport = connect()
    protocol.dataReceived(b'{"id": 1, "cmd": "info"}\r\n')
    assert responses(transport)[0]["status"] == "ok"


def test_async_responses_come_out_of_order_matched_by_id():
    commands, protocol, transport = connect()
    send(protocol, {"id": 1, "cmd": "lookup", "args": {"target": "slow"}})
    send(protocol, {"id": 2, "cmd": "lookup", "args": {"target": "fast"}})
    send(protocol, {"id": 3, "cmd": "info"})
    commands.pending["fast"].callback({"hostname": "fast"})
    commands.pending["slow"].errback(NotFound("slow is not visible"))
    got = responses(transport)
    assert [r["id"] for r in got] == [3, 2, 1]
    assert got[1]["data"] == {"hostname": "fast"}
    assert got[2] == {
        "id": 1,
        "status": "error",
        "code": "not_found",
        "message": "slow is not visible",
        "hint": NotFound.hint,
    }


def test_sync_pilot_error_becomes_error_response():
    commands, protocol, transport = connect()
    send(protocol, {"id": 4, "cmd": "missing"})
    assert responses(transport) == [
        {"id": 4, "status": "error", "code": "not_found", "message": "no node called ghost", "hint": NotFound.hint}
    ]


def test_unknown_command_lists_commands_in_hint():
    commands, protocol, transport = connect()
    send(protocol, {"id": 5, "cmd": "fly"})
    (r,) = responses(transport)
    assert (r["id"], r["code"]) == (5, "invalid_argument")
    assert "'fly'" in r["message"]
    assert "echo, info, lookup" in r["hint"]
    assert "not_a_command" not in r["hint"]


@pytest.mark.parametrize(
    "args",
    [{"text": "x", "colour": "red"}, {}, {"repeat": 2}],
)
def test_bad_arguments_are_invalid_argument_and_handler_not_called(args):
    commands, protocol, transport = connect()
    send(protocol, {"id": 6, "cmd": "echo", "args": args})
    (r,) = responses(transport)
    assert r["code"] == "invalid_argument"
    assert "text" in r["hint"] and "repeat?" in r["hint"]
    assert commands.calls == []


def test_internal_errors_are_logged_and_reported(logged_failures):
    commands, protocol, transport = connect()
    send(protocol, {"id": 8, "cmd": "broken"})
    send(protocol, {"id": 9, "cmd": "typo"})
    got = responses(transport)
    assert [(r["id"], r["code"]) for r in got] == [(8, "internal"), (9, "internal")]
    assert "kaboom" in got[0]["message"]
    assert got[0]["hint"]
    logged = [e["log_failure"].value for e in logged_failures if "log_failure" in e]
    assert [type(e).__name__ for e in logged] == ["RuntimeError", "TypeError"]
    logged_failures.clear()  # expected: tell the suite-wide fixture (tests/conftest.py)


def test_pilot_errors_are_not_logged_as_bugs(logged_failures):
    commands, protocol, transport = connect()
    send(protocol, {"id": 1, "cmd": "missing"})
    assert not [e for e in logged_failures if "log_failure" in e]


def test_none_result_is_empty_data_and_bad_results_are_internal():
    commands, protocol, transport = connect()
    send(protocol, {"id": 1, "cmd": "nothing"})
    send(protocol, {"id": 2, "cmd": "wrong_type"})
    send(protocol, {"id": 3, "cmd": "unencodable"})
    got = responses(transport)
    assert got[0] == {"id": 1, "status": "ok", "data": {}}
    assert [(r["id"], r["code"]) for r in got[1:]] == [(2, "internal"), (3, "internal")]


@pytest.mark.parametrize(
    "line, expected_id",
    [
        (b"this is not json", None),
        (b"\xff\xfe garbage", None),
        (b"[1, 2, 3]", None),
        (b'{"cmd": "info"}', None),
        (b'{"id": true, "cmd": "info"}', None),
        (b'{"id": 1.5, "cmd": "info"}', None),
        (b'{"id": 3, "cmd": 42}', 3),
        (b'{"id": 3, "cmd": "Info!"}', 3),
        (b'{"id": "x", "cmd": "info", "args": [1]}', "x"),
    ],
)
def test_malformed_lines_get_invalid_argument_and_connection_stays_open(line, expected_id):
    commands, protocol, transport = connect()
    protocol.dataReceived(line + b"\n")
    send(protocol, {"id": 99, "cmd": "info"})
    got = responses(transport)
    assert got[0]["status"] == "error"
    assert got[0]["code"] == "invalid_argument"
    assert got[0]["id"] == expected_id
    assert got[1]["id"] == 99 and got[1]["status"] == "ok"
    assert not transport.disconnecting


HOSTILE_LINES = {
    "5000-digit id": b'{"id": ' + b"9" * 5000 + b', "cmd": "info"}',
    "20-digit id": b'{"id": ' + b"9" * 20 + b', "cmd": "info"}',
    "4000-digit argument": b'{"id": 1, "cmd": "echo", "args": {"text": "a", "repeat": ' + b"9" * 4000 + b"}}",
    "30,000 nested arrays": b'{"id": 1, "cmd": "info", "args": {"a": ' + b"[" * 30000 + b"]" * 30000 + b"}}",
    "arrays nested past the limit": b'{"id": 1, "cmd": "echo", "args": {"text": ' + b"[" * 40 + b"]" * 40 + b"}}",
    "objects nested past the limit": b'{"id": 1, "cmd": "echo", "args": {"text": ' + b'{"a":' * 40 + b"1" + b"}" * 40 + b"}}",
    "float overflowing to infinity": b'{"id": 1, "cmd": "echo", "args": {"text": "a", "repeat": 1e999}}',
    "NaN": b'{"id": 1, "cmd": "echo", "args": {"text": NaN}}',
    "-Infinity": b'{"id": -Infinity, "cmd": "info"}',
    "invalid UTF-8": b'{"id": 1, "cmd": "info", "args": {"x": "\xc3\x28"}}',
    "lone surrogate id": b'{"id": "\\ud800", "cmd": "info"}',
    "lone surrogate command": b'{"id": 1, "cmd": "\\udfff"}',
    "lone surrogate argument name": b'{"id": 1, "cmd": "echo", "args": {"\\ud800": 1}}',
    "lone surrogate argument": b'{"id": 1, "cmd": "echo", "args": {"text": "\\ud800"}}',
    "NUL in the command": b'{"id": 1, "cmd": "info\\u0000"}',
    "truncated": b'{"id": 1, "cmd": "in',
}


@pytest.mark.parametrize("line", HOSTILE_LINES.values(), ids=HOSTILE_LINES.keys())
def test_hostile_lines_get_invalid_argument_no_traceback_and_the_connection_stays_usable(line):
    """Each line gets one invalid_argument answer, the command never runs,
    nothing is logged as a failure (the conftest fixture), and the next
    request on the same connection is answered."""
    commands, protocol, transport = connect()
    protocol.dataReceived(line + b"\n")
    send(protocol, {"id": 99, "cmd": "info"})
    got = responses(transport)
    assert [(r["status"], r.get("code")) for r in got] == [("error", "invalid_argument"), ("ok", None)], got
    assert got[1]["id"] == 99 and got[0]["hint"]
    assert commands.calls == [("info",)]
    assert not transport.disconnecting


def test_the_integer_and_depth_limits_are_inclusive():
    commands, protocol, transport = connect()
    biggest = 2**64 - 1
    protocol.dataReceived(b'{"id": %d, "cmd": "echo", "args": {"text": "a", "repeat": 1}}\n' % biggest)
    protocol.dataReceived(b'{"id": %d, "cmd": "info"}\n' % -biggest)
    nested = b"[" * 30 + b"]" * 30  # envelope, args and 30 arrays: 32 levels
    protocol.dataReceived(b'{"id": 3, "cmd": "echo", "args": {"text": ' + nested + b"}}\n")
    assert [(r["id"], r["status"]) for r in responses(transport)] == [(biggest, "ok"), (-biggest, "ok"), (3, "ok")]


def test_a_read_full_of_blank_lines_costs_linear_time():
    # Cutting each line by copying the rest of the buffer made this
    # quadratic: ~8 s for 512 KiB of newlines, ~0.2 s now.
    commands, protocol, transport = connect()
    started = time.perf_counter()
    protocol.dataReceived(b"\n" * (512 * 1024))
    assert time.perf_counter() - started < 3.0
    send(protocol, {"id": 1, "cmd": "info"})
    assert responses(transport)[0]["status"] == "ok"


def test_blank_lines_are_ignored():
    commands, protocol, transport = connect()
    protocol.dataReceived(b"\n  \n")
    assert transport.value() == b""


def test_over_long_line_is_rejected_once_and_skipped():
    commands, protocol, transport = connect()
    protocol.dataReceived(b"x" * (MAX_REQUEST_LINE + 10))
    protocol.dataReceived(b"y" * 1000 + b"\n")
    send(protocol, {"id": 1, "cmd": "info"})
    got = responses(transport)
    assert [(r["id"], r["status"]) for r in got] == [(None, "error"), (1, "ok")]
    assert "64 KiB" in got[0]["hint"]


def test_line_of_exactly_the_limit_is_accepted():
    commands, protocol, transport = connect()
    head = b'{"id": 1, "cmd": "echo", "args": {"text": "'
    tail = b'"}}'
    text = b"a" * (MAX_REQUEST_LINE - 1 - len(head) - len(tail))
    protocol.dataReceived(head + text + tail + b"\n")
    assert responses(transport)[0]["status"] == "ok"
    _, protocol, transport = connect()
    protocol.dataReceived(head + text + b"a" + tail + b"\n")
    assert responses(transport)[0]["code"] == "invalid_argument"


def test_answers_after_disconnect_are_dropped():
    commands, protocol, transport = connect()
    send(protocol, {"id": 1, "cmd": "lookup", "args": {"target": "t"}})
    protocol.connectionLost(None)
    commands.pending["t"].callback({"hostname": "t"})
    assert transport.value() == b""


def test_the_table_names_the_commands():
    assert Dispatcher(FakeCommands().table()).names() == [
        "broken", "echo", "info", "lookup", "missing", "nothing", "typo", "unencodable", "wrong_type",
    ]


def test_the_table_holds_only_commands():
    with pytest.raises(TypeError):
        Dispatcher({"info": FakeCommands().info})


def test_error_without_hint_sends_null_hint():
    def fail():
        raise PilotError("plain failure")

    _, protocol, transport = connect({"fail": Command(fail)})
    send(protocol, {"id": 1, "cmd": "fail"})
    assert responses(transport)[0] == {
        "id": 1, "status": "error", "code": "internal", "message": "plain failure", "hint": None,
    }
