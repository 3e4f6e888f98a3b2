"""Issue 2 end to end: twistd beacon, pilotctl daemons, info, lookup, restarts, STUN."""

import base64
import os
import socket
import time

import pytest
from aioice import stun as aioice_stun

from .conftest import pilotctl, wait_for

pytestmark = pytest.mark.integration


def test_two_nodes_register_and_look_each_other_up(daemons):
    home_a = daemons.start("agent-a")
    home_b = daemons.start("agent-b", "--public")

    code, info_a = pilotctl(home_a, "info")
    assert code == 0 and info_a["status"] == "ok"
    a = info_a["data"]
    assert a["hostname"] == "agent-a" and a["registered"] is True
    assert a["address"].startswith("0:") and len(base64.b64decode(a["public_key"])) == 32
    host, port = a["reflexive_endpoint"].rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) == int(a["local_endpoint"].rsplit(":", 1)[1])

    _, info_b = pilotctl(home_b, "info")
    b = info_b["data"]

    code, found = pilotctl(home_a, "lookup", "agent-b")
    assert code == 0, found
    assert found["data"]["public_key"] == b["public_key"]
    assert found["data"]["address"] == b["address"]
    assert b["reflexive_endpoint"] in found["data"]["endpoints"]

    code, by_address = pilotctl(home_a, "lookup", b["address"])
    assert code == 0 and by_address["data"]["hostname"] == "agent-b"

    code, hidden = pilotctl(home_b, "lookup", "agent-a")
    assert code != 0
    assert hidden["status"] == "error" and hidden["code"] == "not_found" and hidden["hint"]


def test_identity_survives_restart(daemons):
    home = daemons.start("agent-a")
    _, before = pilotctl(home, "info")
    assert pilotctl(home, "daemon", "stop")[0] == 0
    code, status = pilotctl(home, "daemon", "status")
    assert code != 0 and status["code"] == "not_running"
    daemons.start("agent-a")
    _, after = pilotctl(home, "info")
    assert after["data"]["address"] == before["data"]["address"]
    assert after["data"]["public_key"] == before["data"]["public_key"]


def test_nodes_reregister_after_beacon_restart(daemons, beacon):
    home_a = daemons.start("agent-a")
    home_b = daemons.start("agent-b", "--public")
    beacon.kill()
    time.sleep(0.5)
    restarted = time.monotonic()
    beacon.start()

    def both_registered():
        log = beacon.log_text().split("BeaconDatagramProtocol starting")[-1]
        return "registered agent-a" in log and "registered agent-b" in log

    assert wait_for(both_registered, 10, 0.1), beacon.log_text()[-2000:]
    assert time.monotonic() - restarted < 10
    code, found = pilotctl(home_a, "lookup", "agent-b")
    assert code == 0, found


def test_third_party_stun_client_learns_its_reflexive_address(beacon):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(2)
        request = aioice_stun.Message(message_method=aioice_stun.Method.BINDING, message_class=aioice_stun.Class.REQUEST)
        s.sendto(bytes(request), ("127.0.0.1", beacon.port))
        data, _ = s.recvfrom(2048)
        response = aioice_stun.parse_message(data)
        assert response.message_class == aioice_stun.Class.RESPONSE
        assert response.transaction_id == request.transaction_id
        assert response.attributes["XOR-MAPPED-ADDRESS"] == s.getsockname()


def test_demo_runs_quickly_and_leaves_nothing_behind(tmp_path):
    import subprocess
    import sys

    from .conftest import environment

    env = environment()
    env["TMPDIR"] = str(tmp_path)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pilotproto.cli", "demo"], env=env, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert elapsed < 10, elapsed
    assert "agent" in proc.stdout
    assert os.listdir(tmp_path) == []
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == ""
