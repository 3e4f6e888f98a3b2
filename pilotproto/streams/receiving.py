"""
The receiving part of a stream: its states, the events that move it, and
what it does on each (RFC 9000 §3.2, figure 3, plus *Stopped*).

::

        | the peer's first frame (or open_stream)
        v
    +-------+   ABORT (we stop reading: STOP_SENDING)   +---------+
    | Recv  |------------------------------------------>| Stopped |
    +-------+                                           +---------+
        | FIN (the final size is known)                      | FIN, RESET
        v                                                    |
    +------------+                                           |
    | Size Known |                                           |
    +------------+                                           |
        | ALL_RECEIVED (every byte below the final size)     |
        v                                                    |
    +------------+   RESET (from Recv, Size Known,           |
    | Data Recvd |   Data Recvd)     +-------------+         |
    +------------+ ----------------->| Reset Recvd |         |
        | ALL_READ (EOF handed       +-------------+         |
        v  to the application)              | RESET_TOLD     v
    +-----------+                           v         +------------+
    | Data Read |                    +------------+   | Reset Read |
    +-----------+                    | Reset Read |<--+------------+
                                     +------------+  ABORT from Size Known or Data Recvd

*Stopped* is ours: RFC 9000 leaves a part whose application stopped reading
in Recv, sending STOP_SENDING; here it is a state, because what it does
differs from Recv: bytes that arrive are thrown away (still counted for
connection flow control) until the final size is known, from a FIN or the
peer's RESET_STREAM, and the STOP_SENDING is resent while it is lost.  A
part that stops reading once the final size is known goes to *Reset Read*
at once: nothing is owed to anyone.

*Reset Recvd* lasts while the application is told: the handler's
``stream_failed()`` is called at once, and the part moves on to *Reset
Read*.  A stream nobody was handed yet (the peer reset it before the frame
naming its port arrived) is never offered to a listener.

FIN never overtakes data: EOF (ALL_READ) is reached only from *Data Recvd*,
after every byte below the final size was handed to the application.  A
frame that contradicts the final size (bytes beyond it, a FIN or a reset
with another size) or breaks flow control is a protocol VIOLATION: the
stream fails with ``StreamReset`` (code 2) and is reset in both directions;
it never raises.
"""

from __future__ import annotations

from .machine import Symbol, markdown_rows, transition_table


class RecvState(Symbol):
    RECV = "Recv"
    SIZE_KNOWN = "Size Known"
    DATA_RECVD = "Data Recvd"
    DATA_READ = "Data Read"
    RESET_RECVD = "Reset Recvd"
    RESET_READ = "Reset Read"
    STOPPED = "Stopped"


class RecvEvent(Symbol):
    #: a STREAM frame without the FIN, within flow control and the final size if known
    DATA = "data"
    #: a STREAM frame with the FIN, consistent with what arrived before
    FIN = "fin"
    #: every byte below the final size has arrived
    ALL_RECEIVED = "all_received"
    #: every byte was handed to the application: EOF is due
    ALL_READ = "all_read"
    #: the peer's RESET_STREAM, consistent with what arrived before
    RESET = "reset"
    #: a frame or RESET_STREAM that contradicts the final size or breaks flow control
    VIOLATION = "violation"
    #: this side stops reading (the application reset the stream, a refusal, a violation, STOP_SENDING)
    ABORT = "abort"
    #: the application was told of the peer's reset
    RESET_TOLD = "reset_told"
    #: a packet with our STOP_SENDING was declared lost
    STOP_LOST = "stop_lost"
    #: a packet with our MAX_STREAM_DATA was declared lost
    CREDIT_LOST = "credit_lost"
    #: the connection under the stream is gone
    CONNECTION_LOST = "connection_lost"


class RecvOutput(Symbol):
    #: put the bytes in order (or aside until the gap before them fills)
    REASSEMBLE = "reassemble"
    #: drop buffered bytes and count everything up to the final size (or the highest offset) as read
    DISCARD = "discard"
    #: drop buffered bytes (the connection is gone: nothing to count)
    CLEAR = "clear"
    #: the handler's ``eof_received()``
    TELL_EOF = "tell_eof"
    #: the handler's ``stream_failed()`` with the peer's code, then RESET_TOLD
    TELL_RESET = "tell_reset"
    #: reset the sending part as well: a reset ends both directions, like a TCP RST
    ABORT_STREAM = "abort_stream"
    #: owe a STOP_SENDING with the code
    QUEUE_STOP = "queue_stop"
    #: a STOP_SENDING not sent yet is no longer needed: the final size is known
    CANCEL_STOP = "cancel_stop"
    #: owe the STOP_SENDING again (its packet was lost)
    RESEND_STOP = "resend_stop"
    #: owe the MAX_STREAM_DATA again, with the current limit
    RESEND_CREDIT = "resend_credit"
    #: count the violation, fail the stream with StreamReset (code 2), reset it both ways
    PROTOCOL_ERROR = "protocol_error"
    #: forget the stream if its sending part is finished too
    CHECK_CLOSED = "check_closed"


#: the part still takes bytes for the application (the coarse ``recv_state`` calls these "open")
READING = frozenset({RecvState.RECV, RecvState.SIZE_KNOWN, RecvState.DATA_RECVD})
#: nothing more will happen to the part
FINISHED = frozenset({RecvState.DATA_READ, RecvState.RESET_READ})

#: the coarse one-word view kept for callers and tests (``Stream.recv_state``)
SUMMARY = {
    RecvState.RECV: "open",
    RecvState.SIZE_KNOWN: "open",
    RecvState.DATA_RECVD: "open",
    RecvState.DATA_READ: "done",
    RecvState.RESET_RECVD: "reset",
    RecvState.RESET_READ: "reset",
    RecvState.STOPPED: "stopped",
}

S, E, O = RecvState, RecvEvent, RecvOutput

_PEER_RESET = [O.DISCARD, O.TELL_RESET, O.ABORT_STREAM]

TRANSITIONS = transition_table(S, E, O, [
    # Recv: bytes arrive; the final size is not known yet
    (S.RECV, E.DATA, S.RECV, [O.REASSEMBLE]),
    (S.RECV, E.FIN, S.SIZE_KNOWN, [O.REASSEMBLE]),
    (S.RECV, E.ALL_RECEIVED, S.RECV, []),  # cannot happen: no final size yet
    (S.RECV, E.ALL_READ, S.RECV, []),  # cannot happen
    (S.RECV, E.RESET, S.RESET_RECVD, _PEER_RESET),
    (S.RECV, E.VIOLATION, S.RECV, [O.PROTOCOL_ERROR]),
    (S.RECV, E.ABORT, S.STOPPED, [O.DISCARD, O.QUEUE_STOP]),
    (S.RECV, E.RESET_TOLD, S.RECV, []),  # cannot happen
    (S.RECV, E.STOP_LOST, S.RECV, []),  # cannot happen: no STOP_SENDING was sent
    (S.RECV, E.CREDIT_LOST, S.RECV, [O.RESEND_CREDIT]),
    (S.RECV, E.CONNECTION_LOST, S.RESET_READ, [O.CLEAR]),
    # Size Known: the FIN arrived, some bytes before it have not
    (S.SIZE_KNOWN, E.DATA, S.SIZE_KNOWN, [O.REASSEMBLE]),
    (S.SIZE_KNOWN, E.FIN, S.SIZE_KNOWN, [O.REASSEMBLE]),  # the FIN again, with more bytes or resent
    (S.SIZE_KNOWN, E.ALL_RECEIVED, S.DATA_RECVD, []),
    (S.SIZE_KNOWN, E.ALL_READ, S.SIZE_KNOWN, []),  # cannot happen: bytes are missing
    (S.SIZE_KNOWN, E.RESET, S.RESET_RECVD, _PEER_RESET),
    (S.SIZE_KNOWN, E.VIOLATION, S.SIZE_KNOWN, [O.PROTOCOL_ERROR]),
    (S.SIZE_KNOWN, E.ABORT, S.RESET_READ, [O.DISCARD]),
    (S.SIZE_KNOWN, E.RESET_TOLD, S.SIZE_KNOWN, []),  # cannot happen
    (S.SIZE_KNOWN, E.STOP_LOST, S.SIZE_KNOWN, []),  # cannot happen
    (S.SIZE_KNOWN, E.CREDIT_LOST, S.SIZE_KNOWN, []),  # late: the peer needs no more credit
    (S.SIZE_KNOWN, E.CONNECTION_LOST, S.RESET_READ, [O.CLEAR]),
    # Data Recvd: every byte arrived; the application has not read them all yet
    (S.DATA_RECVD, E.DATA, S.DATA_RECVD, []),  # duplicate
    (S.DATA_RECVD, E.FIN, S.DATA_RECVD, []),  # duplicate
    (S.DATA_RECVD, E.ALL_RECEIVED, S.DATA_RECVD, []),  # duplicate
    (S.DATA_RECVD, E.ALL_READ, S.DATA_READ, [O.TELL_EOF, O.CHECK_CLOSED]),
    (S.DATA_RECVD, E.RESET, S.RESET_RECVD, _PEER_RESET),
    (S.DATA_RECVD, E.VIOLATION, S.DATA_RECVD, [O.PROTOCOL_ERROR]),
    (S.DATA_RECVD, E.ABORT, S.RESET_READ, [O.DISCARD]),
    (S.DATA_RECVD, E.RESET_TOLD, S.DATA_RECVD, []),  # cannot happen
    (S.DATA_RECVD, E.STOP_LOST, S.DATA_RECVD, []),  # cannot happen
    (S.DATA_RECVD, E.CREDIT_LOST, S.DATA_RECVD, []),  # late
    (S.DATA_RECVD, E.CONNECTION_LOST, S.RESET_READ, [O.CLEAR]),
    # Data Read: EOF delivered
    (S.DATA_READ, E.DATA, S.DATA_READ, []),  # duplicate
    (S.DATA_READ, E.FIN, S.DATA_READ, []),  # duplicate
    (S.DATA_READ, E.ALL_RECEIVED, S.DATA_READ, []),  # duplicate
    (S.DATA_READ, E.ALL_READ, S.DATA_READ, []),  # duplicate
    (S.DATA_READ, E.RESET, S.DATA_READ, []),  # late: everything was read
    (S.DATA_READ, E.VIOLATION, S.DATA_READ, [O.PROTOCOL_ERROR]),
    (S.DATA_READ, E.ABORT, S.DATA_READ, []),  # nothing left to stop
    (S.DATA_READ, E.RESET_TOLD, S.DATA_READ, []),  # cannot happen
    (S.DATA_READ, E.STOP_LOST, S.DATA_READ, []),  # cannot happen
    (S.DATA_READ, E.CREDIT_LOST, S.DATA_READ, []),  # late
    (S.DATA_READ, E.CONNECTION_LOST, S.DATA_READ, []),
    # Reset Recvd: the peer reset the stream; the application is being told
    (S.RESET_RECVD, E.DATA, S.RESET_RECVD, []),  # late
    (S.RESET_RECVD, E.FIN, S.RESET_RECVD, []),  # late
    (S.RESET_RECVD, E.ALL_RECEIVED, S.RESET_RECVD, []),  # late
    (S.RESET_RECVD, E.ALL_READ, S.RESET_RECVD, []),  # late
    (S.RESET_RECVD, E.RESET, S.RESET_RECVD, []),  # duplicate
    (S.RESET_RECVD, E.VIOLATION, S.RESET_RECVD, [O.PROTOCOL_ERROR]),
    (S.RESET_RECVD, E.ABORT, S.RESET_RECVD, []),  # the application reset it while being told
    (S.RESET_RECVD, E.RESET_TOLD, S.RESET_READ, []),
    (S.RESET_RECVD, E.STOP_LOST, S.RESET_RECVD, []),  # late
    (S.RESET_RECVD, E.CREDIT_LOST, S.RESET_RECVD, []),  # late
    (S.RESET_RECVD, E.CONNECTION_LOST, S.RESET_READ, []),
    # Reset Read: over, after a reset either way
    (S.RESET_READ, E.DATA, S.RESET_READ, []),  # late
    (S.RESET_READ, E.FIN, S.RESET_READ, []),  # late
    (S.RESET_READ, E.ALL_RECEIVED, S.RESET_READ, []),  # late
    (S.RESET_READ, E.ALL_READ, S.RESET_READ, []),  # late
    (S.RESET_READ, E.RESET, S.RESET_READ, []),  # duplicate, or the peer's answer to our STOP_SENDING
    (S.RESET_READ, E.VIOLATION, S.RESET_READ, [O.PROTOCOL_ERROR]),
    (S.RESET_READ, E.ABORT, S.RESET_READ, []),  # duplicate
    (S.RESET_READ, E.RESET_TOLD, S.RESET_READ, []),  # duplicate
    (S.RESET_READ, E.STOP_LOST, S.RESET_READ, []),  # late: the final size is known
    (S.RESET_READ, E.CREDIT_LOST, S.RESET_READ, []),  # late
    (S.RESET_READ, E.CONNECTION_LOST, S.RESET_READ, []),
    # Stopped: we stopped reading and owe STOP_SENDING; bytes are thrown away until the final size is known
    (S.STOPPED, E.DATA, S.STOPPED, [O.DISCARD]),
    (S.STOPPED, E.FIN, S.RESET_READ, [O.DISCARD, O.CANCEL_STOP, O.CHECK_CLOSED]),
    (S.STOPPED, E.ALL_RECEIVED, S.STOPPED, []),  # cannot happen: nothing is reassembled
    (S.STOPPED, E.ALL_READ, S.STOPPED, []),  # cannot happen
    (S.STOPPED, E.RESET, S.RESET_READ, [O.DISCARD, O.CANCEL_STOP, O.CHECK_CLOSED]),  # the answer to STOP_SENDING
    (S.STOPPED, E.VIOLATION, S.STOPPED, [O.PROTOCOL_ERROR]),
    (S.STOPPED, E.ABORT, S.STOPPED, []),  # duplicate
    (S.STOPPED, E.RESET_TOLD, S.STOPPED, []),  # cannot happen
    (S.STOPPED, E.STOP_LOST, S.STOPPED, [O.RESEND_STOP]),
    (S.STOPPED, E.CREDIT_LOST, S.STOPPED, []),  # late: no more credit for a stopped stream
    (S.STOPPED, E.CONNECTION_LOST, S.RESET_READ, []),
])

del S, E, O


def describe() -> list[str]:
    """The table as Markdown rows, as docs/streams.md shows it."""
    return markdown_rows(TRANSITIONS)
