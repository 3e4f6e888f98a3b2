"""Trust end to end: a beacon and two pilotctl daemons on loopback."""

from .conftest import pilotctl, wait_for


def lookup_code(home, target):
    code, doc = pilotctl(home, "lookup", target)
    return "ok" if code == 0 else doc["code"]


def test_handshake_approve_revoke_and_restart(daemons):
    a = daemons.start("agent-a")
    b = daemons.start("agent-b")
    assert lookup_code(a, "agent-b") == "not_found"
    assert lookup_code(b, "agent-a") == "not_found"

    code, doc = pilotctl(a, "handshake", "agent-b", "share results")
    assert code == 0 and doc["data"]["state"] == "sent", doc
    pending = wait_for(lambda: pilotctl(b, "pending")[1]["data"]["pending"], 5)
    assert [(p["hostname"], p["reason"]) for p in pending] == [("agent-a", "share results")]

    code, doc = pilotctl(b, "approve", "agent-a")
    assert code == 0 and doc["data"]["peer"]["hostname"] == "agent-a", doc
    assert wait_for(lambda: lookup_code(b, "agent-a") == "ok", 5)
    assert wait_for(lambda: lookup_code(a, "agent-b") == "ok", 5)
    trusted = pilotctl(a, "trust")[1]["data"]["trusted"]
    assert [(p["hostname"], p["mutual"]) for p in trusted] == [("agent-b", True)]

    # Restart both: trust is in each home and the lists are uploaded again.
    for home in (a, b):
        assert pilotctl(home, "daemon", "stop")[0] == 0
    daemons.start("agent-a")
    daemons.start("agent-b")
    assert wait_for(lambda: lookup_code(a, "agent-b") == "ok", 5)
    assert wait_for(lambda: lookup_code(b, "agent-a") == "ok", 5)

    code, doc = pilotctl(a, "revoke", "agent-b")
    assert code == 0, doc
    assert wait_for(lambda: lookup_code(b, "agent-a") == "not_found", 5)
    # agent-b hears of it and stops trusting agent-a too.
    assert wait_for(lambda: pilotctl(b, "trust")[1]["data"]["trusted"] == [], 5)
    assert wait_for(lambda: lookup_code(a, "agent-b") == "not_found", 5)


def test_request_to_an_offline_peer_is_delivered_when_it_comes_online(daemons):
    a = daemons.start("agent-a")
    b = daemons.start("agent-b")
    assert pilotctl(b, "daemon", "stop")[0] == 0

    code, doc = pilotctl(a, "handshake", "agent-b", "while you were out")
    assert code == 0 and doc["data"]["state"] == "sent", doc

    daemons.start("agent-b")
    pending = wait_for(lambda: pilotctl(b, "pending")[1]["data"]["pending"], 5)
    assert [(p["hostname"], p["reason"]) for p in pending] == [("agent-a", "while you were out")]


def test_request_to_a_name_never_seen_waits_for_it(daemons, tmp_path):
    a = daemons.start("agent-a")
    code, doc = pilotctl(a, "handshake", "agent-late", "first contact")
    assert code == 0 and doc["data"]["state"] == "sent", doc
    late = daemons.start("agent-late")
    pending = wait_for(lambda: pilotctl(late, "pending")[1]["data"]["pending"], 5)
    assert [p["hostname"] for p in pending] == ["agent-a"]


def test_clear_errors(daemons):
    a = daemons.start("agent-a")
    code, doc = pilotctl(a, "approve", "agent-zz")
    assert (code, doc["code"]) == (1, "not_found")
    code, doc = pilotctl(a, "revoke", "agent-zz")
    assert (code, doc["code"]) == (1, "not_found")
    code, doc = pilotctl(a, "handshake", "agent-b", "  ")
    assert (code, doc["code"]) == (2, "invalid_argument")
    code, doc = pilotctl(a, "handshake", "agent-a", "me")
    assert (code, doc["code"]) == (2, "invalid_argument")


def test_auto_approve(daemons):
    a = daemons.start("agent-a")
    b = daemons.start("agent-b", "--auto-approve")
    assert pilotctl(a, "handshake", "agent-b", "let me in")[0] == 0
    assert wait_for(lambda: lookup_code(b, "agent-a") == "ok", 5)
    assert wait_for(lambda: lookup_code(a, "agent-b") == "ok", 5)
