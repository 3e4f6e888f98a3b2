"""The durable outbox without a network: order, one in flight, backoff, expiry, resume, revocation."""

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface import implementer

from pilotproto.errors import InvalidArgument, PilotError, Timeout
from pilotproto.interfaces import IItemCarrier
from pilotproto.node.mailstore import OutboxStore
from pilotproto.node.outbox import TRANSITIONS, Outbox, Phase

PEER = "0:0000.0000.00B0"


@implementer(IItemCarrier)
class FakeCarrier:
    """Records each delivery; the test answers it."""

    def __init__(self):
        self.calls = []

    def deliver(self, address, port, header, data):
        d = defer.Deferred()
        self.calls.append((address, header["id"], data, d))
        return d

    def ids(self):
        return [c[1] for c in self.calls]

    def ack(self, i=-1):
        self.calls[i][3].callback({"status": "ok", "id": self.calls[i][1]})

    def fail(self, error, i=-1):
        self.calls[i][3].errback(error)


def make(tmp_path, clock=None, **options):
    clock = clock or Clock()
    carrier = FakeCarrier()
    outbox = Outbox(clock, OutboxStore(str(tmp_path)), carrier, **options)
    outbox.start()
    return outbox, carrier, clock


def queue(outbox, i, address=PEER):
    id_ = f"{i:016x}"
    return outbox.enqueue(address, 1001, id_, "message", {"id": id_}, f"m{i}".encode())


def test_every_state_and_event_has_a_transition():
    states = {s for s, _ in TRANSITIONS}
    events = {e for _, e in TRANSITIONS}
    assert states == set(Phase) and len(TRANSITIONS) == len(states) * len(events)


def test_one_in_flight_per_peer_in_order(tmp_path):
    outbox, carrier, _ = make(tmp_path)
    acks = [outbox.when_acked(queue(outbox, i)) for i in range(3)]
    assert carrier.ids() == [f"{0:016x}"]
    carrier.ack()
    assert carrier.ids() == [f"{0:016x}", f"{1:016x}"]
    carrier.ack()
    carrier.ack()
    assert [d.called for d in acks] == [True, True, True]
    assert outbox.store.rows() == [] and outbox.queues[PEER].state is Phase.IDLE


def test_peers_do_not_wait_for_each_other(tmp_path):
    outbox, carrier, _ = make(tmp_path)
    queue(outbox, 1)
    queue(outbox, 2, address="0:0000.0000.00C0")
    assert [c[0] for c in carrier.calls] == [PEER, "0:0000.0000.00C0"]


def test_failures_back_off_doubling_to_the_cap_and_retry_the_same_item(tmp_path):
    outbox, carrier, clock = make(tmp_path, first_delay=1.0, max_delay=8.0)
    queue(outbox, 1)
    queue(outbox, 2)
    waits = []
    for _ in range(6):
        carrier.fail(Timeout("peer offline"))
        before = len(carrier.calls)
        delay = 0.0
        while len(carrier.calls) == before:
            clock.advance(0.5)
            delay += 0.5
        waits.append(delay)
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert set(carrier.ids()) == {f"{1:016x}"}  # item 2 waits behind item 1
    carrier.ack()
    assert carrier.ids()[-1] == f"{2:016x}"


def test_no_space_is_retried_and_invalid_argument_dropped(tmp_path):
    outbox, carrier, clock = make(tmp_path)
    first = outbox.when_acked(queue(outbox, 1))
    queue(outbox, 2)
    carrier.fail(PilotError.from_dict({"code": "no_space", "message": "full"}))
    assert outbox.queues[PEER].state is Phase.BACKOFF
    clock.advance(1)
    carrier.fail(InvalidArgument("no"))
    assert isinstance(first.result.value, InvalidArgument)
    first.addErrback(lambda f: None)
    assert carrier.ids()[-1] == f"{2:016x}" and outbox.queues[PEER].state is Phase.SENDING


def test_the_peer_showing_up_retries_at_once(tmp_path):
    outbox, carrier, clock = make(tmp_path, first_delay=30.0)
    queue(outbox, 1)
    carrier.fail(Timeout("offline"))
    outbox.peer_seen(PEER)
    assert len(carrier.calls) == 2
    carrier.ack()
    clock.advance(60)
    assert len(carrier.calls) == 2


def test_items_older_than_max_age_are_dropped(tmp_path):
    outbox, carrier, clock = make(tmp_path, first_delay=10.0, max_age=100.0)
    acked = outbox.when_acked(queue(outbox, 1))
    failures = []
    acked.addErrback(failures.append)
    for _ in range(20):
        if carrier.calls and not carrier.calls[-1][3].called:
            carrier.fail(Timeout("offline"))
        clock.advance(10)
    assert failures and outbox.store.rows() == [] and outbox.queues[PEER].state is Phase.IDLE


def test_a_restart_resumes_the_stored_outbox(tmp_path):
    outbox, carrier, _ = make(tmp_path)
    for i in range(3):
        queue(outbox, i)
    carrier.ack()
    outbox.stop()
    outbox.store.close()
    again, carrier2, _ = make(tmp_path)
    assert carrier2.ids() == [f"{1:016x}"]
    carrier2.ack()
    carrier2.ack()
    assert again.store.rows() == []


def test_dropping_a_peer_forgets_its_items_and_stops_its_queue(tmp_path):
    outbox, carrier, clock = make(tmp_path)
    acked = outbox.when_acked(queue(outbox, 1))
    queue(outbox, 2)
    acked.addErrback(lambda f: f.trap(PilotError))
    outbox.drop_peer(PEER)
    assert outbox.store.rows() == [] and acked.called
    clock.advance(1000)
    assert len(carrier.calls) == 1


def test_a_newer_announcement_replaces_an_unsent_one(tmp_path):
    outbox, carrier, _ = make(tmp_path)
    queue(outbox, 1)  # in flight
    outbox.enqueue(PEER, 1002, "a" * 16, "subscriptions", {"id": "a" * 16}, b"")
    outbox.enqueue(PEER, 1002, "b" * 16, "subscriptions", {"id": "b" * 16}, b"", replaces="subscriptions")
    carrier.ack()
    assert carrier.ids()[-1] == "b" * 16
    carrier.ack()
    assert outbox.store.rows() == []


def test_stop_fails_waiters_and_cancels_delivery(tmp_path):
    outbox, carrier, _ = make(tmp_path)
    acked = outbox.when_acked(queue(outbox, 1))
    errors = []
    acked.addErrback(errors.append)
    outbox.stop()
    assert errors and carrier.calls[0][3].called
    assert len(outbox.store.rows()) == 1  # kept for the next start
    with pytest.raises(KeyError):
        outbox.queues[PEER]
