"""Issue 3 through pilotctl: ping needs trust, works after approve, stops at revoke, survives restarts."""

import time

import pytest

from .conftest import pilotctl, wait_for

pytestmark = pytest.mark.integration


def ping(home, target, *args):
    return pilotctl(home, "ping", target, *args, timeout=60)


def test_ping_follows_trust(daemons):
    a = daemons.start("agent-a")
    b = daemons.start("agent-b")

    # Before trust: the private peer is invisible and ping fails fast.
    started = time.monotonic()
    code, doc = ping(a, "agent-b", "--count", "1")
    assert code != 0 and doc["code"] == "not_found" and doc["hint"]
    assert time.monotonic() - started < 5

    assert pilotctl(a, "handshake", "agent-b", "ping test")[0] == 0
    assert wait_for(lambda: pilotctl(b, "pending")[1]["data"]["pending"], 5)
    assert pilotctl(b, "approve", "agent-a")[0] == 0
    assert wait_for(lambda: pilotctl(a, "lookup", "agent-b")[0] == 0, 5)

    code, doc = ping(a, "agent-b", "--count", "4", "--interval", "0.2")
    assert code == 0, doc
    result = doc["data"]
    assert result["sent"] == 4 and result["received"] == 4 and result["loss_pct"] == 0
    assert all(r["path"] in ("relay", "direct", "punched", "lan") for r in result["replies"])
    code, peers = pilotctl(a, "peers")
    assert code == 0 and peers["data"]["peers"][0]["hostname"] == "agent-b"

    # After restarting both daemons, trust still holds and ping works again.
    for home in (a, b):
        assert pilotctl(home, "daemon", "stop")[0] == 0
    daemons.start("agent-a")
    daemons.start("agent-b")
    assert wait_for(lambda: pilotctl(a, "lookup", "agent-b")[0] == 0, 10)
    code, doc = ping(a, "agent-b", "--count", "2", "--interval", "0.2")
    assert code == 0 and doc["data"]["received"] == 2, doc

    # Revoke: the peer's next ping is refused at once, with a clear code, not
    # left to time out (the reply timeout is 10 s; the bound leaves room for
    # starting the pilotctl process on a loaded machine).
    assert pilotctl(b, "revoke", "agent-a")[0] == 0
    started = time.monotonic()
    code, doc = ping(a, "agent-b", "--count", "1", "--timeout", "10")
    assert code != 0 and doc["code"] in ("refused", "not_trusted", "not_found"), doc
    assert time.monotonic() - started < 5

    # Neither side lists the revoked session as a "down" row (issue 10).
    for home, other in ((a, "agent-b"), (b, "agent-a")):
        assert wait_for(lambda: not [p for p in pilotctl(home, "peers")[1]["data"]["peers"] if p["hostname"] == other], 5), home
