"""
Store-and-forward, finished (issue 14 item 3), between real processes: a
20 KiB message (many sealed pieces) to an offline peer survives a ``kill -9``
of the beacon right after the beacon said Ok, and the sender being gone when
the peer comes back; with two beacons, killing the one that delivered
nothing yet, the other delivers.  Exactly once, each time.
"""

from __future__ import annotations

import time

import pytest

from .conftest import Beacon, Daemons, assert_clean, free_udp_port, pilotctl, wait_for
from .test_store_and_forward import StatefulBeacon, outbox_state

pytestmark = pytest.mark.integration

TEXT = "".join(f"{i:05d} sealed piece by piece\n" for i in range(800))  # 20,800 bytes


def trusted_pair(daemons, *extra):
    a = daemons.start("agent-a", *extra)
    b = daemons.start("agent-b", *extra)
    assert pilotctl(a, "handshake", "agent-b", "store and forward")[0] == 0
    assert wait_for(lambda: pilotctl(b, "pending")[1]["data"]["pending"], 10)
    assert pilotctl(b, "approve", "agent-a")[0] == 0
    assert wait_for(lambda: pilotctl(a, "lookup", "agent-b")[0] == 0, 10)
    return a, b


def inbox_of(home):
    code, doc = pilotctl(home, "inbox")
    assert code == 0, doc
    return doc["data"]["messages"]


def send_while_away(a, b):
    assert pilotctl(b, "daemon", "stop")[0] == 0
    code, doc = pilotctl(a, "send-message", "agent-b", TEXT, "--wait", "0")
    assert code == 0 and doc["data"]["state"] == "queued", doc
    id_ = doc["data"]["id"]
    assert wait_for(lambda: outbox_state(a, id_)["sealed"], 25, interval=0.3), outbox_state(a, id_)
    return id_


def test_a_20_kib_message_survives_a_kill_9_of_the_beacon_right_after_its_ok(tmp_path):
    beacon = StatefulBeacon(str(tmp_path), free_udp_port(), str(tmp_path / "beacon-state"))
    beacon.start()
    daemons = Daemons(tmp_path, beacon)
    try:
        a, b = trusted_pair(daemons)
        id_ = send_while_away(a, b)
        beacon.kill()  # SIGKILL the moment the sender saw every piece kept
        assert pilotctl(a, "daemon", "stop")[0] == 0  # and the sender is gone when the peer returns
        beacon.start()
        assert pilotctl(b, "daemon", "start", "--hostname", "agent-b", "--beacon", beacon.address)[0] == 0
        assert wait_for(lambda: inbox_of(b), 25, interval=0.5), "the sealed message never reached B"
        [item] = inbox_of(b)
        assert (item["text"], item["id"], item["from"]) == (TEXT, id_, "agent-a")
        # (The receipt's way back to the sender is test_store_and_forward's.)
    finally:
        daemons.stop_all()
        beacon.kill()
    assert_clean(beacon.log_text())
    assert_clean(daemons.logs())


def test_with_two_beacons_the_one_left_delivers(tmp_path):
    first = Beacon(str(tmp_path), free_udp_port())
    (tmp_path / "second").mkdir()
    second = Beacon(str(tmp_path / "second"), free_udp_port())
    first.start()
    second.start()
    daemons = Daemons(tmp_path, first)
    try:
        a, b = trusted_pair(daemons, "--beacon", second.address)
        id_ = send_while_away(a, b)
        time.sleep(1.5)  # the slower beacon keeps its copy too
        assert pilotctl(a, "daemon", "stop")[0] == 0
        first.kill()
        code, doc = pilotctl(b, "daemon", "start", "--hostname", "agent-b", "--beacon", first.address,
                             "--beacon", second.address)
        assert code == 0, doc
        assert wait_for(lambda: inbox_of(b), 25, interval=0.5), "the second beacon never delivered"
        [item] = inbox_of(b)
        assert (item["text"], item["id"]) == (TEXT, id_)
    finally:
        daemons.stop_all()
        first.kill()
        second.kill()
    assert_clean(first.log_text() + second.log_text())
    assert_clean(daemons.logs())
