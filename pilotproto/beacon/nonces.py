"""
Registration nonces, issued without keeping state per request.

A nonce is ``issued_at (u64 seconds) || salt (8 random bytes) ||
HMAC-SHA256(secret, issued_at || salt || endpoint)[:16]``: the beacon can check that it made the nonce, for that
source endpoint, recently, without remembering anything until the nonce is
redeemed.  Redeemed nonces are remembered until they would have expired
anyway, so each one registers at most once; at most ``MAX_REDEEMED`` are
remembered (each took a signed request from an address that received its
Challenge), and when that many are unexpired, further ones are refused
until some expire.  The secret is made afresh when the beacon starts, so
nonces from before a restart are worthless.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from ..wire.codec import Endpoint, Writer

NONCE_LIFETIME = 30
MAX_REDEEMED = 65536


class NonceIssuer:
    def __init__(self, clock, secret: bytes | None = None, lifetime: float = NONCE_LIFETIME):
        self._clock = clock
        self._secret = secret if secret is not None else os.urandom(32)
        self._lifetime = lifetime
        self._redeemed: dict[bytes, float] = {}

    def _mac(self, stamp: bytes, endpoint: Endpoint) -> bytes:
        msg = stamp + Writer().endpoint(endpoint).bytes()
        return hmac.new(self._secret, msg, hashlib.sha256).digest()[:16]

    def issue(self, endpoint: Endpoint) -> bytes:
        # The salt makes two nonces for one endpoint in one second differ,
        # so a quick retry is not mistaken for a replay.
        stamp = struct.pack("!Q", int(self._clock.seconds())) + os.urandom(8)
        return stamp + self._mac(stamp, endpoint)

    def redeem(self, nonce: bytes, endpoint: Endpoint) -> str | None:
        """Spend ``nonce``; return None if it was good, else why it was not."""
        now = self._clock.seconds()
        if len(nonce) != 32:
            return "malformed nonce"
        (issued_at,) = struct.unpack("!Q", nonce[:8])
        if not hmac.compare_digest(nonce[16:], self._mac(nonce[:16], endpoint)):
            return "nonce was not issued to this address by this beacon"
        if not (issued_at - 1 <= now <= issued_at + self._lifetime):
            return "nonce expired"
        if nonce in self._redeemed:
            return "nonce already used"
        if len(self._redeemed) >= MAX_REDEEMED:
            self._redeemed = {n: t for n, t in self._redeemed.items() if t >= now}
            if len(self._redeemed) >= MAX_REDEEMED:
                return "the beacon is busy: too many registrations in the last seconds"
        self._redeemed[nonce] = issued_at + self._lifetime
        if len(self._redeemed) > 1024 and len(self._redeemed) % 1024 == 0:
            self._redeemed = {n: t for n, t in self._redeemed.items() if t >= now}
        return None
