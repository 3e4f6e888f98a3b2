"""
Return routability: the beacon sends to an address only once it has shown
that it receives there (QUIC's path validation, RFC 9000 §8).

A signed request proves *who* sent it, not *where from*: anyone can put a
node's recorded datagram, or their own, on the wire with a forged source
address.  So a record's ``endpoint`` (where relayed frames, mail pushes and
lookups point) changes only when a new address has echoed an unpredictable
token:

* A registration proves its source by itself: its nonce was sent there in
  a Challenge (:mod:`pilotproto.beacon.nonces`).  A TLS connection proves
  its source by the TCP handshake.
* Any other authenticated datagram from a new address makes that address
  the record's *candidate*: the beacon sends it a ``PathChallenge`` with 16
  random bytes, and moves the record there when a signed ``PathResponse``
  carrying them comes back *from that address*.  One candidate per record;
  a newer one replaces it, and a token is good for ``TOKEN_LIFETIME``.
* Until then the beacon sends toward the candidate at most
  ``AMPLIFICATION_LIMIT`` times the bytes it received from it (replies and
  challenges together), and never relays or pushes mail there.

So a spoofed request can make the beacon send at most 3x its size to the
spoofed address, and cannot steer anything else there.
"""

from __future__ import annotations

import hmac
import os

import attrs
from zope.interface import Interface

from ..common.wiring import check_provides
from ..wire import beacon as msgs
from .tls import StreamEndpoint

AMPLIFICATION_LIMIT = 3
TOKEN_LIFETIME = 30.0
#: a challenge is sent again (lost?) at most this often, this many times per token
CHALLENGE_INTERVAL = 1.0
MAX_CHALLENGES = 4


class IPathListener(Interface):
    def path_changed(record):
        """``record``'s endpoint moved to a newly validated address."""


@attrs.define
class Candidate:
    endpoint: object
    token: bytes
    started: float
    received: int = 0
    sent: int = 0
    challenges: int = 0
    last_challenge: float | None = None

    def fits(self, size: int) -> bool:
        return self.sent + size <= AMPLIFICATION_LIMIT * self.received


class PathValidator:
    """Judges the source of each authenticated datagram against its record.

    ``registry`` moves records (``move``); ``listener``
    (:class:`IPathListener`) hears of each move (the mailbox starts a new
    round of pushes)."""

    def __init__(self, clock, registry, counters, listener, random_bytes=os.urandom):
        self._clock = clock
        self._registry = registry
        self._counters = counters
        self._listener = check_provides(listener, IPathListener, "PathValidator listener")
        self._random = random_bytes

    @staticmethod
    def validated(record, source) -> bool:
        return source == record.endpoint

    def arrived(self, record, source, size: int) -> bool:
        """An authenticated datagram of ``size`` bytes for ``record`` came from
        ``source``; True if the beacon may send there freely."""
        if self.validated(record, source):
            return True
        if isinstance(source, StreamEndpoint):
            # The TCP handshake proved this address; the node moved to TLS.
            self._registry.move(record, source)
            self._counters["path_moved_to_stream"] += 1
            self._listener.path_changed(record)
            return True
        now = self._clock.seconds()
        candidate = record.candidate
        if candidate is None or candidate.endpoint != source or now - candidate.started > TOKEN_LIFETIME:
            candidate = record.candidate = Candidate(source, self._random(msgs.PATH_TOKEN_SIZE), now)
            self._counters["path_candidates"] += 1
        candidate.received += size
        return False

    def answer(self, record, source, replies: list) -> list:
        """``replies`` to an unvalidated ``source``, within its budget, then a
        challenge if one is due (and fits)."""
        candidate = record.candidate
        if self.validated(record, source) or candidate is None or candidate.endpoint != source:
            return replies
        out = []
        for data, destination in replies:
            if destination != source:
                out.append((data, destination))
            elif candidate.fits(len(data)):
                candidate.sent += len(data)
                out.append((data, destination))
            else:
                self._counters["dropped_unvalidated_budget"] += 1
        now = self._clock.seconds()
        due = candidate.last_challenge is None or now - candidate.last_challenge >= CHALLENGE_INTERVAL
        if due and candidate.challenges < MAX_CHALLENGES:
            challenge = msgs.encode(msgs.PathChallenge(int.from_bytes(self._random(8), "big"), candidate.token))
            if candidate.fits(len(challenge)):
                candidate.sent += len(challenge)
                candidate.challenges += 1
                candidate.last_challenge = now
                self._counters["path_challenges"] += 1
                out.append((challenge, source))
            else:
                self._counters["dropped_unvalidated_budget"] += 1
        return out

    def responded(self, record, source, token: bytes) -> bool:
        """A signed PathResponse: move ``record`` to ``source`` if it echoes the
        token sent there."""
        candidate = record.candidate
        if (
            candidate is None
            or candidate.endpoint != source
            or self._clock.seconds() - candidate.started > TOKEN_LIFETIME
            or not hmac.compare_digest(candidate.token, token)
        ):
            self._counters["path_response_unexpected"] += 1
            return False
        self._registry.move(record, source)
        self._counters["path_validated"] += 1
        self._listener.path_changed(record)
        return True
