"""
The Noise Protocol Framework (revision 34), just the parts pilot uses:
``Noise_IK_25519_AESGCM_SHA256``.

This module is pure: no clock, no randomness of its own.  Every ephemeral
private key is handed in by the caller, which is what makes the published
test vectors (and pilot's own) reproducible.

Objects follow the spec's names so that a reader can hold the two side by
side: :class:`CipherState` (section 5.1), :class:`SymmetricState` (5.2) and
:class:`HandshakeState` (5.3).  The handshake state interprets message
patterns token by token, so the IK pattern is data (:data:`IK`), not code.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base
from nacl.exceptions import CryptoError

from .errors import HandshakeError, TunnelAuthError

PROTOCOL_NAME = b"Noise_IK_25519_AESGCM_SHA256"
DHLEN = 32
HASHLEN = 32
KEYLEN = 32
TAGLEN = 16
MAX_NONCE = 2**64 - 1

# IK: the responder's static key is known in advance (pre-message "<- s").
#   -> e, es, s, ss
#   <- e, ee, se
IK_PRE_MESSAGES = ((), ("s",))
IK = (("e", "es", "s", "ss"), ("e", "ee", "se"))


def x25519_public(private: bytes) -> bytes:
    """The X25519 public key for a 32-byte private key (clamped by libsodium)."""
    return crypto_scalarmult_base(private)


def dh(private: bytes, public: bytes) -> bytes:
    """X25519; an all-zero result (a low-order peer key) is refused, not used."""
    try:
        return crypto_scalarmult(private, public)
    except (CryptoError, RuntimeError, ValueError, TypeError):
        raise HandshakeError("the peer sent an unusable X25519 public key") from None


def hkdf(chaining_key: bytes, input_key_material: bytes, outputs: int) -> tuple[bytes, ...]:
    """Noise section 4.3: HKDF with HMAC-SHA256, two or three 32-byte outputs."""
    temp_key = hmac.digest(chaining_key, input_key_material, "sha256")
    out1 = hmac.digest(temp_key, b"\x01", "sha256")
    out2 = hmac.digest(temp_key, out1 + b"\x02", "sha256")
    if outputs == 2:
        return out1, out2
    out3 = hmac.digest(temp_key, out2 + b"\x03", "sha256")
    return out1, out2, out3


def aesgcm_nonce(counter: int) -> bytes:
    """Noise's AESGCM nonce: 32 zero bits then the 64-bit counter, big-endian."""
    return b"\x00\x00\x00\x00" + struct.pack("!Q", counter)


class CipherState:
    """A key and a counter nonce (Noise section 5.1)."""

    def __init__(self, key: bytes | None = None):
        self._aead = None
        self.n = 0
        self.initialize_key(key)

    def initialize_key(self, key: bytes | None) -> None:
        self.k = key
        self._aead = AESGCM(key) if key is not None else None
        self.n = 0

    def has_key(self) -> bool:
        return self.k is not None

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self._aead is None:
            return plaintext
        if self.n >= MAX_NONCE:
            raise HandshakeError("Noise nonce exhausted")
        out = self._aead.encrypt(aesgcm_nonce(self.n), plaintext, ad)
        self.n += 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self._aead is None:
            return ciphertext
        if self.n >= MAX_NONCE:
            raise HandshakeError("Noise nonce exhausted")
        try:
            out = self._aead.decrypt(aesgcm_nonce(self.n), ciphertext, ad)
        except InvalidTag:
            raise TunnelAuthError("a Noise message failed authentication") from None
        self.n += 1
        return out


class SymmetricState:
    """Chaining key, handshake hash and the current cipher (Noise section 5.2)."""

    def __init__(self, protocol_name: bytes):
        if len(protocol_name) <= HASHLEN:
            self.h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            self.h = hashlib.sha256(protocol_name).digest()
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, input_key_material: bytes) -> None:
        self.ck, temp_k = hkdf(self.ck, input_key_material, 2)
        self.cipher.initialize_key(temp_k[:KEYLEN])

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        """The two transport keys: initiator-to-responder, then the reverse."""
        temp_k1, temp_k2 = hkdf(self.ck, b"", 2)
        return temp_k1[:KEYLEN], temp_k2[:KEYLEN]


class HandshakeState:
    """
    One side of a two-message handshake (Noise section 5.3).

    ``s`` is the local static private key, ``rs`` the remote static public
    key when known in advance; ``e`` is the ephemeral private key this side
    will use, chosen by the caller so runs can be reproduced.
    """

    def __init__(
        self,
        *,
        initiator: bool,
        prologue: bytes,
        s: bytes,
        e: bytes | None = None,
        rs: bytes | None = None,
        pattern=IK,
        pre_messages=IK_PRE_MESSAGES,
        protocol_name: bytes = PROTOCOL_NAME,
    ):
        self.initiator = initiator
        self.symmetric = SymmetricState(protocol_name)
        self.symmetric.mix_hash(prologue)
        self.s = s
        self.s_pub = x25519_public(s)
        self.e: bytes | None = None
        self.e_pub: bytes | None = None
        if e is not None:
            self.use_ephemeral(e)
        self.rs = rs
        self.payload_hash: bytes | None = None
        self.re: bytes | None = None
        self._patterns = list(pattern)
        self._message_index = 0
        for side, tokens in enumerate(pre_messages):
            from_initiator = side == 0
            for token in tokens:
                if token != "s":
                    raise ValueError(f"unsupported pre-message token {token!r}")
                mine = from_initiator == initiator
                if not mine and rs is None:
                    raise ValueError("this pattern needs the remote static key up front")
                self.symmetric.mix_hash(self.s_pub if mine else rs)

    def use_ephemeral(self, e: bytes) -> None:
        """Set the ephemeral private key; a responder may pick it late, once it decides to answer."""
        self.e = e
        self.e_pub = x25519_public(e)

    @property
    def h(self) -> bytes:
        """The handshake hash so far: a transcript digest both sides share."""
        return self.symmetric.h

    def finished(self) -> bool:
        return self._message_index >= len(self._patterns)

    def _my_turn(self) -> bool:
        return (self._message_index % 2 == 0) == self.initiator

    def _dh_token(self, token: str) -> bytes:
        # "es" is DH(initiator's e, responder's s); each side picks its half.
        first, second = token
        if self.initiator:
            mine, theirs = first, second
        else:
            mine, theirs = second, first
        local = self.e if mine == "e" else self.s
        remote = self.re if theirs == "e" else self.rs
        if remote is None:
            raise HandshakeError(f"the handshake reached {token!r} without the peer's key")
        return dh(local, remote)

    def write_message(self, payload=b"") -> bytes:
        """
        The next handshake message.  ``payload`` is bytes, or a callable given
        the handshake hash as it stands just before the payload is encrypted
        (pilot signs that hash to bind its Ed25519 identity to the handshake).
        """
        if self.finished() or not self._my_turn():
            raise HandshakeError("not this side's turn to write a handshake message")
        out = []
        for token in self._patterns[self._message_index]:
            if token == "e":
                if self.e_pub is None:
                    raise HandshakeError("no ephemeral key chosen before writing")
                out.append(self.e_pub)
                self.symmetric.mix_hash(self.e_pub)
            elif token == "s":
                out.append(self.symmetric.encrypt_and_hash(self.s_pub))
            else:
                self.symmetric.mix_key(self._dh_token(token))
        self.payload_hash = self.symmetric.h
        if callable(payload):
            payload = payload(self.payload_hash)
        out.append(self.symmetric.encrypt_and_hash(payload))
        self._message_index += 1
        return b"".join(out)

    def read_message(self, message: bytes) -> bytes:
        """
        The payload of the peer's next handshake message.  A message that
        fails leaves this state as it was, so a forged packet cannot spoil a
        handshake that the genuine message would still complete.
        """
        if self.finished() or self._my_turn():
            raise HandshakeError("not this side's turn to read a handshake message")
        saved = (self.symmetric.ck, self.symmetric.h, self.symmetric.cipher.k, self.symmetric.cipher.n, self.re, self.rs)
        try:
            return self._read_message(message)
        except Exception:
            ck, h, k, n, self.re, self.rs = saved
            self.symmetric.ck, self.symmetric.h = ck, h
            self.symmetric.cipher.initialize_key(k)
            self.symmetric.cipher.n = n
            raise

    def _read_message(self, message: bytes) -> bytes:
        pos = 0
        for token in self._patterns[self._message_index]:
            if token == "e":
                self.re = message[pos : pos + DHLEN]
                pos += DHLEN
                if len(self.re) != DHLEN:
                    raise HandshakeError("handshake message too short for an ephemeral key")
                self.symmetric.mix_hash(self.re)
            elif token == "s":
                size = DHLEN + (TAGLEN if self.symmetric.cipher.has_key() else 0)
                chunk = message[pos : pos + size]
                pos += size
                if len(chunk) != size:
                    raise HandshakeError("handshake message too short for a static key")
                self.rs = self.symmetric.decrypt_and_hash(chunk)
            else:
                self.symmetric.mix_key(self._dh_token(token))
        self.payload_hash = self.symmetric.h
        payload = self.symmetric.decrypt_and_hash(message[pos:])
        self._message_index += 1
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """Transport ciphers, ``(send, receive)`` from this side's point of view."""
        if not self.finished():
            raise HandshakeError("split() before the handshake finished")
        k1, k2 = self.symmetric.split()
        c1, c2 = CipherState(k1), CipherState(k2)
        return (c1, c2) if self.initiator else (c2, c1)

    def split_keys(self) -> tuple[bytes, bytes]:
        """Raw transport keys, ``(send, receive)`` from this side's point of view."""
        send, receive = self.split()
        return send.k, receive.k
