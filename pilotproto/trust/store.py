"""
The trust store: ``HOME/trust.json`` (mode 0600).

It holds whom this node trusts, the handshake requests waiting for an
answer (ours and theirs), the answers and revocations not yet accepted by
the beacon, and, per peer, the newest ``seq`` of any message delivered from
it (a message at or below it is a duplicate or a replay and is ignored).

Every change is written at once: a temporary file, fsync, then an atomic
rename, so a crash or a full disk leaves the previous file intact.  A file
that cannot be read or parsed stops the node with ``corrupt_state``; trust
is never silently reset, because an empty store would quietly cut this node
off from every peer.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import stat

import attrs

from ..errors import StateError

TRUST_FILE = "trust.json"
_FORMAT = "pilot-trust-v1"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def unb64(text: str, size: int | None = 32) -> bytes:
    raw = base64.b64decode(text, validate=True)
    if size is not None and len(raw) != size:
        raise ValueError(f"expected {size} bytes, got {len(raw)}")
    return raw


@attrs.define
class TrustedPeer:
    public_key: bytes
    hostname: str
    address: str
    since: float
    reason: str
    #: the peer has said it trusts us too (it asked us, or approved our request)
    mutual: bool = False


@attrs.define
class IncomingRequest:
    public_key: bytes
    hostname: str
    address: str
    reason: str
    received_at: float
    expires_at: float
    handshake_id: int
    #: set when ``hostname`` is a name we trust or asked for under *another*
    #: key: the key we know for it.  The name now belongs to a different key
    #: (a takeover, or the peer lost its key); such a request is never
    #: approved on its own, nor by its name.
    known_key: bytes | None = None


@attrs.define
class OutgoingRequest:
    handshake_id: int
    #: what the user asked for: a hostname or an address text
    target: str
    reason: str
    sent_at: float
    expires_at: float
    #: a :class:`pilotproto.trust.outgoing.State` value: "queued", "sent", "approved",
    #: "rejected", "failed" or "expired" (the machine there moves it)
    state: str = "queued"
    #: the target's key, once known (from a lookup, or from its answer)
    public_key: bytes | None = None


@attrs.define
class OutboxItem:
    """An answer or revocation to send through the beacon until it says Ok."""

    kind: str  # "answer" or "revoke"
    peer_key: bytes
    handshake_id: int = 0
    approved: bool = False


def _key_fields(cls) -> set:
    return {"public_key", "peer_key", "known_key"} & {a.name for a in attrs.fields(cls)}


def _to_json(obj) -> dict:
    doc = attrs.asdict(obj)
    for name in _key_fields(type(obj)):
        if doc[name] is not None:
            doc[name] = b64(doc[name])
    return doc


def _from_json(cls, doc: dict):
    fields = {a.name for a in attrs.fields(cls)}
    values = {k: v for k, v in doc.items() if k in fields}
    for name in _key_fields(cls):
        if values.get(name) is not None:
            values[name] = unb64(values[name])
    return cls(**values)


class TrustStore:
    def __init__(self, path: str):
        self.path = path
        self.trusted: dict[bytes, TrustedPeer] = {}
        self.incoming: dict[bytes, IncomingRequest] = {}
        self.outgoing: dict[int, OutgoingRequest] = {}
        self.outbox: list[OutboxItem] = []
        self.peer_seqs: dict[bytes, int] = {}

    @classmethod
    def load(cls, home: str) -> TrustStore:
        """The store in ``home``; empty if there is no file yet."""
        store = cls(os.path.join(home, TRUST_FILE))
        try:
            fd = os.open(store.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return store
        except OSError as e:
            raise StateError(f"cannot read trust file {store.path}: {e.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if mode & (stat.S_IWGRP | stat.S_IWOTH):
                raise StateError(
                    f"trust file {store.path} may be changed by other users",
                    hint=f"Check who changed it, then run: chmod 600 {store.path}",
                )
            raw = f.read()
        try:
            doc = json.loads(raw)
            if doc.get("format") != _FORMAT:
                raise ValueError(f"unknown format {doc.get('format')!r}")
            for item in doc["trusted"]:
                peer = _from_json(TrustedPeer, item)
                store.trusted[peer.public_key] = peer
            for item in doc["incoming"]:
                request = _from_json(IncomingRequest, item)
                store.incoming[request.public_key] = request
            for item in doc["outgoing"]:
                request = _from_json(OutgoingRequest, item)
                store.outgoing[request.handshake_id] = request
            store.outbox = [_from_json(OutboxItem, item) for item in doc["outbox"]]
            store.peer_seqs = {unb64(k): int(v) for k, v in doc["peer_seqs"].items()}
        except Exception as e:
            raise StateError(f"trust file {store.path} is corrupt ({e})") from None
        return store

    def to_json(self) -> dict:
        return {
            "format": _FORMAT,
            "trusted": [_to_json(p) for p in self.trusted.values()],
            "incoming": [_to_json(r) for r in self.incoming.values()],
            "outgoing": [_to_json(r) for r in self.outgoing.values()],
            "outbox": [_to_json(i) for i in self.outbox],
            "peer_seqs": {b64(k): v for k, v in self.peer_seqs.items()},
        }

    def save(self) -> None:
        data = (json.dumps(self.to_json(), indent=2) + "\n").encode()
        tmp = self.path + ".tmp"
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)  # left by a crash; O_EXCL below refuses to follow it
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            with contextlib.suppress(OSError):  # the error below is the one to report
                os.unlink(tmp)
            raise StateError(
                f"cannot write trust file {self.path}: {e.strerror}",
                hint="Check free disk space and permissions; the previous trust file is unchanged.",
            ) from None
