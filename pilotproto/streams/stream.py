"""
One stream: its send buffer, retransmission ranges and flow credit, and its
reassembly buffer, receive window and delivery to a handler.

The states follow RFC 9000 §3 (collapsed where pilot needs no distinction):

* send: ``open`` → ``fin`` (close_write; FIN queued or sent) → ``done`` (every
  byte and the FIN acknowledged); or ``reset`` → ``reset_acked``.
* receive: ``open`` → ``done`` (EOF delivered after every byte up to the
  final size); or ``reset`` (the peer reset it), or ``stopped`` (we aborted
  reading; bytes are thrown away until the final size is known) → ``reset``.

The stream is forgotten by its connection once both halves are terminal.
Data in flight is never copied per packet beyond the one slice a frame
needs: the send buffer is a bytearray compacted lazily, the reassembly
buffer a heap keyed by offset, so one loss costs one retransmission and no
reordering within the window is ever dropped.
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque

from zope.interface import Interface

from . import frames
from .errors import CODE_CANCELLED, CODE_PROTOCOL, StreamError, error_for_code
from .flow import ReceiveWindow, SendCredit

def _first(interval):
    return interval[0]


#: what a sent packet carried, for the connection to act on when it is acked or lost
K_STREAM, K_MAX_DATA, K_MAX_STREAM_DATA, K_RESET, K_STOP = range(5)


class IStreamHandler(Interface):
    """What a stream tells its user (a StreamTransport, or a test)."""

    def data_received(data):
        "bytes arrived in order"

    def eof_received():
        "the peer finished sending; every byte before it was delivered"

    def accepted():
        "the peer accepted a stream this side opened"

    def pause_writing():
        "the send buffer is full: stop writing"

    def resume_writing():
        "the send buffer drained: writing may resume"

    def send_finished():
        "every byte written and the FIN were acknowledged by the peer"

    def stream_closed():
        "both directions finished cleanly (our FIN acknowledged, theirs delivered)"

    def stream_failed(reason):
        "the stream was reset, refused, or its connection closed; reason is a PilotError"


class Stream:
    def __init__(self, connection, stream_id: int, port: int, local: bool, send_credit: int, window: int,
                 initial_window: int, send_buffer_limit: int):
        self._conn = connection
        self.id = stream_id
        self.port = port
        self.local = local
        self.handler = None
        # send side
        self._buf = bytearray()
        self._buf_offset = 0
        self.acked_offset = 0
        self._acked: list[list[int]] = []
        self.sent_offset = 0
        self.write_offset = 0
        self._retx: deque = deque()
        self._retx_fin = False
        self.fin_sent = False
        self._fin_acked = False
        self.send_state = "open"
        self.credit = SendCredit(send_credit)
        self.send_buffer_limit = send_buffer_limit
        self.writing_paused = False
        self.announce = local  # send a frame at offset 0 even with no data (open / accept)
        self.peer_seen = False
        self.reset_code = CODE_CANCELLED
        self.reset_due = False
        # receive side
        self.window = ReceiveWindow(window, initial_window)
        self.recv_offset = 0
        self._heap: list = []
        self._heap_offsets: set[int] = set()
        self._pending: deque = deque()
        self.final_size: int | None = None
        self.recv_state = "open"
        self.reading_paused = False
        self.max_data_due = window > initial_window
        self.stop_due = False
        self.stop_code = CODE_CANCELLED
        self._ended = False  # stream_closed or stream_failed was delivered

    def __repr__(self):
        return f"<Stream {self.id} port={self.port} send={self.send_state} recv={self.recv_state}>"

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
        return self.write_offset - self.acked_offset

    @property
    def buffered_receive_bytes(self) -> int:
        """Bytes received but not yet handed to the application (in order or not)."""
        return self.window.highest - self.window.consumed if self.recv_state == "open" else 0

    def write(self, data) -> None:
        if self.send_state != "open":
            raise StreamError("cannot write: this stream's sending side is closed")
        if not data:
            return
        self._buf += data
        self.write_offset += len(data)
        self._conn.stream_ready(self)
        if not self.writing_paused and self.buffered_send_bytes >= self.send_buffer_limit:
            self.writing_paused = True
            if self.handler is not None:
                self.handler.pause_writing()

    def close_write(self) -> None:
        """Send FIN after everything written so far."""
        if self.send_state != "open":
            return
        self.send_state = "fin"
        self._conn.stream_ready(self)

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
        if self.send_state in ("reset", "reset_acked", "done"):
            return False
        if self._retx or self._retx_fin or self.announce:
            return True
        if self.sent_offset < self.write_offset and self.credit.available() > 0:
            return True
        return self.send_state == "fin" and not self.fin_sent and self.sent_offset == self.write_offset

    def next_frame(self, room: int, connection_credit: int):
        """``(frame_bytes, item, new_bytes)`` of at most ``room`` bytes, or None."""
        port = self.port if self.local else None
        while self._retx:
            start, end = self._retx.popleft()
            start = max(start, self.acked_offset)
            if start >= end or self._is_acked(start, end):
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
        stop = min(self.write_offset, start + room - overhead, start + self.credit.available(), start + connection_credit)
        stop = max(stop, start)
        fin = self.send_state == "fin" and stop == self.write_offset and not self.fin_sent
        if stop == start and not fin and not self.announce:
            return None
        self.announce = False
        self.sent_offset = stop
        self.credit.used = max(self.credit.used, stop)
        if fin:
            self.fin_sent = True
        return (*self._frame(start, stop, fin, port if start == 0 else None), stop - start)

    def _frame(self, start: int, stop: int, fin: bool, port):
        base = self._buf_offset
        header = frames.stream_header(self.id, start, stop - start, fin, port)
        item = (K_STREAM, self, start, stop - start, fin)
        if stop == start:
            return header, item
        return header + self._buf[start - base : stop - base], item

    def _is_acked(self, start: int, end: int) -> bool:
        if end <= self.acked_offset:
            return True
        acked = self._acked
        i = bisect.bisect_right(acked, start, key=_first) - 1
        return i >= 0 and end <= acked[i][1]

    def on_frame_acked(self, offset: int, length: int, fin: bool) -> None:
        end = offset + length
        if offset <= self.acked_offset:
            if end > self.acked_offset:
                self.acked_offset = end
                acked = self._acked
                while acked and acked[0][0] <= self.acked_offset:
                    self.acked_offset = max(self.acked_offset, acked.pop(0)[1])
        elif length:
            self._add_acked(offset, end)
        if fin:
            self._fin_acked = True
        if self.acked_offset - self._buf_offset >= max(65536, len(self._buf) // 2):
            del self._buf[: self.acked_offset - self._buf_offset]
            self._buf_offset = self.acked_offset
        if self.writing_paused and self.buffered_send_bytes <= self.send_buffer_limit // 2:
            self.writing_paused = False
            if self.handler is not None and self.send_state == "open":
                self.handler.resume_writing()
        if self.send_state == "fin" and self._fin_acked and self.acked_offset == self.write_offset:
            self.send_state = "done"
            if self.handler is not None and not self._ended:
                self.handler.send_finished()
            self._check_finished()

    def _add_acked(self, start: int, end: int) -> None:
        acked = self._acked
        if acked and acked[-1][0] <= start <= acked[-1][1]:
            # Acks mostly arrive in offset order: extend the newest interval.
            if end > acked[-1][1]:
                acked[-1][1] = end
            return
        i = 0
        while i < len(acked) and acked[i][1] < start:
            i += 1
        j = i
        while j < len(acked) and acked[j][0] <= end:
            start = min(start, acked[j][0])
            end = max(end, acked[j][1])
            j += 1
        acked[i:j] = [[start, end]]

    def on_frame_lost(self, offset: int, length: int, fin: bool) -> None:
        if self.send_state in ("reset", "reset_acked", "done"):
            return
        if length:
            self._retx.append((offset, offset + length))
        elif offset == 0 and not fin and not self.peer_seen and self.acked_offset == 0:
            self.announce = True  # the opening (or accepting) frame was lost
        if fin:
            self._retx_fin = True
        self._conn.stream_ready(self)

    def on_reset_acked(self) -> None:
        if self.send_state == "reset":
            self.send_state = "reset_acked"
            self._check_finished()

    # -- receiving (called by the connection) --------------------------------

    def receive(self, offset: int, data: bytes, fin: bool) -> int:
        """Apply a STREAM frame; returns the growth of the highest offset (for connection flow control)."""
        if not self.peer_seen:
            self.peer_seen = True
            if self.local and self.handler is not None:
                self.handler.accepted()
        end = offset + len(data)
        if (
            (self.final_size is not None and (end > self.final_size or (fin and end != self.final_size)))
            or (fin and end < self.window.highest)
            or not self.window.allows(end)
        ):
            self._violation()
            return 0
        grew = self.window.receive(end)
        if fin:
            self.final_size = end
        if self.recv_state == "stopped":
            self._throw_away(grew)
            self._check_stopped_final()
            return grew
        if self.recv_state != "open":
            return grew
        if end > self.recv_offset:
            if offset <= self.recv_offset:
                self._in_order(data[self.recv_offset - offset :] if offset < self.recv_offset else data)
                heap = self._heap
                while heap and heap[0][0] <= self.recv_offset:
                    off, chunk = heapq.heappop(heap)
                    self._heap_offsets.discard(off)
                    if off + len(chunk) > self.recv_offset:
                        self._in_order(chunk[self.recv_offset - off :])
            elif offset not in self._heap_offsets:
                self._heap_offsets.add(offset)
                heapq.heappush(self._heap, (offset, data))
        self._drain()
        return grew

    def _in_order(self, chunk: bytes) -> None:
        self.recv_offset += len(chunk)
        self._pending.append(chunk)

    def _drain(self) -> None:
        """Hand queued in-order data to the handler while it reads."""
        pending = self._pending
        while pending and self.handler is not None and not self.reading_paused and self.recv_state == "open":
            chunk = pending.popleft()
            self._consumed(len(chunk))
            self.handler.data_received(chunk)
        if (
            not pending
            and self.recv_state == "open"
            and self.final_size is not None
            and self.recv_offset == self.final_size
            and self.handler is not None
            and not self.reading_paused
        ):
            self.recv_state = "done"
            self.handler.eof_received()
            self._check_finished()

    def _consumed(self, n: int) -> None:
        self.window.consume(n)
        self._conn.stream_consumed(self, n)
        if self.recv_state == "open" and self.final_size is None and self.window.update_due():
            self.max_data_due = True
            self._conn.stream_control(self)

    def _throw_away(self, n: int) -> None:
        self.window.consume(n)
        self._conn.stream_consumed(self, n)

    def receive_reset(self, code: int, final_size: int) -> int:
        if final_size < self.window.highest or (self.final_size is not None and final_size != self.final_size):
            self._violation()
            return 0
        grew = self.window.receive(final_size)
        self.final_size = final_size
        if self.recv_state in ("open", "stopped"):
            dropped = final_size - self.window.consumed
            self._clear_receive()
            self._throw_away(dropped)
            was_open = self.recv_state == "open"
            self.recv_state = "reset"
            if was_open:
                self._fail(error_for_code(code, "the peer"))
                self._abort(code)
        self._check_finished()
        return grew

    def receive_stop_sending(self, code: int) -> None:
        if self.send_state in ("open", "fin"):
            self._fail(error_for_code(code, "the peer"))
            self._abort(code)

    def receive_max_stream_data(self, limit: int) -> None:
        if self.credit.raise_to(limit) and self.sent_offset < self.write_offset:
            self._conn.stream_ready(self)

    # -- ending ----------------------------------------------------------------

    def _violation(self) -> None:
        self._conn.stats["stream_protocol_violations"] += 1
        self._fail(error_for_code(CODE_PROTOCOL, "this node"))
        self._abort(CODE_PROTOCOL)

    def _abort(self, code: int) -> None:
        """Reset our sending half and stop the peer's, each unless already finished."""
        if self.send_state in ("open", "fin"):
            self.send_state = "reset"
            self.reset_code = code
            self.reset_due = True
            self._retx.clear()
            self._retx_fin = False
            self.announce = False
        if self.recv_state == "open":
            self.recv_state = "stopped"
            self.stop_code = code
            self.stop_due = self.final_size is None
            dropped = self.window.highest - self.window.consumed
            self._clear_receive()
            self._throw_away(dropped)
            self._check_stopped_final()
        self.max_data_due = False
        self._conn.stream_control(self)
        self._check_finished()

    def _clear_receive(self) -> None:
        self._heap.clear()
        self._heap_offsets.clear()
        self._pending.clear()

    def _check_stopped_final(self) -> None:
        if self.recv_state == "stopped" and self.final_size is not None:
            self._throw_away(self.final_size - self.window.consumed)
            self.recv_state = "reset"
            self.stop_due = False

    def _fail(self, reason) -> None:
        if not self._ended:
            self._ended = True
            if self.handler is not None:
                self.handler.stream_failed(reason)

    def connection_lost(self, reason) -> None:
        self._fail(reason)
        self.send_state = "reset_acked"
        self.recv_state = "reset"
        self._clear_receive()

    def _check_finished(self) -> None:
        if self.send_state in ("done", "reset_acked") and self.recv_state in ("done", "reset"):
            if not self._ended:
                self._ended = True
                if self.handler is not None:
                    self.handler.stream_closed()
            self._conn.stream_finished(self)
