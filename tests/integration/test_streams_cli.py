"""
Streams through two real daemons (separate processes), driven by pilotctl:
connect to echo, messages and files on port 1001, bench, refused ports, and
``twistd web --listen pilot:80`` in a third process fetched from the other
node through the HTTP agent: it exits with the reason when it cannot
listen, and listens again when its daemon restarts.
"""

import hashlib
import json
import os
import subprocess
import time

import pytest

from .conftest import PILOTCTL, TWISTD, environment, pilotctl, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def pair(daemons):
    a = daemons.start("agent-a")
    b = daemons.start("agent-b")
    assert pilotctl(a, "handshake", "agent-b", "stream tests")[0] == 0
    assert wait_for(lambda: pilotctl(b, "pending")[1]["data"]["pending"], 5)
    assert pilotctl(b, "approve", "agent-a")[0] == 0
    assert wait_for(lambda: pilotctl(a, "lookup", "agent-b")[0] == 0, 5)
    assert wait_for(lambda: pilotctl(b, "lookup", "agent-a")[0] == 0, 5)
    return a, b


def test_connect_message_to_echo(pair):
    a, b = pair
    code, doc = pilotctl(a, "connect", "agent-b", "--port", "7", "--message", "hello over pilot", timeout=60)
    assert code == 0, doc
    assert doc["data"]["received"] == "hello over pilot"
    assert doc["data"]["peer"] == "agent-b" and doc["data"]["port"] == 7


def test_connect_refused_on_a_silent_port(pair):
    a, _ = pair
    code, doc = pilotctl(a, "connect", "agent-b", "--port", "4444", "--message", "anyone?", timeout=60)
    assert code == 1 and doc["code"] == "connection_refused", doc


def test_connect_to_an_untrusted_stranger(daemons):
    a = daemons.start("agent-a")
    daemons.start("agent-c")
    code, doc = pilotctl(a, "connect", "agent-c", "--port", "7", "--message", "hi", timeout=60)
    assert code == 1 and doc["code"] in ("not_found", "not_trusted"), doc


def test_netcat_mode_pipes_stdin_to_stdout(pair):
    a, _ = pair
    proc = subprocess.run(
        PILOTCTL + ["--home", a, "connect", "agent-b", "--port", "7"],
        input=b"line one\nline two\n", capture_output=True, env=environment(), timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"line one\nline two\n"


def test_messages_on_port_1001(pair):
    a, b = pair
    for text in ("first", "second ✓"):
        code, doc = pilotctl(a, "send", "agent-b", "1001", "--data", text, timeout=60)
        assert code == 0 and doc["data"]["delivered"], doc
    code, doc = pilotctl(b, "recv", "1001", "--count", "5", "--timeout", "2")
    assert code == 0, doc
    messages = doc["data"]["messages"]
    assert [m["text"] for m in messages] == ["first", "second ✓"]
    a_address = pilotctl(a, "info")[1]["data"]["address"]
    # The receiver names the sender by hostname when its session knows it, else by address.
    assert all(m["address"] == a_address and m["from"] in ("agent-a", a_address) for m in messages), messages
    # The queue was drained; waiting for more times out with the house code.
    code, doc = pilotctl(b, "recv", "1001", "--count", "1", "--timeout", "0.5")
    assert code == 1 and doc["code"] == "timeout", doc


def test_send_and_recv_on_a_raw_port(pair):
    a, b = pair
    receiver = subprocess.Popen(
        PILOTCTL + ["--home", b, "--json", "recv", "5000", "--count", "1", "--timeout", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment(),
    )
    try:
        # Retry until the receiver's listen is in place (before it: refused).
        def sent():
            code, doc = pilotctl(a, "send", "agent-b", "5000", "--data", "raw bytes", timeout=60)
            return code == 0 or (doc.get("code") != "connection_refused" and pytest.fail(str(doc)))

        assert wait_for(sent, 15, interval=0.3)
        out, err = receiver.communicate(timeout=40)
    finally:
        receiver.kill()
    doc = json.loads(out)
    assert doc["status"] == "ok", (doc, err)
    a_address = pilotctl(a, "info")[1]["data"]["address"]
    [stream] = doc["data"]["streams"]
    assert stream["address"] == a_address and stream["peer"] in ("agent-a", a_address)
    assert stream["size"] == 9 and stream["text"] == "raw bytes"


def test_send_file_50_mib_arrives_intact(pair, tmp_path):
    a, b = pair
    path = tmp_path / "payload.bin"
    data = os.urandom(50 * 1024 * 1024)
    path.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    code, doc = pilotctl(a, "send-file", "agent-b", str(path), timeout=120)
    assert code == 0, doc
    result = doc["data"]
    assert result["sha256"] == digest and result["size"] == len(data) and result["name"] == "payload.bin"
    assert result["seconds"] > 0 and result["mb_per_s"] > 0
    stored = os.path.join(b, "inbox", "payload.bin")
    with open(stored, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == digest
    # Sent again: it does not overwrite the first copy.
    code, doc = pilotctl(a, "send-file", "agent-b", str(path), timeout=120)
    assert code == 0 and doc["data"]["name"] == "payload (1).bin", doc
    assert sorted(os.listdir(os.path.join(b, "inbox"))) == ["payload (1).bin", "payload.bin"]


def test_send_file_cannot_escape_the_inbox(pair, tmp_path):
    a, b = pair
    path = tmp_path / "evil.txt"
    path.write_bytes(b"not for /etc")
    outside = os.path.join(os.path.dirname(b), "etc")
    code, doc = pilotctl(a, "send-file", "agent-b", str(path), "--name", "../../etc/x", timeout=60)
    assert code == 0, doc
    assert doc["data"]["name"] == "x"
    assert open(os.path.join(b, "inbox", "x"), "rb").read() == b"not for /etc"
    assert not os.path.exists(outside) and not os.path.exists(os.path.join(b, "etc"))
    for name in ("..", "../..", ".hidden", "dir/"):
        code, doc = pilotctl(a, "send-file", "agent-b", str(path), "--name", name, timeout=60)
        assert code != 0 and doc["code"] == "invalid_argument", (name, doc)
    assert os.listdir(os.path.join(b, "inbox")) == ["x"]


def test_bench_through_echo(pair):
    a, _ = pair
    code, doc = pilotctl(a, "bench", "agent-b", "--size-mb", "8", timeout=120)
    assert code == 0, doc
    result = doc["data"]
    assert result["bytes"] == 8 * 1024 * 1024 and result["verified"]
    assert result["send_mbps"] > 0 and result["receive_mbps"] > 0 and result["echo_mbps"] > 0


def _on_a_terminal(home, *args):
    """Run pilotctl with stderr on a pseudo-terminal (stdout piped); (exit code, stdout, what the terminal showed)."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(PILOTCTL + ["--home", home, *args], env=environment(), stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    out = proc.stdout.read().decode()
    proc.stdout.close()
    os.close(master)
    return proc.wait(60), out, shown.decode(errors="replace")


def test_bench_and_send_file_show_progress_on_a_terminal_only(pair, tmp_path):
    a, _ = pair
    code, out, terminal = _on_a_terminal(a, "bench", "agent-b", "--size-mb", "4")
    assert code == 0, (out, terminal)
    assert "echo agent-b" in terminal and "Mbit/s" in terminal and "ETA " in terminal, terminal
    assert "ETA" not in out and "and back through echo" in out
    path = tmp_path / "file.bin"
    path.write_bytes(os.urandom(4 * 1024 * 1024))
    code, out, terminal = _on_a_terminal(a, "send-file", "agent-b", str(path))
    assert code == 0, (out, terminal)
    assert "to agent-b" in terminal and "MiB/s" in terminal and "ETA " in terminal, terminal
    # Piped, or --json: the result alone.
    for args in (["bench", "agent-b", "--size-mb", "1"], ["send-file", "agent-b", str(path)]):
        run = subprocess.run(PILOTCTL + ["--home", a, *args], env=environment(), capture_output=True, text=True, timeout=60)
        assert run.returncode == 0 and run.stderr == "" and "ETA" not in run.stdout, run
        code, doc = pilotctl(a, *args, timeout=60)
        assert code == 0, doc


def test_twistd_web_in_another_process(pair, tmp_path):
    a, b = pair
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>served over pilot</h1>")
    env = environment()
    env["PILOT_HOME"] = b
    log = tmp_path / "web.log"
    web = subprocess.Popen(
        TWISTD + ["-n", "--pidfile=", "--logfile", str(log), "web", "--listen", "pilot:80", "--path", str(site)],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=str(tmp_path),
    )
    try:
        fetch = subprocess.run(
            [*PILOTCTL[:1], "-c", FETCH, a, "http://agent-b/index.html"],
            capture_output=True, text=True, env=environment(), timeout=60,
        )
        assert fetch.returncode == 0, (fetch.stdout, fetch.stderr, log.read_text() if log.exists() else "")
        assert fetch.stdout.strip() == "200 <h1>served over pilot</h1>"
    finally:
        web.terminate()
        web.wait(10)
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]


def start_web(home, tmp_path, port=80, name="web"):
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "index.html").write_text("<h1>served over pilot</h1>")
    env = environment()
    env["PILOT_HOME"] = home
    log = tmp_path / f"{name}.log"
    web = subprocess.Popen(
        TWISTD + ["-n", "--pidfile=", "--logfile", str(log), "web", "--listen", f"pilot:{port}", "--path", str(site)],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=str(tmp_path),
    )
    return web, log


def fetch(home, url):
    return subprocess.run(
        [*PILOTCTL[:1], "-c", FETCH, home, url], capture_output=True, text=True, env=environment(), timeout=60,
    )


def test_twistd_web_exits_when_the_port_is_taken(pair, tmp_path):
    _, b = pair
    started = time.monotonic()
    web, log = start_web(b, tmp_path, port=7)  # the daemon's own echo port
    try:
        web.wait(20)
    finally:
        if web.poll() is None:
            web.kill()
    assert web.returncode != 0 and time.monotonic() - started < 20
    text = log.read_text() + web.stdout.read().decode()
    web.stdout.close()
    assert "something already listens on port 7" in text, text[-3000:]


def test_twistd_web_listens_again_after_the_daemon_restarts(pair, daemons, tmp_path):
    a, b = pair
    web, log = start_web(b, tmp_path)
    try:
        first = fetch(a, "http://agent-b/index.html")
        assert first.returncode == 0, (first.stdout, first.stderr, log.read_text())
        assert pilotctl(b, "daemon", "stop")[0] == 0
        assert wait_for(lambda: "lost the pilot daemon" in log.read_text(), 10)
        code, doc = pilotctl(b, "daemon", "start", "--hostname", "agent-b", "--beacon", daemons.beacon.address)
        assert code == 0, doc
        assert wait_for(lambda: "listening again on pilot port 80" in log.read_text(), 30), log.read_text()[-3000:]
        again = fetch(a, "http://agent-b/index.html")
        assert again.returncode == 0, (again.stdout, again.stderr, log.read_text()[-3000:])
        assert again.stdout.strip() == "200 <h1>served over pilot</h1>"
    finally:
        web.terminate()
        web.wait(10)
        web.stdout.close()
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


# A fetch in its own process, through the daemon at argv[1]; retried while
# the web server is still starting (its port is refused until it listens).
FETCH = r"""
import sys
from twisted.internet import task, defer
from twisted.web.client import readBody

def agent_for(reactor, home):
    from pilotproto.http import pilot_agent

    return pilot_agent(reactor, home=home)

async def main(reactor, home, url):
    agent = agent_for(reactor, home)
    for attempt in range(60):
        try:
            response = await agent.request(b"GET", url.encode())
            break
        except Exception as e:
            if getattr(e, "code", None) != "connection_refused" and "refused" not in str(e).lower():
                raise
            await task.deferLater(reactor, 0.25, lambda: None)
    body = await readBody(response)
    print(response.code, body.decode())

task.react(lambda reactor: defer.ensureDeferred(main(reactor, *sys.argv[1:])))
"""
