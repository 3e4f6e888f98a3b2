"""
One stream: its send buffer, retransmission ranges and flow credit, and its
reassembly buffer, receive window and delivery to a handler.

Each direction is an explicit state machine modelled on RFC 9000 §3: the
sending part (Ready, Send, Data Sent, Data Recvd, Reset Sent, Reset Recvd) is
the table in ``sending.py``, the receiving part (Recv, Size Known, Data Recvd,
Data Read, Reset Recvd, Reset Read, and our Stopped) the table in
``receiving.py``.  This class turns what happens (the application's calls,
frames, acknowledgements and losses) into the machines' events, and carries
out the outputs they answer with; the buffers and offsets are the data the
outputs work on.  docs/streams.md draws both machines.

The stream is forgotten by its connection once both parts are finished.
Data in flight is never copied per packet beyond the one slice a frame
needs: the send buffer is a bytearray compacted lazily, the reassembly
buffer a heap keyed by offset, so one loss costs one retransmission and no
reordering within the window is ever dropped.
"""

from __future__ import annotations

from collections import deque

from . import frames, receiving, sending
from .buffers import AckedRanges, Reassembly
from .errors import CODE_CANCELLED, CODE_PROTOCOL, StreamError, error_for_code
from .flow import ReceiveWindow, SendCredit
from .handler import K_STREAM
from .receiving import RecvEvent, RecvOutput, RecvState
from .sending import SendEvent, SendOutput, SendState


class Stream:
    """One stream of a :class:`StreamConnection`: made by ``open_stream`` or by the peer's first frame."""

    def __init__(self, connection, stream_id: int, port: int, local: bool, send_credit: int, window: int,
                 initial_window: int, send_buffer_limit: int, max_window=None, tuner=None):
        self._conn = connection
        self.id = stream_id
        self.port = port
        self.local = local
        self.handler = None
        #: the sending part's state (sending.py)
        self.sending = SendState.READY
        #: the receiving part's state (receiving.py)
        self.receiving = RecvState.RECV
        # send side
        self._buf = bytearray()
        self._buf_offset = 0
        self._acked = AckedRanges()
        self.sent_offset = 0
        self.write_offset = 0
        self._retx: deque = deque()
        self._retx_fin = False
        #: the FIN has left at least once (progress within Data Sent, like sent_offset)
        self.fin_sent = False
        self._fin_acked = False
        self.credit = SendCredit(send_credit)
        self.send_buffer_limit = send_buffer_limit
        self.writing_paused = False
        self.announce = local  # send a frame at offset 0 even with no data (open / accept)
        self.peer_seen = False
        self.reset_code = CODE_CANCELLED
        self.reset_due = False
        # receive side
        self.window = ReceiveWindow(window, initial_window, max_window, tuner)
        self._reassembly = Reassembly()
        self.final_size: int | None = None
        self.reading_paused = False
        self.max_data_due = window > initial_window
        self.stop_due = False
        self.stop_code = CODE_CANCELLED
        self._ended = False  # stream_closed or stream_failed was delivered (or the application reset it)

    def __repr__(self):
        return f"<Stream {self.id} port={self.port} send={self.sending.value} recv={self.receiving.value}>"

    @property
    def send_state(self) -> str:
        """The sending part in one word: open (writable), fin, done, reset or reset_acked."""
        return sending.SUMMARY[self.sending]

    @property
    def recv_state(self) -> str:
        """The receiving part in one word: open (reading), done, reset or stopped."""
        return receiving.SUMMARY[self.receiving]

    # -- the machines ----------------------------------------------------------
    #
    # A step sets the new state first, then runs the outputs in order, each
    # with the event's argument (as Automat passes an input's arguments to
    # its outputs).  So an output may feed the other part's machine, or this
    # one, and that nested step sees the state already moved.

    def _step_send(self, event: SendEvent, arg=None) -> None:
        self.sending, outputs = sending.TRANSITIONS[self.sending, event]
        for output in outputs:
            _SEND_OUTPUTS[output](self, arg)

    def _step_recv(self, event: RecvEvent, arg=None) -> None:
        self.receiving, outputs = receiving.TRANSITIONS[self.receiving, event]
        for output in outputs:
            _RECV_OUTPUTS[output](self, arg)

    # -- application API -----------------------------------------------------

    def set_handler(self, handler) -> None:
        """Attach the receiver of callbacks; data that arrived before is delivered now."""
        self.handler = handler
        if self.peer_seen and self.local:
            handler.accepted()
        self._drain()

    @property
    def buffered_send_bytes(self) -> int:
        """Bytes written but not yet acknowledged by the peer."""
        return self.write_offset - self._acked.prefix

    @property
    def send_buffer(self) -> bytearray:
        """The bytes written and not yet compacted away; byte ``send_buffer_offset`` of the stream first."""
        return self._buf

    @property
    def send_buffer_offset(self) -> int:
        return self._buf_offset

    @property
    def buffered_receive_bytes(self) -> int:
        """Bytes received but not yet handed to the application (in order or not)."""
        return self.window.highest - self.window.consumed if self.receiving in receiving.READING else 0

    def write(self, data) -> None:
        """Queue ``data``; ``StreamError`` once this side was closed or reset."""
        self._step_send(SendEvent.WRITE, data)

    def close_write(self) -> None:
        """Send FIN after everything written so far."""
        self._step_send(SendEvent.CLOSE)

    def reset(self, code: int = CODE_CANCELLED) -> None:
        """Abort both directions with ``code``; the handler is not called back."""
        self._ended = True
        self._abort(code)

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False
        self._drain()

    # -- sending (called by the connection) ----------------------------------

    def has_frames(self) -> bool:
        if self.sending not in sending.SENDING:
            return False
        if self._retx or self._retx_fin or self.announce:
            return True
        if self.sent_offset < self.write_offset and self.credit.available() > 0:
            return True
        return self.sending is SendState.DATA_SENT and not self.fin_sent and self.sent_offset == self.write_offset

    def sends_new_data_only(self) -> bool:
        """The next frames are new bytes past the first frame, nothing to resend: ``outgoing.py`` may
        cut them itself, as ``next_frame`` would (the first frame, with its port, goes the usual way)."""
        return (
            (self.sending is SendState.SEND or self.sending is SendState.DATA_SENT)
            and not (self._retx or self._retx_fin or self.announce)
            and self.write_offset > self.sent_offset > 0
        )

    def next_frame(self, room: int, connection_credit: int):
        """``(frame_bytes, item, new_bytes)`` of at most ``room`` bytes, or None."""
        port = self.port if self.local else None
        while self._retx:
            start, end = self._retx.popleft()
            start = max(start, self._acked.prefix)
            if start >= end or self._acked.covers(start, end):
                continue
            overhead = frames.STREAM_PORT_OVERHEAD if (port is not None and start == 0) else frames.STREAM_OVERHEAD
            if room <= overhead:
                self._retx.appendleft((start, end))
                return None
            stop = min(end, start + room - overhead)
            if stop < end:
                self._retx.appendleft((stop, end))
            fin = self._retx_fin and stop == self.write_offset and not self._retx
            if fin:
                self._retx_fin = False
            return (*self._frame(start, stop, fin, port if start == 0 else None), 0)
        if self._retx_fin:
            self._retx_fin = False
            if room >= frames.STREAM_OVERHEAD:
                return (*self._frame(self.write_offset, self.write_offset, True, None), 0)
            self._retx_fin = True
            return None
        start = self.sent_offset
        overhead = frames.STREAM_PORT_OVERHEAD if (port is not None and start == 0) else frames.STREAM_OVERHEAD
        if room <= overhead:
            return None
        stop = min(
            self.write_offset, start + room - overhead, start + self.credit.available(), start + connection_credit
        )
        stop = max(stop, start)
        # The FIN rides only on the frame that ends at the last byte written: it never overtakes data.
        fin = self.sending is SendState.DATA_SENT and stop == self.write_offset and not self.fin_sent
        if stop == start and not fin and not self.announce:
            return None
        self.announce = False
        self.sent_offset = stop
        self.credit.used = max(self.credit.used, stop)
        if fin:
            self.fin_sent = True
        self._step_send(SendEvent.SENT)
        return (*self._frame(start, stop, fin, port if start == 0 else None), stop - start)

    def _frame(self, start: int, stop: int, fin: bool, port):
        base = self._buf_offset
        header = frames.stream_header(self.id, start, stop - start, fin, port)
        item = (K_STREAM, self, start, stop - start, fin)
        if stop == start:
            return header, item
        return header + self._buf[start - base : stop - base], item

    def on_frame_acked(self, offset: int, length: int, fin: bool) -> None:
        acked = self._acked
        acked.add(offset, offset + length)
        if fin:
            self._fin_acked = True
        if acked.prefix - self._buf_offset >= max(65536, len(self._buf) // 2):
            del self._buf[: acked.prefix - self._buf_offset]
            self._buf_offset = acked.prefix
        if self.writing_paused and self.buffered_send_bytes <= self.send_buffer_limit // 2:
            self.writing_paused = False
            if self.handler is not None and self.sending in sending.WRITABLE:
                self.handler.resume_writing()
        if self._fin_acked and acked.prefix == self.write_offset:
            self._step_send(SendEvent.ALL_ACKED)

    def on_frame_lost(self, offset: int, length: int, fin: bool) -> None:
        self._step_send(SendEvent.LOST, (offset, length, fin))

    def on_reset_acked(self) -> None:
        self._step_send(SendEvent.RESET_ACKED)

    def on_reset_lost(self) -> None:
        self._step_send(SendEvent.RESET_LOST)

    def on_stop_lost(self) -> None:
        self._step_recv(RecvEvent.STOP_LOST)

    def on_credit_lost(self) -> None:
        """A MAX_STREAM_DATA for this stream was lost."""
        self._step_recv(RecvEvent.CREDIT_LOST)

    # -- receiving (called by the connection) --------------------------------

    def receive(self, offset: int, data: bytes, fin: bool) -> int:
        """Apply a STREAM frame; returns the growth of the highest offset (for connection flow control)."""
        reassembly = self._reassembly
        window = self.window
        if (
            offset == reassembly.offset and not fin and self.receiving is RecvState.RECV
            and not reassembly.pending and not reassembly.waiting and self.handler is not None
            and not self.reading_paused and self.peer_seen
        ):  # fmt: skip
            # The bulk case: the next bytes in order, nothing queued before them, a reader waiting.
            # What DATA, REASSEMBLE and _drain would do, without the queue.
            end = offset + len(data)
            if end <= window.limit:
                grew = end - window.highest
                if grew > 0:
                    window.highest = end
                else:
                    grew = 0
                if data:
                    reassembly.offset = end
                    # _consumed, inline
                    size = len(data)
                    window.consumed += size
                    self._conn.stream_consumed(self, size)
                    if window.consumed + window.window - window.limit >= window.window // 4:
                        self.max_data_due = True
                        self._conn.stream_control(self)
                    self.handler.data_received(data)
                return grew
        if not self.peer_seen:
            self.peer_seen = True
            if self.local and self.handler is not None:
                self.handler.accepted()
        end = offset + len(data)
        if (
            (self.final_size is not None and (end > self.final_size or (fin and end != self.final_size)))
            or (fin and end < window.highest)
            or not window.allows(end)
        ):
            self._step_recv(RecvEvent.VIOLATION)
            return 0
        grew = window.receive(end)
        if fin:
            self.final_size = end
        self._step_recv(RecvEvent.FIN if fin else RecvEvent.DATA, (offset, data))
        if reassembly.offset == self.final_size:
            self._step_recv(RecvEvent.ALL_RECEIVED)
        self._drain()
        return grew

    def receive_reset(self, code: int, final_size: int) -> int:
        # A final size beyond the credit we granted is a flow-control error
        # (RFC 9000 §4.5), as data there would be: else a peer could count
        # 2**64 bytes against the connection with one frame.
        if (
            final_size < self.window.highest
            or (self.final_size is not None and final_size != self.final_size)
            or not self.window.allows(final_size)
        ):
            self._step_recv(RecvEvent.VIOLATION)
            return 0
        grew = self.window.receive(final_size)
        self.final_size = final_size
        self._step_recv(RecvEvent.RESET, code)
        return grew

    def receive_stop_sending(self, code: int) -> None:
        self._step_send(SendEvent.STOP_SENDING, code)

    def receive_max_stream_data(self, limit: int) -> None:
        if self.credit.raise_to(limit) and self.sent_offset < self.write_offset:
            self._conn.stream_ready(self)

    def protocol_violation(self) -> None:
        """The peer broke the rules on this stream (the connection found it: connection flow control)."""
        self._step_recv(RecvEvent.VIOLATION)

    def _drain(self) -> None:
        """Hand queued in-order data to the handler while it reads; then EOF once every byte was handed over."""
        pending = self._reassembly.pending
        while pending and self.handler is not None and not self.reading_paused and self.receiving in receiving.READING:
            chunk = pending.popleft()
            self._consumed(len(chunk))
            self.handler.data_received(chunk)
        if pending or self.handler is None or self.reading_paused:
            return
        if self.receiving is RecvState.DATA_RECVD:
            self._step_recv(RecvEvent.ALL_READ)

    def _consumed(self, n: int) -> None:
        self.window.consume(n)
        self._conn.stream_consumed(self, n)
        if self.receiving is RecvState.RECV and self.window.update_due():
            self.max_data_due = True
            self._conn.stream_control(self)

    # -- ending ----------------------------------------------------------------

    def _abort(self, code: int) -> None:
        """Reset our sending part and stop the peer's, each unless already finished."""
        self._step_send(SendEvent.ABORT, code)
        self._step_recv(RecvEvent.ABORT, code)
        self.max_data_due = False
        self._conn.stream_control(self)
        self._check_finished()

    def _fail(self, reason) -> None:
        if not self._ended:
            self._ended = True
            if self.handler is not None:
                self.handler.stream_failed(reason)

    def connection_lost(self, reason) -> None:
        self._fail(reason)
        self._step_send(SendEvent.CONNECTION_LOST)
        self._step_recv(RecvEvent.CONNECTION_LOST)

    def _check_finished(self) -> None:
        if self.sending in sending.FINISHED and self.receiving in receiving.FINISHED:
            if not self._ended:
                self._ended = True
                if self.handler is not None:
                    self.handler.stream_closed()
            self._conn.stream_finished(self)

    # -- outputs of the sending part (SendOutput), each given the event's argument --

    def _buffer(self, data) -> None:
        if not data:
            return
        self._buf += data
        self.write_offset += len(data)
        self._conn.stream_ready(self)
        if not self.writing_paused and self.buffered_send_bytes >= self.send_buffer_limit:
            self.writing_paused = True
            if self.handler is not None:
                self.handler.pause_writing()

    def _refuse_write(self, _data) -> None:
        # The machine has not moved (the write changes no state), so raising here leaves it whole.
        raise StreamError("cannot write: this stream's sending side is closed")

    def _queue_fin(self, _arg) -> None:
        self._conn.stream_ready(self)

    def _retransmit(self, lost) -> None:
        offset, length, fin = lost
        if length:
            self._retx.append((offset, offset + length))
        elif offset == 0 and not fin and self._acked.prefix == 0 and not (self.local and self.peer_seen):
            # The opening frame was lost and the peer has not answered yet, or
            # the accepting frame was lost: the opener waits for it (having
            # seen the opener's frame says nothing about the opener seeing ours).
            self.announce = True
        if fin:
            self._retx_fin = True
        self._conn.stream_ready(self)

    def _tell_send_finished(self, _arg) -> None:
        if self.handler is not None and not self._ended:
            self.handler.send_finished()

    def _tell_stopped(self, code: int) -> None:
        self._fail(error_for_code(code, "the peer"))

    def _queue_reset(self, code: int) -> None:
        self.reset_code = code
        self.reset_due = True
        self._retx.clear()
        self._retx_fin = False
        self.announce = False

    def _resend_reset(self, _arg) -> None:
        self.reset_due = True
        self._conn.stream_control(self)

    def _check_closed(self, _arg) -> None:
        self._check_finished()

    # -- outputs of the receiving part (RecvOutput) ------------------------------------

    def _reassemble(self, frame) -> None:
        self._reassembly.add(*frame)

    def _discard(self, _arg) -> None:
        # Bytes thrown away still count as read, so connection flow control
        # goes on: up to the final size when known, else what has arrived.
        self._reassembly.clear()
        end = self.window.highest if self.final_size is None else self.final_size
        dropped = end - self.window.consumed
        if dropped:
            self.window.consume(dropped)
            self._conn.stream_consumed(self, dropped)

    def _clear(self, _arg) -> None:
        self._reassembly.clear()

    def _tell_eof(self, _arg) -> None:
        self.handler.eof_received()

    def _tell_reset(self, code: int) -> None:
        self._fail(error_for_code(code, "the peer"))
        self._step_recv(RecvEvent.RESET_TOLD)

    def _abort_stream(self, code: int) -> None:
        self._abort(code)

    def _queue_stop(self, code: int) -> None:
        self.stop_code = code
        self.stop_due = True

    def _cancel_stop(self, _arg) -> None:
        self.stop_due = False

    def _resend_stop(self, _arg) -> None:
        self.stop_due = True
        self._conn.stream_control(self)

    def _resend_credit(self, _arg) -> None:
        self.max_data_due = True
        self._conn.stream_control(self)

    def _protocol_error(self, _arg) -> None:
        self._conn.stats["stream_protocol_violations"] += 1
        self._fail(error_for_code(CODE_PROTOCOL, "this node"))
        self._abort(CODE_PROTOCOL)


#: what each output of the two machines does: every output has exactly one method
_SEND_OUTPUTS = {
    SendOutput.BUFFER: Stream._buffer,
    SendOutput.REFUSE_WRITE: Stream._refuse_write,
    SendOutput.QUEUE_FIN: Stream._queue_fin,
    SendOutput.RETRANSMIT: Stream._retransmit,
    SendOutput.TELL_SEND_FINISHED: Stream._tell_send_finished,
    SendOutput.TELL_STOPPED: Stream._tell_stopped,
    SendOutput.QUEUE_RESET: Stream._queue_reset,
    SendOutput.RESEND_RESET: Stream._resend_reset,
    SendOutput.ABORT_STREAM: Stream._abort_stream,
    SendOutput.CHECK_CLOSED: Stream._check_closed,
}
_RECV_OUTPUTS = {
    RecvOutput.REASSEMBLE: Stream._reassemble,
    RecvOutput.DISCARD: Stream._discard,
    RecvOutput.CLEAR: Stream._clear,
    RecvOutput.TELL_EOF: Stream._tell_eof,
    RecvOutput.TELL_RESET: Stream._tell_reset,
    RecvOutput.ABORT_STREAM: Stream._abort_stream,
    RecvOutput.QUEUE_STOP: Stream._queue_stop,
    RecvOutput.CANCEL_STOP: Stream._cancel_stop,
    RecvOutput.RESEND_STOP: Stream._resend_stop,
    RecvOutput.RESEND_CREDIT: Stream._resend_credit,
    RecvOutput.PROTOCOL_ERROR: Stream._protocol_error,
    RecvOutput.CHECK_CLOSED: Stream._check_closed,
}
if set(_SEND_OUTPUTS) != set(SendOutput) or set(_RECV_OUTPUTS) != set(RecvOutput):
    raise ImportError("an output of a stream machine has no method in Stream")
