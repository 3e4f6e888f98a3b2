"""
``pilotctl forward`` and ``pilotctl expose`` through two real daemons, with a
real ``python -m http.server`` behind the expose and urllib (curl too, when
installed) through the forward: a file hash-exact, 50 concurrent requests,
a port with nothing behind it failing fast with a reset, the forwards
outliving the CLI and a daemon restart, ``--allow``; and ``pilotctl listen``.
"""

import concurrent.futures
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from .conftest import PILOTCTL, environment, pilotctl, wait_for

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def pair(daemons):
    a = daemons.start("agent-a")
    b = daemons.start("agent-b")
    assert pilotctl(a, "handshake", "agent-b", "forward tests")[0] == 0
    assert wait_for(lambda: pilotctl(b, "pending")[1]["data"]["pending"], 5)
    assert pilotctl(b, "approve", "agent-a")[0] == 0
    assert wait_for(lambda: pilotctl(a, "lookup", "agent-b")[0] == 0, 5)
    return a, b


@pytest.fixture
def site(tmp_path):
    """``python -m http.server`` on loopback serving a 4 MiB random file and a small one."""
    root = tmp_path / "site"
    root.mkdir()
    blob = os.urandom(4 * MIB)
    (root / "blob.bin").write_bytes(blob)
    (root / "small.txt").write_bytes(b"small file\n" * 100)
    port = free_tcp_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )

    def up():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False

    assert wait_for(up, 10)
    yield port, hashlib.sha256(blob).hexdigest()
    proc.kill()
    proc.wait(5)


def fetch(port: int, path: str, timeout=30) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return r.read()


def forward(home, local, target):
    code, doc = pilotctl(home, "forward", local, target)
    assert code == 0, doc
    return doc["data"]


def test_http_through_forward_and_expose(pair, site):
    a, b = pair
    http_port, digest = site
    code, doc = pilotctl(b, "expose", "80", f"127.0.0.1:{http_port}")
    assert code == 0, doc
    assert doc["data"]["port"] == 80 and doc["data"]["listening"]
    local = forward(a, "0", "agent-b:80")["local_port"]
    assert local > 0

    # The CLI that asked has exited: the daemon serves the forward.
    assert hashlib.sha256(fetch(local, "/blob.bin")).hexdigest() == digest
    if shutil.which("curl"):
        out = subprocess.run(["curl", "-sS", "--max-time", "30", f"http://127.0.0.1:{local}/blob.bin"],
                             capture_output=True, timeout=40)
        assert out.returncode == 0, out.stderr
        assert hashlib.sha256(out.stdout).hexdigest() == digest

    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        bodies = list(pool.map(lambda _: fetch(local, "/small.txt", timeout=60), range(50)))
    assert all(body == b"small file\n" * 100 for body in bodies)

    listed = pilotctl(a, "forward", "--list")[1]["data"]["forwards"]
    assert len(listed) == 1 and listed[0]["target"] == "agent-b" and listed[0]["port"] == 80
    assert listed[0]["total"] >= 51 and listed[0]["bytes_received"] >= 4 * MIB
    assert wait_for(lambda: pilotctl(a, "forward", "--list")[1]["data"]["forwards"][0]["active"] == 0, 10)
    exposed = pilotctl(b, "expose", "--list")[1]["data"]["exposes"]
    assert exposed[0]["total"] >= 51 and exposed[0]["bytes_sent"] >= 4 * MIB and exposed[0]["failed"] == 0

    # pilotctl status shows both sides.
    status = pilotctl(a, "status")[1]["data"]
    assert status["forwards"][0]["local_port"] == local
    assert pilotctl(b, "status")[1]["data"]["exposes"][0]["port"] == 80


def test_a_port_with_nothing_behind_it_fails_fast_with_a_reset(pair):
    a, _ = pair
    local = forward(a, "0", "agent-b:81")["local_port"]
    for _ in range(2):  # the first also opens the session
        started = time.monotonic()
        with pytest.raises((ConnectionResetError, urllib.error.URLError, ConnectionError)) as caught:
            fetch(local, "/", timeout=10)
        elapsed = time.monotonic() - started
    assert elapsed < 2.0, elapsed
    assert "reset" in str(caught.value).lower() or isinstance(caught.value, ConnectionResetError), caught.value
    entry = pilotctl(a, "forward", "--list")[1]["data"]["forwards"][0]
    assert entry["failed"] == 2 and entry["last_error"]["code"] == "connection_refused", entry
    assert "expose" in entry["last_error"]["message"] + (entry["last_error"]["hint"] or "")


def test_forwards_come_back_after_a_daemon_restart(pair, site):
    a, b = pair
    http_port, digest = site
    assert pilotctl(b, "expose", "80", str(http_port))[0] == 0
    local = forward(a, "0", "agent-b:80")["local_port"]
    for home in (a, b):
        code, doc = pilotctl(home, "daemon", "stop")
        assert code == 0, doc
        code, doc = pilotctl(home, "daemon", "start")
        assert code == 0, doc
    saved = json.load(open(os.path.join(a, "config.json")))
    assert saved["forwards"] == [{"bind": "127.0.0.1", "local_port": local, "target": "agent-b", "port": 80}]
    assert json.load(open(os.path.join(b, "config.json")))["exposes"][0]["tcp_port"] == http_port
    assert hashlib.sha256(fetch(local, "/blob.bin", timeout=60)).hexdigest() == digest

    # Removed, it is gone from the daemon and from the config.
    code, doc = pilotctl(a, "forward", "--remove", str(local))
    assert code == 0, doc
    assert pilotctl(a, "forward", "--list")[1]["data"]["forwards"] == []
    assert "forwards" not in json.load(open(os.path.join(a, "config.json")))
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", local), timeout=2).close()


def test_a_taken_port_is_refused_and_nothing_is_saved(pair):
    a, _ = pair
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, doc = pilotctl(a, "forward", str(port), "agent-b:80")
    assert code == 1 and doc["code"] == "port_in_use" and doc["hint"], doc
    assert "forwards" not in json.load(open(os.path.join(a, "config.json")))
    code, doc = pilotctl(a, "forward", "8080", "not a peer:80")
    assert code == 2 and doc["code"] == "invalid_argument", doc


def test_a_restored_forward_whose_port_is_taken_is_listed_with_its_error(pair):
    a, _ = pair
    local = forward(a, "0", "agent-b:80")["local_port"]
    assert pilotctl(a, "daemon", "stop")[0] == 0
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", local))
        taken.listen(1)
        code, doc = pilotctl(a, "daemon", "start")
        assert code == 0, doc
        entry = pilotctl(a, "forward", "--list")[1]["data"]["forwards"][0]
    assert not entry["listening"] and entry["error"]["code"] == "port_in_use", entry
    assert "cannot listen" in open(os.path.join(a, "daemon.log")).read()


def test_allow_refuses_other_peers(pair, site):
    a, b = pair
    http_port, _ = site
    stranger = "0:0000.0000.0009"
    code, doc = pilotctl(b, "expose", "80", str(http_port), "--allow", stranger)
    assert code == 0, doc
    assert doc["data"]["allow"] == [{"address": stranger, "name": None}]
    local = forward(a, "0", "agent-b:80")["local_port"]
    with pytest.raises((ConnectionResetError, urllib.error.URLError, ConnectionError)):
        fetch(local, "/small.txt", timeout=10)
    assert pilotctl(b, "expose", "--list")[1]["data"]["exposes"][0]["refused"] == 1

    # Allowed by name: the name is resolved to agent-a's address through trust.
    assert pilotctl(b, "expose", "--remove", "80")[0] == 0
    code, doc = pilotctl(b, "expose", "80", str(http_port), "--allow", "agent-a")
    assert code == 0, doc
    address = pilotctl(a, "info")[1]["data"]["address"]
    assert doc["data"]["allow"] == [{"address": address, "name": "agent-a"}]
    assert fetch(local, "/small.txt") == b"small file\n" * 100


def test_listen_prints_what_arrives(pair):
    a, b = pair
    proc = subprocess.Popen(PILOTCTL + ["--home", b, "--json", "listen", "4000", "--count", "1"],
                            env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def sent():
            code, doc = pilotctl(a, "send", "agent-b", "4000", "--data", "hello listener", timeout=30)
            return code == 0
        assert wait_for(sent, 10, interval=0.3)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    events = [json.loads(line) for line in out.splitlines()]
    assert [e.get("event") for e in events[:-1]] == ["stream", "data", "end"], out
    assert events[0]["peer"] == "agent-a" and events[1]["text"] == "hello listener"
    assert events[-1]["data"] == {"port": 4000, "streams": 1, "bytes": len("hello listener")}
