"""
Whom this node trusts: the ``trusted`` part of the trust store, the
visibility list the beacon keeps for us, and the listener (the session
layer, through the node) told when trust begins or ends.

Trust is given to keys.  An entry is keyed by the peer's public key (its
address is the key's hash); the hostname stored with it is a label, the
name the peer went by, which the beacon may later hand to another key.

Every change to the set of trusted keys uploads the whole list again,
signed, in chunks (``SetVisibility``): the beacon shows a private node only
to the keys in its latest list.
"""

from __future__ import annotations

from twisted.logger import Logger

from ..common.wiring import check_provides
from ..identity import Address, fingerprint
from ..interfaces import ISignedRequests, ITrustListener
from ..wire import beacon as msgs
from .store import TrustedPeer, TrustStore, b64


def address_of(key: bytes) -> str:
    return str(Address.from_public_key(key))


def describe_key(key: bytes, hostname: str) -> dict:
    return {"hostname": hostname, "address": address_of(key), "public_key": b64(key), "fingerprint": fingerprint(key)}


class TrustBook:
    log = Logger()

    def __init__(self, clock, store: TrustStore, requests, listener):
        self._clock = clock
        self.store = store
        self._requests = check_provides(requests, ISignedRequests, "TrustBook requests")
        self._listener = check_provides(listener, ITrustListener, "TrustBook listener")
        self._visibility_version = 0

    def is_trusted(self, key: bytes) -> bool:
        return key in self.store.trusted

    def get(self, key: bytes) -> TrustedPeer | None:
        return self.store.trusted.get(key)

    def keys_named(self, hostname: str) -> list[bytes]:
        """The trusted keys we know under ``hostname`` (a label: several keys may carry it)."""
        return [key for key, peer in self.store.trusted.items() if peer.hostname == hostname]

    def describe(self) -> list[dict]:
        return [
            {
                "hostname": p.hostname,
                "address": p.address,
                "public_key": b64(p.public_key),
                "fingerprint": fingerprint(p.public_key),
                "since": p.since,
                "reason": p.reason,
                "mutual": p.mutual,
            }
            for p in sorted(self.store.trusted.values(), key=lambda p: p.since)
        ]

    def trust(self, key: bytes, hostname: str, reason: str, mutual: bool, save: bool = True) -> None:
        """Trust ``key`` (or, if we already do, note that it is ``mutual`` now)."""
        existing = self.store.trusted.get(key)
        if existing is not None:
            existing.mutual = existing.mutual or mutual
            existing.hostname = hostname or existing.hostname
        else:
            self.store.trusted[key] = TrustedPeer(key, hostname, address_of(key), self._clock.seconds(), reason, mutual)
        if save:
            self.store.save()
        self.upload_visibility()
        if existing is None:
            self._listener.trust_established(key)

    def untrust(self, key: bytes) -> TrustedPeer | None:
        """Stop trusting ``key``: hide us from it and end its sessions.  The
        caller saves.  None (and nothing done) if we did not trust it."""
        peer = self.store.trusted.pop(key, None)
        if peer is None:
            return None
        self.upload_visibility()
        self._listener.trust_revoked(key)
        return peer

    def upload_visibility(self) -> None:
        """Send the beacon the signed list of keys that may find us."""
        self._visibility_version = max(self._visibility_version + 1, int(self._clock.seconds() * 1e9))
        keys = sorted(self.store.trusted)
        size = msgs.VISIBILITY_CHUNK_KEYS
        chunks = [tuple(keys[i : i + size]) for i in range(0, len(keys), size)] or [()]
        self._requests.cancel_matching(("visibility",))
        for number, chunk in enumerate(chunks):
            message = msgs.SetVisibility(0, self._visibility_version, number, len(chunks), chunk)
            self._requests.send(("visibility", number), message, self._uploaded)

    def _uploaded(self) -> None:
        """The beacon took one chunk: nothing more to do (a newer list replaces it anyway)."""

    def stop(self) -> None:
        self._requests.cancel_matching(("visibility",))
