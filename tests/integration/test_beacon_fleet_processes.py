"""
Issue 14, item 2, with real processes: a redis-server, two beacon processes
(``twistd pilot beacon --store redis://``) and a pilotctl daemon on each.  A
trust request posted on one beacon reaches a daemon on the other; lookups
cross the fleet; then one beacon and Redis are restarted, and no name and
no trust request that was acknowledged is lost.
"""

import os
import subprocess

import pytest
from fleet_support import redis_server  # noqa: F401 (a fixture)

from .conftest import TWISTD, Daemons, assert_clean, environment, free_udp_port, pilotctl, wait_for

pytestmark = pytest.mark.integration


class FleetBeacon:
    """A beacon process of the fleet at ``url`` (as conftest's Beacon, with --store)."""

    def __init__(self, workdir, url, name):
        self.workdir, self.url, self.name = workdir, url, name
        self.port = free_udp_port()
        self.process = None
        self.logs = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self):
        log = os.path.join(self.workdir, f"{self.name}-{len(self.logs)}.log")
        self.logs.append(log)
        self.process = subprocess.Popen(
            TWISTD + ["-n", "--pidfile=", "--logfile", log, "pilot", "beacon", "--interface", "127.0.0.1", "--port", str(self.port),
                      "--store", self.url],
            env=environment(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=self.workdir,
        )
        # The listeners start only once the beacon holds the fleet's state.
        assert wait_for(lambda: os.path.exists(log) and "BeaconDatagramProtocol starting" in open(log).read(), 15), self.log_text()

    def kill(self):
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def log_text(self) -> str:
        return "".join(open(p).read() for p in self.logs if os.path.exists(p))


@pytest.fixture
def fleet(tmp_path, redis_server):  # noqa: F811
    beacons = [FleetBeacon(str(tmp_path), redis_server.url, name) for name in ("one", "two")]
    for beacon in beacons:
        beacon.start()
    daemons = [Daemons(tmp_path, beacon) for beacon in beacons]
    yield redis_server, beacons, daemons
    for d in daemons:
        d.stop_all()
    for beacon in beacons:
        beacon.kill()
    for beacon in beacons:
        assert_clean(beacon.log_text())
    for d in daemons:
        assert_clean(d.logs())


def lookup_code(home, target):
    code, doc = pilotctl(home, "lookup", target)
    return "ok" if code == 0 else doc["code"]


def pending_from(home):
    return [(p["hostname"], p["reason"]) for p in pilotctl(home, "pending")[1]["data"]["pending"]]


def test_a_fleet_of_two_beacon_processes_survives_a_beacon_and_a_redis_restart(fleet):
    redis, (one, two), (on_one, on_two) = fleet
    a = on_one.start("agent-a")
    b = on_two.start("agent-b")
    assert lookup_code(a, "agent-b") == "not_found"  # private, fleet-wide

    code, doc = pilotctl(a, "handshake", "agent-b", "across the fleet")
    assert code == 0 and doc["data"]["state"] == "sent", doc
    assert wait_for(lambda: pending_from(b), 10) == [("agent-a", "across the fleet")]
    code, doc = pilotctl(b, "approve", "agent-a")
    assert code == 0, doc
    assert wait_for(lambda: lookup_code(a, "agent-b") == "ok", 10)
    assert wait_for(lambda: lookup_code(b, "agent-a") == "ok", 10)

    # agent-b goes offline; agent-c (on beacon one) asks it for trust meanwhile.
    assert pilotctl(b, "daemon", "stop")[0] == 0
    c = on_one.start("agent-c")
    code, doc = pilotctl(c, "handshake", "agent-b", "while you were out")
    assert code == 0 and doc["data"]["state"] == "sent", doc

    # Beacon one dies and comes back; Redis shuts down and comes back.
    one.kill()
    redis.restart()
    one.start()
    assert "the fleet holds 3 names, 1 mail" in one.log_text()

    # agent-b's name is still held by its key (the thief's refusal is tested in test_beacon_fleet.py).
    assert b'"agent-b"' in redis.command("HGETALL", "pilot:names")

    # agent-b comes back on beacon two: the request kept through both restarts is pushed to it.
    on_two.start("agent-b")
    assert wait_for(lambda: ("agent-c", "while you were out") in pending_from(b), 15), pending_from(b)
    # agent-a re-registered on the restarted beacon one: agent-b finds it across the fleet again.
    assert wait_for(lambda: lookup_code(b, "agent-a") == "ok", 20)
