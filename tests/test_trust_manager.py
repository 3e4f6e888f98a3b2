"""The node's TrustManager against a real BeaconServer, all on one Clock (fakes in helpers.py)."""

import base64

import pytest
from helpers import TrustNet, TrustNode

from pilotproto.errors import InvalidArgument, NotFound
from pilotproto.identity import Identity, fingerprint
from pilotproto.trust.store import TrustStore
from pilotproto.wire import beacon as msgs


@pytest.fixture
def net():
    return TrustNet()


@pytest.fixture
def pair(net, tmp_path):
    a, b = TrustNode(net, tmp_path, "agent-a", 1), TrustNode(net, tmp_path, "agent-b", 2)
    a.register()
    b.register()
    return a, b


def handshake(node, target, reason="share results"):
    results = []
    node.manager.handshake(target, reason).addBoth(results.append)
    node.net.settle()
    return results[0]


def test_handshake_approve_then_both_see_each_other(net, pair):
    a, b = pair
    assert not a.sees(b) and not b.sees(a)
    assert handshake(a, "agent-b")["state"] == "sent"
    net.settle()
    [pending] = b.manager.pending()
    assert (pending["hostname"], pending["reason"], pending["address"]) == ("agent-a", "share results", str(a.identity.address))
    assert not b.manager.is_trusted(a.identity.public_key)
    b.manager.approve("agent-a")
    net.settle()
    assert b.manager.is_trusted(a.identity.public_key) and a.manager.is_trusted(b.identity.public_key)
    assert a.sees(b) and b.sees(a)
    assert [p["mutual"] for p in a.manager.trusted()] == [True]
    assert b.manager.pending() == []
    assert a.trusted == [b.identity.public_key] and b.trusted == [a.identity.public_key]


def test_reject(net, pair):
    a, b = pair
    handshake(a, "agent-b")
    b.manager.reject(str(a.identity.address))
    net.settle()
    assert not a.manager.is_trusted(b.identity.public_key)
    assert [o["state"] for o in a.manager.outgoing()] == ["rejected"]
    assert not b.sees(a)


def test_revoke_tells_the_peer_and_hides_us(net, pair):
    a, b = pair
    handshake(a, "agent-b")
    b.manager.approve("agent-a")
    net.settle()
    a.manager.revoke("agent-b")
    net.settle()
    assert a.revoked == [b.identity.public_key] and b.revoked == [a.identity.public_key]
    assert not a.manager.is_trusted(b.identity.public_key) and not b.manager.is_trusted(a.identity.public_key)
    assert not a.sees(b) and not b.sees(a)
    with pytest.raises(NotFound):
        a.manager.revoke("agent-b")


def test_offline_peer_gets_the_request_when_it_registers(net, pair):
    a, b = pair
    b.go_offline()
    assert handshake(a, "agent-b")["state"] == "sent"
    net.settle(3)
    assert b.manager.pending() == []
    b.register()
    net.settle()
    assert [p["hostname"] for p in b.manager.pending()] == ["agent-a"]


def test_duplicates_are_acked_once_and_ignored(net, pair):
    a, b = pair
    net.muted.add(b.endpoint)  # b's acks are lost: the beacon pushes again
    handshake(a, "agent-b")
    net.settle(2)
    net.muted.clear()
    net.settle(2)
    assert len(b.manager.pending()) == 1
    assert b.manager.counters.get("mail_duplicate", 0) >= 1
    assert len(net.beacon.mailbox) == 0


def test_forged_delivery_is_ignored(net, pair):
    a, b = pair
    mallory = Identity.generate()
    request = msgs.sign(msgs.HandshakeRequest(1, 2, False, b"agent-b", "agent-a", "trust me"), mallory, 5)
    tampered = msgs.encode(request)[:-1] + bytes([msgs.encode(request)[-1] ^ 1])
    b.manager.message_received(msgs.Deliver(9, 1, tampered))
    assert b.manager.pending() == [] and b.manager.counters["mail_bad_signature"] == 1


def test_request_not_addressed_to_us_is_ignored(net, pair):
    a, b = pair
    request = msgs.sign(msgs.HandshakeRequest(1, 2, False, b"agent-z", "agent-a", "hi"), a.identity, 5)
    b.manager.message_received(msgs.Deliver(9, 1, msgs.encode(request)))
    assert b.manager.pending() == [] and b.manager.counters["mail_not_for_us"] == 1


def test_auto_approve(net, tmp_path):
    a, b = TrustNode(net, tmp_path, "agent-a", 1), TrustNode(net, tmp_path, "agent-b", 2, auto_approve=True)
    a.register()
    b.register()
    handshake(a, "agent-b")
    net.settle()
    assert b.manager.pending() == []
    assert a.sees(b) and b.sees(a)


def test_visible_target_is_trusted_at_once(net, pair):
    a, b = pair
    a.lookups["agent-b"] = {"hostname": "agent-b", "public_key": base64.b64encode(b.identity.public_key).decode()}
    handshake(a, "agent-b")
    assert a.manager.is_trusted(b.identity.public_key)
    assert [p["mutual"] for p in a.manager.trusted()] == [False]
    assert b.sees(a)  # so b can find a the moment it approves


def test_trust_survives_a_restart(net, pair):
    a, b = pair
    handshake(a, "agent-b")
    b.manager.approve("agent-a")
    net.settle()
    a.manager.stop()
    a.manager = a.make_manager()
    assert a.manager.is_trusted(b.identity.public_key)
    assert TrustStore.load(a.home).trusted.keys() == {b.identity.public_key}


def test_queued_when_the_beacon_does_not_answer_and_sent_after_registering(net, pair):
    a, b = pair
    net.dropping.add(a.endpoint)
    result = []
    a.manager.handshake("agent-b", "later").addBoth(result.append)
    net.settle(10)
    assert result[0]["state"] == "queued"
    net.dropping.clear()
    a.register()
    net.settle()
    assert [o["state"] for o in a.manager.outgoing()] == ["sent"]
    assert [p["reason"] for p in b.manager.pending()] == ["later"]


@pytest.mark.parametrize(
    "target,reason",
    [("agent-b", ""), ("agent-b", "   "), ("agent-b", "x" * 501), ("agent-a", "me"), ("Bad Name", "hi")],
)
def test_bad_handshakes_are_refused(pair, target, reason):
    a, _ = pair
    with pytest.raises(InvalidArgument):
        a.manager.handshake(target, reason)


def test_unknown_peer_in_approve_is_not_found(pair):
    a, _ = pair
    for peer in ("agent-q", "0:0000.0000.0001", "A" * 43 + "="):
        with pytest.raises(NotFound):
            a.manager.approve(peer)


# -- keys, not names (issue 9) -------------------------------------------------------------

def make_visible(asker, target):
    """``asker``'s lookups of ``target`` find its key (``target`` is public)."""
    asker.lookups[target.hostname] = {"hostname": target.hostname, "public_key": base64.b64encode(target.identity.public_key).decode()}


def request_from(identity, hostname, target, reason="trust me", seq=None, by_address=False):
    """A HandshakeRequest signed by ``identity`` under ``hostname``, as the beacon delivers it."""
    request = msgs.HandshakeRequest(1, 77, by_address, target, hostname, reason)
    signed = msgs.sign(request, identity, seq or 10**18)
    return msgs.Deliver(9, 1, msgs.encode(signed))


def test_a_crossing_request_from_the_key_we_asked_is_approved(net, pair):
    a, b = pair
    make_visible(a, b)
    handshake(a, "agent-b")
    a.manager.message_received(request_from(b.identity, "agent-b", b"agent-a"))
    assert a.manager.pending() == [] and [p["mutual"] for p in a.manager.trusted()] == [True]
    assert [o["state"] for o in a.manager.outgoing()] == ["approved"]


def test_a_crossing_request_by_the_name_we_asked_from_another_key_is_a_separate_request(net, pair):
    """The hijack: we asked agent-b (and know its key); another key now holds the
    name and asks us.  Not approved, not merged: a request of its own, flagged."""
    a, b = pair
    make_visible(a, b)
    handshake(a, "agent-b")
    mallory = Identity.generate()
    a.manager.message_received(request_from(mallory, "agent-b", b"agent-a"))
    assert not a.manager.is_trusted(mallory.public_key)
    assert a.trusted == [b.identity.public_key]  # the advance trust stays with b's key
    assert [o["state"] for o in a.manager.outgoing()] == ["sent"]
    [pending] = a.manager.pending()
    assert pending["fingerprint"] == fingerprint(mallory.public_key)
    assert pending["name_conflict"] == {
        "message": "name now held by a different key",
        "known_public_key": base64.b64encode(b.identity.public_key).decode(),
        "known_fingerprint": fingerprint(b.identity.public_key),
        "known_address": str(b.identity.address),
    }
    assert a.manager.counters["mail_name_held_by_other_key"] == 1
    # Approving by the name cannot pick the impostor; by its address, the user says which key.
    with pytest.raises(InvalidArgument, match="different key"):
        a.manager.approve("agent-b")
    assert a.manager.approve(str(mallory.address))["peer"]["fingerprint"] == fingerprint(mallory.public_key)


def test_a_request_under_a_trusted_name_from_another_key_is_never_approved(net, tmp_path):
    a = TrustNode(net, tmp_path, "agent-a", 1, auto_approve=True)
    b = TrustNode(net, tmp_path, "agent-b", 2)
    a.register()
    b.register()
    handshake(b, "agent-a")
    net.settle()
    assert a.manager.is_trusted(b.identity.public_key)
    mallory = Identity.generate()
    a.manager.message_received(request_from(mallory, "agent-b", b"agent-a"))
    # Not even --auto-approve takes a name we know under another key.
    assert not a.manager.is_trusted(mallory.public_key)
    [pending] = a.manager.pending()
    assert pending["name_conflict"]["known_fingerprint"] == fingerprint(b.identity.public_key)
    assert [p["public_key"] for p in a.manager.trusted()] == [base64.b64encode(b.identity.public_key).decode()]


def test_a_crossing_request_by_name_when_we_never_learned_the_key_waits_for_the_user(net, pair):
    a, b = pair  # b is private: a's lookup finds nothing, so a has no key for the name
    handshake(a, "agent-b")
    a.manager.message_received(request_from(b.identity, "agent-b", b"agent-a"))
    assert not a.manager.is_trusted(b.identity.public_key)
    [pending] = a.manager.pending()
    assert pending["name_conflict"] is None and pending["fingerprint"] == fingerprint(b.identity.public_key)


def test_a_crossing_request_to_the_address_we_asked_is_approved(net, pair):
    a, b = pair
    handshake(a, str(b.identity.address))
    a.manager.message_received(request_from(b.identity, "agent-b", b"agent-a"))
    assert a.manager.is_trusted(b.identity.public_key) and a.manager.pending() == []


def test_asking_a_trusted_name_again_never_trusts_another_key_in_advance(net, pair):
    a, b = pair
    handshake(a, "agent-b")
    b.manager.approve("agent-a")
    net.settle()
    mallory = Identity.generate()
    # The name now looks up to another key (it changed hands at the beacon).
    a.lookups["agent-b"] = {"hostname": "agent-b", "public_key": base64.b64encode(mallory.public_key).decode()}
    result = handshake(a, "agent-b", "again")
    assert result["fingerprint"] == fingerprint(b.identity.public_key)
    assert not a.manager.is_trusted(mallory.public_key)
    assert a.trusted == [b.identity.public_key]


def test_two_keys_under_one_name_must_be_named_by_address(net, pair):
    a, _ = pair
    one, two = Identity.generate(), Identity.generate()
    a.manager.message_received(request_from(one, "agent-x", b"agent-a"))
    a.manager.message_received(request_from(two, "agent-x", b"agent-a"))
    assert len(a.manager.pending()) == 2
    with pytest.raises(InvalidArgument, match="2 keys go by the name 'agent-x'"):
        a.manager.approve("agent-x")
    a.manager.reject(str(two.address))
    assert [p["address"] for p in a.manager.pending()] == [str(one.address)]


def test_pending_trust_outgoing_and_handshake_show_fingerprints(net, pair):
    a, b = pair
    make_visible(a, b)
    result = handshake(a, "agent-b")
    assert result["fingerprint"] == fingerprint(b.identity.public_key)
    assert [o["fingerprint"] for o in a.manager.outgoing()] == [fingerprint(b.identity.public_key)]
    net.settle()
    assert [p["fingerprint"] for p in b.manager.pending()] == [fingerprint(a.identity.public_key)]
    approved = b.manager.approve("agent-a")
    assert approved["peer"]["fingerprint"] == fingerprint(a.identity.public_key)
    assert [p["fingerprint"] for p in b.manager.trusted()] == [fingerprint(a.identity.public_key)]


def test_a_flagged_request_survives_a_restart(net, pair):
    a, b = pair
    make_visible(a, b)
    handshake(a, "agent-b")
    mallory = Identity.generate()
    a.manager.message_received(request_from(mallory, "agent-b", b"agent-a"))
    a.manager.stop()
    a.manager = a.make_manager()
    [pending] = a.manager.pending()
    assert pending["name_conflict"]["known_fingerprint"] == fingerprint(b.identity.public_key)
