"""
Flow control: the credit a receiver grants and the credit a sender holds
(RFC 9000 §4), for one stream or for the whole connection.

A receiver's limit moves only when its application *consumes* data, so a
slow reader stops granting credit and the sender stops sending: memory on
both sides stays bounded by the window, whatever the sender's speed.
"""

from __future__ import annotations

#: credit every side grants a new stream / the connection before any MAX_* frame
INITIAL_STREAM_CREDIT = 256 * 1024
INITIAL_CONNECTION_CREDIT = 1024 * 1024


class ReceiveWindow:
    def __init__(self, window: int, initial_limit: int):
        self.window = window
        #: the limit the peer was last told (or assumes by protocol)
        self.limit = initial_limit
        #: highest byte offset (exclusive) the peer has sent
        self.highest = 0
        #: bytes handed to the application (or thrown away for it)
        self.consumed = 0

    def allows(self, end: int) -> bool:
        return end <= self.limit

    def receive(self, end: int) -> int:
        """The peer sent up to ``end``; returns by how much the highest offset grew."""
        grew = end - self.highest
        if grew > 0:
            self.highest = end
            return grew
        return 0

    def consume(self, n: int) -> None:
        self.consumed += n

    def update_due(self) -> bool:
        # Re-advertise once a quarter of the window has been consumed, so the
        # sender never idles waiting for credit on a path with a long RTT.
        return self.consumed + self.window - self.limit >= self.window // 4

    def advertise(self) -> int:
        self.limit = max(self.limit, self.consumed + self.window)
        return self.limit


class SendCredit:
    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    def available(self) -> int:
        return self.limit - self.used

    def raise_to(self, limit: int) -> bool:
        """A MAX_* frame arrived; True when it granted more credit (limits never shrink)."""
        if limit > self.limit:
            self.limit = limit
            return True
        return False
