"""
Pilot's own fixed-key vectors for the tunnel: the exact bytes of a handshake,
a cookie reply and transport data for fixed seeds, ephemerals, indices,
timestamps and nonces.  Any change to the wire format or key schedule shows
up here; if the change is deliberate, regenerate the file with
``python3 tests/test_tunnel_vectors.py`` and bump the prologue's version.
"""

import json
import os
import sys

from twisted.internet.task import Clock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pilotproto.identity import Identity  # noqa: E402
from pilotproto.tunnel.cookie import CookieChecker, CookieJar, stamp_macs  # noqa: E402
from pilotproto.tunnel.ik import (  # noqa: E402
    PROLOGUE,
    LocalKeys,
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
    tai64n,
)
from pilotproto.tunnel.record import Session  # noqa: E402
from pilotproto.wire.tunnel import TunnelCookieReply, TunnelInit, TunnelResponse  # noqa: E402

VECTORS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors", "tunnel_pilot_v1.json")

INPUTS = {
    "prologue": PROLOGUE.hex(),
    "initiator_seed": bytes(range(32)).hex(),
    "responder_seed": bytes(range(32, 64)).hex(),
    "initiator_ephemeral": bytes(range(64, 96)).hex(),
    "responder_ephemeral": bytes(range(96, 128)).hex(),
    "initiator_index": 0x11223344,
    "responder_index": 0x55667788,
    "unix_time": 1767225600.25,
    "cookie_secret": bytes(range(128, 160)).hex(),
    "cookie_nonce": bytes(range(160, 184)).hex(),
    "source": b"198.51.100.7:4242".hex(),
    "initiator_data": b"ping".hex(),
    "responder_data": b"pong".hex(),
}


def build_vectors(inputs=INPUTS) -> dict:
    h = bytes.fromhex
    clock = Clock()
    clock.advance(inputs["unix_time"])
    initiator = LocalKeys.from_identity(Identity.from_seed(h(inputs["initiator_seed"])))
    responder = LocalKeys.from_identity(Identity.from_seed(h(inputs["responder_seed"])))
    pending, init = create_initiation(
        initiator,
        responder.ed25519_public,
        sender_index=inputs["initiator_index"],
        timestamp=tai64n(inputs["unix_time"]),
        ephemeral_private=h(inputs["initiator_ephemeral"]),
    )
    init_bytes = stamp_macs(responder.x25519_public, init.encode(), None)
    consumed = consume_initiation(responder, TunnelInit.decode(init_bytes))
    response, responder_keys = create_response(
        consumed, sender_index=inputs["responder_index"], ephemeral_private=h(inputs["responder_ephemeral"])
    )
    response_bytes = stamp_macs(initiator.x25519_public, response.encode(), None)
    initiator_keys = consume_response(pending, TunnelResponse.decode(response_bytes))

    secrets = iter([h(inputs["cookie_secret"]), h(inputs["cookie_nonce"])])
    checker = CookieChecker(responder.x25519_public, clock, randbytes=lambda n: next(secrets))
    cookie_reply = checker.make_reply(init.sender_index, init_bytes, h(inputs["source"]))
    jar = CookieJar(responder.x25519_public, clock)
    jar.stamp(init.encode())
    assert jar.consume_reply(TunnelCookieReply.decode(cookie_reply))
    init_with_mac2 = jar.stamp(init.encode())

    initiator_session = Session(initiator_keys, clock)
    responder_session = Session(responder_keys, clock)
    return {
        "inputs": inputs,
        "initiator_x25519_public": initiator.x25519_public.hex(),
        "responder_x25519_public": responder.x25519_public.hex(),
        "initiation": init_bytes.hex(),
        "response": response_bytes.hex(),
        "handshake_hash": initiator_keys.handshake_hash.hex(),
        "key_initiator_to_responder": initiator_keys.send_key.hex(),
        "key_responder_to_initiator": initiator_keys.receive_key.hex(),
        "cookie_reply": cookie_reply.hex(),
        "initiation_with_mac2": init_with_mac2.hex(),
        "initiator_data_packet": initiator_session.seal(h(inputs["initiator_data"])).hex(),
        "responder_data_packet": responder_session.seal(h(inputs["responder_data"])).hex(),
    }


def test_pilot_vectors_match_the_stored_bytes():
    with open(VECTORS) as f:
        stored = json.load(f)
    assert build_vectors(stored["inputs"]) == stored


def test_stored_vectors_decrypt_on_both_sides():
    with open(VECTORS) as f:
        v = json.load(f)
    h = bytes.fromhex
    responder = LocalKeys.from_identity(Identity.from_seed(h(v["inputs"]["responder_seed"])))
    consumed = consume_initiation(responder, TunnelInit.decode(h(v["initiation"])))
    assert consumed.initiator_ed25519 == Identity.from_seed(h(v["inputs"]["initiator_seed"])).public_key
    assert consumed.sender_index == v["inputs"]["initiator_index"]
    assert consumed.timestamp == tai64n(v["inputs"]["unix_time"])


if __name__ == "__main__":
    with open(VECTORS, "w") as f:
        json.dump(build_vectors(), f, indent=2)
        f.write("\n")
    print("wrote", VECTORS)
