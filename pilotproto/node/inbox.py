"""
Port 1001: messages and files from trusted peers.

One item per stream.  The sender writes a header line, then exactly
``size`` bytes; the receiver answers with one line and closes::

    {"kind": "message"|"file", "name": NAME, "size": N, "sha256": HEX}\\n
    <N bytes>
                                    {"status": "ok", "kind": ..., "name": STORED, "size": N, "sha256": HEX}\\n
                                or  {"status": "error", "code": ..., "message": ..., "hint": ...}\\n

Messages wait in a bounded queue that ``pilotctl recv 1001`` drains.  Files
are written to ``HOME/inbox/`` through a hidden temporary file, checked
against the announced SHA-256, and only then given a name: the final
component of the sender's name, never an existing file's (`` (1)`` etc. is
added), never a hidden file, never outside the inbox.  The framing is
specified in ``docs/protocol.md``.
"""

from __future__ import annotations

import collections
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

INBOX_PORT = 1001
INBOX_DIR = "inbox"
MAX_HEADER_LINE = 4096
MAX_MESSAGE = 64 * 1024
MAX_FILE = 64 * 1024**3
#: messages kept for ``recv``; the oldest go first
MAX_QUEUED_MESSAGES = 1000
#: free space left on the disk after a file is stored
DISK_RESERVE = 64 * 1024**2
_MAX_NAME_BYTES = 200  # room for " (NNNN)" within the usual 255
_MAX_SUFFIX = 10_000
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TEMP_PREFIX = ".incoming-"

log = Logger()


class ChecksumMismatch(PilotError):
    """The data that arrived does not match the checksum the sender announced."""

    code = "checksum_mismatch"
    hint = "Send it again; the partial copy was deleted."


class NoSpace(PilotError):
    """The receiver has no room for that file."""

    code = "no_space"
    hint = "Ask the peer to free disk space, or send a smaller file."


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


def encode_header(kind: str, size: int, sha256: str, name: str | None = None) -> bytes:
    doc = {"kind": kind, "name": name, "size": size, "sha256": sha256}
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def parse_header(line: bytes) -> dict:
    """Check a header line; InvalidArgument or ProtocolError says what is wrong."""
    try:
        doc = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("the header line is not JSON") from None
    if not isinstance(doc, dict):
        raise ProtocolError("the header must be a JSON object")
    kind, size, digest = doc.get("kind"), doc.get("size"), doc.get("sha256")
    if kind not in ("message", "file"):
        raise ProtocolError(f"unknown kind {kind!r}; this port takes \"message\" or \"file\"")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ProtocolError("size must be a whole number of bytes")
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise ProtocolError("sha256 must be 64 lower-case hex digits")
    limit = MAX_MESSAGE if kind == "message" else MAX_FILE
    if size > limit:
        raise InvalidArgument(f"a {kind} is at most {limit} bytes; this one is {size}")
    name = safe_file_name(doc.get("name")) if kind == "file" else None
    return {"kind": kind, "size": size, "sha256": digest, "name": name}


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
        try:
            os.unlink(self.temp_path)
        except FileNotFoundError:
            pass


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


class Inbox:
    def __init__(self, home: str, clock):
        self.directory = os.path.join(home, INBOX_DIR)
        self._clock = clock
        self.messages: collections.deque = collections.deque(maxlen=MAX_QUEUED_MESSAGES)
        self._waiters: list = []

    def begin_file(self, name: str, size: int) -> IncomingFile:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        free = shutil.disk_usage(self.directory).free
        if size + DISK_RESERVE > free:
            raise NoSpace(f"{size} bytes do not fit: {free} bytes free on the receiver's disk")
        return IncomingFile(self.directory, name, size)

    def store_message(self, peer, data: bytes, sha256: str) -> dict:
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ChecksumMismatch("the message does not match its announced SHA-256")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument("a message must be UTF-8 text", hint="Send binary data with send-file.") from None
        message = {
            "from": peer.hostname or peer.address,
            "address": peer.address,
            "text": text,
            "size": len(data),
            "sha256": sha256,
            "received_at": self._clock.seconds(),
        }
        self.messages.append(message)
        self._wake()
        return message

    def recv(self, count=None, timeout=0) -> defer.Deferred:
        """Take queued messages: ``count`` of them (default: all), waiting up to ``timeout`` s for them."""
        if count is not None and (not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_QUEUED_MESSAGES):
            raise InvalidArgument(f"count must be a whole number from 1 to {MAX_QUEUED_MESSAGES}")
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 <= timeout <= 3600:
            raise InvalidArgument("timeout must be a number of seconds from 0 to 3600")
        want = count or 1
        if len(self.messages) >= want or timeout == 0:
            return defer.succeed({"messages": self._take(count)})
        d = defer.Deferred()
        entry = [want, count, d, None]
        entry[3] = self._clock.callLater(timeout, self._expire, entry, timeout)
        self._waiters.append(entry)
        return d

    def _take(self, count) -> list:
        n = len(self.messages) if count is None else min(count, len(self.messages))
        return [self.messages.popleft() for _ in range(n)]

    def _wake(self) -> None:
        while self._waiters and len(self.messages) >= self._waiters[0][0]:
            _, count, d, timer = self._waiters.pop(0)
            timer.cancel()
            d.callback({"messages": self._take(count)})

    def _expire(self, entry, timeout) -> None:
        self._waiters.remove(entry)
        _, count, d, _ = entry
        if self.messages:
            d.callback({"messages": self._take(count)})
        else:
            d.errback(Timeout(f"no message arrived on port {INBOX_PORT} within {timeout:g} s"))


@implementer(IHalfCloseableProtocol)
class InboxProtocol(Protocol):
    """One item from one peer: header, body, answer."""

    def __init__(self, inbox: Inbox, peer):
        self._inbox = inbox
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
                self._start(parse_header(line))
            self._body(data)
        except PilotError as e:
            self._finish(e.to_dict())
        except OSError as e:
            log.error("inbox: cannot store a file from {peer}: {e}", peer=str(self._peer), e=e)
            self._finish(PilotError(f"the receiver cannot store the file: {e.strerror}").to_dict())

    def _start(self, header: dict) -> None:
        self._header = header
        if header["kind"] == "file":
            self._file = self._inbox.begin_file(header["name"], header["size"])

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
            self._complete()

    def _complete(self) -> None:
        header = self._header
        if self._file is not None:
            incoming, self._file = self._file, None
            stored = incoming.finish(header["sha256"])
            log.info("inbox: {name} ({size} bytes) from {peer}", name=stored, size=header["size"], peer=str(self._peer))
        else:
            self._inbox.store_message(self._peer, bytes(self._buffer), header["sha256"])
            stored = None
        self._finish({"status": "ok", "kind": header["kind"], "name": stored, "size": header["size"], "sha256": header["sha256"]})

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


class InboxFactory(Factory):
    noisy = False

    def __init__(self, inbox: Inbox):
        self._inbox = inbox

    def buildProtocol(self, addr):
        return InboxProtocol(self._inbox, addr)
