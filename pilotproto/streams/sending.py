"""
The sending part of a stream: its states, the events that move it, and what
it does on each (RFC 9000 §3.1, figure 2).

::

          | open_stream / accept
          v
      +-------+  SENT (the first STREAM frame, possibly empty, went out)
      | Ready |----------------------+
      +-------+                      v
          |                      +-------+
          |  CLOSE               | Send  |
          |                      +-------+
          |                          |  CLOSE
          v                          v
      +-----------+  <---------------+          ABORT, STOP_SENDING
      | Data Sent |                             (from Ready, Send or Data Sent)
      +-----------+                                      |
          |  ALL_ACKED (every byte and the FIN)          v
          v                                       +------------+
      +------------+                              | Reset Sent |
      | Data Recvd |                              +------------+
      +------------+                                     |  RESET_ACKED
                                                         v
                                                  +-------------+
                                                  | Reset Recvd |
                                                  +-------------+

One difference from the RFC, as in Mozilla's neqo: the part enters *Data
Sent* when the application closes it (``close_write``), not when the frame
with the FIN leaves.  From that moment the final size is known and nothing
more may be written; the bytes already written, then the FIN, still go out
from Data Sent, and the FIN always rides on (or after) the frame with the
last byte, so it never overtakes data.  Whether the FIN has left yet is
transmission progress (``Stream.fin_sent``), like ``sent_offset``, not a
state of its own.

A connection that is lost ends every part that is still sending in *Reset
Recvd*: nothing more will be sent, as after an acknowledged reset.
"""

from __future__ import annotations

from .machine import Symbol, markdown_rows, transition_table


class SendState(Symbol):
    READY = "Ready"
    SEND = "Send"
    DATA_SENT = "Data Sent"
    DATA_RECVD = "Data Recvd"
    RESET_SENT = "Reset Sent"
    RESET_RECVD = "Reset Recvd"


class SendEvent(Symbol):
    #: the application writes bytes
    WRITE = "write"
    #: a STREAM frame with new bytes, or the empty frame that opens or accepts the stream, went out
    SENT = "sent"
    #: the application closes its side: a FIN follows the last byte written
    CLOSE = "close"
    #: a packet with one of our STREAM frames was declared lost
    LOST = "lost"
    #: every byte written and the FIN are acknowledged
    ALL_ACKED = "all_acked"
    #: this side resets the stream (the application, a refusal, or a protocol violation)
    ABORT = "abort"
    #: the peer sent STOP_SENDING: it will not read what we send
    STOP_SENDING = "stop_sending"
    #: a packet with our RESET_STREAM was declared lost
    RESET_LOST = "reset_lost"
    #: our RESET_STREAM was acknowledged
    RESET_ACKED = "reset_acked"
    #: the connection under the stream is gone
    CONNECTION_LOST = "connection_lost"


class SendOutput(Symbol):
    #: append the bytes to the send buffer, queue the stream, pause the writer when the buffer is full
    BUFFER = "buffer"
    #: the application wrote after closing or resetting: ``StreamError``
    REFUSE_WRITE = "refuse_write"
    #: queue the stream so that its FIN goes out after the last byte
    QUEUE_FIN = "queue_fin"
    #: queue the lost bytes (or the lost FIN, or the lost opening frame) to be sent again
    RETRANSMIT = "retransmit"
    #: the handler's ``send_finished()``
    TELL_SEND_FINISHED = "tell_send_finished"
    #: the handler's ``stream_failed()`` with the peer's STOP_SENDING code
    TELL_STOPPED = "tell_stopped"
    #: owe a RESET_STREAM with the code, and forget everything queued for retransmission
    QUEUE_RESET = "queue_reset"
    #: owe the RESET_STREAM again (its packet was lost)
    RESEND_RESET = "resend_reset"
    #: end the receiving part as well: a reset ends both directions, like a TCP RST
    ABORT_STREAM = "abort_stream"
    #: forget the stream if its receiving part is finished too
    CHECK_CLOSED = "check_closed"


#: the part can take writes (the coarse ``send_state`` calls these "open")
WRITABLE = frozenset({SendState.READY, SendState.SEND})
#: the part may still have STREAM frames to send or resend
SENDING = frozenset({SendState.READY, SendState.SEND, SendState.DATA_SENT})
#: nothing more will happen to the part
FINISHED = frozenset({SendState.DATA_RECVD, SendState.RESET_RECVD})

#: the coarse one-word view kept for callers and tests (``Stream.send_state``)
SUMMARY = {
    SendState.READY: "open",
    SendState.SEND: "open",
    SendState.DATA_SENT: "fin",
    SendState.DATA_RECVD: "done",
    SendState.RESET_SENT: "reset",
    SendState.RESET_RECVD: "reset_acked",
}

S, E, O = SendState, SendEvent, SendOutput

TRANSITIONS = transition_table(S, E, O, [
    # Ready: nothing sent yet (a stream we opened, or one we accepted)
    (S.READY, E.WRITE, S.READY, [O.BUFFER]),
    (S.READY, E.SENT, S.SEND, []),
    (S.READY, E.CLOSE, S.DATA_SENT, [O.QUEUE_FIN]),
    (S.READY, E.LOST, S.READY, [O.RETRANSMIT]),  # nothing was sent yet, so not expected; resending is safe
    (S.READY, E.ALL_ACKED, S.READY, []),  # cannot happen: no FIN was sent
    (S.READY, E.ABORT, S.RESET_SENT, [O.QUEUE_RESET]),
    (S.READY, E.STOP_SENDING, S.RESET_SENT, [O.TELL_STOPPED, O.QUEUE_RESET, O.ABORT_STREAM]),
    (S.READY, E.RESET_LOST, S.READY, []),  # cannot happen: no RESET_STREAM was sent
    (S.READY, E.RESET_ACKED, S.READY, []),  # cannot happen
    (S.READY, E.CONNECTION_LOST, S.RESET_RECVD, []),
    # Send: bytes are going out
    (S.SEND, E.WRITE, S.SEND, [O.BUFFER]),
    (S.SEND, E.SENT, S.SEND, []),
    (S.SEND, E.CLOSE, S.DATA_SENT, [O.QUEUE_FIN]),
    (S.SEND, E.LOST, S.SEND, [O.RETRANSMIT]),
    (S.SEND, E.ALL_ACKED, S.SEND, []),  # cannot happen: no FIN was sent
    (S.SEND, E.ABORT, S.RESET_SENT, [O.QUEUE_RESET]),
    (S.SEND, E.STOP_SENDING, S.RESET_SENT, [O.TELL_STOPPED, O.QUEUE_RESET, O.ABORT_STREAM]),
    (S.SEND, E.RESET_LOST, S.SEND, []),  # cannot happen
    (S.SEND, E.RESET_ACKED, S.SEND, []),  # cannot happen
    (S.SEND, E.CONNECTION_LOST, S.RESET_RECVD, []),
    # Data Sent: closed by the application; the rest of the bytes and the FIN go out, and are resent until acknowledged
    (S.DATA_SENT, E.WRITE, S.DATA_SENT, [O.REFUSE_WRITE]),
    (S.DATA_SENT, E.SENT, S.DATA_SENT, []),
    (S.DATA_SENT, E.CLOSE, S.DATA_SENT, []),  # closed twice
    (S.DATA_SENT, E.LOST, S.DATA_SENT, [O.RETRANSMIT]),
    (S.DATA_SENT, E.ALL_ACKED, S.DATA_RECVD, [O.TELL_SEND_FINISHED, O.CHECK_CLOSED]),
    (S.DATA_SENT, E.ABORT, S.RESET_SENT, [O.QUEUE_RESET]),
    (S.DATA_SENT, E.STOP_SENDING, S.RESET_SENT, [O.TELL_STOPPED, O.QUEUE_RESET, O.ABORT_STREAM]),
    (S.DATA_SENT, E.RESET_LOST, S.DATA_SENT, []),  # cannot happen
    (S.DATA_SENT, E.RESET_ACKED, S.DATA_SENT, []),  # cannot happen
    (S.DATA_SENT, E.CONNECTION_LOST, S.RESET_RECVD, []),
    # Data Recvd: every byte and the FIN acknowledged; nothing can go wrong any more
    (S.DATA_RECVD, E.WRITE, S.DATA_RECVD, [O.REFUSE_WRITE]),
    (S.DATA_RECVD, E.SENT, S.DATA_RECVD, []),  # cannot happen: nothing left to send
    (S.DATA_RECVD, E.CLOSE, S.DATA_RECVD, []),
    (S.DATA_RECVD, E.LOST, S.DATA_RECVD, []),  # late: the bytes were acknowledged in another packet
    (S.DATA_RECVD, E.ALL_ACKED, S.DATA_RECVD, []),  # duplicate
    (S.DATA_RECVD, E.ABORT, S.DATA_RECVD, []),  # too late to reset what the peer has
    (S.DATA_RECVD, E.STOP_SENDING, S.DATA_RECVD, []),  # late
    (S.DATA_RECVD, E.RESET_LOST, S.DATA_RECVD, []),  # cannot happen
    (S.DATA_RECVD, E.RESET_ACKED, S.DATA_RECVD, []),  # cannot happen
    (S.DATA_RECVD, E.CONNECTION_LOST, S.DATA_RECVD, []),
    # Reset Sent: RESET_STREAM owed or in flight; bytes are never sent again
    (S.RESET_SENT, E.WRITE, S.RESET_SENT, [O.REFUSE_WRITE]),
    (S.RESET_SENT, E.SENT, S.RESET_SENT, []),  # cannot happen: no frames once reset
    (S.RESET_SENT, E.CLOSE, S.RESET_SENT, []),
    (S.RESET_SENT, E.LOST, S.RESET_SENT, []),  # late: a reset stream resends nothing
    (S.RESET_SENT, E.ALL_ACKED, S.RESET_SENT, []),  # late
    (S.RESET_SENT, E.ABORT, S.RESET_SENT, []),  # duplicate
    (S.RESET_SENT, E.STOP_SENDING, S.RESET_SENT, []),  # duplicate or late
    (S.RESET_SENT, E.RESET_LOST, S.RESET_SENT, [O.RESEND_RESET]),
    (S.RESET_SENT, E.RESET_ACKED, S.RESET_RECVD, [O.CHECK_CLOSED]),
    (S.RESET_SENT, E.CONNECTION_LOST, S.RESET_RECVD, []),
    # Reset Recvd: the peer has our reset
    (S.RESET_RECVD, E.WRITE, S.RESET_RECVD, [O.REFUSE_WRITE]),
    (S.RESET_RECVD, E.SENT, S.RESET_RECVD, []),  # cannot happen
    (S.RESET_RECVD, E.CLOSE, S.RESET_RECVD, []),
    (S.RESET_RECVD, E.LOST, S.RESET_RECVD, []),  # late
    (S.RESET_RECVD, E.ALL_ACKED, S.RESET_RECVD, []),  # late
    (S.RESET_RECVD, E.ABORT, S.RESET_RECVD, []),
    (S.RESET_RECVD, E.STOP_SENDING, S.RESET_RECVD, []),  # late
    (S.RESET_RECVD, E.RESET_LOST, S.RESET_RECVD, []),  # late: a copy was acknowledged
    (S.RESET_RECVD, E.RESET_ACKED, S.RESET_RECVD, []),  # duplicate (the reset was sent twice)
    (S.RESET_RECVD, E.CONNECTION_LOST, S.RESET_RECVD, []),
])

del S, E, O


def describe() -> list[str]:
    """The table as Markdown rows, as docs/streams.md shows it."""
    return markdown_rows(TRANSITIONS)
