"""pilotctl's trust commands show keys, not just names (issue 9)."""

from pilotproto.cli.trust import render_approve, render_handshake, render_pending, render_revoke, render_trust

FP_B = "SHA256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
FP_M = "SHA256:mmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmm"


def test_pending_shows_the_fingerprint_and_flags_a_name_held_by_another_key():
    text = render_pending({
        "pending": [{
            "hostname": "agent-b", "address": "0:1111.2222.3333", "public_key": "k", "fingerprint": FP_M,
            "reason": "let me in", "received_at": 0, "expires_at": 0,
            "name_conflict": {"message": "name now held by a different key", "known_fingerprint": FP_B,
                              "known_address": "0:AAAA.BBBB.CCCC", "known_public_key": "kb"},
        }],
        "outgoing": [{"target": "agent-b", "state": "sent", "sent_at": 0, "reason": "r", "fingerprint": FP_B}],
    })
    assert f"key:    {FP_M}" in text
    assert "WARNING: name now held by a different key." in text
    assert f"You know agent-b as {FP_B} (0:AAAA.BBBB.CCCC)" in text and f"this request comes from {FP_M}" in text
    assert "pilotctl approve 0:1111.2222.3333" in text
    assert f"key: {FP_B}" in text  # our own request, with the key we recorded


def test_trust_handshake_approve_and_revoke_show_the_key():
    peer = {"hostname": "agent-b", "address": "0:AAAA.BBBB.CCCC", "fingerprint": FP_B}
    assert FP_B in render_trust({"trusted": [dict(peer, since=0, mutual=True)]})
    assert FP_B in render_approve({"peer": peer}) and FP_B in render_revoke({"peer": peer})
    assert FP_B in render_handshake({"target": "agent-b", "state": "sent", "expires_at": 0, "fingerprint": FP_B})
    assert "key" not in render_handshake({"target": "agent-b", "state": "queued", "fingerprint": None})
