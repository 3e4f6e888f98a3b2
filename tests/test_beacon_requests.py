"""SignedRequests, the node's one retrying sender of signed requests, on a Clock."""

from __future__ import annotations

import pytest
from helpers import RecordingChannel, Seq
from twisted.internet.task import Clock

from pilotproto.errors import NotFound, NotRegistered, PilotError, Unavailable
from pilotproto.identity import Identity, verify_signature
from pilotproto.rendezvous.requests import (
    ASK_DELAYS,
    SEND_DELAYS,
    TRANSIENT,
    SignedRequests,
)
from pilotproto.wire import beacon as msgs


class Fixture:
    def __init__(self):
        self.clock = Clock()
        self.identity = Identity.generate()
        self.channel = RecordingChannel()
        ids = iter(range(1, 10_000))
        self.requests = SignedRequests(self.clock, self.identity, self.channel, Seq(), ids=lambda: next(ids))
        self.events = []

    def copies(self):
        """Every copy sent, decoded, in order."""
        return self.channel.messages()

    def send(self, what=("visibility", 0)):
        self.requests.send(
            what,
            msgs.SetVisibility(0, 1, 0, 1, ()),
            lambda: self.events.append("ok"),
            lambda error: self.events.append(("error", error.code, error.message)),
            lambda: self.events.append("gave up"),
        )
        return self.copies()[-1].request_id


def copy_times(f, until):
    times, seen = [], 0
    while f.clock.seconds() <= until:
        if len(f.channel.sent) > seen:
            times.append(f.clock.seconds())
            seen = len(f.channel.sent)
        f.clock.advance(0.25)
    return times


def lookup(target=b"agent-b"):
    return msgs.Lookup(0, False, target)


def result_of(d):
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def test_ask_sends_five_signed_copies_of_one_request_then_gives_up():
    f = Fixture()
    d = f.requests.ask(lookup())
    assert copy_times(f, 9) == [0.0, 0.5, 1.5, 3.0, 5.0]
    copies = f.copies()
    assert len({c.request_id for c in copies}) == 1 and copies[0].request_id != 0
    assert len({c.seq for c in copies}) == 5
    for copy in copies:
        assert verify_signature(f.identity.public_key, msgs.signed_bytes(copy), copy.signature)
    failure = result_of(d)
    assert failure.check(Unavailable) and "did not answer" in failure.getErrorMessage()
    assert sum(ASK_DELAYS) == 8.0 and f.clock.getDelayedCalls() == []


def test_an_answer_to_any_copy_settles_an_ask():
    f = Fixture()
    d = f.requests.ask(lookup())
    f.clock.advance(0.5)
    rid = f.copies()[-1].request_id
    answer = msgs.LookupResult(rid, "agent-b", b"\0" * 8, b"\1" * 32, 0, ())
    assert f.requests.message_received(answer)
    assert result_of(d) is answer
    assert f.clock.getDelayedCalls() == []
    assert not f.requests.message_received(answer)


@pytest.mark.parametrize("code,error", [("not_found", NotFound), ("not_registered", NotRegistered), ("refused", PilotError)])
def test_an_error_fails_an_ask_with_its_pilot_error(code, error):
    f = Fixture()
    d = f.requests.ask(lookup())
    f.requests.message_received(msgs.Error(f.copies()[-1].request_id, code, "no"))
    failure = result_of(d)
    assert failure.check(error) and failure.value.code == code


def test_a_cancelled_ask_stops_its_copies():
    f = Fixture()
    d = f.requests.ask(lookup())
    d.cancel()
    d.addErrback(lambda failure: None)
    f.clock.advance(10)
    assert len(f.copies()) == 1 and f.clock.getDelayedCalls() == []


def test_send_resends_four_times_then_gives_up_for_now():
    f = Fixture()
    f.send()
    assert copy_times(f, 8) == [0.0, 0.5, 1.5, 3.5]
    assert f.events == ["gave up"]
    assert sum(SEND_DELAYS) == 7.5 and not f.requests.in_flight(("visibility", 0))


def test_send_settles_on_ok():
    f = Fixture()
    rid = f.send()
    assert f.requests.in_flight(("visibility", 0))
    assert f.requests.message_received(msgs.Ok(rid))
    assert f.events == ["ok"] and not f.requests.in_flight(("visibility", 0))
    assert f.clock.getDelayedCalls() == []


@pytest.mark.parametrize("code", sorted(TRANSIENT))
def test_transient_errors_wait_for_the_next_copy(code):
    f = Fixture()
    rid = f.send()
    assert f.requests.message_received(msgs.Error(rid, code, "later"))
    assert f.events == [] and f.requests.in_flight(("visibility", 0))
    f.clock.advance(0.5)
    assert len(f.copies()) == 2 and f.copies()[-1].request_id == rid
    f.requests.message_received(msgs.Ok(rid))
    assert f.events == ["ok"]


def test_a_refusal_ends_a_send():
    f = Fixture()
    rid = f.send()
    f.requests.message_received(msgs.Error(rid, "invalid_argument", "visibility list too long"))
    assert f.events == [("error", "invalid_argument", "visibility list too long")]
    f.clock.advance(10)
    assert len(f.copies()) == 1


def test_the_same_name_replaces_the_copy_in_flight_and_cancel_matching_stops_a_family():
    f = Fixture()
    first = f.send(("visibility", 0))
    second = f.send(("visibility", 0))
    assert first != second
    assert not f.requests.message_received(msgs.Ok(first))
    f.send(("visibility", 1))
    f.send(("outbox", 7))
    f.requests.cancel_matching(("visibility",))
    assert not f.requests.in_flight(("visibility", 0)) and not f.requests.in_flight(("visibility", 1))
    assert f.requests.in_flight(("outbox", 7))
    f.requests.cancel(("outbox", 7))
    assert f.clock.getDelayedCalls() == [] and f.events == []


def test_post_sends_one_signed_copy_and_waits_for_nothing():
    f = Fixture()
    f.requests.post(msgs.MailAck(0, 42))
    [ack] = f.copies()
    assert isinstance(ack, msgs.MailAck) and ack.mail_id == 42 and ack.request_id != 0
    assert verify_signature(f.identity.public_key, msgs.signed_bytes(ack), ack.signature)
    assert f.clock.getDelayedCalls() == []
    assert not f.requests.message_received(msgs.Ok(ack.request_id))


def test_stop_fails_asks_and_drops_sends_quietly():
    f = Fixture()
    d = f.requests.ask(lookup())
    f.send()
    f.requests.stop()
    failure = result_of(d)
    assert failure.check(Unavailable) and "shutting down" in failure.getErrorMessage()
    assert f.events == [] and f.clock.getDelayedCalls() == []


def test_the_channel_must_be_an_object_not_a_method():
    channel = RecordingChannel()
    with pytest.raises(TypeError, match="IBeaconChannel"):
        SignedRequests(Clock(), Identity.generate(), channel.send_to_beacon, Seq())
