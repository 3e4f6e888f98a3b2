"""
Backoff between reconnections to a daemon that went away.

A daemon restart takes a second or two: the first tries come quickly
(0.1 s), later ones slow down to one every ``cap`` seconds, with jitter so
that many clients of one restarted daemon do not all knock at once.
"""

from __future__ import annotations

import asyncio
import random


class Backoff:
    def __init__(self, first: float = 0.1, cap: float = 5.0, factor: float = 2.0, rng: random.Random | None = None):
        self._first = first
        self._cap = cap
        self._factor = factor
        self._rng = rng or random.Random()
        self._next = first
        #: tries since the last success
        self.attempts = 0

    def delay(self) -> float:
        """The next delay (and grow the one after it)."""
        delay = self._next * (0.5 + self._rng.random() / 2)
        self._next = min(self._cap, self._next * self._factor)
        self.attempts += 1
        return delay

    async def wait(self) -> None:
        await asyncio.sleep(self.delay())

    def reset(self) -> None:
        self._next = self._first
        self.attempts = 0
