"""
Durable storage for messages, files and events, on both ends.

Two SQLite databases (stdlib ``sqlite3``, ``synchronous=FULL``: a commit
is on disk when it returns, so the receiver acks only what survives a
crash, and the sender forgets only what was acked):

- ``HOME/inbox.db`` (:class:`MailStore`), the receiver's side: the inbox
  items (messages and received files) with their seqs, the event log, the
  ids already seen (for dedup), the patterns peers announced to us, and our
  own subscription patterns with their linger times.
- ``HOME/outbox/outbox.db`` (:class:`OutboxStore`), the sender's side:
  what waits to be delivered, per peer, in order; which of it was also
  left sealed at the beacon; and each message's state (``queued``,
  ``delivered``, ``failed``), kept a week after it settles, for
  ``pilotctl outbox``.

Seqs come from ``AUTOINCREMENT`` keys, so they only ever grow, across
deletions and restarts: a client resuming with ``after=SEQ`` never misses an
item and never sees one twice.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sqlite3

from ..errors import PilotError, StateError

INBOX_DB = "inbox.db"
OUTBOX_DIR = "outbox"
OUTBOX_DB = "outbox.db"

#: how long a (sender, id) pair is remembered for dedup, and how many at most
DEDUP_SECONDS = 7 * 24 * 3600
MAX_SEEN = 100_000
#: inbox items kept, per sender and in all
MAX_ITEMS_PER_SENDER = 10_000
MAX_ITEMS = 100_000
#: message bytes kept per sender
MAX_BYTES_PER_SENDER = 256 * 1024**2
#: received events kept for replay: the newest this many, none older than this
MAX_EVENTS = 10_000
EVENT_SECONDS = 24 * 3600
_PRUNE_EVERY = 500


class NoSpace(PilotError):
    """The receiver has no room for that item."""

    code = "no_space"
    hint = "The receiver's inbox is full: it keeps what was sent and delivers it once the peer deletes some items."


class Database:
    """One SQLite file; every write is a transaction that is on disk when it returns."""

    def __init__(self, path: str, schema: str):
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        self.path = path
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(schema)
        except sqlite3.DatabaseError as e:
            raise StateError(f"{path} cannot be used: {e}", hint="Move it aside to start with an empty store.") from None
        os.chmod(path, 0o600)

    @contextlib.contextmanager
    def transaction(self):
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def query(self, sql: str, args=()) -> list:
        return self.db.execute(sql, args).fetchall()

    def close(self) -> None:
        self.db.close()


_INBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, kind TEXT NOT NULL, sender TEXT NOT NULL,
    address TEXT NOT NULL, received_at REAL NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL,
    data BLOB, name TEXT, path TEXT);
CREATE INDEX IF NOT EXISTS items_by_address ON items(address);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, topic TEXT NOT NULL, sender TEXT NOT NULL,
    address TEXT NOT NULL, published_at REAL NOT NULL, received_at REAL NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS seen (
    address TEXT NOT NULL, space TEXT NOT NULL, id TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (address, space, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_by_time ON seen(at);
CREATE TABLE IF NOT EXISTS peer_patterns (address TEXT PRIMARY KEY, patterns TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS local_patterns (pattern TEXT PRIMARY KEY, linger_until REAL);
"""

_ITEM_COLUMNS = "seq, id, kind, sender, address, received_at, size, sha256, data, name, path"
_EVENT_COLUMNS = "seq, id, topic, sender, address, published_at, data"


def _text_or_none(data: bytes):
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def item_dict(row) -> dict:
    seq, id_, kind, sender, address, received_at, size, sha256, data, name, path = row
    data = bytes(data) if data is not None else None
    return {
        "seq": seq, "id": id_, "kind": kind, "from": sender, "address": address, "received_at": received_at,
        "size": size, "sha256": sha256,
        "text": _text_or_none(data) if data is not None else None,
        "data": base64.b64encode(data).decode() if data is not None else None,
        "name": name, "path": path,
    }


def event_dict(row) -> dict:
    seq, id_, topic, sender, address, published_at, data = row
    data = bytes(data)
    return {"event": "event", "seq": seq, "id": id_, "topic": topic, "from": sender, "address": address,
            "published_at": published_at, "data": base64.b64encode(data).decode(), "text": _text_or_none(data)}


class MailStore:
    """The receiver's durable store, ``HOME/inbox.db``; ``clock.seconds()`` stamps what arrives."""

    def __init__(self, home: str, clock):
        self._clock = clock
        self._db = Database(os.path.join(home, INBOX_DB), _INBOX_SCHEMA)
        self._writes = 0
        self.prune()

    def close(self) -> None:
        self._db.close()

    # -- dedup ---------------------------------------------------------------------------

    def _seen(self, db, address: str, space: str, id_: str | None) -> bool:
        """Was ``id_`` from ``address`` stored already?  If not, remember it (in ``db``'s transaction)."""
        if id_ is None:
            return False
        if db.execute("SELECT 1 FROM seen WHERE address=? AND space=? AND id=?", (address, space, id_)).fetchone():
            return True
        db.execute("INSERT INTO seen VALUES (?, ?, ?, ?)", (address, space, id_, self._clock.seconds()))
        return False

    def prune(self) -> None:
        """Forget ids older than the dedup window (and the oldest beyond MAX_SEEN); trim the event log."""
        now = self._clock.seconds()
        with self._db.transaction() as db:
            db.execute("DELETE FROM seen WHERE at < ?", (now - DEDUP_SECONDS,))
            (count,) = db.execute("SELECT COUNT(*) FROM seen").fetchone()
            if count > MAX_SEEN:
                db.execute("DELETE FROM seen WHERE (address, space, id) IN "
                           "(SELECT address, space, id FROM seen ORDER BY at LIMIT ?)", (count - MAX_SEEN,))
            self._trim_events(db, now)

    def _wrote(self) -> None:
        self._writes += 1
        if self._writes % _PRUNE_EVERY == 0:
            self.prune()

    # -- inbox items -------------------------------------------------------------------------

    def add_item(self, *, id_, kind, sender, address, size, sha256, data=None, name=None, path=None):
        """Store one item; ``(item, duplicate)``.  A duplicate (same sender and id) is not stored again.

        NoSpace when the sender (or everyone) already has as many items, or bytes, as we keep."""
        with self._db.transaction() as db:
            if self._seen(db, address, "item", id_):
                return None, True
            (mine, mine_bytes) = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(data)), 0) FROM items WHERE address=?", (address,)).fetchone()
            (total,) = db.execute("SELECT COUNT(*) FROM items").fetchone()
            if mine >= MAX_ITEMS_PER_SENDER or total >= MAX_ITEMS or mine_bytes + len(data or b"") > MAX_BYTES_PER_SENDER:
                raise NoSpace(f"the receiver keeps at most {MAX_ITEMS_PER_SENDER} items ({MAX_BYTES_PER_SENDER // 1024**2} MiB) "
                              f"per sender and {MAX_ITEMS} in all, and holds {mine} of yours, {total} in all")
            cursor = db.execute(
                f"INSERT INTO items ({_ITEM_COLUMNS}) VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (id_ or "", kind, sender, address, self._clock.seconds(), size, sha256, data, name, path),
            )
            seq = cursor.lastrowid
            if not id_:
                id_ = f"{seq:016x}"  # an old sender's item: an id of our own, unique here
                db.execute("UPDATE items SET id=? WHERE seq=?", (id_, seq))
            row = db.execute(f"SELECT {_ITEM_COLUMNS} FROM items WHERE seq=?", (seq,)).fetchone()
        self._wrote()
        return item_dict(row), False

    def items(self, after: int = 0, count: int = 1000, kind: str | None = None) -> list[dict]:
        if kind is None:
            rows = self._db.query(f"SELECT {_ITEM_COLUMNS} FROM items WHERE seq > ? ORDER BY seq LIMIT ?", (after, count))
        else:
            rows = self._db.query(f"SELECT {_ITEM_COLUMNS} FROM items WHERE seq > ? AND kind=? ORDER BY seq LIMIT ?",
                                  (after, kind, count))
        return [item_dict(r) for r in rows]

    def last_seq(self) -> int:
        """The seq of the newest stored item, or 0."""
        (last,) = self._db.query("SELECT COALESCE(MAX(seq), 0) FROM items")[0]
        return last

    def delete(self, seqs) -> int:
        with self._db.transaction() as db:
            deleted = 0
            for seq in seqs:
                deleted += db.execute("DELETE FROM items WHERE seq=?", (seq,)).rowcount
        return deleted

    # -- events ------------------------------------------------------------------------------------

    def add_event(self, *, id_, topic, sender, address, published_at, data: bytes):
        """Log one event; ``(event, duplicate)``."""
        now = self._clock.seconds()
        with self._db.transaction() as db:
            if self._seen(db, address, "event", id_):
                return None, True
            cursor = db.execute(
                f"INSERT INTO events ({_EVENT_COLUMNS}, received_at) VALUES (NULL, ?, ?, ?, ?, ?, ?, ?)",
                (id_, topic, sender, address, published_at, data, now),
            )
            seq = cursor.lastrowid
            self._trim_events(db, now)
            row = db.execute(f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq=?", (seq,)).fetchone()
        self._wrote()
        return event_dict(row), False

    def _trim_events(self, db, now: float) -> None:
        db.execute("DELETE FROM events WHERE received_at < ?", (now - EVENT_SECONDS,))
        db.execute("DELETE FROM events WHERE seq <= (SELECT MAX(seq) FROM events) - ?", (MAX_EVENTS,))

    def events_after(self, after: int, limit: int = MAX_EVENTS) -> list[dict]:
        rows = self._db.query(f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit))
        return [event_dict(r) for r in rows]

    def last_event_seq(self) -> int:
        (last,) = self._db.query("SELECT COALESCE(MAX(seq), 0) FROM events")[0]
        return last

    # -- subscriptions -------------------------------------------------------------------------------

    def recent_senders(self) -> set[str]:
        """The addresses that sent us a message or an event within the dedup window (7 days)."""
        return {address for (address,) in self._db.query("SELECT DISTINCT address FROM seen")}

    def peer_patterns(self) -> dict[str, list[str]]:
        return {address: json.loads(patterns) for address, patterns in self._db.query("SELECT address, patterns FROM peer_patterns")}

    def set_peer_patterns(self, address: str, patterns: list[str]) -> None:
        with self._db.transaction() as db:
            if patterns:
                db.execute("INSERT OR REPLACE INTO peer_patterns VALUES (?, ?, ?)",
                           (address, json.dumps(sorted(patterns)), self._clock.seconds()))
            else:
                db.execute("DELETE FROM peer_patterns WHERE address=?", (address,))

    def local_patterns(self) -> dict[str, float | None]:
        """Our own patterns: pattern -> linger-until time (None: a local feed has it open)."""
        return dict(self._db.query("SELECT pattern, linger_until FROM local_patterns"))

    def set_local_pattern(self, pattern: str, linger_until: float | None) -> None:
        with self._db.transaction() as db:
            db.execute("INSERT OR REPLACE INTO local_patterns VALUES (?, ?)", (pattern, linger_until))

    def drop_local_pattern(self, pattern: str) -> None:
        with self._db.transaction() as db:
            db.execute("DELETE FROM local_patterns WHERE pattern=?", (pattern,))


_OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    n INTEGER PRIMARY KEY AUTOINCREMENT, address TEXT NOT NULL, port INTEGER NOT NULL, id TEXT NOT NULL,
    kind TEXT NOT NULL, header TEXT NOT NULL, data BLOB NOT NULL, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_by_address ON outbox(address, n);
CREATE TABLE IF NOT EXISTS sealed (n INTEGER PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS sent (
    id TEXT NOT NULL, address TEXT NOT NULL, state TEXT NOT NULL, via TEXT, size INTEGER NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL, sealed_at REAL, error TEXT, PRIMARY KEY (address, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sent_by_time ON sent(updated);
"""


class OutboxStore:
    """The sender's durable outbox, ``HOME/outbox/outbox.db``: rows in the order they were queued."""

    def __init__(self, home: str):
        self._db = Database(os.path.join(home, OUTBOX_DIR, OUTBOX_DB), _OUTBOX_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def add(self, address: str, port: int, id_: str, kind: str, header: dict, data: bytes, created: float,
            replaces: str | None = None) -> int:
        """Queue one item; ``replaces``: first drop this peer's queued items of that kind (a newer state wins)."""
        with self._db.transaction() as db:
            if replaces is not None:
                db.execute("DELETE FROM outbox WHERE address=? AND kind=?", (address, replaces))
            cursor = db.execute("INSERT INTO outbox VALUES (NULL, ?, ?, ?, ?, ?, ?, ?)",
                                (address, port, id_, kind, json.dumps(header), data, created))
            if kind == "message":
                db.execute("INSERT OR REPLACE INTO sent VALUES (?, ?, 'queued', NULL, ?, ?, ?, NULL, NULL)",
                           (id_, address, len(data), created, created))
            return cursor.lastrowid

    def remove(self, n: int) -> None:
        with self._db.transaction() as db:
            db.execute("DELETE FROM outbox WHERE n=?", (n,))
            db.execute("DELETE FROM sealed WHERE n=?", (n,))

    # -- sealed copies at the beacon, and what became of each message ----------------------

    def mark_sealed(self, n: int, at: float) -> None:
        """Item ``n`` is also at the beacon, sealed (if it is still queued)."""
        with self._db.transaction() as db:
            row = db.execute("SELECT address, id FROM outbox WHERE n=?", (n,)).fetchone()
            if row is None:
                return
            db.execute("INSERT OR REPLACE INTO sealed VALUES (?, ?)", (n, at))
            db.execute("UPDATE sent SET sealed_at=?, updated=? WHERE address=? AND id=?", (at, at, row[0], row[1]))

    def sealed(self) -> dict[int, float]:
        """Queued item -> when its sealed copy was left at the beacon."""
        return dict(self._db.query("SELECT n, at FROM sealed"))

    def settle(self, address: str, id_: str, state: str, at: float, via: str | None = None, error: str | None = None) -> None:
        """Message ``id_`` to ``address`` is ``delivered`` (``via`` a stream or the beacon) or ``failed``."""
        with self._db.transaction() as db:
            db.execute("UPDATE sent SET state=?, via=?, updated=?, error=? WHERE address=? AND id=? AND state='queued'",
                       (state, via, at, error, address, id_))

    def find(self, address: str, id_: str) -> list[int]:
        """The queued items with this id for ``address``."""
        return [n for (n,) in self._db.query("SELECT n FROM outbox WHERE address=? AND id=?", (address, id_))]

    def message_states(self, id_: str | None = None, count: int = 100) -> list[dict]:
        """The newest ``count`` messages' states (or message ``id_``'s), newest first."""
        sql = "SELECT id, address, state, via, size, created, updated, sealed_at, error FROM sent"
        rows = self._db.query(sql + (" WHERE id=?" if id_ else "") + " ORDER BY created DESC LIMIT ?",
                              ((id_, count) if id_ else (count,)))
        return [{"id": i, "address": a, "state": st, "via": via, "size": size, "created": c, "updated": u,
                 "sealed": sealed_at is not None, "sealed_at": sealed_at, "error": err}
                for i, a, st, via, size, c, u, sealed_at, err in rows]

    def prune_states(self, before: float) -> None:
        """Forget settled messages last changed before ``before``."""
        with self._db.transaction() as db:
            db.execute("DELETE FROM sent WHERE state != 'queued' AND updated < ?", (before,))

    def exists(self, n: int) -> bool:
        return bool(self._db.query("SELECT 1 FROM outbox WHERE n=?", (n,)))

    def drop_peer(self, address: str) -> int:
        with self._db.transaction() as db:
            db.execute("DELETE FROM sealed WHERE n IN (SELECT n FROM outbox WHERE address=?)", (address,))
            return db.execute("DELETE FROM outbox WHERE address=?", (address,)).rowcount

    def rows(self, address: str | None = None) -> list[dict]:
        """The queued items (of one peer, or all), oldest first."""
        sql = "SELECT n, address, port, id, kind, header, data, created FROM outbox"
        rows = self._db.query(sql + (" WHERE address=? ORDER BY n" if address else " ORDER BY n"), (address,) if address else ())
        return [{"n": n, "address": a, "port": p, "id": i, "kind": k, "header": json.loads(h), "data": bytes(d), "created": c}
                for n, a, p, i, k, h, d, c in rows]
