"""The trust store: round trip, permissions, corrupt files, full disks."""

import errno
import json
import os
import stat

import pytest

from pilotproto.errors import StateError
from pilotproto.trust.store import TRUST_FILE, IncomingRequest, OutboxItem, OutgoingRequest, TrustedPeer, TrustStore


def filled(home) -> TrustStore:
    store = TrustStore.load(str(home))
    key, other = b"\x01" * 32, b"\x02" * 32
    store.trusted[key] = TrustedPeer(key, "agent-b", "0:0000.0000.0001", 10.5, "share results", True)
    store.incoming[other] = IncomingRequest(other, "agent-c", "0:0000.0000.0002", "hello", 11.0, 99.0, 2**64 - 1)
    store.outgoing[5] = OutgoingRequest(5, "agent-d", "why", 12.0, 100.0, "sent", None)
    store.outgoing[6] = OutgoingRequest(6, "0:0000.0000.0003", "why", 12.0, 100.0, "approved", key)
    store.outbox.append(OutboxItem("answer", other, 7, True))
    store.outbox.append(OutboxItem("revoke", key))
    store.peer_seqs[key] = 123456789
    return store


def test_round_trip(tmp_path):
    store = filled(tmp_path)
    store.save()
    again = TrustStore.load(str(tmp_path))
    assert again.to_json() == store.to_json()
    assert again.trusted == store.trusted and again.outgoing == store.outgoing and again.outbox == store.outbox


def test_missing_file_is_an_empty_store(tmp_path):
    assert TrustStore.load(str(tmp_path)).trusted == {}


def test_file_is_private_even_with_a_lax_umask(tmp_path):
    old = os.umask(0)
    try:
        filled(tmp_path).save()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / TRUST_FILE).st_mode) == 0o600


def test_file_others_may_change_is_refused(tmp_path):
    filled(tmp_path).save()
    os.chmod(tmp_path / TRUST_FILE, 0o666)
    with pytest.raises(StateError, match="other users"):
        TrustStore.load(str(tmp_path))


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b'{"format": "other"}', json.dumps({"format": "pilot-trust-v1"}).encode(), b"\xff\xfe"],
)
def test_corrupt_file_is_reported_and_kept(tmp_path, content):
    path = tmp_path / TRUST_FILE
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(StateError) as info:
        TrustStore.load(str(tmp_path))
    assert info.value.code == "corrupt_state"
    assert path.read_bytes() == content


def test_bad_key_in_file_is_corrupt(tmp_path):
    store = filled(tmp_path)
    store.save()
    doc = json.loads((tmp_path / TRUST_FILE).read_text())
    doc["trusted"][0]["public_key"] = "AAAA"
    (tmp_path / TRUST_FILE).write_text(json.dumps(doc))
    with pytest.raises(StateError):
        TrustStore.load(str(tmp_path))


def test_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    store = filled(tmp_path)
    store.save()
    before = (tmp_path / TRUST_FILE).read_bytes()
    store.trusted.clear()

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(StateError) as info:
        store.save()
    assert "disk space" in info.value.hint
    assert (tmp_path / TRUST_FILE).read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == [TRUST_FILE]
