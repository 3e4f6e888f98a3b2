"""Random identifiers (request ids, ping ids, probe nonces), from an injectable source."""

from __future__ import annotations

import os


class RandomIds:
    """64-bit random numbers from ``randbytes`` (``os.urandom``; a fixed source in tests)."""

    def __init__(self, randbytes=os.urandom):
        self._randbytes = randbytes

    def next(self) -> int:
        return int.from_bytes(self._randbytes(8), "big")

    __call__ = next


#: the process-wide default source
new_request_id = RandomIds()
