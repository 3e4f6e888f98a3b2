"""
Flood defence for the handshake responder, after WireGuard's cookies.

A handshake initiation costs the responder Diffie-Hellman operations, so an
attacker could burn its CPU by sending initiations.  Two MACs guard it:

* ``mac1`` is keyed by the *responder's* static public key.  Only someone
  who knows whom they are talking to can make it, and checking it costs one
  BLAKE2s, so garbage and scans of random addresses die before any DH.
* ``mac2`` is keyed by a *cookie*: a MAC of the sender's address under a
  secret that rotates every two minutes.  It is only demanded while the
  responder is under load (its token bucket of initiations per second is
  empty).  Then an initiation without a valid mac2 gets no DH, only a small
  encrypted cookie reply; a real initiator stores the cookie and its next
  retry carries a valid mac2.  A flooder spoofing source addresses never
  sees the cookies, so it gets no DH at all once the bucket is empty.

The cookie reply is encrypted with XChaCha20-Poly1305 under a key derived
from the responder's static public key, with the initiation's mac1 as
associated data, so only the initiator that sent that exact packet can use
it, and an on-path observer cannot lift the cookie to use from elsewhere.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os

from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

from ..wire.tunnel import (
    COOKIE_NONCE_LEN,
    MAC_LEN,
    TunnelCookieReply,
    before_mac1,
    before_mac2,
)

LABEL_MAC1 = b"pilot tunnel mac1"
LABEL_COOKIE = b"pilot tunnel cookie"
COOKIE_SECRET_LIFETIME = 120.0
# An initiator stops using a cookie a little before the responder's secret
# would have rotated under it.
COOKIE_USABLE_FOR = COOKIE_SECRET_LIFETIME - 10.0

DEFAULT_INITIATIONS_PER_SECOND = 20.0
DEFAULT_INITIATION_BURST = 20.0
DEFAULT_PER_SOURCE_PER_SECOND = 5.0
DEFAULT_PER_SOURCE_BURST = 5.0
MAX_TRACKED_SOURCES = 4096


def _mac(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, digest_size=MAC_LEN, key=key).digest()


def mac1_key(static_public: bytes) -> bytes:
    return hashlib.blake2s(LABEL_MAC1 + static_public).digest()


def cookie_key(static_public: bytes) -> bytes:
    return hashlib.blake2s(LABEL_COOKIE + static_public).digest()


def compute_mac1(receiver_static_public: bytes, encoded: bytes) -> bytes:
    """mac1 for an encoded initiation or response (its mac fields ignored)."""
    return _mac(mac1_key(receiver_static_public), before_mac1(encoded))


def check_mac1(receiver_static_public: bytes, encoded: bytes) -> bool:
    expected = compute_mac1(receiver_static_public, encoded)
    return hmac.compare_digest(expected, encoded[-2 * MAC_LEN : -MAC_LEN])


def stamp_macs(receiver_static_public: bytes, encoded: bytes, cookie: bytes | None) -> bytes:
    """``encoded`` with mac1 filled in, and mac2 too when a cookie is held."""
    mac1 = compute_mac1(receiver_static_public, encoded)
    with_mac1 = before_mac1(encoded) + mac1
    mac2 = _mac(cookie, with_mac1) if cookie is not None else bytes(MAC_LEN)
    return with_mac1 + mac2


class TokenBucket:
    """``rate`` tokens a second, holding at most ``burst``; time from ``clock``."""

    def __init__(self, clock, rate: float, burst: float):
        self._clock = clock
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._stamp = clock.seconds()

    def _refill(self) -> None:
        now = self._clock.seconds()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def take(self) -> bool:
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def full(self) -> bool:
        self._refill()
        return self._tokens >= self.burst


class Verdict(enum.Enum):
    PROCESS = "process"
    BAD_MAC1 = "bad_mac1"
    SEND_COOKIE = "send_cookie"
    RATE_LIMITED = "rate_limited"


class CookieChecker:
    """
    The responder's gate: decides, before any DH, what an initiation gets.

    ``randbytes(n)`` supplies the rotating secret and the reply nonces.
    """

    def __init__(
        self,
        static_public: bytes,
        clock,
        *,
        randbytes=os.urandom,
        initiations_per_second: float = DEFAULT_INITIATIONS_PER_SECOND,
        initiation_burst: float = DEFAULT_INITIATION_BURST,
        per_source_per_second: float = DEFAULT_PER_SOURCE_PER_SECOND,
        per_source_burst: float = DEFAULT_PER_SOURCE_BURST,
    ):
        self.static_public = static_public
        self._clock = clock
        self._randbytes = randbytes
        self._cookie_key = cookie_key(static_public)
        self._load = TokenBucket(clock, initiations_per_second, initiation_burst)
        self._per_source_rate = (per_source_per_second, per_source_burst)
        self._sources: dict[bytes, TokenBucket] = {}
        self._secret = b""
        self._secret_born = float("-inf")

    def _current_secret(self) -> bytes:
        now = self._clock.seconds()
        if now - self._secret_born >= COOKIE_SECRET_LIFETIME:
            self._secret = self._randbytes(32)
            self._secret_born = now
        return self._secret

    def cookie_for(self, source: bytes) -> bytes:
        """The cookie the sender at ``source`` must key its mac2 with right now."""
        return _mac(self._current_secret(), source)

    def _mac2_valid(self, encoded: bytes, source: bytes) -> bool:
        expected = _mac(self.cookie_for(source), before_mac2(encoded))
        return hmac.compare_digest(expected, encoded[-MAC_LEN:])

    def _source_allows(self, source: bytes) -> bool:
        bucket = self._sources.get(source)
        if bucket is None:
            if len(self._sources) >= MAX_TRACKED_SOURCES:
                # Forget sources whose buckets have refilled: they are idle.
                self._sources = {k: b for k, b in self._sources.items() if not b.full()}
                if len(self._sources) >= MAX_TRACKED_SOURCES:
                    return False
            bucket = self._sources[source] = TokenBucket(self._clock, *self._per_source_rate)
        return bucket.take()

    def admit_initiation(self, encoded: bytes, source: bytes) -> Verdict:
        """What an encoded initiation from ``source`` gets; cheap, no DH."""
        if not check_mac1(self.static_public, encoded):
            return Verdict.BAD_MAC1
        if self._load.take():
            return Verdict.PROCESS
        if not self._mac2_valid(encoded, source):
            return Verdict.SEND_COOKIE
        if not self._source_allows(source):
            return Verdict.RATE_LIMITED
        return Verdict.PROCESS

    def make_reply(self, sender_index: int, encoded: bytes, source: bytes) -> bytes:
        """The encoded cookie reply for an initiation that lacked a valid mac2."""
        cookie = self.cookie_for(source)
        nonce = self._randbytes(COOKIE_NONCE_LEN)
        mac1 = encoded[-2 * MAC_LEN : -MAC_LEN]
        sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(cookie, mac1, nonce, self._cookie_key)
        return TunnelCookieReply(receiver_index=sender_index, nonce=nonce, encrypted_cookie=sealed).encode()


class CookieJar:
    """The initiator's side: stamps MACs and keeps the cookie a responder sent."""

    def __init__(self, responder_static_public: bytes, clock):
        self._responder = responder_static_public
        self._clock = clock
        self._cookie_key = cookie_key(responder_static_public)
        self._cookie: bytes | None = None
        self._cookie_at = float("-inf")
        self._last_mac1: bytes | None = None

    def cookie(self) -> bytes | None:
        if self._clock.seconds() - self._cookie_at >= COOKIE_USABLE_FOR:
            self._cookie = None
        return self._cookie

    def stamp(self, encoded: bytes) -> bytes:
        stamped = stamp_macs(self._responder, encoded, self.cookie())
        self._last_mac1 = stamped[-2 * MAC_LEN : -MAC_LEN]
        return stamped

    def consume_reply(self, reply: TunnelCookieReply) -> bool:
        """Keep the cookie in ``reply``; False when it does not answer our last initiation."""
        if self._last_mac1 is None:
            return False
        try:
            cookie = crypto_aead_xchacha20poly1305_ietf_decrypt(
                reply.encrypted_cookie, self._last_mac1, reply.nonce, self._cookie_key
            )
        except (CryptoError, ValueError, TypeError):
            return False
        self._cookie = cookie
        self._cookie_at = self._clock.seconds()
        return True
