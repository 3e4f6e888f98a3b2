"""
What a beacon must not forget across a restart: which key holds which name
(and when it was last seen), each node's visibility list, and the mail
waiting for delivery.

The registry, the visibility lists and the mailbox keep everything in
memory and tell an :class:`IBeaconStore` each change as it happens; the
store only *queues* it (the latest change per row wins), and
:meth:`~IBeaconStore.flush` writes the queue in one transaction.  The
beacon service flushes every ``FLUSH_INTERVAL`` seconds and once more when
it stops.  What the beacon *acknowledges* to a node is committed before the
answer leaves (the store commits at once, inside the handler that answers):
mail, visibility lists, cards and a name newly taken.  Only ``last_seen``
refreshes wait for the batch, so a crash (even ``kill -9``) loses no
acknowledged change, just the last second of "seen at" times.

* :class:`MemoryStore` remembers nothing (a beacon without ``--state-dir``).
* :class:`~pilotproto.beacon.redis_store.RedisStore` keeps it in Redis,
  shared by a fleet of beacons (``--store redis://``), with
  :class:`IFleet` to reach the nodes registered on the others.
* :class:`SQLiteStore` keeps ``DIR/beacon.sqlite3`` (Python's ``sqlite3``,
  write-ahead log, ``synchronous=NORMAL``: a commit is not an fsync; the
  log is synced at checkpoints), and holds ``DIR/beacon.lock`` so that two
  beacons never share a state directory.

What is *not* kept: live registrations (endpoints, relay keys: a node
registers again within seconds of a restart, with a fresh nonce), nonces,
counters and quotas.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3

import attrs
from twisted.logger import Logger
from zope.interface import Interface, implementer

from ..errors import InvalidArgument, StateError

_log = Logger()
FLUSH_INTERVAL = 1.0
DB_FILE = "beacon.sqlite3"
LOCK_FILE = "beacon.lock"
SCHEMA_VERSION = 1


@attrs.frozen
class NameRow:
    public_key: bytes
    hostname: str
    last_seen: float


@attrs.frozen
class VisibilityRow:
    owner: bytes
    version: int
    keys: frozenset


@attrs.frozen
class MailRow:
    mail_id: int
    sender: bytes
    #: ("key", bytes), ("name", str) or ("address", bytes)
    recipient: tuple
    dedup_key: tuple
    datagram: bytes
    expires_at: float


@attrs.frozen
class CardRow:
    """A node's agent card as it signed it (``pilotproto/wire/cards.py``)."""

    public_key: bytes
    version: int
    card: bytes
    signature: bytes


@attrs.frozen
class Snapshot:
    names: tuple = ()
    visibility: tuple = ()
    mail: tuple = ()
    cards: tuple = ()


class IBeaconStore(Interface):
    """Where the beacon's lasting state goes; every ``put``/``delete`` only queues."""

    def load():
        """The :class:`Snapshot` saved so far."""

    def put_name(row):
        """A key holds a name, last seen at ``row.last_seen``."""

    def delete_name(public_key):
        """The key holds no name any more."""

    def put_visibility(row):
        """A node's installed visibility list."""

    def delete_visibility(owner):
        """Forget a node's visibility list."""

    def put_mail(row):
        """Mail waiting (new, or bound to its recipient's key)."""

    def delete_mail(mail_id):
        """Mail delivered, expired or replaced."""

    def put_card(row):
        """A node's agent card (new, or a newer version)."""

    def delete_card(public_key):
        """A node's card deleted, or its name freed."""

    def flush():
        """Write what is queued; return how many changes were written."""

    def close():
        """Flush and let go of the files."""


class IFleet(Interface):
    """
    The other beacons of a fleet (:mod:`pilotproto.beacon.fleet`), as the
    server sees them: it asks only when its own registrations cannot answer,
    so a beacon without a fleet (``fleet=None``) keeps its synchronous path.
    """

    def registered(record):
        """A node registered here: the rest of the fleet may find it now."""

    def lookup(msg, requester, inbound):
        """A lookup of a node not live here: answered later (from Redis);
        returns the datagrams to send now (none)."""

    def relay(sender, data):
        """A relay frame (raw 0xD0 bytes) from ``sender`` to a node not live
        here: carried to the beacon that holds it; returns datagrams to send now."""

    def when_kept(msg, inbound, replies):
        """The ``replies`` to ``msg`` to send now ([] if they wait until the
        changes the request made are kept)."""

    def find_cards(keys, msg, requester, inbound):
        """A ``FindCards`` matching cards of ``keys``, not live here: answered
        later, once Redis says which are live elsewhere; returns datagrams to send now."""


@implementer(IBeaconStore)
class MemoryStore:
    """Keeps nothing: every restart begins empty."""

    def load(self) -> Snapshot:
        return Snapshot()

    def put_name(self, row):
        """Nothing to keep."""

    def delete_name(self, public_key):
        """Nothing to forget."""

    def put_visibility(self, row):
        """Nothing to keep."""

    def delete_visibility(self, owner):
        """Nothing to forget."""

    def put_mail(self, row):
        """Nothing to keep."""

    def delete_mail(self, mail_id):
        """Nothing to forget."""

    def put_card(self, row):
        """Nothing to keep."""

    def delete_card(self, public_key):
        """Nothing to forget."""

    def flush(self) -> int:
        return 0

    def close(self):
        """No files."""


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # No UNIQUE on hostname: memory is the authority, and a batch may hold a
    # name's move from one key to another in either order.
    "CREATE TABLE IF NOT EXISTS names (public_key BLOB PRIMARY KEY, hostname TEXT NOT NULL, last_seen REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS visibility (owner BLOB PRIMARY KEY, version INTEGER NOT NULL, keys BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS mail (mail_id BLOB PRIMARY KEY, sender BLOB NOT NULL, recipient_kind TEXT NOT NULL,"
    " recipient BLOB NOT NULL, dedup TEXT NOT NULL, datagram BLOB NOT NULL, expires_at REAL NOT NULL)",
    # Agent cards (docs/discovery.md): added without a schema bump, as a new table.
    "CREATE TABLE IF NOT EXISTS cards (public_key BLOB PRIMARY KEY, version INTEGER NOT NULL, card BLOB NOT NULL, signature BLOB NOT NULL)",
)


@implementer(IBeaconStore)
class SQLiteStore:
    """The beacon's state in ``state_dir/beacon.sqlite3``."""

    def __init__(self, state_dir: str):
        self.state_dir = state_dir
        try:
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
            self._lock = open(os.path.join(state_dir, LOCK_FILE), "a+")
        except OSError as e:
            raise InvalidArgument(f"cannot use the beacon state directory {state_dir}: {e.strerror}") from None
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise InvalidArgument(
                f"another beacon uses the state directory {state_dir}",
                hint="Stop that beacon, or give this one its own --state-dir.",
            ) from None
        path = os.path.join(state_dir, DB_FILE)
        try:
            # Autocommit off by hand: flush() makes one transaction per batch.
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            for statement in _SCHEMA:
                self._db.execute(statement)
            self._check_version()
        except sqlite3.Error as e:
            self._lock.close()
            raise StateError(f"the beacon state {path} cannot be used: {e}", hint="Move it aside to start with no state.") from None
        #: (table, primary key) -> (sql, parameters); the latest change per row wins
        self._queue: dict = {}
        self.writes = 0
        #: the hostname each key holds on disk: a change of it is committed at once
        self._hostnames: dict = {}

    def _check_version(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif row[0] != str(SCHEMA_VERSION):
            raise sqlite3.DatabaseError(f"schema version {row[0]}, this beacon reads {SCHEMA_VERSION}")

    # -- reading ---------------------------------------------------------------

    def load(self) -> Snapshot:
        names = tuple(NameRow(bytes(k), h, s) for k, h, s in self._db.execute("SELECT public_key, hostname, last_seen FROM names"))
        self._hostnames = {row.public_key: row.hostname for row in names}
        visibility = tuple(
            VisibilityRow(bytes(o), v, frozenset(bytes(keys[i : i + 32]) for i in range(0, len(keys), 32)))
            for o, v, keys in self._db.execute("SELECT owner, version, keys FROM visibility")
        )
        mail = tuple(
            MailRow(int.from_bytes(m, "big"), bytes(s), _recipient_from_row(kind, r), _dedup_from_text(d), bytes(g), e)
            for m, s, kind, r, d, g, e in self._db.execute(
                "SELECT mail_id, sender, recipient_kind, recipient, dedup, datagram, expires_at FROM mail"
            )
        )
        cards = tuple(
            CardRow(bytes(k), v % (1 << 64), bytes(c), bytes(s)) for k, v, c, s in self._db.execute("SELECT public_key, version, card, signature FROM cards")
        )
        return Snapshot(names, visibility, mail, cards)

    # -- queueing ----------------------------------------------------------------

    def _queue_change(self, row_key, sql, params) -> None:
        # Re-queued rows move to the end, so a batch replays changes in the
        # order of their latest version.
        self._queue.pop(row_key, None)
        self._queue[row_key] = (sql, params)

    def _commit_now(self) -> None:
        """Commit what is queued before the handler's answer leaves; a failure
        (a full disk) keeps the batch for the periodic flush to retry."""
        try:
            self.flush()
        except (sqlite3.Error, OSError) as e:
            _log.error("cannot write the beacon's state at once ({e}); retrying every second", e=e)

    def put_name(self, row: NameRow) -> None:
        self._queue_change(
            ("names", row.public_key),
            "INSERT INTO names VALUES (?, ?, ?) ON CONFLICT(public_key) DO UPDATE SET hostname = excluded.hostname, last_seen = excluded.last_seen",
            (row.public_key, row.hostname, row.last_seen),
        )
        if self._hostnames.get(row.public_key) != row.hostname:
            self._hostnames[row.public_key] = row.hostname
            self._commit_now()

    def delete_name(self, public_key: bytes) -> None:
        self._queue_change(("names", public_key), "DELETE FROM names WHERE public_key = ?", (public_key,))
        self._hostnames.pop(public_key, None)

    def put_visibility(self, row: VisibilityRow) -> None:
        self._queue_change(
            ("visibility", row.owner),
            "INSERT OR REPLACE INTO visibility VALUES (?, ?, ?)",
            (row.owner, row.version, b"".join(sorted(row.keys))),
        )
        self._commit_now()

    def delete_visibility(self, owner: bytes) -> None:
        self._queue_change(("visibility", owner), "DELETE FROM visibility WHERE owner = ?", (owner,))
        self._commit_now()

    def put_mail(self, row: MailRow) -> None:
        kind, value = row.recipient
        self._queue_change(
            ("mail", row.mail_id),
            "INSERT OR REPLACE INTO mail VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                row.mail_id.to_bytes(8, "big"),
                row.sender,
                kind,
                value.encode("utf-8") if isinstance(value, str) else value,
                _dedup_to_text(row.dedup_key),
                row.datagram,
                row.expires_at,
            ),
        )
        self._commit_now()

    def delete_mail(self, mail_id: int) -> None:
        self._queue_change(("mail", mail_id), "DELETE FROM mail WHERE mail_id = ?", (mail_id.to_bytes(8, "big"),))

    def put_card(self, row: CardRow) -> None:
        # SQLite integers are signed 64-bit: a version is stored as its two's complement.
        version = row.version - (1 << 64) if row.version >= 1 << 63 else row.version
        self._queue_change(("cards", row.public_key), "INSERT OR REPLACE INTO cards VALUES (?, ?, ?, ?)",
                           (row.public_key, version, row.card, row.signature))
        self._commit_now()

    def delete_card(self, public_key: bytes) -> None:
        self._queue_change(("cards", public_key), "DELETE FROM cards WHERE public_key = ?", (public_key,))
        self._commit_now()

    # -- writing -------------------------------------------------------------------

    def flush(self) -> int:
        if not self._queue:
            return 0
        queue, self._queue = self._queue, {}
        self._db.execute("BEGIN")
        try:
            for sql, params in queue.values():
                self._db.execute(sql, params)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            # Keep the batch (behind anything queued since) for the next try.
            queue.update(self._queue)
            self._queue = queue
            raise
        self.writes += len(queue)
        return len(queue)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._db.close()
            self._lock.close()


def _recipient_from_row(kind: str, value: bytes) -> tuple:
    return (kind, bytes(value).decode("utf-8")) if kind == "name" else (kind, bytes(value))


def _dedup_to_text(key: tuple) -> str:
    return json.dumps([{"hex": part.hex()} if isinstance(part, bytes) else part for part in key])


def _dedup_from_text(text: str) -> tuple:
    return tuple(bytes.fromhex(part["hex"]) if isinstance(part, dict) else part for part in json.loads(text))
