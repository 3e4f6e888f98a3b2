"""What the beacon acknowledges is on disk before the answer leaves: a kill -9 right after loses none of it."""

from __future__ import annotations

import os
import sqlite3

from pilotproto.beacon.store import DB_FILE, CardRow, MailRow, NameRow, SQLiteStore, VisibilityRow

KEY = b"k" * 32


def on_disk(state_dir, table):
    # A second connection sees only what was committed: what survives the process dying now.
    with sqlite3.connect(os.path.join(state_dir, DB_FILE)) as db:
        return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def test_acknowledged_changes_are_committed_at_once(tmp_path):
    store = SQLiteStore(str(tmp_path))
    store.load()
    store.put_mail(MailRow(7, KEY, ("key", b"r" * 32), ("handshake", 1), b"datagram", 1e12))
    assert on_disk(tmp_path, "mail") == 1
    store.put_visibility(VisibilityRow(KEY, 1, frozenset({b"v" * 32})))
    assert on_disk(tmp_path, "visibility") == 1
    store.put_card(CardRow(KEY, 3, b"card", b"s" * 64))
    assert on_disk(tmp_path, "cards") == 1
    store.put_name(NameRow(KEY, "agent-a", 100.0))
    assert on_disk(tmp_path, "names") == 1


def test_last_seen_refreshes_wait_for_the_batch(tmp_path):
    store = SQLiteStore(str(tmp_path))
    store.load()
    store.put_name(NameRow(KEY, "agent-a", 100.0))
    writes = store.writes
    for seen in range(101, 111):
        store.put_name(NameRow(KEY, "agent-a", float(seen)))
    assert store.writes == writes  # nothing written per keepalive
    assert store.flush() == 1
    store.put_name(NameRow(KEY, "agent-b", 200.0))  # a new name: at once
    assert store.writes == writes + 2
