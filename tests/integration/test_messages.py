"""
Messages (port 1001) and events (port 1002) between real daemons: the
durable outbox and inbox across a stopped and restarted receiver, exactly
once at the application; publish/subscribe with wildcards across a
receiver restart; an untrusted peer refused.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from .conftest import PILOTCTL, environment, pilotctl, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def pair(daemons):
    a = daemons.start("agent-a")
    b = daemons.start("agent-b")
    assert pilotctl(a, "handshake", "agent-b", "message tests")[0] == 0
    assert wait_for(lambda: pilotctl(b, "pending")[1]["data"]["pending"], 5)
    assert pilotctl(b, "approve", "agent-a")[0] == 0
    assert wait_for(lambda: pilotctl(a, "lookup", "agent-b")[0] == 0, 5)
    assert wait_for(lambda: pilotctl(b, "lookup", "agent-a")[0] == 0, 5)
    return a, b


def inbox(home, after=0):
    code, doc = pilotctl(home, "inbox", "--after", str(after))
    assert code == 0, doc
    return doc["data"]["messages"]


def restart(daemons, home, hostname):
    assert pilotctl(home, "daemon", "stop")[0] == 0
    code, doc = pilotctl(home, "daemon", "start", "--hostname", hostname, "--beacon", daemons.beacon.address)
    assert code == 0, doc


def test_a_message_is_delivered_listed_and_deleted(pair):
    a, b = pair
    code, doc = pilotctl(a, "send-message", "agent-b", "hello ✓", timeout=60)
    assert code == 0 and doc["data"]["state"] == "delivered", doc
    [item] = inbox(b)
    assert item["text"] == "hello ✓" and item["id"] == doc["data"]["id"] and item["from"] in ("agent-a", item["address"])
    assert pilotctl(b, "inbox", "--delete", str(item["seq"]))[1]["data"] == {"deleted": 1}
    assert inbox(b) == []
    # recv 1001 still takes messages (and they carry their seq and id now)
    assert pilotctl(a, "send-message", "agent-b", "for recv", timeout=60)[1]["data"]["state"] == "delivered"
    code, doc = pilotctl(b, "recv", "1001")
    assert code == 0 and [m["text"] for m in doc["data"]["messages"]] == ["for recv"], doc
    assert inbox(b) == []


def test_messages_to_a_stopped_receiver_queue_and_arrive_once_in_order(pair, daemons):
    a, b = pair
    assert pilotctl(a, "send-message", "agent-b", "before", timeout=60)[1]["data"]["state"] == "delivered"
    seen = inbox(b)
    assert pilotctl(b, "daemon", "stop")[0] == 0
    for i in range(3):
        code, doc = pilotctl(a, "send-message", "agent-b", f"while down {i}", "--wait", "0.5", timeout=60)
        assert code == 0 and doc["data"]["state"] == "queued", doc
    code, doc = pilotctl(b, "daemon", "start", "--hostname", "agent-b", "--beacon", daemons.beacon.address)
    assert code == 0, doc
    # The application resumes after the last seq it saw: each new message exactly once, in order.
    assert wait_for(lambda: len(inbox(b, seen[-1]["seq"])) >= 3, 90, interval=0.5)
    new = inbox(b, seen[-1]["seq"])
    assert [m["text"] for m in new] == ["while down 0", "while down 1", "while down 2"]
    # Stored durably: a restart of the receiver keeps them, and nothing arrives twice.
    restart(daemons, b, "agent-b")
    assert [m["text"] for m in inbox(b)] == ["before", "while down 0", "while down 1", "while down 2"]
    assert [m["seq"] for m in inbox(b)] == sorted({m["seq"] for m in inbox(b)})


def _publish_until_subscribed(a, topic):
    def published():
        code, doc = pilotctl(a, "publish", topic, "probe")
        assert code == 0, doc
        return "agent-b" in doc["data"]["subscribers"]

    assert wait_for(published, 30, interval=0.5)


def _subscribe(b, *args, wait="30", timeout=60):
    proc = subprocess.run(PILOTCTL + ["--home", b, "--json", "subscribe", *args, "--timeout", wait],
                          env=environment(), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return [e for e in lines if e.get("event") == "event"]


def test_events_reach_a_wildcard_subscriber_once_across_its_restart(pair, daemons):
    a, b = pair
    feed = subprocess.Popen(PILOTCTL + ["--home", b, "--json", "subscribe", "news.*", "--count", "2", "--timeout", "60"],
                            env=environment(), stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        _publish_until_subscribed(a, "news.probe")
        assert pilotctl(a, "publish", "sports.x", "not for b")[1]["data"]["subscribers"] == []
        assert pilotctl(a, "publish", "news.a.b", "deep")[1]["data"]["subscribers"] == ["agent-b"]
        out, _ = feed.communicate(timeout=70)
    finally:
        feed.kill()
    events = [e for e in map(json.loads, out.splitlines()) if e.get("event") == "event"]
    # Only the probe published once the publisher knew the pattern went to b; sports.x did not match.
    assert [(e["topic"], e["text"]) for e in events] == [("news.probe", "probe"), ("news.a.b", "deep")], events
    last = events[-1]["seq"]
    # The receiver stops; its pattern lingers on the publisher's side, so what is published meanwhile waits.
    assert pilotctl(b, "daemon", "stop")[0] == 0
    assert pilotctl(a, "publish", "news.later", "while b was down")[1]["data"]["subscribers"] == ["agent-b"]
    code, doc = pilotctl(b, "daemon", "start", "--hostname", "agent-b", "--beacon", daemons.beacon.address)
    assert code == 0, doc
    resumed = _subscribe(b, "news.*", "--after", str(last), "--count", "1")
    assert [(e["topic"], e["text"]) for e in resumed] == [("news.later", "while b was down")]
    replay = _subscribe(b, "*", "--after", "0", "--count", "100", wait="3")
    assert "sports.x" not in {e["topic"] for e in replay}
    assert len({e["id"] for e in replay}) == len(replay), replay
    assert [e["topic"] for e in replay][-2:] == ["news.a.b", "news.later"]


def test_an_untrusted_peer_gets_not_trusted(daemons):
    a = daemons.start("agent-a")
    daemons.start("agent-c", "--public")
    code, doc = pilotctl(a, "send-message", "agent-c", "hi", timeout=60)
    assert code == 1 and doc["code"] == "not_trusted", doc
    code, doc = pilotctl(a, "inbox")
    assert code == 0 and doc["data"] == {"messages": [], "last": 0}
