"""
Real beacons and daemons, as separate processes, on loopback.

Each test gets its own beacon port and homes under tmp_path; every process is
killed at teardown, and a log holding a traceback fails the test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]
PILOTCTL = [sys.executable, "-m", "pilotproto.cli"]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("PILOT_HOME", None)
    return env


def wait_for(predicate, timeout, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


class Beacon:
    def __init__(self, workdir, port):
        self.workdir = workdir
        self.port = port
        self.process = None
        self.logs = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self):
        log = os.path.join(self.workdir, f"beacon-{len(self.logs)}.log")
        self.logs.append(log)
        self.process = subprocess.Popen(
            TWISTD + ["-n", "--pidfile=", "--logfile", log, "pilot", "beacon", "--interface", "127.0.0.1", "--port", str(self.port)],
            env=environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        assert wait_for(lambda: os.path.exists(log) and "BeaconDatagramProtocol starting" in open(log).read(), 10)

    def kill(self):
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def log_text(self) -> str:
        return "".join(open(p).read() for p in self.logs if os.path.exists(p))


def pilotctl(home, *args, timeout=30):
    """Run pilotctl --json; return (exit code, parsed JSON)."""
    proc = subprocess.run(
        PILOTCTL + ["--home", home, "--json", *args],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"pilotctl {args} printed no JSON: {proc.stdout!r} {proc.stderr!r}") from None
    return proc.returncode, doc


class Daemons:
    def __init__(self, tmp_path, beacon):
        self.tmp_path = tmp_path
        self.beacon = beacon
        self.homes = []

    def start(self, hostname, *extra):
        home = str(self.tmp_path / hostname)
        self.homes.append(home)
        code, doc = pilotctl(home, "daemon", "start", "--hostname", hostname, "--beacon", self.beacon.address, *extra)
        assert code == 0, doc
        return home

    def stop_all(self):
        for home in self.homes:
            pid_file = os.path.join(home, "daemon.pid")
            try:
                pilotctl(home, "daemon", "stop", timeout=15)
            except Exception:
                pass
            try:
                pid = int(open(pid_file).read().strip())
                os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass

    def logs(self) -> str:
        text = ""
        for home in self.homes:
            path = os.path.join(home, "daemon.log")
            if os.path.exists(path):
                text += open(path).read()
        return text


def assert_clean(log_text: str):
    for marker in ("Unhandled Error", "Traceback (most recent call last)"):
        assert marker not in log_text, log_text[-3000:]


@pytest.fixture
def beacon(tmp_path):
    b = Beacon(str(tmp_path), free_udp_port())
    b.start()
    yield b
    b.kill()
    assert_clean(b.log_text())


@pytest.fixture
def daemons(tmp_path, beacon):
    d = Daemons(tmp_path, beacon)
    yield d
    d.stop_all()
    assert_clean(d.logs())


@pytest.fixture
def second_beacon(tmp_path):
    """Another beacon (its own port and logs), for nodes given several (issue 14):
    pass ``"--beacon", second_beacon.address`` to ``daemons.start``."""
    workdir = tmp_path / "second-beacon"
    workdir.mkdir()
    b = Beacon(str(workdir), free_udp_port())
    b.start()
    yield b
    b.kill()
    assert_clean(b.log_text())
