"""Daemon start/stop/status logic: waiting loops with a fake clock, pid files, signals on stand-in processes."""

import json
import os
import subprocess
import sys

import pytest

from pilotproto.cli import daemon as daemon_control
from pilotproto.cli.daemon import Launch, TWISTD_BOOTSTRAP
from pilotproto.errors import AlreadyRunning, InvalidArgument, NameTaken, NotRunning, Timeout, Unavailable
from pilotproto.identity import load_or_create
from pilotproto.node.config import CONFIG_FILE, CONTROL_SOCKET, LOG_FILE, PID_FILE, NodeConfig

from test_cli_main import INFO, FakeDaemon, run_json


class FakeClock:
    def __init__(self):
        self.now = 100.0
        self.sleeps = 0

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps += 1
        self.now += seconds


class FakeProcess:
    def __init__(self, exit_after=None, pid=4242):
        self.pid = pid
        self.polls = 0
        self.exit_after = exit_after
        self.signals = []

    def terminate(self):
        self.signals.append("TERM")

    def kill(self):
        self.signals.append("KILL")

    def wait(self, timeout=None):
        return -15

    def poll(self):
        self.polls += 1
        if self.exit_after is not None and self.polls > self.exit_after:
            return 3
        return None


class ScriptedClient:
    """Answers 'info' from a script: an exception to raise or a dict to return, one per call."""

    def __init__(self, script):
        self.script = list(script)
        self.calls = []

    def call(self, cmd, timeout=10.0, **args):
        self.calls.append((cmd, args))
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, Exception):
            raise step
        return step


@pytest.fixture
def home(tmp_path):
    path = str(tmp_path / "home")
    os.makedirs(path, mode=0o700)
    return path


def launch(home, process, beacon="127.0.0.1:9000"):
    return Launch(home, NodeConfig(hostname="agent-a", beacon=beacon), process)


# -- the twistd command line ---------------------------------------------------------


def test_twistd_argv_shape(home):
    argv = daemon_control.twistd_argv("/h/daemon.pid", "/h/daemon.log", "pilot", "node", "--home", "/h")
    assert argv == [
        sys.executable, "-c", TWISTD_BOOTSTRAP, "-n", "--pidfile", "/h/daemon.pid", "--logfile", "/h/daemon.log",
        "pilot", "node", "--home", "/h",
    ]


def test_child_environment_puts_this_pilotproto_first(monkeypatch):
    import pilotproto

    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = daemon_control.child_environment()
    first, rest = env["PYTHONPATH"].split(os.pathsep, 1)
    assert os.path.join(first, "pilotproto", "__init__.py") == pilotproto.__file__
    assert rest == "/elsewhere"


def test_log_tail_strips_twistd_prefixes(tmp_path):
    path = tmp_path / "log"
    path.write_text(
        "".join(f"2026-01-01T00:00:0{i}+0000 [stderr#error] line {i}\n" for i in range(5)) + "plain tail\n"
    )
    assert daemon_control.log_tail(str(path), lines=3) == "line 3\nline 4\nplain tail"
    assert daemon_control.log_tail(str(tmp_path / "missing")) == ""


# -- waiting for registration --------------------------------------------------------


def test_wait_returns_info_once_registered(home):
    client = ScriptedClient([NotRunning(), NotRunning(), dict(INFO, registered=False), INFO])
    got = daemon_control.wait_until_registered(launch(home, FakeProcess()), 10.0, client, FakeClock())
    assert got == dict(INFO, log=os.path.join(home, LOG_FILE))
    assert [c[0] for c in client.calls] == ["info"] * 4


def test_wait_reports_early_death_with_the_log_tail(home):
    with open(os.path.join(home, LOG_FILE), "w") as f:
        f.write("starting\nCannotListenError: Address already in use\n")
    client = ScriptedClient([NotRunning()])
    with pytest.raises(Unavailable) as e:
        daemon_control.wait_until_registered(launch(home, FakeProcess(exit_after=2)), 10.0, client, FakeClock())
    assert "exited (code 3) before registering" in e.value.message
    assert e.value.message.endswith("Address already in use")
    assert os.path.join(home, LOG_FILE) in e.value.hint


def test_wait_times_out_saying_it_keeps_trying(home):
    clock = FakeClock()
    client = ScriptedClient([dict(INFO, registered=False)])
    with pytest.raises(Timeout) as e:
        daemon_control.wait_until_registered(launch(home, FakeProcess()), 2.0, client, clock)
    assert "not registered with the beacon 127.0.0.1:9000 within 2 s" in e.value.message
    assert "keeps trying" in e.value.message
    assert "pilotctl daemon status" in e.value.hint
    assert clock.now >= 102.0 and clock.sleeps < 100


def test_wait_gives_up_at_once_when_the_beacon_refuses_and_ends_the_daemon(home):
    refused = dict(INFO, registered=False, beacon_error={"code": "name_taken", "message": "agent-a is taken"})
    process = FakeProcess()
    with pytest.raises(NameTaken) as e:
        daemon_control.wait_until_registered(launch(home, process), 10.0, ScriptedClient([refused]), FakeClock())
    assert e.value.message == "the beacon refused to register this node: agent-a is taken"
    assert e.value.hint == NameTaken.hint
    assert process.signals == ["TERM"]


def test_wait_timeout_mentions_a_transient_beacon_error(home):
    flaky = dict(INFO, registered=False, beacon_error={"code": "unavailable", "message": "beacon busy"})
    with pytest.raises(Timeout, match="last beacon error: beacon busy"):
        daemon_control.wait_until_registered(launch(home, FakeProcess()), 1.0, ScriptedClient([flaky]), FakeClock())


def test_wait_times_out_when_the_socket_never_comes_up(home):
    client = ScriptedClient([NotRunning()])
    with pytest.raises(Timeout, match="control socket did not come up"):
        daemon_control.wait_until_registered(launch(home, FakeProcess()), 1.0, client, FakeClock())


# -- prepare_start -------------------------------------------------------------------


def test_start_needs_hostname_and_beacon(home):
    with pytest.raises(InvalidArgument, match="no hostname") as e:
        daemon_control.prepare_start(home, beacon="127.0.0.1:9000")
    assert "--hostname" in e.value.hint
    with pytest.raises(InvalidArgument, match="no beacon"):
        daemon_control.prepare_start(home, hostname="agent-a")
    assert not os.path.exists(os.path.join(home, "identity.json"))


def test_start_merges_saved_settings_and_saves_nothing_yet(home):
    load_or_create(home)  # a node that ran here before (issue 9: config without a key is identity_missing)
    NodeConfig(hostname="saved", beacon="10.0.0.1:9000", public=True, port=0).save(home)
    config = daemon_control.prepare_start(home, beacon="127.0.0.1:7000", auto_approve=True)
    assert config == NodeConfig(hostname="saved", beacon="127.0.0.1:7000", public=True, auto_approve=True)
    # Saved only once the daemon has registered with these settings (issue 10).
    with open(os.path.join(home, CONFIG_FILE)) as f:
        assert json.load(f)["beacon"] == "10.0.0.1:9000"
    assert os.path.exists(os.path.join(home, "identity.json"))


def test_start_refuses_when_a_daemon_answers(home):
    daemon = FakeDaemon(home, {})
    try:
        with pytest.raises(AlreadyRunning):
            daemon_control.prepare_start(home, hostname="agent-a", beacon="127.0.0.1:9000")
    finally:
        daemon.close()


def test_daemon_start_cli_without_beacon_is_invalid_argument(home):
    code, doc = run_json("--json", "--home", home, "daemon", "start", "--hostname", "agent-a")
    assert code == 2 and doc["code"] == "invalid_argument" and "--beacon" in doc["hint"]


def test_daemon_start_cli_rejects_nonpositive_timeout(home):
    code, doc = run_json("--json", "--home", home, "daemon", "start", "--timeout", "0")
    assert code == 2 and doc["code"] == "invalid_argument"


# -- pids and stopping -------------------------------------------------------------


@pytest.fixture
def stand_in(home):
    """A sleeping process whose command line looks like a pilot twistd."""
    processes = []

    def spawn(ignore_term=False):
        code = "import signal, time\n"
        if ignore_term:
            code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        code += "print('ready', flush=True)\ntime.sleep(30)\n"
        process = subprocess.Popen(
            [sys.executable, "-c", code, "twistd", "pilot", "node"], stdout=subprocess.PIPE, text=True
        )
        assert process.stdout.readline() == "ready\n"
        processes.append(process)
        with open(os.path.join(home, PID_FILE), "w") as f:
            f.write(f"{process.pid}\n")
        return process

    yield spawn
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()


def test_stop_without_daemon_is_not_running_and_removes_stale_pid_file(home):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    with open(os.path.join(home, PID_FILE), "w") as f:
        f.write(f"{finished.pid}\n")
    with pytest.raises(NotRunning):
        daemon_control.stop_daemon(home)
    assert not os.path.exists(os.path.join(home, PID_FILE))


def test_pid_file_of_an_unrelated_process_is_never_signalled(home):
    with open(os.path.join(home, PID_FILE), "w") as f:
        f.write(f"{os.getpid()}\n")
    with pytest.raises(NotRunning):
        daemon_control.stop_daemon(home)
    assert not os.path.exists(os.path.join(home, PID_FILE))


def test_stop_asks_by_shutdown_first(home, stand_in):
    process = stand_in()

    def shutdown(request):
        process.terminate()  # what the real daemon does for itself
        return {"status": "ok", "data": {}}

    daemon = FakeDaemon(home, {"shutdown": shutdown})
    try:
        result = daemon_control.stop_daemon(home)
    finally:
        daemon.close()
    assert result == {"pid": process.pid, "stopped_by": "shutdown"}
    assert [r["cmd"] for r in daemon.requests] == ["shutdown"]
    assert process.poll() is not None
    assert not os.path.exists(os.path.join(home, PID_FILE))


def test_stop_falls_back_to_sigterm_when_the_socket_is_gone(home, stand_in):
    process = stand_in()
    result = daemon_control.stop_daemon(home)
    assert result == {"pid": process.pid, "stopped_by": "sigterm"}
    assert process.wait(5) == -15


def test_stop_falls_back_to_sigkill(home, stand_in, monkeypatch):
    monkeypatch.setattr(daemon_control, "_TERM_GRACE", 0.3)
    process = stand_in(ignore_term=True)
    result = daemon_control.stop_daemon(home)
    assert result["stopped_by"] == "sigkill"
    assert process.wait(5) == -9


def test_stop_removes_a_stale_socket(home, stand_in):
    import socket

    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(os.path.join(home, CONTROL_SOCKET))
    stale.close()
    stand_in()
    daemon_control.stop_daemon(home)
    assert not os.path.exists(os.path.join(home, CONTROL_SOCKET))


def test_pid_alive_counts_our_exited_child_as_gone_without_reaping_it():
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(7)"])
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped: a zombie
    assert daemon_control.pid_alive(child.pid) is False
    assert child.wait(5) == 7


def test_pid_alive_for_running_and_vanished_processes():
    assert daemon_control.pid_alive(os.getpid()) is True
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(5)
    assert daemon_control.pid_alive(child.pid) is False


def test_status_reports_starting_daemon_as_unavailable(home, stand_in):
    stand_in()
    with pytest.raises(Unavailable, match="does not answer"):
        daemon_control.daemon_status(home)


def test_status_cli(home):
    code, doc = run_json("--json", "--home", home, "daemon", "status")
    assert code == 3 and doc["code"] == "not_running"
    daemon = FakeDaemon(home, {"info": {"status": "ok", "data": INFO}})
    try:
        code, doc = run_json("--json", "--home", home, "daemon", "status")
    finally:
        daemon.close()
    assert code == 0 and doc["data"] == dict(INFO, log=os.path.join(home, LOG_FILE))
