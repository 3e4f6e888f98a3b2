"""
Trust binds keys, not names (issue 9), through real processes: the name
takeover that used to hijack a crossing request.

A private node (victim) asks a public one (bob) for trust, so victim records
bob's key.  Bob goes offline and his name is freed (the beacon restarts
without its state); an attacker registers ``bob`` with its own key and asks
victim for trust as ``bob``.  Victim must not take that for bob's answer:
the request waits, flagged, and the attacker still cannot look victim up.
"""

import os

from pilotproto.identity import fingerprint

from .conftest import pilotctl, wait_for


def info(home):
    code, doc = pilotctl(home, "info")
    assert code == 0, doc
    return doc["data"]


def key_fingerprint(home):
    import base64

    return fingerprint(base64.b64decode(info(home)["public_key"]))


def test_a_name_taken_over_cannot_answer_for_the_key_we_asked(daemons, beacon, tmp_path):
    victim = daemons.start("victim")
    bob = daemons.start("bob", "--public")
    bob_key = key_fingerprint(bob)

    code, doc = pilotctl(victim, "handshake", "bob", "share results")
    assert code == 0, doc
    # Bob is public: victim's lookup found his key and recorded it with the request.
    outgoing = wait_for(lambda: [o for o in pilotctl(victim, "pending")[1]["data"]["outgoing"] if o["fingerprint"]], 5)
    assert [o["fingerprint"] for o in outgoing] == [bob_key]

    # Bob goes offline and the beacon restarts without its state: the name "bob" is free.
    assert pilotctl(bob, "daemon", "stop")[0] == 0
    beacon.kill()
    beacon.workdir = str(tmp_path / "beacon-without-state")
    os.makedirs(beacon.workdir)
    beacon.start()
    assert wait_for(lambda: info(victim)["registered"], 30), "victim did not register with the new beacon"

    # The attacker registers "bob" with its own key and asks victim, as bob.
    attacker = str(tmp_path / "attacker")
    daemons.homes.append(attacker)
    code, doc = pilotctl(attacker, "daemon", "start", "--hostname", "bob", "--beacon", beacon.address)
    assert code == 0, doc
    attacker_key = key_fingerprint(attacker)
    assert attacker_key != bob_key
    code, doc = pilotctl(attacker, "handshake", "victim", "it is me, bob")
    assert code == 0, doc

    pending = wait_for(lambda: pilotctl(victim, "pending")[1]["data"]["pending"], 10)
    assert [(p["hostname"], p["fingerprint"]) for p in pending] == [("bob", attacker_key)], pending
    conflict = pending[0]["name_conflict"]
    assert conflict["message"] == "name now held by a different key" and conflict["known_fingerprint"] == bob_key
    # Victim still trusts bob's key only, and not mutually: nobody answered for it.
    trusted = pilotctl(victim, "trust")[1]["data"]["trusted"]
    assert [(p["fingerprint"], p["mutual"]) for p in trusted] == [(bob_key, False)]
    # The attacker cannot find victim, now or after victim re-uploaded its list.
    code, doc = pilotctl(attacker, "lookup", "victim")
    assert (code, doc["code"]) != (0, None) and doc["code"] == "not_found", doc
    # And approving "bob" by name cannot pick the impostor.
    code, doc = pilotctl(victim, "approve", "bob")
    assert doc["code"] == "invalid_argument" and "different key" in doc["message"], doc
    code, doc = pilotctl(attacker, "lookup", "victim")
    assert doc["code"] == "not_found", doc
