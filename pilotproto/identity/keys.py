"""
The node's long-term Ed25519 identity, kept in its home directory.

The key file is made once, on first start, with mode 0600 and written
atomically.  A key file that exists but cannot be read or parsed is an error
the operator must look at: pilot never replaces an identity silently,
because the identity *is* the node's permanent address and its trust.

The same holds for a key file that is *gone*: a home that holds what a node
leaves behind (its settings, its trust store, its inbox) but no
``identity.json`` lost its key, it is not a new node.  Making a fresh key
there would quietly give the node a new address under the old name and the
old trust list, so it stops with ``identity_missing`` instead, and only
``pilotctl init --force`` starts over (as a new address, and it says so).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import stat

import attrs
from nacl.bindings import crypto_sign_ed25519_pk_to_curve25519, crypto_sign_ed25519_sk_to_curve25519
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from ..errors import PermissionDenied, StateError
from .address import Address

KEY_FILE = "identity.json"
_FORMAT = "pilot-ed25519-v1"

#: what a node leaves in its home, all of it bound to its identity: the
#: settings (``common.home.CONFIG_FILE``), the trust store
#: (``trust.store.TRUST_FILE``) and the inbox (``node.inbox.INBOX_DIR``).
#: Named here because this layer may not import the ones above it; a test
#: keeps the names equal.
NODE_STATE = ("config.json", "trust.json", "inbox")


class IdentityMissing(StateError):
    """This home holds a node's state but not its identity."""

    code = "identity_missing"


@attrs.frozen
class Identity:
    signing_key: SigningKey = attrs.field(repr=False)

    @classmethod
    def generate(cls) -> "Identity":
        return cls(SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> "Identity":
        return cls(SigningKey(seed))

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def address(self) -> Address:
        return Address.from_public_key(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self.signing_key.sign(message).signature

    def x25519_private(self) -> bytes:
        """The static X25519 key birationally derived from the Ed25519 seed."""
        return crypto_sign_ed25519_sk_to_curve25519(bytes(self.signing_key) + self.public_key)

    def x25519_public(self) -> bytes:
        return crypto_sign_ed25519_pk_to_curve25519(self.public_key)


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is ``public_key``'s Ed25519 signature of ``message``."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    try:
        VerifyKey(public_key).verify(message, signature)
        return True
    except (BadSignatureError, ValueError, TypeError):
        return False
    except Exception:  # nacl raises its own errors for points not on the curve
        return False


def fingerprint(public_key: bytes) -> str:
    """A key as people compare it: ``SHA256:`` and the unpadded base64 of its
    SHA-256, the way OpenSSH shows host keys.  Unlike a hostname (a label
    the beacon hands to whoever holds it) or an address (48 bits), two keys
    with the same fingerprint are the same key."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(public_key).digest()).decode().rstrip("=")


def x25519_from_ed25519_public(public_key: bytes) -> bytes:
    return crypto_sign_ed25519_pk_to_curve25519(public_key)


def load_or_create(home: str, *, start_over: bool = False) -> Identity:
    """Load the identity kept in ``home``, making one if there is none yet.

    A home that holds node state but no identity raises
    :class:`IdentityMissing`, unless ``start_over`` (``pilotctl init
    --force``) says to make a new identity there: a new address."""
    path = os.path.join(home, KEY_FILE)
    if os.path.lexists(path):
        return load(path)
    if not start_over:
        check_not_orphaned(home)
    os.makedirs(home, mode=0o700, exist_ok=True)
    identity = Identity.generate()
    save(identity, path)
    return identity


def orphaned_state(home: str) -> list[str]:
    """The node state in ``home`` when its identity file is missing ([] when it is
    there, or when the home holds no state: a new node)."""
    if os.path.lexists(os.path.join(home, KEY_FILE)):
        return []
    return [name for name in NODE_STATE if os.path.lexists(os.path.join(home, name))]


def check_not_orphaned(home: str) -> None:
    """Raise IdentityMissing if ``home`` holds node state without its identity."""
    found = orphaned_state(home)
    if found:
        path = os.path.join(home, KEY_FILE)
        raise IdentityMissing(
            f"{home} holds a node's state ({', '.join(found)}) but no {KEY_FILE}: "
            "this node's key is missing, and pilot will not replace it silently",
            hint=f"Restore {path} from a backup to keep this node's address and trust; or, to start over "
            f"as a NEW address that peers must approve again, run: pilotctl --home {home} init --hostname NAME --force",
        )


def load(path: str) -> Identity:
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            raw = f.read(4096)
    except PermissionError as e:
        raise PermissionDenied(f"cannot read identity file {path}: {e.strerror}") from None
    except OSError as e:
        raise StateError(f"cannot read identity file {path}: {e.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise StateError(
            f"identity file {path} is readable by other users (mode {stat.S_IMODE(st.st_mode):o})",
            hint=f"Run: chmod 600 {path}",
        )
    try:
        doc = json.loads(raw)
        if doc.get("format") != _FORMAT:
            raise ValueError(f"unknown format {doc.get('format')!r}")
        seed = base64.b64decode(doc["seed"], validate=True)
        public = base64.b64decode(doc["public_key"], validate=True)
        identity = Identity.from_seed(seed)
    except Exception as e:
        raise StateError(f"identity file {path} is corrupt ({e})") from None
    if identity.public_key != public:
        raise StateError(f"identity file {path} is corrupt (public key does not match seed)")
    return identity


def save(identity: Identity, path: str) -> None:
    doc = {
        "format": _FORMAT,
        "seed": base64.b64encode(bytes(identity.signing_key)).decode(),
        "public_key": base64.b64encode(identity.public_key).decode(),
        "address": str(identity.address),
    }
    tmp = path + ".tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):  # the error below is the one to report
            os.unlink(tmp)
        raise StateError(f"cannot write identity file {path}: {e.strerror}", hint="Check free disk space and permissions.") from None
