"""
Issue 10 through the real command line (separate processes): what a new
user gets wrong in the first hour gives one message, a code, a hint and a
non-zero exit, never a traceback, and a failed start saves nothing;
``pilotctl netcheck`` against a real beacon; ``sudo pilotctl`` told how to
find a virtualenv's pilotctl.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from .conftest import PILOTCTL, TWISTD, environment, free_udp_port, pilotctl, wait_for

pytestmark = pytest.mark.integration


def twistd(tmp_path, *args, timeout=30):
    return subprocess.run(
        TWISTD + ["-n", "--pidfile=", *args], env=environment(), cwd=str(tmp_path),
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def assert_one_line_error(run, *words):
    output = run.stdout + run.stderr
    assert run.returncode != 0, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if "error [" in line]
    assert len(errors) == 1, output
    for word in words:
        assert word in errors[0], errors[0]


def test_twistd_pilot_beacon_on_a_busy_port_is_one_line(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        run = twistd(tmp_path, "pilot", "beacon", "--interface", "127.0.0.1", "--port", str(port))
    assert_one_line_error(run, "twistd pilot beacon", "[port_in_use]", f"127.0.0.1:{port}", "hint:")


def test_twistd_pilot_beacon_alt_address_without_interface_is_a_usage_error(tmp_path):
    run = twistd(tmp_path, "pilot", "beacon", "--alt-address", "127.0.0.2")
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert "Traceback" not in output, output
    assert output.strip().splitlines()[-1].endswith(
        "--alt-address needs the beacon's primary address as --interface, not the wildcard "
        "(Pass --interface PRIMARY_IP (the address nodes use in --beacon) with --alt-address ALT_IP.)"
    )


def test_twistd_pilot_node_on_a_busy_port_is_one_line(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("", 0))
        port = taken.getsockname()[1]
        home = str(tmp_path / "home")
        run = twistd(tmp_path, "pilot", "node", "--home", home, "--hostname", "agent-a", "--beacon", "127.0.0.1:9", "--port", str(port))
    assert_one_line_error(run, "twistd pilot node", "[port_in_use]", str(port))


def test_daemon_start_on_a_busy_port_says_so_and_saves_nothing(tmp_path, beacon):
    home = str(tmp_path / "home")
    assert pilotctl(home, "init", "--hostname", "agent-a", "--beacon", beacon.address)[0] == 0
    config = os.path.join(home, "config.json")
    before = open(config).read()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("", 0))
        port = taken.getsockname()[1]
        code, doc = pilotctl(home, "daemon", "start", "--port", str(port))
    assert code == 1 and doc["code"] == "port_in_use", doc
    assert str(port) in doc["message"] and "--port" in doc["hint"]
    assert open(config).read() == before
    # The next plain start works: the bad port was not remembered.
    code, doc = pilotctl(home, "daemon", "start")
    try:
        assert code == 0, doc
        assert json.load(open(config))["port"] == 0
    finally:
        pilotctl(home, "daemon", "stop")


def test_an_unresolvable_beacon_is_retried_reported_and_not_saved(tmp_path):
    home = str(tmp_path / "home")
    code, doc = pilotctl(home, "daemon", "start", "--hostname", "agent-a", "--beacon", "nohost.invalid:9000", "--timeout", "3")
    try:
        assert code == 1 and doc["code"] == "timeout", doc
        assert "cannot resolve the beacon's name nohost.invalid" in doc["message"]
        assert "keeps trying" in doc["message"]
        assert not os.path.exists(os.path.join(home, "config.json"))
        code, doc = pilotctl(home, "daemon", "status")
        assert code == 1 and doc["code"] == "not_registered", doc
        assert doc["data"]["beacon_error"]["code"] == "unavailable"
        # Looked up again, with backoff, while it is down.
        log = os.path.join(home, "daemon.log")
        assert wait_for(lambda: open(log).read().count("trying again in") >= 3, 15), open(log).read()
    finally:
        pilotctl(home, "daemon", "stop")
    assert "Traceback" not in open(os.path.join(home, "daemon.log")).read()


def test_the_tls_fallback_names_the_address_and_port_it_tried(tmp_path):
    home = str(tmp_path / "home")
    dead = free_udp_port()
    code, doc = pilotctl(home, "daemon", "start", "--hostname", "agent-a", "--beacon", f"127.0.0.1:{dead}", "--timeout", "6")
    try:
        assert code == 1, doc
        assert f"UDP at 127.0.0.1:{dead}" in doc["message"], doc
        assert "TLS at 127.0.0.1:443" in doc["message"] and "connection refused" in doc["message"], doc
        assert "--beacon-tls" in doc["hint"], doc
        code, doc = pilotctl(home, "daemon", "status")
        assert code == 1 and "--beacon-tls" in doc["hint"] and "port 443" in doc["hint"], doc
    finally:
        pilotctl(home, "daemon", "stop")


# -- netcheck --------------------------------------------------------------------------------------


@pytest.fixture
def rfc5780_beacon(tmp_path):
    """A beacon with an alternate address and port (RFC 5780) and a TLS relay, on loopback."""
    from pilotproto.lab.pki import make_beacon_pki

    pki = make_beacon_pki(str(tmp_path / "pki"), ["127.0.0.1"])
    port, alt = free_udp_port(), free_udp_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        tls_port = s.getsockname()[1]
    log = str(tmp_path / "beacon.log")
    process = subprocess.Popen(
        TWISTD + ["-n", "--pidfile=", "--logfile", log, "pilot", "beacon", "--interface", "127.0.0.1", "--port", str(port),
                  "--alt-address", "127.0.0.2", "--alt-port", str(alt),
                  "--tls-port", str(tls_port), "--tls-cert", pki.cert_file, "--tls-key", pki.key_file],
        env=environment(), cwd=str(tmp_path), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    assert wait_for(lambda: os.path.exists(log) and "BeaconDatagramProtocol starting" in open(log).read(), 10)
    yield {"beacon": f"127.0.0.1:{port}", "tls": f"127.0.0.1:{tls_port}", "ca": pki.ca_file, "alt": f"127.0.0.2:{alt}"}
    process.kill()
    process.wait(5)


def test_netcheck_against_a_real_beacon(tmp_path, rfc5780_beacon):
    b = rfc5780_beacon
    home = str(tmp_path / "home")
    code, doc = pilotctl(home, "netcheck", "--beacon", b["beacon"], "--beacon-tls", b["tls"], "--beacon-ca", b["ca"])
    assert code == 0, doc
    data = doc["data"]
    [result] = data["beacons"]
    assert result["udp"]["reachable"] and result["udp"]["rtt_ms"] > 0
    assert result["udp"]["reflexive_endpoint"].startswith("127.0.0.1:") and result["udp"]["alternate"] == b["alt"]
    assert result["tls"]["reachable"] and result["tls"]["endpoint"] == b["tls"] and result["tls"]["verified"]
    # Loopback: the beacon sees our own address, measured by the RFC 5780 tests.
    assert result["nat"]["type"] == "none" and result["nat"]["mapping_stable"] is True
    assert data["nat_type"] == "none" and data["peers"]["summary"].startswith("direct to every peer")
    # For a person, and with the beacon from the saved config.
    assert pilotctl(home, "init", "--hostname", "agent-a", "--beacon", b["beacon"])[0] == 0
    run = subprocess.run(PILOTCTL + ["--home", home, "netcheck", "--no-tls"], env=environment(), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "UDP:          yes" in run.stdout and "NAT type:     none" in run.stdout and "Peers: direct" in run.stdout
    assert run.stderr == ""  # piped: no progress line


def test_netcheck_of_a_dead_beacon_fails_and_says_what_it_tried(tmp_path):
    dead = free_udp_port()
    code, doc = pilotctl(str(tmp_path / "home"), "netcheck", "--beacon", f"127.0.0.1:{dead}", timeout=60)
    assert code == 1 and doc["code"] == "unavailable", doc
    [result] = doc["data"]["beacons"]
    assert not result["udp"]["reachable"] and not result["tls"]["reachable"]
    assert "127.0.0.1:443" in result["tls"]["error"]["message"] and "--beacon-tls" in result["tls"]["error"]["hint"]


# -- sudo and a virtualenv's pilotctl -------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to drop to nobody")
def test_the_lab_run_without_root_names_the_pilotctl_to_run_under_sudo():
    script = os.path.join(os.path.dirname(sys.executable), "pilotctl")
    if not os.path.exists(script):
        pytest.skip("pilotctl is not installed next to this interpreter")
    run = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", script, "--json", "--home", "/nonexistent", "lab", "matrix"],
        env=environment(), cwd="/", capture_output=True, text=True, timeout=60,
    )
    doc = json.loads(run.stdout)
    assert run.returncode == 1 and doc["code"] == "lab_error", doc
    assert f"sudo {script} lab matrix" in doc["hint"], doc


def test_a_handshake_to_a_name_nobody_holds_says_it_is_queued_and_why(tmp_path, daemons):
    home = daemons.start("agent-a")
    run = subprocess.run(
        PILOTCTL + ["--home", home, "handshake", "nosuch-agent", "are you there?"],
        env=environment(), capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "comes online (until" in run.stdout, run.stdout
    assert "cannot say whether a private node named nosuch-agent exists" in run.stdout, run.stdout
