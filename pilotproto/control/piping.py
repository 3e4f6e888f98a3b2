"""
Sizes for a control connection once it is a byte pipe to an overlay stream
(``connect``/``accept``), on the daemon's side and on a Twisted client's.

Twisted reads a socket ``bufferSize`` (64 KiB) bytes per reactor turn,
pauses a streaming producer once more than that waits to be written, and
sends at most ``SEND_LIMIT`` (128 KiB) per call.  A stream at a few hundred
Mbit/s delivers more than 64 KiB in one turn (a receive batch is up to 256
packets), so with the defaults the receiving daemon paused the stream, and
with it the flow-control credit it grants, nearly every turn, and the
sending daemon took at most 64 KiB from its client per turn.

The read size stops at 128 KiB: a larger receive buffer is allocated per
read whatever arrives, and past 128 KiB that allocation made every small
read (an interactive exchange) cost about 9 µs instead of 2.
"""

from __future__ import annotations

#: bytes a piped connection reads per turn, and holds unwritten before it pauses its producer (the stream)
PIPE_BUFFER = 128 * 1024
#: the most one send() call offers the kernel
PIPE_SEND_LIMIT = 1024 * 1024


def widen_pipe(transport) -> None:
    """Let ``transport`` (a Twisted UNIX connection) move a piped stream's bytes in larger pieces.

    Back-pressure stays: past ``PIPE_BUFFER`` unwritten bytes the producer
    is paused, as before past 64 KiB.  Transports without these knobs (test
    doubles, other reactors' transports) are left as they are."""
    if hasattr(transport, "bufferSize"):
        transport.bufferSize = PIPE_BUFFER
        transport.SEND_LIMIT = PIPE_SEND_LIMIT
