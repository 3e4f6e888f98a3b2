"""
Issue 10, in process: honest exit codes (with what was found kept in
``"data"``), ``pilotctl status``, progress lines only on a terminal, the lab
matrix printing each pair once and failing when a pair fails, hints that
name real commands, and the daemon's one-line start errors read back.
"""

import ast
import io
import os
import pathlib
import re

import pytest

from pilotproto import tap
from pilotproto.cli import daemon as daemon_control
from pilotproto.cli.main import build_parser
from pilotproto.cli.output import Output, Progress
from pilotproto.errors import InvalidArgument, PilotError
from pilotproto.identity import load_or_create
from pilotproto.node.config import CONFIG_FILE, NodeConfig

from test_cli_main import INFO, FakeDaemon, run, run_json

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "pilotproto"


@pytest.fixture
def home(tmp_path):
    path = str(tmp_path / "home")
    os.makedirs(path, mode=0o700)
    return path


@pytest.fixture
def fake_daemon(home):
    daemons = []

    def start(answers):
        daemons.append(FakeDaemon(home, answers))
        return daemons[-1]

    yield start
    for daemon in daemons:
        daemon.close()


UNREGISTERED = dict(INFO, registered=False, beacon_error={"code": "unavailable", "message": "cannot resolve the beacon's name nohost"})
PEER = {
    "hostname": "agent-b", "address": "0:0000.0000.0002", "public_key": "a2V5", "state": "up", "path": "punched",
    "endpoint": "203.0.113.9:4000", "rtt_ms": 12.5, "bytes_sent": 2048, "bytes_received": 3 * 1024 * 1024,
}
PENDING = {"pending": [{"hostname": "agent-c", "address": "0:0000.0000.0003", "public_key": "a2V5", "reason": "share results",
                        "received_at": 1.0, "expires_at": 2.0}],
           "outgoing": [{"target": "agent-d", "state": "sent", "reason": "hi", "sent_at": 1.0}]}


# -- exit codes: the command ran, but what it was asked did not happen ----------------------


def test_daemon_status_of_an_unregistered_daemon_is_an_error_that_keeps_the_status(home, fake_daemon):
    fake_daemon({"info": {"status": "ok", "data": UNREGISTERED}})
    code, doc = run_json("--json", "--home", home, "daemon", "status")
    assert code == 1 and doc["status"] == "error" and doc["code"] == "not_registered"
    assert "nohost" in doc["message"] and doc["hint"]
    assert doc["data"]["pid"] == INFO["pid"] and doc["data"]["registered"] is False
    # For a person: the status on stdout, the error on stderr.
    code, out, err = run("--home", home, "daemon", "status")
    assert code == 1 and "Not registered yet" in out and err.startswith("error: the daemon runs but is not registered")


def test_ping_without_a_single_reply_fails_and_keeps_what_was_sent(home, fake_daemon):
    summary = {"target": "agent-b", "address": "0:0000.0000.0002", "sent": 2, "received": 0, "loss_pct": 100.0,
               "avg_ms": None, "replies": [None, None], "path": "relay"}
    fake_daemon({"ping": {"status": "ok", "data": summary}})
    code, doc = run_json("--json", "--home", home, "ping", "agent-b", "--count", "2")
    assert code == 1 and doc["code"] == "timeout" and doc["data"]["sent"] == 2


# -- status ------------------------------------------------------------------------------------


def test_status_shows_node_beacon_peers_and_pending_on_one_screen(home, fake_daemon):
    fake_daemon({
        "info": {"status": "ok", "data": INFO},
        "peers": {"status": "ok", "data": {"peers": [PEER]}},
        "pending": {"status": "ok", "data": PENDING},
    })
    code, out, err = run("--home", home, "status")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("agent-a  0:A91F.0000.7C2E  (private)  up 12s")
    assert "beacon 127.0.0.1:9000 over udp: registered; public endpoint 203.0.113.5:4000; NAT full_cone" in out
    row = next(line for line in lines if line.startswith("agent-b"))
    assert "punched" in row and "12.5ms" in row and "2.0KiB" in row and "3.0MiB" in row
    assert "request from agent-c" in out and "pilotctl approve agent-c" in out
    assert "waiting for agent-d to approve" in out
    code, doc = run_json("--json", "--home", home, "status")
    assert code == 0 and doc["data"]["node"] == INFO and doc["data"]["peers"] == [PEER]
    assert doc["data"]["pending"] == PENDING["pending"] and doc["data"]["outgoing"] == PENDING["outgoing"]


def test_status_of_an_unregistered_node_fails_with_the_beacon_error(home, fake_daemon):
    fake_daemon({
        "info": {"status": "ok", "data": UNREGISTERED},
        "peers": {"status": "ok", "data": {"peers": []}},
        "pending": {"status": "ok", "data": {"pending": [], "outgoing": []}},
    })
    code, doc = run_json("--json", "--home", home, "status")
    assert code == 1 and doc["code"] == "not_registered" and "nohost" in doc["message"]
    assert doc["data"]["node"]["registered"] is False


def test_status_without_a_daemon_exits_3(home):
    code, doc = run_json("--json", "--home", home, "status")
    assert code == 3 and doc["code"] == "not_running"


# -- progress: a line on a terminal, nothing when piped or --json --------------------------------


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_goes_only_to_a_terminal_and_never_with_json():
    assert Output(False, io.StringIO(), Terminal()).progress_stream() is not None
    assert Output(False, io.StringIO(), io.StringIO()).progress_stream() is None
    assert Output(True, io.StringIO(), Terminal()).progress_stream() is None


def test_progress_line_has_rate_and_eta_and_is_wiped_at_the_end():
    now = [0.0]
    screen = Terminal()
    progress = Progress(screen, 10 * 1024 * 1024, label="to agent-b", clock=lambda: now[0])
    now[0] = 2.0
    progress.update(4 * 1024 * 1024)
    line = screen.getvalue().split("\r\033[K")[-1]
    assert line == "to agent-b   40%  4.0/10.0 MiB  2.0 MiB/s  ETA 0:03"
    now[0] = 2.01
    progress.update(5 * 1024 * 1024)  # too soon after the last: not redrawn
    assert screen.getvalue().count("\r") == 1
    bits = Progress(None, 1, bits=True).line(1_000_000, 1.0)
    assert "8.0 Mbit/s" in bits
    progress.done()
    assert screen.getvalue().endswith("\r\033[K")
    silent = Progress(None, 100)
    silent.update(50)
    silent.done()


# -- the lab matrix: each pair once, and a failed pair fails the command -----------------------------


def _fake_matrix(monkeypatch, results):
    import pilotproto.lab
    import pilotproto.lab.matrix

    def run_matrix(kinds, loss=0.0, progress=lambda r: None, **kw):
        for r in results:
            progress(r)
        return list(results)

    monkeypatch.setattr(pilotproto.lab, "check_prerequisites", lambda: None)
    monkeypatch.setattr(pilotproto.lab.matrix, "run_matrix", run_matrix)


def _pairs():
    from pilotproto.lab.matrix import PairResult

    good = PairResult("full-cone", "symmetric", "direct", path="punched", replies=4, sent=4)
    bad = PairResult("symmetric", "symmetric", "relay", path="punched", replies=4, sent=4)
    return good, bad


def test_lab_matrix_with_a_failed_pair_exits_non_zero_and_keeps_the_table(monkeypatch, home):
    good, bad = _pairs()
    _fake_matrix(monkeypatch, [good, bad])
    code, doc = run_json("--json", "--home", home, "lab", "matrix", "--kinds", "full-cone,symmetric")
    assert code == 1 and doc["status"] == "error" and doc["code"] == "check_failed"
    assert "1 of 2 pairs" in doc["message"] and "symmetric<->symmetric" in doc["message"]
    assert doc["data"]["ok"] is False and len(doc["data"]["pairs"]) == 2


def test_lab_matrix_prints_each_pair_once(monkeypatch, home):
    good, bad = _pairs()
    _fake_matrix(monkeypatch, [good, bad])
    code, out, err = run("--home", home, "lab", "matrix", "--kinds", "full-cone,symmetric")
    assert code == 1
    both = out + err
    assert both.count("full-cone  symmetric") == 1, both
    assert len(re.findall(r"symmetric\s+symmetric\s+relay", both)) == 1, both
    _fake_matrix(monkeypatch, [good])
    code, out, err = run("--home", home, "lab", "matrix", "--kinds", "full-cone,symmetric")
    assert code == 0 and (out + err).count("full-cone  symmetric") == 1


def test_lab_without_root_names_the_pilotctl_to_run_under_sudo(monkeypatch, home):
    import pilotproto.lab.netns

    monkeypatch.setattr(pilotproto.lab.netns.os, "geteuid", lambda: 1000)
    monkeypatch.setattr("sys.argv", ["/opt/venv/bin/pilotctl", "lab", "matrix"])
    code, doc = run_json("--json", "--home", home, "lab", "matrix")
    assert code == 1 and doc["code"] == "lab_error"
    assert "sudo /opt/venv/bin/pilotctl lab matrix" in doc["hint"]


# -- hints name commands that exist -------------------------------------------------------------


def _string_constants():
    """Every string in the package a user may read (docstrings are for programmers)."""
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                yield path, node.value


def test_every_pilotctl_command_a_message_names_exists():
    parser = build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)
    named = {}
    for path, text in _string_constants():
        for word in re.findall(r"\bpilotctl ([a-z][a-z-]*)", text):
            named.setdefault(word, path.relative_to(PACKAGE.parent))
    prose = {"as"}  # "run pilotctl as the user that ..."
    missing = {word: str(path) for word, path in named.items() if word not in commands | prose}
    assert not missing, f"messages name pilotctl commands that do not exist: {missing}"


# -- daemon start: the settings travel on the command line, and are saved only on success ---------------


def test_the_daemon_gets_every_setting_on_its_command_line(home):
    load_or_create(home)
    NodeConfig(hostname="saved", beacon="10.0.0.1:9000", public=True, auto_approve=True).save(home)
    config = NodeConfig(hostname="agent-a", beacon="127.0.0.1:7000", public=False, port=0, auto_approve=False,
                        beacon_tls="127.0.0.1:7443", beacon_fingerprint="ab" * 32)
    options = tap.Options()
    options.parseOptions(["node", *daemon_control.node_arguments(home, config)])
    sub = options.subOptions
    assert (sub["hostname"], sub["beacon"], sub["port"], sub["beacon-tls"]) == ("agent-a", ["127.0.0.1:7000"], 0, ["127.0.0.1:7443"])
    # A saved --public / --auto-approve is overridden, not inherited.
    assert tap._either(sub, "public", "private") is False
    assert tap._either(sub, "auto-approve", "no-auto-approve") is False


def test_a_busy_port_is_refused_before_anything_starts_or_is_saved(home):
    import socket

    load_or_create(home)
    NodeConfig(hostname="agent-a", beacon="127.0.0.1:9000").save(home)
    before = open(os.path.join(home, CONFIG_FILE)).read()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("", 0))
        port = taken.getsockname()[1]
        code, doc = run_json("--json", "--home", home, "daemon", "start", "--port", str(port))
    assert code == 1 and doc["code"] == "port_in_use" and str(port) in doc["message"]
    assert "--port" in doc["hint"]
    assert open(os.path.join(home, CONFIG_FILE)).read() == before


def test_a_start_error_the_daemon_logged_in_one_line_is_reported_as_its_error(home):
    from test_cli_daemon import FakeClock, FakeProcess, launch

    error = PilotError.from_dict({"code": "port_in_use", "message": "cannot listen on UDP port 4000", "hint": "Choose another --port."})
    with open(os.path.join(home, "daemon.log"), "w") as log:
        log.write("2026-01-01T00:00:00+0000 [-] starting up\n")
        log.write(f"2026-01-01T00:00:00+0000 [stderr#error] {tap.format_start_error('node', error)}\n")
    with pytest.raises(PilotError) as raised:
        daemon_control.wait_until_registered(launch(home, FakeProcess(exit_after=0)), 1.0, None, FakeClock())
    assert raised.value.code == "port_in_use"
    assert raised.value.message == "the daemon could not start: cannot listen on UDP port 4000"
    assert raised.value.hint.startswith("Choose another --port.") and "Nothing was saved" in raised.value.hint


def test_start_errors_round_trip_through_one_log_line():
    line = tap.format_start_error("beacon", InvalidArgument("bad\nthing", hint="do (this) instead"))
    assert "\n" not in line
    back = tap.parse_start_error("2026 [stderr#error] " + line)
    assert (back.code, back.message, back.hint) == ("invalid_argument", "bad thing", "do (this) instead")
    assert tap.parse_start_error("an ordinary log line") is None


def test_cannot_listen_becomes_port_in_use():
    import errno

    from twisted.internet.error import CannotListenError

    error = tap.as_start_error(CannotListenError("127.0.0.1", 9000, OSError(errno.EADDRINUSE, "Address already in use")))
    assert error.code == "port_in_use" and "127.0.0.1:9000" in error.message
    assert tap.as_start_error(ZeroDivisionError()) is None  # a bug keeps its traceback


def test_a_pilot_error_behind_a_usage_error_keeps_its_code_and_hint():
    from twisted.python import usage

    from pilotproto.errors import NotFound

    try:
        try:
            raise NotFound("no such CA file", hint="Give a PEM file.")
        except PilotError as e:
            raise usage.UsageError(tap._message(e)) from None
    except usage.UsageError as wrapped:
        error = tap.as_start_error(wrapped)
    assert (error.code, error.message, error.hint) == ("not_found", "no such CA file", "Give a PEM file.")


# -- netcheck: what to check, and what the findings mean --------------------------------------------


def test_netcheck_checks_the_saved_beacon_or_the_given_ones_with_their_tls_relays():
    from pilotproto.cli.netcheck import beacon_targets

    saved = NodeConfig(beacon="beacon.example:9000", beacon_tls="relay.example:8443")
    assert beacon_targets(saved, [], None) == [
        {"beacon": ("beacon.example", 9000), "tls": ("relay.example", 8443), "tls_default": False}]
    # Another beacon on the command line does not inherit the saved one's relay.
    assert beacon_targets(saved, ["10.0.0.1:7000", "10.0.0.2"], None) == [
        {"beacon": ("10.0.0.1", 7000), "tls": ("10.0.0.1", 443), "tls_default": True},
        {"beacon": ("10.0.0.2", 9000), "tls": ("10.0.0.2", 443), "tls_default": True}]
    assert beacon_targets(NodeConfig(), [], None) == []


@pytest.mark.parametrize("nat_type, udp, tls, summary", [
    ("none", True, True, "direct to every peer that has UDP (hole punching works from here)"),
    ("full_cone", True, False, "direct to every peer that has UDP (hole punching works from here)"),
    # Birthday punching reaches symmetric NATs from port-restricted ones.
    ("port_restricted_cone", True, True, "direct to every peer that has UDP (hole punching works from here)"),
    ("symmetric", True, True, "direct to peers with no NAT or a lenient one; relay for peers behind symmetric or symmetric-sequential NATs"),
    ("udp_blocked", False, True, "relay over TCP/TLS for every peer (no UDP to the beacon; slower, but it works)"),
    ("udp_blocked", False, False, "no path to any peer: the beacon answers neither UDP nor TLS"),
])
def test_netcheck_says_what_the_nat_means_for_peers(nat_type, udp, tls, summary):
    from pilotproto.cli.netcheck import meaning

    assert meaning(nat_type, udp, tls)["summary"] == summary
