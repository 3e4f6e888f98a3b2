"""
The lifecycle of our handshake requests: the transition table itself, and
TrustManager driving requests through it with the beacon played by hand
(queued / sent / approved / rejected / failed / expired).
"""

from __future__ import annotations

import pathlib

import pytest
from helpers import FakeDirectory, RecordingRequests, Seq, TrustEvents
from twisted.internet.task import Clock

from pilotproto.errors import PilotError
from pilotproto.identity import Identity
from pilotproto.trust.manager import TrustManager
from pilotproto.trust.outgoing import (
    ANSWER_GRACE,
    DEFAULT_EXPIRY,
    LIVE,
    TRANSITIONS,
    Input,
    Output,
    State,
    dot,
    step,
)
from pilotproto.trust.store import TrustStore
from pilotproto.wire import beacon as msgs

# -- the table ---------------------------------------------------------------------------


def test_every_state_and_input_is_in_the_table():
    assert set(TRANSITIONS) == {(s, i) for s in State for i in Input}


def test_final_states_ignore_everything():
    for state in set(State) - LIVE:
        for event in Input:
            assert step(state, event) == (state, ())


def test_the_diagram_in_the_docs_is_the_table():
    path = pathlib.Path(__file__).resolve().parent.parent / "docs" / "trust-request.dot"
    assert path.read_text() == dot(), "regenerate docs/trust-request.dot from pilotproto.trust.outgoing.dot()"


def run(*events, state=State.QUEUED):
    """The states a request passes through, and every output, for ``events``."""
    states, outputs = [state], []
    for event in events:
        state, out = step(state, event)
        states.append(state)
        outputs.extend(out)
    return [s.value for s in states], [o.value for o in outputs]


def test_the_usual_life_queued_sent_approved():
    assert run(Input.BEACON_OK, Input.APPROVED) == (
        ["queued", "sent", "approved"],
        ["report", "stop_sending", "trust_peer"],
    )


def test_a_silent_beacon_leaves_the_request_queued_until_it_takes_it():
    assert run(Input.BEACON_SILENT, Input.BEACON_SILENT, Input.BEACON_OK) == (
        ["queued", "queued", "queued", "sent"],
        ["report", "report", "report"],
    )


def test_refused_rejected_and_expired():
    assert run(Input.BEACON_REFUSED) == (["queued", "failed"], ["report_failed"])
    assert run(Input.BEACON_OK, Input.REJECTED) == (["queued", "sent", "rejected"], ["report", "stop_sending", "drop_advance_trust"])
    assert run(Input.EXPIRED) == (["queued", "expired"], ["stop_sending", "report"])
    assert run(Input.EXPIRED, state=State.SENT) == (["sent", "expired"], ["stop_sending"])


def test_late_beacon_answers_to_a_sent_request_change_nothing():
    for event in (Input.BEACON_OK, Input.BEACON_SILENT, Input.BEACON_REFUSED):
        assert step(State.SENT, event) == (State.SENT, ())


def test_an_answer_that_overtakes_the_beacons_ok_still_reports():
    states, outputs = run(Input.APPROVED)
    assert states == ["queued", "approved"] and "report" in outputs and "trust_peer" in outputs
    assert set(Output) >= {Output(o) for o in outputs}


# -- TrustManager driving it -------------------------------------------------------------


class Fixture:
    def __init__(self, tmp_path):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.identity = Identity.generate()
        self.peer = Identity.generate()
        self.requests = RecordingRequests()
        self.events = TrustEvents()
        self.home = str(tmp_path)
        self.seq = Seq()
        self.manager = self.make()

    def make(self):
        return TrustManager(
            self.clock, self.identity, self.home,
            requests=self.requests, directory=FakeDirectory(), listener=self.events, hostname="agent-a",
        )

    def handshake(self, target="agent-b"):
        results, before = [], set(self.requests.sends)
        self.manager.handshake(target, "why").addBoth(results.append)
        [what] = [w for w in set(self.requests.sends) - before if w[0] == "handshake"]
        return what, results

    def answer(self, what, approved=True):
        signed = msgs.sign(
            msgs.HandshakeAnswer(0, what[1], self.identity.public_key, approved, "agent-b"), self.peer, self.seq.next()
        )
        self.manager.message_received(msgs.Deliver(1, 2, msgs.encode(signed)))

    def states(self):
        return [o["state"] for o in self.manager.outgoing()]


def test_queued_then_sent_then_approved(tmp_path):
    f = Fixture(tmp_path)
    what, results = f.handshake()
    assert f.states() == ["queued"] and results == []
    f.requests.settle(what, "ok")
    assert results[0]["state"] == "sent" and f.states() == ["sent"]
    f.answer(what, approved=True)
    assert f.states() == ["approved"]
    assert f.manager.is_trusted(f.peer.public_key) and f.events.established == [f.peer.public_key]
    assert [p["mutual"] for p in f.manager.trusted()] == [True]
    # Saved: a restarted manager sees the same lifecycle.
    assert [o.state for o in TrustStore.load(f.home).outgoing.values()] == ["approved"]


def test_a_silent_beacon_reports_queued_and_the_request_goes_again_after_registering(tmp_path):
    f = Fixture(tmp_path)
    what, results = f.handshake()
    f.requests.settle(what, "silent")
    assert results[0]["state"] == "queued" and f.states() == ["queued"]
    f.manager.registered()
    assert what in f.requests.sends
    f.requests.settle(what, "ok")
    assert f.states() == ["sent"]


def test_a_refusal_fails_the_request_and_the_command(tmp_path):
    f = Fixture(tmp_path)
    what, results = f.handshake()
    f.requests.settle(what, "error", PilotError.from_dict({"code": "invalid_argument", "message": "bad"}))
    assert results[0].value.code == "invalid_argument"
    assert f.states() == ["failed"]
    f.manager.registered()
    assert what not in f.requests.sends


def test_a_rejection_drops_trust_we_gave_in_advance(tmp_path):
    f = Fixture(tmp_path)
    what, _ = f.handshake()
    # As if a lookup had found the peer's key: trusted in advance, not mutual.
    f.manager.book.trust(f.peer.public_key, "agent-b", "why", mutual=False)
    f.requests.settle(what, "ok")
    f.answer(what, approved=False)
    assert f.states() == ["rejected"]
    assert not f.manager.is_trusted(f.peer.public_key) and f.events.revoked == [f.peer.public_key]


def test_an_answer_that_comes_before_the_beacons_ok_ends_the_copies(tmp_path):
    f = Fixture(tmp_path)
    what, results = f.handshake()
    f.answer(what, approved=True)
    assert results[0]["state"] == "approved" and what in f.requests.cancelled


def test_requests_expire(tmp_path):
    f = Fixture(tmp_path)
    queued, _ = f.handshake("agent-b")
    sent, _ = f.handshake("agent-c")
    f.requests.settle(sent, "ok")
    f.clock.advance(DEFAULT_EXPIRY)
    assert f.states() == ["expired", "sent"] and queued in f.requests.cancelled
    f.clock.advance(ANSWER_GRACE)
    assert f.states() == ["expired", "expired"]
    f.answer(sent, approved=True)
    assert f.manager.counters["mail_unsolicited_answer"] == 1
    assert not f.manager.is_trusted(f.peer.public_key)


def test_a_new_request_to_the_same_target_replaces_the_old_one(tmp_path):
    f = Fixture(tmp_path)
    old, old_results = f.handshake()
    f.requests.settle(old, "silent")
    new, _ = f.handshake()
    assert new != old and len(f.states()) == 1
    assert old_results[0]["state"] == "queued"


def test_the_manager_checks_its_collaborators(tmp_path):
    f = Fixture(tmp_path)
    for bad in ({"requests": object()}, {"directory": object()}, {"listener": object()}):
        kwargs = {"requests": f.requests, "directory": FakeDirectory(), "listener": f.events, **bad}
        with pytest.raises(TypeError, match=next(iter(bad))):
            TrustManager(f.clock, f.identity, f.home, **kwargs)
