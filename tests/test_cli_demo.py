"""pilotctl demo: the tour's cleanup on success, failure and Ctrl-C, its helpers, and one real run."""

import io
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from pilotproto.cli import demo
from pilotproto.cli.main import main
from pilotproto.cli.output import Output
from pilotproto.errors import NotFound, Unavailable


def quiet():
    return Output(True, io.StringIO(), io.StringIO())


def spawn_sleeper(tour):
    tour.beacon_process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    with open(os.path.join(tour.workdir, "beacon.log"), "w") as f:
        f.write("log\n")
    return {"pid": tour.beacon_process.pid}


def test_successful_tour_cleans_up_and_reports_each_step():
    seen = {}

    def remember(tour):
        seen["tour"] = tour
        return {"workdir": tour.workdir}

    data = demo.run_demo(quiet(), steps=[("sleeper", spawn_sleeper), ("remember", remember)])
    tour = seen["tour"]
    assert [s["step"] for s in data["steps"]] == ["sleeper", "remember"]
    assert data["workdir"] is None
    assert not os.path.exists(tour.workdir)
    assert tour.beacon_process.poll() is not None


def test_failed_step_keeps_its_code_names_the_step_and_cleans_up():
    seen = {}

    def fail(tour):
        seen["tour"] = tour
        raise NotFound("agent-b is not known")

    with pytest.raises(NotFound) as e:
        demo.run_demo(quiet(), steps=[("sleeper", spawn_sleeper), ("look", fail)])
    assert e.value.message == "demo step 'look' failed: agent-b is not known"
    assert e.value.code == "not_found"
    assert "pilotctl demo --keep" in e.value.hint
    assert not os.path.exists(seen["tour"].workdir)
    assert seen["tour"].beacon_process.poll() is not None


def test_ctrl_c_still_cleans_up():
    seen = {}

    def interrupt(tour):
        seen["tour"] = tour
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        demo.run_demo(quiet(), steps=[("sleeper", spawn_sleeper), ("interrupt", interrupt)])
    assert not os.path.exists(seen["tour"].workdir)
    assert seen["tour"].beacon_process.poll() is not None


def test_keep_leaves_the_directory_but_no_process():
    data = demo.run_demo(quiet(), keep=True, steps=[("sleeper", spawn_sleeper)])
    try:
        assert os.path.exists(os.path.join(data["workdir"], "beacon.log"))
        pid = data["steps"][0]["pid"]
        assert not os.path.exists(f"/proc/{pid}")
    finally:
        import shutil

        shutil.rmtree(data["workdir"])


def test_udp_port_bound_sees_loopback_and_wildcard_sockets():
    for host in ("127.0.0.1", "0.0.0.0"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
            assert demo.udp_port_bound(port)
        assert not demo.udp_port_bound(port)


def test_wait_for_udp_port_reports_a_beacon_that_died(tmp_path):
    log = tmp_path / "beacon.log"
    log.write_text("2026-01-01T00:00:00+0000 [-] usage error: bad option\n")
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(2)"])
    process.wait(5)
    with pytest.raises(Unavailable) as e:
        demo.wait_for_udp_port(process, demo.free_udp_port(), str(log), 5.0)
    assert "exited (code 2)" in e.value.message and e.value.message.endswith("usage error: bad option")


def _pids_gone(pids, timeout=2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(os.path.exists(f"/proc/{pid}") for pid in pids):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.integration
def test_demo_for_real_under_ten_seconds_leaving_nothing_behind():
    before = set(os.listdir("/tmp"))
    stdout, stderr = io.StringIO(), io.StringIO()
    started = time.monotonic()
    code = main(["demo", "--json"], stdout=stdout, stderr=stderr)
    elapsed = time.monotonic() - started
    doc = json.loads(stdout.getvalue())
    assert code == 0, (doc, stderr.getvalue())
    assert elapsed < 10
    data = doc["data"]
    a, b = data["agents"]["agent-a"], data["agents"]["agent-b"]
    assert a["registered"] and b["registered"]
    assert (a["public"], b["public"]) == (False, True)
    assert a["address"] != b["address"]
    lookups = {s["step"]: s.get("lookup") for s in data["steps"]}
    assert lookups["look up a public agent"]["result"]["address"] == b["address"]
    assert lookups["look up a private agent"]["result"] == "not_found"
    pids = [data["steps"][0]["pid"], a["pid"], b["pid"]]
    assert _pids_gone(pids)
    assert not [name for name in set(os.listdir("/tmp")) - before if name.startswith("pilot-demo-")]


@pytest.mark.integration
def test_demo_human_output_tells_the_story():
    stdout, stderr = io.StringIO(), io.StringIO()
    assert main(["demo"], stdout=stdout, stderr=stderr) == 0, stderr.getvalue()
    text = stdout.getvalue()
    for expected in ("Starting a beacon", "permanent address", "seen by beacon at", "(public)", "As it should be", "removed"):
        assert expected in text
