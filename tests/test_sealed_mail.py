"""Store-and-forward (issue 14 item 3): sealing, the beacon's keeping of sealed mail, and both nodes' sides, on a Clock."""

import hashlib

import attrs
import pytest
from helpers import RecordingRequests
from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface import implementer

from pilotproto.beacon.mailbox import PER_PAIR, SEALED_PER_PAIR
from pilotproto.beacon.server import BeaconServer
from pilotproto.beacon.store import SQLiteStore
from pilotproto.errors import PilotError
from pilotproto.identity import Identity
from pilotproto.interfaces import IBeaconMail, IItemCarrier, IMailPeers
from pilotproto.node.inbox import Inbox
from pilotproto.node.mailstore import MailStore, OutboxStore
from pilotproto.node.outbox import Outbox
from pilotproto.node.sealed import StoreAndForward
from pilotproto.rendezvous.sealed import (
    KIND_MESSAGE,
    KIND_RECEIPT,
    SealedMailReader,
    SealedMailRejected,
    SealedPoster,
    open_sealed,
    seal,
)
from pilotproto.trust.book import address_of
from pilotproto.wire import Endpoint
from pilotproto.wire import beacon as msgs
from pilotproto.wire.beacon_sealed import MAX_ENVELOPE_BODY, MAX_SEALED_BODY, Envelope

A, B, C = Identity.generate(), Identity.generate(), Identity.generate()
A_EP, B_EP = Endpoint("198.51.100.7", 40001), Endpoint("203.0.113.9", 40002)


def sealed_by(sender, recipient_key, body=b"hello", message_id=0x1234, seq=5, kind=KIND_MESSAGE):
    return msgs.sign(seal(sender, recipient_key, kind, message_id, 1_700_000_000, body), sender, seq)


# -- sealing ----------------------------------------------------------------------------------


def test_a_sealed_message_opens_for_its_recipient_only_and_the_beacon_cannot_read_it():
    mail = msgs.decode(msgs.encode(sealed_by(A, B.public_key, b"the secret plan")))
    assert b"the secret plan" not in msgs.encode(mail)
    envelope = open_sealed(B, mail)
    assert (envelope.kind, envelope.body, envelope.message_id) == (KIND_MESSAGE, b"the secret plan", 0x1234)
    with pytest.raises(SealedMailRejected):
        open_sealed(C, mail)  # addressed to B
    with pytest.raises(SealedMailRejected):
        open_sealed(C, msgs.sign(attrs.evolve(mail, recipient_key=C.public_key), A, 6))  # re-addressed: C cannot open it


def test_a_blob_re_posted_by_another_key_is_rejected():
    mail = sealed_by(A, B.public_key)
    reposted = msgs.sign(msgs.SealedMail(0, B.public_key, mail.message_id, 0, mail.sealed), C, 9)
    with pytest.raises(SealedMailRejected, match="not signed by the node that posted it"):
        open_sealed(B, reposted)


def test_an_envelope_re_sealed_to_a_third_node_is_rejected():
    # A writes to B; B re-seals A's signed envelope to C and posts it as itself.
    envelope = open_sealed(B, sealed_by(A, B.public_key))
    from nacl.public import PublicKey, SealedBox

    from pilotproto.identity import x25519_from_ed25519_public
    blob = SealedBox(PublicKey(x25519_from_ed25519_public(C.public_key))).encrypt(envelope.encode())
    with pytest.raises(SealedMailRejected):
        open_sealed(C, msgs.sign(msgs.SealedMail(0, C.public_key, envelope.message_id, 0, blob), B, 3))
    # And one signed by A but written to C, sealed to B, is not B's.
    to_c = Envelope(KIND_MESSAGE, C.public_key, 7, 0, b"x")
    to_c = attrs.evolve(to_c, signature=A.sign(to_c.signed_bytes(A.public_key)))
    blob = SealedBox(PublicKey(x25519_from_ed25519_public(B.public_key))).encrypt(to_c.encode())
    with pytest.raises(SealedMailRejected, match="written to another node"):
        open_sealed(B, msgs.sign(msgs.SealedMail(0, B.public_key, 7, 0, blob), A, 4))


def test_tampered_or_forged_sealed_mail_is_rejected():
    mail = sealed_by(A, B.public_key)
    flipped = mail.sealed[:-1] + bytes([mail.sealed[-1] ^ 1])
    with pytest.raises(SealedMailRejected):
        open_sealed(B, msgs.sign(attrs.evolve(mail, sealed=flipped), A, 6))
    with pytest.raises(SealedMailRejected, match="outer signature"):
        open_sealed(B, attrs.evolve(mail, message_id=99))  # signature no longer covers it
    with pytest.raises(SealedMailRejected, match="id is not the mail's"):
        open_sealed(B, msgs.sign(attrs.evolve(mail, message_id=99), A, 6))


def test_the_largest_sealed_message_fits_one_push():
    mail = sealed_by(A, B.public_key, b"x" * MAX_SEALED_BODY)
    push = msgs.encode(msgs.Deliver(1, 2, msgs.encode(mail)))
    assert msgs.decode(push).datagram == msgs.encode(mail)
    with pytest.raises(ValueError):
        sealed_by(A, B.public_key, b"x" * (MAX_SEALED_BODY + 1))


# -- the beacon keeps it ------------------------------------------------------------------------


class Beacon:
    def __init__(self, clock, store=None):
        self.pushed = []
        self.server = BeaconServer(clock, store=store, send=lambda d, ep: self.pushed.append((msgs.decode(d), ep)))
        self.seq = {}

    def ask(self, identity, endpoint, msg):
        if msg.SIGNED:
            self.seq[identity.public_key] = self.seq.get(identity.public_key, 1000) + 1
            msg = msgs.sign(msg, identity, self.seq[identity.public_key])
        return [msgs.decode(d) for d, _ in self.server.datagram_received(msgs.encode(msg), endpoint)]

    def register(self, identity, endpoint, name):
        [challenge] = self.ask(identity, endpoint, msgs.Hello(1))
        [reply] = self.ask(identity, endpoint, msgs.Register(2, challenge.nonce, name))
        assert isinstance(reply, msgs.Registered)

    def post(self, identity, endpoint, recipient, message_id, body=b"hi"):
        mail = seal(identity, recipient.public_key, KIND_MESSAGE, message_id, 0, body)
        return self.ask(identity, endpoint, mail)

    def pushes(self, endpoint):
        return [m for m, ep in self.pushed if ep == endpoint and isinstance(m, msgs.Deliver)]


def test_the_beacon_keeps_sealed_mail_for_an_offline_key_across_a_restart_and_pushes_it_on_registration(tmp_path):
    clock = Clock()
    beacon = Beacon(clock, SQLiteStore(str(tmp_path)))
    beacon.register(A, A_EP, "agent-a")
    [ok] = beacon.post(A, A_EP, B, 0x42, b"while you were out")
    assert isinstance(ok, msgs.Ok) and beacon.server.counters["sealed_posted"] == 1
    beacon.server.store.close()
    # The beacon restarts; B has never registered.
    beacon = Beacon(clock, SQLiteStore(str(tmp_path)))
    beacon.register(B, B_EP, "agent-b")
    clock.advance(0)
    [push] = beacon.pushes(B_EP)
    assert open_sealed(B, msgs.decode(push.datagram)).body == b"while you were out"
    assert beacon.ask(B, B_EP, msgs.MailAck(9, push.mail_id)) == []
    assert len(beacon.server.mailbox) == 0


def test_sealed_mail_has_its_own_per_pair_cap_and_a_resend_replaces():
    clock = Clock()
    beacon = Beacon(clock)
    beacon.register(A, A_EP, "agent-a")
    assert SEALED_PER_PAIR > PER_PAIR
    cap = beacon.server.mailbox.sealed_per_pair = PER_PAIR + 4  # the default (512) in datagrams is slow to fill
    for i in range(cap):
        assert isinstance(beacon.post(A, A_EP, B, i)[0], msgs.Ok)
    assert isinstance(beacon.post(A, A_EP, B, 3)[0], msgs.Ok)  # the same id again: replaces
    [refused] = beacon.post(A, A_EP, B, 10_000)
    assert isinstance(refused, msgs.Error) and refused.code == "rate_limited"
    assert len(beacon.server.mailbox) == cap
    [self_mail] = beacon.post(A, A_EP, A, 1)
    assert isinstance(self_mail, msgs.Error) and self_mail.code == "invalid_argument"


# -- the node's sides ---------------------------------------------------------------------------------


@implementer(IMailPeers)
class Peers:
    def __init__(self, *identities):
        self.keys = {address_of(i.public_key): i.public_key for i in identities}

    def trusted_peers(self):
        import base64
        return [{"hostname": f"peer-{a[-2:]}", "address": a, "public_key": base64.b64encode(k).decode()}
                for a, k in self.keys.items()]

    def lookup(self, target):
        return defer.fail(PilotError("no lookups here"))

    def dial(self, target, port, factory):
        return defer.fail(PilotError("no streams here"))


@implementer(IItemCarrier)
class SilentCarrier:
    """A peer that never answers (it is offline): deliveries hang until cancelled."""

    def __init__(self):
        self.calls = []

    def deliver(self, address, port, header, data):
        d = defer.Deferred()
        self.calls.append((header["id"], d))
        return d


def sender(tmp_path, clock, requests, peers):
    forwarder = StoreAndForward(clock, SealedPoster(A, requests), peers, seal_after=5.0)
    outbox = Outbox(clock, OutboxStore(str(tmp_path)), SilentCarrier(), sealer=forwarder)
    forwarder.wire(outbox, inbox=None)
    outbox.start()
    return outbox, forwarder


def enqueue(outbox, to, i, data=b"hello"):
    id_ = f"{i:016x}"
    return outbox.enqueue(address_of(to.public_key), 1001, id_, "message", {"id": id_}, data)


def test_a_message_not_taken_in_time_is_sealed_at_the_beacon_and_a_receipt_delivers_it(tmp_path):
    clock, requests = Clock(), RecordingRequests()
    outbox, _ = sender(tmp_path, clock, requests, Peers(B))
    acked = outbox.when_acked(enqueue(outbox, B, 1, b"are you there?"))
    enqueue(outbox, B, 2, b"x" * (MAX_ENVELOPE_BODY + 1))  # larger than any message (a file): the stream only
    clock.advance(4.9)
    assert requests.asked == []
    clock.advance(0.1)
    [(mail, answer)] = requests.asked
    assert open_sealed(B, msgs.sign(mail, A, 1)).body == b"are you there?" and mail.recipient_key == B.public_key
    [state] = outbox.messages(f"{1:016x}")
    assert (state["state"], state["sealed"]) == ("queued", False)
    answer.callback(msgs.Ok(0))
    [state] = outbox.messages(f"{1:016x}")
    assert (state["state"], state["sealed"]) == ("queued", True)
    assert outbox.receipt(address_of(B.public_key), f"{1:016x}") is True
    assert acked.result["via"] == "beacon"
    [state] = outbox.messages(f"{1:016x}")
    assert (state["state"], state["via"]) == ("delivered", "beacon")
    assert outbox.receipt(address_of(B.public_key), f"{1:016x}") is False  # a second receipt changes nothing
    clock.advance(600)
    assert len(requests.asked) == 1


def test_a_beacon_that_refuses_is_asked_again_later_and_a_restart_does_not_seal_twice(tmp_path):
    clock, requests = Clock(), RecordingRequests()
    outbox, _ = sender(tmp_path, clock, requests, Peers(B))
    enqueue(outbox, B, 1)
    enqueue(outbox, B, 2)
    clock.advance(5)
    assert len(requests.asked) == 2
    requests.asked[0][1].errback(PilotError("the beacon is full"))
    requests.asked[1][1].callback(msgs.Ok(0))
    clock.advance(10)
    assert len(requests.asked) == 3 and requests.asked[2][0].message_id == 1
    outbox.stop()
    # After a restart only the one not yet at the beacon is sealed.
    again, requests2 = Clock(), RecordingRequests()
    outbox, _ = sender(tmp_path, again, requests2, Peers(B))
    again.advance(5)
    assert [m.message_id for m, _ in requests2.asked] == [1]


def receiver(tmp_path, clock, requests, peers):
    store = MailStore(str(tmp_path), clock)
    forwarder = StoreAndForward(clock, SealedPoster(B, requests), peers)
    outbox = Outbox(clock, OutboxStore(str(tmp_path)), SilentCarrier(), sealer=forwarder)
    inbox = Inbox(str(tmp_path), clock, store=store, outbox=outbox)
    forwarder.wire(outbox, inbox)
    return forwarder, inbox


@implementer(IBeaconMail)
class TrustReader:
    def __init__(self):
        self.seen = []

    def message_received(self, msg):
        self.seen.append(msg)
        return True

    def registered(self):
        pass


def test_the_receiver_stores_once_receipts_and_acks_only_once_the_receipt_is_at_the_beacon(tmp_path):
    clock, requests = Clock(), RecordingRequests()
    forwarder, inbox = receiver(tmp_path, clock, requests, Peers(A))
    trust = TrustReader()
    reader = SealedMailReader(B, requests, trust, sink=forwarder)
    push = msgs.Deliver(1, 777, msgs.encode(sealed_by(A, B.public_key, b"hi B", message_id=0xAB)))
    assert reader.message_received(push) is True
    [item] = inbox.store.items()
    assert (item["text"], item["id"], item["address"]) == ("hi B", f"{0xAB:016x}", address_of(A.public_key))
    [(receipt, answer)] = requests.asked
    assert receipt.recipient_key == A.public_key and open_sealed(A, msgs.sign(receipt, B, 1)).kind == KIND_RECEIPT
    assert requests.posted == []  # not acked before the receipt is kept
    answer.errback(PilotError("the beacon did not answer"))
    assert requests.posted == []  # so the beacon pushes it again...
    assert reader.message_received(push) is True
    requests.asked[1][1].callback(msgs.Ok(0))
    assert [type(m) for m in requests.posted] == [msgs.MailAck] and requests.posted[0].mail_id == 777
    # ...and the second push, like the same message over a stream later, is not a second item.
    assert inbox.store_message(type("P", (), {"hostname": "a", "address": address_of(A.public_key)})(),
                               b"hi B", hashlib.sha256(b"hi B").hexdigest(), f"{0xAB:016x}") is None
    assert len(inbox.store.items()) == 1
    # Trust mail goes on to the trust reader.
    other = msgs.Deliver(2, 778, msgs.encode(msgs.sign(msgs.Revoke(0, B.public_key), A, 9)))
    reader.message_received(other)
    assert trust.seen == [other]


def test_sealed_mail_from_an_untrusted_key_or_not_for_us_is_dropped_and_acked(tmp_path):
    clock, requests = Clock(), RecordingRequests()
    forwarder, inbox = receiver(tmp_path, clock, requests, Peers(A))
    reader = SealedMailReader(B, requests, TrustReader(), sink=forwarder)
    reader.message_received(msgs.Deliver(1, 1, msgs.encode(sealed_by(C, B.public_key))))  # C is not trusted
    reader.message_received(msgs.Deliver(1, 2, msgs.encode(sealed_by(A, C.public_key))))  # for C
    assert inbox.store.items() == [] and requests.asked == []
    assert [m.mail_id for m in requests.posted] == [1, 2]
    assert reader.counters["sealed_rejected"] == 1


def test_a_sealed_receipt_settles_the_senders_outbox(tmp_path):
    clock, requests = Clock(), RecordingRequests()
    outbox, forwarder = sender(tmp_path, clock, requests, Peers(B))
    n = enqueue(outbox, B, 5)
    acked = outbox.when_acked(n)
    reader = SealedMailReader(A, requests, TrustReader(), sink=forwarder)
    reader.message_received(msgs.Deliver(1, 55, msgs.encode(sealed_by(B, A.public_key, b"", 5, kind=KIND_RECEIPT))))
    assert acked.called and outbox.messages()[0]["state"] == "delivered"
    assert [m.mail_id for m in requests.posted] == [55]
    clock.advance(60)
    assert requests.asked == []  # delivered before its seal timer: nothing left at the beacon


# -- what the operator sees ------------------------------------------------------------------------


def test_outbox_control_command_checks_its_arguments_and_the_cli_says_where_a_message_is(tmp_path):
    from pilotproto.cli.message_commands import render_outbox
    from pilotproto.control.message_commands import MessageCommands
    from pilotproto.errors import InvalidArgument
    from pilotproto.interfaces import IPilotNode

    calls = []

    @implementer(IPilotNode)
    class Node:
        def outbox(self, id=None, wait=0, count=100):
            calls.append((id, wait, count))
            return defer.succeed({"messages": [], "queues": []})

    commands = MessageCommands(Node())
    assert "outbox" in commands.table()
    commands.outbox("00000000000000ab", 5, 10)
    assert calls == [("00000000000000ab", 5, 10)]
    for bad in ({"id": "nope"}, {"wait": 61}, {"count": 0}):
        with pytest.raises(InvalidArgument):
            commands.outbox(**bad)
    rows = [{"id": "1", "peer": "agent-b", "address": "x", "size": 3, "created": 0, "updated": 0, "state": "queued",
             "sealed": True, "sealed_at": 0, "via": None, "error": None},
            {"id": "2", "peer": "agent-b", "address": "x", "size": 3, "created": 0, "updated": 0, "state": "delivered",
             "sealed": True, "sealed_at": 0, "via": "beacon", "error": None}]
    text = render_outbox({"messages": rows, "queues": []})
    assert "queued, sealed at the beacon" in text and "delivered via beacon" in text
