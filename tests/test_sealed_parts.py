"""Store-and-forward of any message size and through every beacon (issue 14 item 3): pieces, caps, several links."""

import random

import attrs
import pytest
from helpers import RecordingRequests
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from zope.interface import implementer

from pilotproto.errors import PilotError
from pilotproto.identity import Identity
from pilotproto.interfaces import IBeaconMail
from pilotproto.rendezvous.sealed import (
    KIND_MESSAGE,
    ISealedMailSink,
    SealedMailReader,
    SealedPoster,
    seal_all,
)
from pilotproto.rendezvous.sealed_parts import Reassembly
from pilotproto.wire import DecodeError
from pilotproto.wire import beacon as msgs
from pilotproto.wire.beacon_sealed import (
    MAX_ENVELOPE_BODY,
    MAX_PART,
    MAX_SEALED_BODY,
    SealedPart,
    join_parts,
    split_sealed,
)

A, B, C = Identity.generate(), Identity.generate(), Identity.generate()


def signed_parts(body, sender=A, recipient=B, message_id=0x77):
    return [msgs.sign(r, sender, 100 + i) for i, r in enumerate(seal_all(sender, recipient.public_key, KIND_MESSAGE,
                                                                          message_id, 1_700_000_000, body))]


# -- the wire ---------------------------------------------------------------------------------------


def test_a_64_kib_message_is_a_group_of_pieces_each_one_push():
    parts = signed_parts(b"y" * MAX_ENVELOPE_BODY)
    assert 60 < len(parts) < 80 and all(isinstance(p, SealedPart) for p in parts)
    for p in parts:
        push = msgs.encode(msgs.Deliver(1, 2, msgs.encode(p)))
        assert len(msgs.encode(p)) <= msgs.MAX_DELIVERED and msgs.decode(msgs.decode(push).datagram) == p
    # One that fits a single datagram stays a SealedMail (what nodes already read).
    [one] = seal_all(A, B.public_key, KIND_MESSAGE, 1, 0, b"x" * MAX_SEALED_BODY)
    assert isinstance(one, msgs.SealedMail)
    with pytest.raises(ValueError):
        seal_all(A, B.public_key, KIND_MESSAGE, 1, 0, b"x" * (MAX_ENVELOPE_BODY + 1))


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=msgs.MAX_SEALED + 1, max_size=20 * MAX_PART))
def test_split_then_join_is_the_same_box(box):
    pieces = split_sealed(B.public_key, 9, 0, box)
    assert all(len(p.sealed) <= MAX_PART for p in pieces)
    assert join_parts({p.part: attrs.evolve(p, public_key=A.public_key) for p in pieces}) == box


@settings(max_examples=80, deadline=None)
@given(st.binary(min_size=msgs.MAX_SEALED + 1, max_size=8 * MAX_PART), st.randoms(use_true_random=False),
       st.binary(min_size=msgs.MAX_SEALED + 1, max_size=8 * MAX_PART))
def test_lost_duplicated_reordered_or_foreign_pieces_never_join_into_a_wrong_box(box, rnd, other):
    mine = split_sealed(B.public_key, 9, 0, box)
    theirs = split_sealed(B.public_key, 9, 0, other)  # the same message id sealed again: another digest
    stream = [p for p in mine + theirs for _ in range(rnd.randint(0, 2))]
    rnd.shuffle(stream)
    clock = Clock()
    joined = Reassembly(clock)
    for p in stream:
        whole = joined.add(attrs.evolve(p, public_key=A.public_key), ("link", rnd.random()))
        if whole is not None:
            _, got, _ = whole
            assert got in (box, other)  # whole, and exactly one of the two
    # A piece changed in flight (same digest, other bytes) makes no box at all.
    bad = {p.part: attrs.evolve(p, public_key=A.public_key) for p in mine}
    bad[0] = attrs.evolve(bad[0], sealed=bytes([bad[0].sealed[0] ^ 1]) + bad[0].sealed[1:])
    with pytest.raises(DecodeError):
        join_parts(bad)
    del bad[0]
    with pytest.raises(DecodeError):
        join_parts(bad)


def test_reassembly_is_bounded_per_sender_and_forgets_partial_groups():
    clock = Clock()
    joined = Reassembly(clock, groups_per_sender=2, bytes_per_sender=10 * MAX_PART, expire_after=60)
    groups = [signed_parts(b"%d" % i * 3000, message_id=i) for i in range(3)]
    assert joined.add(groups[0][0], "a0") is None and joined.add(groups[1][0], "b0") is None
    assert joined.add(groups[2][0], "c0") is None and joined.counters["sealed_part_refused"] == 1  # a third group
    assert joined.add(signed_parts(b"c" * 3000, sender=C, message_id=5)[0], "other") is None  # another sender: room
    assert joined.counters["sealed_part_refused"] == 1
    clock.advance(60)
    assert joined.size == 0 and joined.counters["sealed_group_expired"] == 3
    big = signed_parts(b"z" * (12 * MAX_PART), message_id=8)
    for p in big[:10]:
        joined.add(p, p.part)
    assert joined.add(big[10], 10) is None and joined.counters["sealed_part_refused"] == 2  # over the byte cap


# -- the recipient: one reader per beacon, pieces joined in one place -----------------------------------


@implementer(ISealedMailSink)
class Sink:
    def __init__(self):
        self.kept = []

    def sealed_mail_received(self, sender_key, envelope):
        self.kept.append((sender_key, envelope.message_id, envelope.body))
        return True


@implementer(IBeaconMail)
class Next:
    def message_received(self, msg):
        return False

    def registered(self):
        """Nothing to do."""


def test_pieces_from_two_beacons_make_one_message_acked_to_each_beacon_that_pushed_one():
    clock, sink = Clock(), Sink()
    joined = Reassembly(clock)
    link1, link2 = RecordingRequests(), RecordingRequests()
    reader1 = SealedMailReader(B, link1, Next(), sink=sink, parts=joined)
    reader2 = SealedMailReader(B, link2, Next(), sink=sink, parts=joined)
    body = bytes(random.Random(1).randrange(256) for _ in range(20 * 1024))
    parts = signed_parts(body)
    order = list(range(len(parts)))
    random.Random(2).shuffle(order)
    for n, i in enumerate(order):
        reader = reader1 if n % 2 else reader2
        reader.message_received(msgs.Deliver(1, 1000 + i, msgs.encode(parts[i])))
        if n == 3:
            reader1.message_received(msgs.Deliver(1, 5000 + i, msgs.encode(parts[i])))  # beacon 1's copy too
        assert (sink.kept != []) == (n == len(parts) - 1)  # nothing before the last piece
        if n < len(parts) - 1:
            assert link1.posted == link2.posted == []  # nothing acked before the whole is kept
    assert sink.kept == [(A.public_key, 0x77, body)]
    acked1, acked2 = {m.mail_id for m in link1.posted}, {m.mail_id for m in link2.posted}
    assert acked1 | acked2 == {1000 + i for i in range(len(parts))} | {5000 + order[3]}
    assert 5000 + order[3] in acked1 and not acked1 & acked2
    # A late copy of a piece (a push crossing the ack) is acked at once, and is no second message.
    reader2.message_received(msgs.Deliver(1, 9999, msgs.encode(parts[0])))
    assert link2.posted[-1].mail_id == 9999 and len(sink.kept) == 1


def test_a_piece_not_signed_by_its_sender_or_not_for_us_is_dropped_and_acked():
    clock, sink, link = Clock(), Sink(), RecordingRequests()
    reader = SealedMailReader(B, link, Next(), sink=sink, parts=Reassembly(clock))
    forged = attrs.evolve(signed_parts(b"f" * 3000)[0], public_key=C.public_key)
    reader.message_received(msgs.Deliver(1, 1, msgs.encode(forged)))
    reader.message_received(msgs.Deliver(1, 2, msgs.encode(signed_parts(b"f" * 3000, recipient=C)[0])))
    assert [m.mail_id for m in link.posted] == [1, 2] and reader.counters["sealed_rejected"] == 2


# -- the sender: every registered beacon, the first that keeps all is enough -------------------------------


@attrs.define
class Link:
    requests: object
    registered: bool = True


def test_the_poster_sends_the_same_pieces_to_every_registered_beacon_and_the_first_ok_is_queued():
    one, two, down = Link(RecordingRequests()), Link(RecordingRequests()), Link(RecordingRequests(), registered=False)
    poster = SealedPoster(A, links=[one, two, down])
    body = b"q" * 12000
    d = poster.post(B.public_key, KIND_MESSAGE, 0x10, 0, body)
    assert len(one.requests.asked) == SealedPoster.WINDOW and down.requests.asked == []  # a window at a time
    for _ in range(20):
        for request, answer in list(one.requests.asked):
            if not answer.called:
                answer.callback(msgs.Ok(0))
    assert d.called and d.result is True
    pieces = [r for r, _ in one.requests.asked]
    assert [r for r, _ in two.requests.asked] == pieces[: SealedPoster.WINDOW]  # the same bytes: sealed once
    assert join_parts({p.part: p for p in pieces}) is not None
    # A beacon that refuses while another keeps it all does not fail the post; all refusing does.
    failing = SealedPoster(A, links=[one, two])
    f = failing.post(B.public_key, KIND_MESSAGE, 0x11, 0, b"r")
    one.requests.asked[-1][1].errback(PilotError("full"))
    assert not f.called
    two.requests.asked[-1][1].errback(PilotError("full too"))
    assert isinstance(f.result.value, PilotError) and "full" == f.result.value.message
    f.addErrback(lambda _: None)
    # A retry of a message not yet kept re-sends the same sealing (the beacon replaces piece by piece).
    again = failing.post(B.public_key, KIND_MESSAGE, 0x11, 0, b"r")
    assert one.requests.asked[-1][0] == one.requests.asked[-2][0]
    again.addErrback(lambda _: None)


def test_no_registered_beacon_posts_to_all():
    links = [Link(RecordingRequests(), registered=False), Link(RecordingRequests(), registered=False)]
    SealedPoster(A, links=links).post(B.public_key, KIND_MESSAGE, 1, 0, b"hi").addErrback(lambda _: None)
    assert [len(link.requests.asked) for link in links] == [1, 1]


# -- the beacon: pieces are mail, the caps count bytes ------------------------------------------------


def test_the_beacon_keeps_pushes_and_forgets_pieces_and_its_caps_count_bytes():
    from test_sealed_mail import A_EP, B_EP, Beacon

    clock = Clock()
    beacon = Beacon(clock)
    beacon.register(A, A_EP, "agent-a")
    parts = seal_all(A, B.public_key, KIND_MESSAGE, 0x99, 0, b"p" * 20_000)
    assert all(isinstance(beacon.ask(A, A_EP, p)[0], msgs.Ok) for p in parts)
    assert isinstance(beacon.ask(A, A_EP, parts[0])[0], msgs.Ok) and len(beacon.server.mailbox) == len(parts)  # replaces
    assert beacon.server.counters["sealed_parts_posted"] == len(parts) + 1
    # Trust mail still has room: sealed mail does not count towards its caps.
    [ok] = beacon.ask(A, A_EP, msgs.Revoke(0, B.public_key))
    assert isinstance(ok, msgs.Ok)
    mailbox = beacon.server.mailbox
    mailbox.sealed_bytes_per_pair = sum(len(m.datagram) for m in mailbox.waiting_for(("key", B.public_key))) + 500
    [refused] = beacon.ask(A, A_EP, seal_all(A, B.public_key, KIND_MESSAGE, 0x9A, 0, b"p" * 2000)[0])
    assert isinstance(refused, msgs.Error) and refused.code == "rate_limited"
    mailbox.sealed_bytes_per_pair = 1 << 30
    mailbox.sealed_bytes_per_sender = mailbox._sealed_from[A.public_key] + 500
    [refused] = beacon.ask(A, A_EP, seal_all(A, B.public_key, KIND_MESSAGE, 0x9B, 0, b"p" * 2000)[0])
    assert isinstance(refused, msgs.Error) and refused.code == "rate_limited"
    # B comes: every piece is pushed; its acks empty the box.
    beacon.register(B, B_EP, "agent-b")
    clock.advance(0)
    pushes = beacon.pushes(B_EP)
    pieces = [msgs.decode(p.datagram) for p in pushes if isinstance(msgs.decode(p.datagram), SealedPart)]
    assert sorted(p.part for p in pieces) == list(range(len(parts)))
    for push in pushes:
        beacon.ask(B, B_EP, msgs.MailAck(0, push.mail_id))
    assert len(mailbox) == 0 and mailbox._sealed_from == {}
