"""
Store-and-forward (issue 14 item 3) between real processes: a message to a
trusted peer that is offline is left sealed at the beacon, survives the
sender going away and a beacon restart, reaches the peer exactly once when
it comes back, and its receipt turns the sender's ``queued`` into
``delivered`` when the sender comes back too.
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from .conftest import (
    TWISTD,
    Beacon,
    Daemons,
    assert_clean,
    environment,
    free_udp_port,
    pilotctl,
    wait_for,
)

pytestmark = pytest.mark.integration


class StatefulBeacon(Beacon):
    """A beacon that keeps its mailbox in SQLite under ``state``, and stops politely."""

    def __init__(self, workdir, port, state):
        super().__init__(workdir, port)
        self.state = state

    def start(self):
        log = os.path.join(self.workdir, f"beacon-{len(self.logs)}.log")
        self.logs.append(log)
        self.process = subprocess.Popen(
            TWISTD + ["-n", "--pidfile=", "--logfile", log, "pilot", "beacon", "--interface", "127.0.0.1",
                      "--port", str(self.port), "--state-dir", self.state],
            env=environment(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        assert wait_for(lambda: os.path.exists(log) and "BeaconDatagramProtocol starting" in open(log).read(), 10)

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(10)


@pytest.fixture
def stateful(tmp_path):
    b = StatefulBeacon(str(tmp_path), free_udp_port(), str(tmp_path / "beacon-state"))
    b.start()
    d = Daemons(tmp_path, b)
    yield b, d
    d.stop_all()
    b.kill()
    assert_clean(b.log_text())
    assert_clean(d.logs())


def start(daemons, home, hostname):
    code, doc = pilotctl(home, "daemon", "start", "--hostname", hostname, "--beacon", daemons.beacon.address)
    assert code == 0, doc


def outbox_state(home, id_):
    code, doc = pilotctl(home, "outbox", id_)
    assert code == 0, doc
    [row] = doc["data"]["messages"]
    return row


def test_a_message_to_an_offline_peer_waits_sealed_at_the_beacon_and_arrives_once(stateful):
    beacon, daemons = stateful
    a = daemons.start("agent-a")
    b = daemons.start("agent-b")
    assert pilotctl(a, "handshake", "agent-b", "store and forward")[0] == 0
    assert wait_for(lambda: pilotctl(b, "pending")[1]["data"]["pending"], 5)
    assert pilotctl(b, "approve", "agent-a")[0] == 0
    assert wait_for(lambda: pilotctl(a, "lookup", "agent-b")[0] == 0, 5)
    # B goes away; A sends.
    assert pilotctl(b, "daemon", "stop")[0] == 0
    code, doc = pilotctl(a, "send-message", "agent-b", "while you were out", "--wait", "0")
    assert code == 0 and doc["data"]["state"] == "queued", doc
    id_ = doc["data"]["id"]
    # Within a few seconds a sealed copy is at the beacon; the sender still says queued.
    assert wait_for(lambda: outbox_state(a, id_)["sealed"], 20, interval=0.5), outbox_state(a, id_)
    assert outbox_state(a, id_)["state"] == "queued"
    # A goes away too, and the beacon restarts: the message needs neither.
    assert pilotctl(a, "daemon", "stop")[0] == 0
    beacon.stop()
    beacon.start()
    start(daemons, b, "agent-b")

    def b_items():
        code, doc = pilotctl(b, "inbox")
        assert code == 0, doc
        return doc["data"]["messages"]

    assert wait_for(b_items, 20, interval=0.5), "the sealed message never reached B"
    [item] = b_items()
    assert (item["text"], item["id"], item["from"]) == ("while you were out", id_, "agent-a")
    # A comes back: the receipt B left at the beacon settles the message.
    start(daemons, a, "agent-a")
    code, doc = pilotctl(a, "outbox", id_, "--wait", "30", timeout=60)
    assert code == 0 and doc["data"]["messages"][0]["state"] == "delivered", doc
    # And the stream path, retried by A's outbox, is not a second copy.
    assert wait_for(lambda: pilotctl(a, "outbox")[1]["data"]["queues"] == [], 20, interval=0.5)
    assert [i["id"] for i in b_items()] == [id_]
