"""
Port 1001: messages and files from trusted peers, into the durable inbox.

One item per stream.  The sender writes a header line, then exactly
``size`` bytes; the receiver answers with one line and closes::

    {"kind": "message"|"file", "name": NAME, "size": N, "sha256": HEX, "id": ID}\\n
    <N bytes>
                                    {"status": "ok", "kind": ..., "id": ID, "name": STORED, "size": N, "sha256": HEX,
                                     "duplicate": BOOL}\\n
                                or  {"status": "error", "code": ..., "message": ..., "hint": ...}\\n

``id`` (16 hex digits, the sender's) makes delivery exactly-once: the item
is stored (``MailStore``, fsync'd) *before* the answer goes back, and an id
seen from the same sender within the dedup window is answered again but not
stored twice.  A header without ``id`` (an older sender) gets an id made up
here, and no dedup.  Messages and files become items with a persistent seq
that ``inbox`` lists and ``recv`` takes.  Files are written to
``HOME/inbox/`` through a hidden temporary file, checked against the
announced SHA-256, and only then given a name: the final component of the
sender's name, never an existing file's (`` (1)`` etc. is added), never a
hidden file, never outside the inbox.  The framing is specified in
``docs/protocol.md`` (section 8); the protocol class is shared with port 1002.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil

from twisted.internet import defer
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from ..errors import InvalidArgument, PilotError, ProtocolError, Timeout
from .mailstore import MailStore, NoSpace

INBOX_PORT = 1001
INBOX_DIR = "inbox"
MAX_HEADER_LINE = 4096
MAX_MESSAGE = 64 * 1024
MAX_FILE = 64 * 1024**3
#: items an ``inbox`` or ``recv`` answer holds at most
MAX_COUNT = 1000
#: an answer stops growing past this many bytes of JSON (the control socket's lines are at most 1 MiB)
MAX_ANSWER_BYTES = 640 * 1024
#: free space left on the disk after a file is stored
DISK_RESERVE = 64 * 1024**2
_MAX_NAME_BYTES = 200  # room for " (NNNN)" within the usual 255
_MAX_SUFFIX = 10_000
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ID = re.compile(r"^[0-9a-f]{16}$")
_TEMP_PREFIX = ".incoming-"

log = Logger()


class ChecksumMismatch(PilotError):
    """The data that arrived does not match the checksum the sender announced."""

    code = "checksum_mismatch"
    hint = "Send it again; the partial copy was deleted."


def safe_file_name(name) -> str:
    """The name a received file may have in the inbox, or InvalidArgument.

    Only the final path component counts (``../../etc/x`` is ``x``); empty,
    dot-only, hidden, NUL or control-character names are refused."""
    if not isinstance(name, str):
        raise InvalidArgument("a file needs a name")
    if "\x00" in name:
        raise InvalidArgument("a file name may not contain NUL")
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if not base or base.startswith("."):
        raise InvalidArgument(f"{name!r} is not a usable file name", hint="Send a file with a plain, non-hidden name.")
    if any(ord(c) < 32 or ord(c) == 127 for c in base):
        raise InvalidArgument(f"{name!r} contains control characters")
    if len(base.encode("utf-8")) > _MAX_NAME_BYTES:
        raise InvalidArgument(f"file name longer than {_MAX_NAME_BYTES} bytes")
    return base


def check_id(value) -> str | None:
    """An item id: 16 lower-case hex digits (or None: an older sender's item)."""
    if value is None:
        return None
    if not isinstance(value, str) or not _ID.match(value):
        raise ProtocolError("id must be 16 lower-case hex digits")
    return value


def encode_header(kind: str, size: int, sha256: str, name: str | None = None, id_: str | None = None, **extra) -> bytes:
    doc = {"kind": kind, "name": name, "size": size, "sha256": sha256, **extra}
    if id_ is not None:
        doc["id"] = id_
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def load_header(line: bytes) -> dict:
    """A header line's JSON object with its ``size``, ``sha256`` and ``id`` checked."""
    try:
        doc = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("the header line is not JSON") from None
    if not isinstance(doc, dict):
        raise ProtocolError("the header must be a JSON object")
    size, digest = doc.get("size"), doc.get("sha256")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ProtocolError("size must be a whole number of bytes")
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise ProtocolError("sha256 must be 64 lower-case hex digits")
    doc["id"] = check_id(doc.get("id"))
    return doc


def parse_header(line: bytes) -> dict:
    """Check a port-1001 header line; InvalidArgument or ProtocolError says what is wrong."""
    doc = load_header(line)
    kind, size, digest = doc.get("kind"), doc["size"], doc["sha256"]
    if kind not in ("message", "file"):
        raise ProtocolError(f"unknown kind {kind!r}; this port takes \"message\" or \"file\"")
    limit = MAX_MESSAGE if kind == "message" else MAX_FILE
    if size > limit:
        raise InvalidArgument(f"a {kind} is at most {limit} bytes; this one is {size}")
    name = safe_file_name(doc.get("name")) if kind == "file" else None
    return {"kind": kind, "size": size, "sha256": digest, "name": name, "id": doc["id"]}


def encode_reply(doc: dict) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def parse_reply(line: bytes) -> dict:
    """The receiver's answer: the ok document, or its error raised."""
    try:
        doc = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("the receiver's answer is not JSON") from None
    if not isinstance(doc, dict) or doc.get("status") not in ("ok", "error"):
        raise ProtocolError("the receiver's answer is not a status object")
    if doc["status"] == "error":
        raise PilotError.from_dict(doc)
    return doc


class IncomingFile:
    """A file being received: a hidden temporary file in the inbox until it checks out."""

    def __init__(self, directory: str, name: str, size: int):
        self.directory = directory
        self.name = name
        self.size = size
        self.received = 0
        self._hash = hashlib.sha256()
        fd, self.temp_path = _mkstemp(directory)
        self._file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self.received += len(data)

    def finish(self, sha256: str) -> str:
        """Check the hash and give the file its name; returns the stored name."""
        self._file.close()
        if self._hash.hexdigest() != sha256:
            self.discard()
            raise ChecksumMismatch(f"{self.name}: SHA-256 {self._hash.hexdigest()} arrived, {sha256} was announced")
        stored = _reserve_name(self.directory, self.name)
        # Replacing the empty placeholder we created exclusively: never another file.
        os.replace(self.temp_path, os.path.join(self.directory, stored))
        return stored

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        with contextlib.suppress(FileNotFoundError):  # already gone is what we wanted
            os.unlink(self.temp_path)


def _mkstemp(directory: str):
    for _ in range(100):
        path = os.path.join(directory, _TEMP_PREFIX + os.urandom(8).hex())
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), path
        except FileExistsError:
            continue
    raise PilotError("cannot create a temporary file in the inbox")


def _reserve_name(directory: str, name: str) -> str:
    stem, ext = os.path.splitext(name)
    for n in range(_MAX_SUFFIX):
        candidate = name if n == 0 else f"{stem} ({n}){ext}"
        try:
            os.close(os.open(os.path.join(directory, candidate), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            return candidate
        except FileExistsError:
            continue
    raise PilotError(f"the inbox already holds {_MAX_SUFFIX} files called {name!r}")


def _checked_count(count, default=MAX_COUNT) -> int:
    if count is None:
        return default
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_COUNT:
        raise InvalidArgument(f"count must be a whole number from 1 to {MAX_COUNT}")
    return count


def _checked_timeout(timeout, most=3600) -> float:
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 <= timeout <= most:
        raise InvalidArgument(f"timeout must be a number of seconds from 0 to {most}")
    return float(timeout)


def _bounded(items: list[dict]) -> list[dict]:
    """As many of ``items`` as fit one control answer (always the first)."""
    kept, size = [], 0
    for item in items:
        size += len(json.dumps(item, ensure_ascii=False))
        if kept and size > MAX_ANSWER_BYTES:
            break
        kept.append(item)
    return kept


class _Waiter:
    """A long poll: ``inbox`` (items after ``after``) or ``recv`` (``want`` messages)."""

    def __init__(self, mode, after, count, kind, want, deferred):
        self.mode, self.after, self.count, self.kind, self.want = mode, after, count, kind, want
        self.deferred = deferred
        self.timer = None


class Inbox:
    """
    The receiver's items (port 1001) over the durable ``store``
    (:class:`MailStore`, default ``HOME/inbox.db``): ``inbox`` lists,
    ``delete`` removes, ``recv`` takes messages, each long-polling on the
    ``clock``.  ``on_peer`` (optional, an IOutbox) hears that a peer reached
    us, so what we owe it is retried at once.
    """

    def __init__(self, home: str, clock, store: MailStore | None = None, outbox=None):
        self.directory = os.path.join(home, INBOX_DIR)
        self._clock = clock
        self.store = store if store is not None else MailStore(home, clock)
        self._outbox = outbox
        self._waiters: list[_Waiter] = []

    # -- what arrives ----------------------------------------------------------------------

    def begin_file(self, name: str, size: int) -> IncomingFile:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        free = shutil.disk_usage(self.directory).free
        if size + DISK_RESERVE > free:
            raise NoSpace(f"{size} bytes do not fit: {free} bytes free on the receiver's disk",
                          hint="Ask the peer to free disk space, or send a smaller file.")
        return IncomingFile(self.directory, name, size)

    def store_message(self, peer, data: bytes, sha256: str, id_: str | None = None) -> dict:
        """Store a message (on disk before this returns); the item, or None for a duplicate."""
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ChecksumMismatch("the message does not match its announced SHA-256")
        item, duplicate = self.store.add_item(id_=id_, kind="message", sender=peer.hostname or peer.address,
                                              address=peer.address, size=len(data), sha256=sha256, data=data)
        if not duplicate:
            self._wake()
        return item

    def store_file(self, peer, stored: str, size: int, sha256: str, id_: str | None = None) -> dict | None:
        """Record a file already in the inbox; a duplicate's copy is deleted (None)."""
        path = os.path.join(os.path.abspath(self.directory), stored)
        try:
            item, duplicate = self.store.add_item(id_=id_, kind="file", sender=peer.hostname or peer.address,
                                                  address=peer.address, size=size, sha256=sha256, name=stored, path=path)
        except PilotError:
            os.unlink(path)
            raise
        if duplicate:
            os.unlink(path)
            return None
        self._wake()
        return item

    def peer_seen(self, address: str) -> None:
        if self._outbox is not None:
            self._outbox.peer_seen(address)

    # -- the application's side -------------------------------------------------------------

    def inbox(self, after=0, count=None, timeout=0, kind=None) -> defer.Deferred:
        """``{"messages": [ITEM...], "last": SEQ}``: items after ``after``, waiting up to ``timeout`` s for one."""
        if not isinstance(after, int) or isinstance(after, bool) or after < 0:
            raise InvalidArgument("after must be a seq: a whole number, 0 or more")
        count = _checked_count(count)
        timeout = _checked_timeout(timeout, 60)
        if kind not in (None, "message", "file"):
            raise InvalidArgument('kind must be "message" or "file"')
        items = self.store.items(after, count, kind)
        if items or timeout == 0:
            return defer.succeed(self._listing(items))
        return self._wait(_Waiter("inbox", after, count, kind, 1, defer.Deferred()), timeout)

    def _listing(self, items) -> dict:
        return {"messages": _bounded(items), "last": self.store.last_seq()}

    def delete(self, seqs) -> dict:
        if not isinstance(seqs, list) or len(seqs) > MAX_COUNT or not all(
                isinstance(s, int) and not isinstance(s, bool) for s in seqs):
            raise InvalidArgument(f"seqs must be a list of at most {MAX_COUNT} seqs (whole numbers)")
        return {"deleted": self.store.delete(seqs)}

    def recv(self, count=None, timeout=0) -> defer.Deferred:
        """Take messages: ``count`` of them (default: all), waiting up to ``timeout`` s for them."""
        want = _checked_count(count, 1) if count is not None else 1
        timeout = _checked_timeout(timeout)
        if len(self.store.items(0, want, "message")) >= want or timeout == 0:
            return defer.succeed({"messages": self._take(count)})
        return self._wait(_Waiter("recv", 0, count, "message", want, defer.Deferred()), timeout)

    def _take(self, count) -> list:
        items = _bounded(self.store.items(0, count or MAX_COUNT, "message"))
        self.store.delete([item["seq"] for item in items])
        return items

    def _wait(self, waiter: _Waiter, timeout: float) -> defer.Deferred:
        waiter.timer = self._clock.callLater(timeout, self._expire, waiter, timeout)
        self._waiters.append(waiter)
        return waiter.deferred

    def _ready(self, waiter: _Waiter) -> bool:
        return len(self.store.items(waiter.after, waiter.want, waiter.kind)) >= waiter.want

    def _answer(self, waiter: _Waiter) -> None:
        if waiter.mode == "recv":
            waiter.deferred.callback({"messages": self._take(waiter.count)})
        else:
            waiter.deferred.callback(self._listing(self.store.items(waiter.after, waiter.count, waiter.kind)))

    def _wake(self) -> None:
        for waiter in list(self._waiters):
            if waiter in self._waiters and self._ready(waiter):
                self._waiters.remove(waiter)
                waiter.timer.cancel()
                self._answer(waiter)

    def _expire(self, waiter: _Waiter, timeout: float) -> None:
        self._waiters.remove(waiter)
        if self.store.items(waiter.after, 1, waiter.kind):
            self._answer(waiter)
        else:
            what = "message" if waiter.kind == "message" else "item"
            waiter.deferred.errback(Timeout(f"no {what} arrived on port {INBOX_PORT} within {timeout:g} s"))

    def stop(self) -> None:
        """Fail every long poll (the node is stopping)."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.timer.cancel()
            waiter.deferred.errback(PilotError("the node is shutting down"))

    # -- as a sink of ItemProtocol ------------------------------------------------------------

    def parse_header(self, line: bytes) -> dict:
        return parse_header(line)

    def begin(self, peer, header: dict):
        self.peer_seen(peer.address)
        return self.begin_file(header["name"], header["size"]) if header["kind"] == "file" else None

    def complete(self, peer, header: dict, body: bytes | None, incoming: IncomingFile | None) -> dict:
        if incoming is not None:
            stored = incoming.finish(header["sha256"])
            item = self.store_file(peer, stored, header["size"], header["sha256"], header["id"])
            log.info("inbox: {name} ({size} bytes) from {peer}", name=stored, size=header["size"], peer=str(peer))
        else:
            item = self.store_message(peer, body, header["sha256"], header["id"])
        reply = {"status": "ok", "kind": header["kind"], "name": None, "size": header["size"], "sha256": header["sha256"],
                 "id": header["id"], "duplicate": item is None}
        if item is not None:
            reply.update(id=item["id"], name=item["name"], path=item["path"])
        return reply


@implementer(IHalfCloseableProtocol)
class ItemProtocol(Protocol):
    """One item from one peer: header, body, answer.  ``sink`` parses, stores and answers (an Inbox, or events)."""

    def __init__(self, sink, peer):
        self._sink = sink
        self._peer = peer
        self._buffer = bytearray()
        self._header = None
        self._file = None
        self._received = 0
        self._done = False

    def dataReceived(self, data):
        if self._done:
            return
        try:
            if self._header is None:
                self._buffer += data
                newline = self._buffer.find(b"\n")
                if newline < 0:
                    if len(self._buffer) > MAX_HEADER_LINE:
                        raise ProtocolError(f"no header line within {MAX_HEADER_LINE} bytes")
                    return
                line, data = bytes(self._buffer[:newline]), bytes(self._buffer[newline + 1 :])
                self._buffer = bytearray()
                self._header = self._sink.parse_header(line)
                self._file = self._sink.begin(self._peer, self._header)
            self._body(data)
        except PilotError as e:
            self._finish(e.to_dict())
        except OSError as e:
            log.error("cannot store an item from {peer}: {e}", peer=str(self._peer), e=e)
            self._finish(PilotError(f"the receiver cannot store the item: {e.strerror}").to_dict())

    def _body(self, data: bytes) -> None:
        size = self._header["size"]
        if self._received + len(data) > size:
            raise ProtocolError(f"more than the announced {size} bytes arrived")
        self._received += len(data)
        if self._file is not None:
            if data:
                self._file.write(data)
        else:
            self._buffer += data
        if self._received == size:
            incoming, self._file = self._file, None
            body = None if incoming is not None else bytes(self._buffer)
            try:
                reply = self._sink.complete(self._peer, self._header, body, incoming)
            finally:
                if incoming is not None:
                    incoming.discard()  # a no-op once it has its name
            self._finish(reply)

    def _finish(self, reply: dict) -> None:
        self._done = True
        if self._file is not None:
            self._file.discard()
            self._file = None
        self.transport.write(encode_reply(reply))
        self.transport.loseConnection()

    def readConnectionLost(self):
        if not self._done:
            got = f"{self._received} of {self._header['size']} bytes" if self._header else "no header"
            self._finish(ProtocolError(f"the stream ended early ({got})").to_dict())

    def writeConnectionLost(self):
        """Our write side closed; the read side decides when we are done."""

    def connectionLost(self, reason=None):
        self._done = True
        if self._file is not None:
            self._file.discard()
            self._file = None


#: the name older code and tests know
InboxProtocol = ItemProtocol


class ItemFactory(Factory):
    """Runs an :class:`ItemProtocol` over ``sink`` on every stream to its port."""

    noisy = False

    def __init__(self, sink):
        self._sink = sink

    def buildProtocol(self, addr):
        return ItemProtocol(self._sink, addr)


InboxFactory = ItemFactory
