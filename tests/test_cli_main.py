"""pilotctl: argument parsing, output shapes, exit codes, init, and commands against a fake daemon."""

import io
import json
import os
import socket
import stat
import threading

import pytest

from pilotproto.cli.main import main, render_daemon_start, render_info
from pilotproto.identity import load_or_create
from pilotproto.node.config import CONFIG_FILE, CONTROL_SOCKET

INFO = {
    "hostname": "agent-a",
    "address": "0:A91F.0000.7C2E",
    "public_key": "c2VjcmV0IGtleSBieXRlcyBnbyBoZXJlLi4uLi4uLi4=",
    "public": False,
    "beacon": "127.0.0.1:9000",
    "registered": True,
    "reflexive_endpoint": "203.0.113.5:4000",
    "local_endpoint": "10.0.0.2:4000",
    "nat_type": "full_cone",
    "uptime_s": 12.5,
    "pid": 4242,
    "home": "/somewhere",
    "version": "0.1.0",
}


class FakeDaemon:
    """A control socket served from a thread; answers each cmd with a canned response."""

    def __init__(self, home, answers):
        self.path = os.path.join(home, CONTROL_SOCKET)
        self.answers = answers
        self.requests = []
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(8)
        self._listener.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(2)
                buffer = b""
                while b"\n" not in buffer:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    buffer += chunk
                if b"\n" not in buffer:
                    continue
                request = json.loads(buffer.split(b"\n")[0])
                self.requests.append(request)
                answer = self.answers.get(request["cmd"], {"status": "error", "code": "invalid_argument", "message": "?"})
                if callable(answer):
                    answer = answer(request)
                if answer is None:
                    continue  # hang up without answering
                conn.sendall(json.dumps({"id": request["id"], **answer}).encode() + b"\n")

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self._listener.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


@pytest.fixture
def home(tmp_path):
    return str(tmp_path / "home")


@pytest.fixture
def fake_daemon(home):
    os.makedirs(home, mode=0o700, exist_ok=True)
    daemons = []

    def start(answers):
        daemon = FakeDaemon(home, answers)
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        daemon.close()


def run(*argv):
    stdout, stderr = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=stdout, stderr=stderr)
    return code, stdout.getvalue(), stderr.getvalue()


def run_json(*argv):
    code, out, err = run(*argv)
    lines = out.splitlines()
    assert len(lines) == 1, out
    return code, json.loads(lines[0])


# -- global options, usage errors, exit codes ---------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "--home", "{home}", "info"],
        ["info", "--json", "--home", "{home}"],
        ["--home", "{home}", "info", "--json"],
        ["--json", "info", "--home", "{home}"],
    ],
)
def test_global_options_before_or_after_the_command(home, argv):
    code, doc = run_json(*[a.format(home=home) for a in argv])
    assert code == 3  # no daemon: LSB's "program is not running"
    assert doc["status"] == "error" and doc["code"] == "not_running"
    assert home in doc["message"]
    assert set(doc) == {"status", "code", "message", "hint"}


def test_home_falls_back_to_pilot_home(monkeypatch, home):
    monkeypatch.setenv("PILOT_HOME", home)
    code, doc = run_json("--json", "info")
    assert home in doc["message"]


def test_home_flag_beats_pilot_home(monkeypatch, home, tmp_path):
    monkeypatch.setenv("PILOT_HOME", str(tmp_path / "other"))
    code, doc = run_json("--json", "--home", home, "info")
    assert home in doc["message"]


def test_human_error_goes_to_stderr_with_hint(home):
    code, out, err = run("--home", home, "info")
    assert code == 3
    assert out == ""
    assert err.startswith("error: no pilot daemon is running")
    assert "\nhint: Start it with: pilotctl daemon start" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--json"],
        ["--json", "fly"],
        ["--json", "lookup"],
        ["--json", "daemon"],
        ["--json", "daemon", "start", "--port", "abc"],
        ["--json", "init"],
        ["init", "--hostname", "x", "--bogus", "--json"],
    ],
)
def test_usage_errors_are_invalid_argument_json(argv, home):
    code, doc = run_json(*argv, "--home", home) if argv[-1] != "--json" else run_json(*argv)
    assert code == 2
    assert doc["status"] == "error" and doc["code"] == "invalid_argument"
    assert doc["hint"].startswith("usage: pilotctl")


def test_usage_error_in_human_mode(home):
    code, out, err = run("lookup")
    assert code == 2
    assert out == ""
    assert "error: the following arguments are required: NAME_OR_ADDRESS" in err


def test_help_and_version_exit_zero():
    code, out, _ = run("--help")
    assert code == 0 and "daemon" in out
    code, out, _ = run("--version")
    assert code == 0 and out.startswith("pilotctl ")


def test_keyboard_interrupt_is_reported(monkeypatch, home):
    import pilotproto.cli.main as cli

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.ControlClient, "call", interrupt)
    code, doc = run_json("--json", "--home", home, "info")
    assert code == 130 and doc["code"] == "interrupted"


def test_internal_error_prints_traceback_to_stderr_only(monkeypatch, home):
    import pilotproto.cli.main as cli

    def explode(*args, **kwargs):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(cli.ControlClient, "call", explode)
    code, out, err = run("--json", "--home", home, "info")
    assert code == 1
    assert json.loads(out) == {
        "status": "error",
        "code": "internal",
        "message": "internal error: oops",
        "hint": "This is a bug in pilotctl; please report it with the traceback above.",
    }
    assert "ZeroDivisionError" in err


# -- init ----------------------------------------------------------------------------


def test_init_creates_home_identity_and_config(home):
    code, doc = run_json("--json", "--home", home, "init", "--hostname", "agent-a", "--beacon", "127.0.0.1:9000")
    assert code == 0 and doc["status"] == "ok"
    data = doc["data"]
    assert data["hostname"] == "agent-a" and data["beacon"] == "127.0.0.1:9000"
    assert data["public"] is False and data["created"] is True
    assert data["address"] == str(load_or_create(home).address)
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    with open(os.path.join(home, CONFIG_FILE)) as f:
        assert json.load(f) == {"hostname": "agent-a", "beacon": "127.0.0.1:9000", "public": False, "port": 0, "auto_approve": False}


def test_init_again_keeps_identity_and_updates_config(home):
    _, first = run_json("--json", "--home", home, "init", "--hostname", "agent-a", "--beacon", "127.0.0.1:9000")
    _, second = run_json("--json", "--home", home, "init", "--hostname", "agent-b", "--public")
    assert second["data"]["address"] == first["data"]["address"]
    assert second["data"]["created"] is False
    assert second["data"]["hostname"] == "agent-b"
    assert second["data"]["beacon"] == "127.0.0.1:9000"  # kept
    assert second["data"]["public"] is True
    _, third = run_json("--json", "--home", home, "init", "--hostname", "agent-b", "--no-public")
    assert third["data"]["public"] is False


def test_init_human_output(home):
    code, out, err = run("--home", home, "init", "--hostname", "agent-a")
    assert code == 0 and err == ""
    assert out.startswith(f"Created {home}\nAddress:  0:")
    assert "Hostname: agent-a" in out and "private" in out


@pytest.mark.parametrize(
    "flags",
    [
        ["--hostname", "Bad_Name"],
        ["--hostname", "-dash"],
        ["--hostname", "ok", "--beacon", "host:99999"],
        ["--hostname", "ok", "--beacon", ":9000"],
    ],
)
def test_init_rejects_bad_values_and_writes_nothing(home, flags):
    code, doc = run_json("--json", "--home", home, "init", *flags)
    assert code == 2 and doc["code"] == "invalid_argument"
    assert doc["hint"]
    assert not os.path.exists(home)


def test_init_reports_corrupt_identity(home):
    os.makedirs(home, mode=0o700)
    with open(os.path.join(home, "identity.json"), "w") as f:
        f.write("{not json")
    os.chmod(os.path.join(home, "identity.json"), 0o600)
    code, doc = run_json("--json", "--home", home, "init", "--hostname", "agent-a")
    assert code == 1 and doc["code"] == "corrupt_state"
    assert open(os.path.join(home, "identity.json")).read() == "{not json"


# -- info and lookup against a fake daemon -------------------------------------------------


def test_info_passes_the_daemon_data_through(home, fake_daemon):
    daemon = fake_daemon({"info": {"status": "ok", "data": INFO}})
    code, doc = run_json("info", "--json", "--home", home)
    assert (code, doc) == (0, {"status": "ok", "data": INFO})
    assert daemon.requests[0]["cmd"] == "info" and daemon.requests[0]["args"] == {}


def test_info_human_output(home, fake_daemon):
    fake_daemon({"info": {"status": "ok", "data": INFO}})
    code, out, err = run("--home", home, "info")
    assert code == 0
    assert "Hostname:         agent-a" in out
    assert "Public endpoint:  203.0.113.5:4000" in out
    assert "Registered:       yes" in out
    assert "Uptime:           12s" in out


def test_lookup_sends_target_and_renders(home, fake_daemon):
    found = {
        "hostname": "agent-b",
        "address": "0:0000.0000.0001",
        "public_key": "a2V5",
        "endpoints": ["127.0.0.1:5000", "10.0.0.3:5000"],
        "public": True,
    }
    daemon = fake_daemon({"lookup": {"status": "ok", "data": found}})
    code, out, _ = run("--home", home, "lookup", "agent-b")
    assert code == 0
    assert out.splitlines()[0] == "agent-b  0:0000.0000.0001  (public)"
    assert "127.0.0.1:5000, 10.0.0.3:5000" in out
    assert daemon.requests[0]["args"] == {"target": "agent-b"}


def test_lookup_normalises_an_address_target(home, fake_daemon):
    daemon = fake_daemon({"lookup": {"status": "ok", "data": {"hostname": "x"}}})
    run_json("--json", "--home", home, "lookup", "0:a91f.0000.7c2e")
    assert daemon.requests[0]["args"] == {"target": "0:A91F.0000.7C2E"}


def test_lookup_not_found_comes_back_as_the_daemons_error(home, fake_daemon):
    fake_daemon(
        {"lookup": {"status": "error", "code": "not_found", "message": "agent-z is not known", "hint": "Check it."}}
    )
    code, doc = run_json("--json", "--home", home, "lookup", "agent-z")
    assert code == 1
    assert doc == {"status": "error", "code": "not_found", "message": "agent-z is not known", "hint": "Check it."}


def test_lookup_rejects_a_bad_target_without_asking_the_daemon(home, fake_daemon):
    daemon = fake_daemon({})
    code, doc = run_json("--json", "--home", home, "lookup", "Not A Name")
    assert code == 2 and doc["code"] == "invalid_argument"
    assert daemon.requests == []


def test_daemon_hanging_up_is_not_running(home, fake_daemon):
    fake_daemon({"info": lambda request: None})
    code, doc = run_json("--json", "--home", home, "info")
    assert code == 3 and doc["code"] == "not_running"
    assert "closed" in doc["message"]


# -- renderers -------------------------------------------------------------------------


def test_daemon_start_rendering_matches_the_docs():
    assert render_daemon_start(INFO) == (
        "STUN: public endpoint 203.0.113.5:4000\nNAT type: full_cone\nRegistered as agent-a (0:A91F.0000.7C2E)"
    )
    no_stun = dict(INFO, reflexive_endpoint=None, nat_type=None)
    assert render_daemon_start(no_stun).splitlines()[:2] == [
        "STUN: no public endpoint discovered (yet)",
        "NAT type: unknown",
    ]


def test_info_rendering_skips_missing_fields_and_shows_nulls():
    text = render_info({"hostname": "a", "reflexive_endpoint": None, "public": True})
    assert text.splitlines() == ["Hostname:         a", "Public:           yes", "Public endpoint:  -"]
