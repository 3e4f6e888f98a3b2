"""The Noise IK core against published vectors, and its failure behaviour."""

import json
import os

import pytest

from pilotproto.tunnel.errors import HandshakeError, TunnelAuthError
from pilotproto.tunnel.noise import PROTOCOL_NAME, HandshakeState, hkdf, x25519_public

VECTORS = os.path.join(os.path.dirname(__file__), "vectors", "tunnel_noise_ik.json")


def _published():
    with open(VECTORS) as f:
        return json.load(f)["vectors"]


@pytest.mark.parametrize("vector", _published(), ids=lambda v: v["source"])
def test_published_ik_vector(vector):
    h = bytes.fromhex
    assert vector["protocol_name"].encode() == PROTOCOL_NAME
    assert x25519_public(h(vector["resp_static"])) == h(vector["init_remote_static"])
    initiator = HandshakeState(
        initiator=True,
        prologue=h(vector["prologue"]),
        s=h(vector["init_static"]),
        e=h(vector["init_ephemeral"]),
        rs=h(vector["init_remote_static"]),
    )
    responder = HandshakeState(
        initiator=False,
        prologue=h(vector["prologue"]),
        s=h(vector["resp_static"]),
        e=h(vector["resp_ephemeral"]),
        rs=x25519_public(h(vector["resp_static"])),
    )
    messages = vector["messages"]
    first = initiator.write_message(h(messages[0]["payload"]))
    assert first.hex() == messages[0]["ciphertext"]
    assert responder.read_message(first) == h(messages[0]["payload"])
    assert responder.rs == x25519_public(h(vector["init_static"]))
    second = responder.write_message(h(messages[1]["payload"]))
    assert second.hex() == messages[1]["ciphertext"]
    assert initiator.read_message(second) == h(messages[1]["payload"])
    assert initiator.h == responder.h
    i_send, i_recv = initiator.split()
    r_send, r_recv = responder.split()
    for n, message in enumerate(messages[2:]):
        sender, receiver = (i_send, r_recv) if n % 2 == 0 else (r_send, i_recv)
        ciphertext = sender.encrypt_with_ad(b"", h(message["payload"]))
        assert ciphertext.hex() == message["ciphertext"]
        assert receiver.decrypt_with_ad(b"", ciphertext) == h(message["payload"])


def _pair(prologue=b"p"):
    r_static = bytes([7]) * 32
    initiator = HandshakeState(initiator=True, prologue=prologue, s=bytes([1]) * 32, e=bytes([2]) * 32, rs=x25519_public(r_static))
    responder = HandshakeState(initiator=False, prologue=prologue, s=r_static, e=bytes([3]) * 32, rs=x25519_public(r_static))
    return initiator, responder


def test_hkdf_outputs_chain():
    one, two, three = hkdf(b"\x00" * 32, b"ikm", 3)
    assert hkdf(b"\x00" * 32, b"ikm", 2) == (one, two)
    assert len({one, two, three}) == 3


def test_tampered_handshake_message_fails_and_leaves_state_usable():
    initiator, responder = _pair()
    message = initiator.write_message(b"hello")
    forged = message[:-1] + bytes([message[-1] ^ 1])
    with pytest.raises(TunnelAuthError):
        responder.read_message(forged)
    # The genuine message still completes the handshake after the forgery.
    assert responder.read_message(message) == b"hello"


def test_different_prologue_fails():
    initiator, _ = _pair(b"one")
    _, responder = _pair(b"two")
    with pytest.raises(TunnelAuthError):
        responder.read_message(initiator.write_message(b""))


def test_low_order_ephemeral_is_refused():
    _, responder = _pair()
    with pytest.raises(HandshakeError):
        responder.read_message(bytes(32) + bytes(48 + 16))


def test_out_of_turn_and_early_split_are_refused():
    initiator, responder = _pair()
    with pytest.raises(HandshakeError):
        responder.write_message(b"")
    with pytest.raises(HandshakeError):
        initiator.read_message(b"x" * 64)
    with pytest.raises(HandshakeError):
        initiator.split()


def test_signing_callback_sees_the_pre_payload_hash():
    initiator, responder = _pair()
    seen = []
    message = initiator.write_message(lambda h: seen.append(h) or b"sig:" + h)
    payload = responder.read_message(message)
    assert payload == b"sig:" + seen[0]
    assert responder.payload_hash == seen[0]
