"""
What the next packet carries, and in what order.

The connection decides *when* a packet may leave (congestion window, pacer,
probes, acknowledgements owed) and numbers it; this decides *what* goes in:
first the connection's MAX_DATA and ACK_FREQUENCY, then each stream's owed control frames
(RESET_STREAM, STOP_SENDING, MAX_STREAM_DATA), then waiting datagrams, then
stream data, one frame per stream in turn (round robin), so one busy stream
cannot starve the others.  Control frames come first because they are small
and unblock the peer.  A stream with data but no connection credit waits
aside until a MAX_DATA arrives.

Each sent packet keeps the items its frames carried; when the packet is
acknowledged or lost, :meth:`acked` and :meth:`lost` tell their owners.
"""

from __future__ import annotations

from collections import Counter, deque

from . import frames, receiving
from .ackfreq import AckFrequency
from .flow import ReceiveWindow, SendCredit
from .handler import (
    K_ACK_FREQUENCY,
    K_MAX_DATA,
    K_MAX_STREAM_DATA,
    K_RESET,
    K_STOP,
    K_STREAM,
)
from .stream import Stream

_CONTROL_ROOM = 32  # the largest control frame, with margin


class FrameScheduler:
    def __init__(self, window: ReceiveWindow, peer_credit: SendCredit, stats: Counter, datagram_queue: int,
                 max_data_due: bool, ack_frequency: AckFrequency):
        #: the connection's receive window, advertised in MAX_DATA
        self._window = window
        #: the connection credit the peer granted us
        self._credit = peer_credit
        self._stats = stats
        self._datagram_queue = datagram_queue
        #: a MAX_DATA is owed
        self.max_data_due = max_data_due
        #: what we ask of the peer's acknowledgements (its ``due`` request goes in the next packet)
        self._ack_frequency = ack_frequency
        # Dicts as ordered sets: insertion order is the round robin.
        self._ready: dict[Stream, None] = {}
        self._control: dict[Stream, None] = {}
        self._blocked: dict[Stream, None] = {}
        self._datagrams: deque = deque()

    def has_work(self) -> bool:
        return bool(
            self._ready or self._control or self._datagrams or self.max_data_due
            or self._ack_frequency.due is not None
        )  # fmt: skip

    def bulk_stream(self) -> Stream | None:
        """The stream the next packets should carry whole, when nothing else is owed and it is the only
        one with data: the bulk-transfer case, which ``outgoing.PacketsOut._send_burst`` builds in one loop.  Packets
        full of one stream's new data are what ``fill`` would make then, one frame each."""
        if (
            len(self._ready) != 1 or self._control or self._datagrams or self.max_data_due
            or self._ack_frequency.due is not None
        ):  # fmt: skip
            return None
        stream = next(iter(self._ready))
        return stream if stream.sends_new_data_only() else None

    def stream_ready(self, stream: Stream) -> None:
        """``stream`` may have STREAM frames to send."""
        self._ready[stream] = None

    def stream_done(self, stream: Stream) -> None:
        """``stream`` has no more frames to send for now (``stream_ready`` queues it again)."""
        self._ready.pop(stream, None)

    def stream_control(self, stream: Stream) -> None:
        """``stream`` may owe control frames."""
        self._control[stream] = None

    def forget(self, stream: Stream) -> None:
        """``stream`` is finished; it keeps its place only for a RESET_STREAM or STOP_SENDING still owed."""
        self._ready.pop(stream, None)
        self._blocked.pop(stream, None)
        if not (stream.reset_due or stream.stop_due):
            self._control.pop(stream, None)

    def unblock(self) -> None:
        """The peer raised the connection credit: streams that waited for it may send."""
        self._ready.update(self._blocked)
        self._blocked.clear()

    def add_datagram(self, frame: bytes) -> None:
        """Queue an encoded DATAGRAM frame; the oldest is dropped when too many wait."""
        if len(self._datagrams) >= self._datagram_queue:
            self._datagrams.popleft()
            self._stats["datagrams_dropped"] += 1
        self._datagrams.append(frame)

    def fill(self, parts: list, items: list, room: int) -> bool:
        """Append frames to ``parts`` within ``room`` bytes, and what they carry to ``items``.

        True when anything ack-eliciting went in (a frame with an item, or a datagram).
        """
        carried = len(items)
        if self.max_data_due and room >= _CONTROL_ROOM:
            self.max_data_due = False
            parts.append(frames.encode_frame(frames.MaxData(self._window.advertise())))
            items.append((K_MAX_DATA,))
            room -= 9
        if self._ack_frequency.due is not None and room >= _CONTROL_ROOM:
            frame, request = self._ack_frequency.frame()
            parts.append(frame)
            items.append((K_ACK_FREQUENCY, request))
            room -= len(frame)
        control = self._control
        while control and room >= _CONTROL_ROOM:
            stream = next(iter(control))
            del control[stream]
            if stream.reset_due:
                stream.reset_due = False
                frame = frames.ResetStream(stream.id, stream.reset_code, stream.sent_offset)
                parts.append(frames.encode_frame(frame))
                items.append((K_RESET, stream))
                room -= 15
            if stream.stop_due:
                stream.stop_due = False
                parts.append(frames.encode_frame(frames.StopSending(stream.id, stream.stop_code)))
                items.append((K_STOP, stream))
                room -= 7
            if stream.max_data_due and stream.receiving in receiving.READING:
                stream.max_data_due = False
                parts.append(frames.encode_frame(frames.MaxStreamData(stream.id, stream.window.advertise())))
                self._window.ensure_at_least(stream.window.window * 3 // 2)  # no stream held back by the connection
                items.append((K_MAX_STREAM_DATA, stream))
                room -= 13
        datagram_sent = False
        datagrams = self._datagrams
        while datagrams and len(datagrams[0]) <= room:
            frame = datagrams.popleft()
            parts.append(frame)
            room -= len(frame)
            datagram_sent = True
            self._stats["datagrams_sent"] += 1
        ready = self._ready
        credit = self._credit
        while ready and room > frames.STREAM_PORT_OVERHEAD:
            stream = next(iter(ready))
            del ready[stream]
            if not stream.has_frames():
                continue
            result = stream.next_frame(room, credit.limit - credit.used)
            if result is None:
                self._blocked[stream] = None  # waits for MAX_DATA
                continue
            frame, item, new = result
            parts.append(frame)
            items.append(item)
            room -= len(frame)
            credit.used += new
            if stream.has_frames():
                ready[stream] = None  # round robin
        return len(items) > carried or datagram_sent

    # -- what sent packets carried --------------------------------------------------

    def acked(self, packets: list) -> float | None:
        """``packets`` were acknowledged; returns the ack delay the peer now keeps, if that changed.

        Consecutive frames of one stream (a bulk transfer's packets, in order) are told to it as
        one range: one ``on_frame_acked`` per ACK rather than per packet.  Any other item first
        tells the range gathered so far, so every owner hears of its items in the order sent."""
        delay = None
        stream = None  # the range gathered: stream, start, end, fin
        start = end = 0
        fin = False
        for packet in packets:
            for item in packet.items:
                kind = item[0]
                if kind == K_STREAM:
                    if item[1] is stream and item[2] == end and not fin:
                        end += item[3]
                        fin = item[4]
                        continue
                    if stream is not None:
                        stream.on_frame_acked(start, end - start, fin)
                    _, stream, start, length, fin = item
                    end = start + length
                    continue
                if stream is not None:
                    stream.on_frame_acked(start, end - start, fin)
                    stream = None
                if kind == K_RESET:
                    item[1].on_reset_acked()
                elif kind == K_ACK_FREQUENCY:
                    delay = self._ack_frequency.acked(item[1]) or delay
        if stream is not None:
            stream.on_frame_acked(start, end - start, fin)
        return delay

    def lost(self, packets: list) -> None:
        """``packets`` were declared lost: what they carried is owed again (datagrams excepted)."""
        stats = self._stats
        stats["packets_lost"] += len(packets)
        for packet in packets:
            stats["bytes_lost"] += packet.size
            for item in packet.items:
                kind = item[0]
                if kind == K_STREAM:
                    stats["stream_bytes_retransmitted"] += item[3]
                    item[1].on_frame_lost(item[2], item[3], item[4])
                elif kind == K_MAX_DATA:
                    self.max_data_due = True
                elif kind == K_MAX_STREAM_DATA:
                    item[1].on_credit_lost()
                elif kind == K_RESET:
                    item[1].on_reset_lost()
                elif kind == K_STOP:
                    item[1].on_stop_lost()
                elif kind == K_ACK_FREQUENCY:
                    self._ack_frequency.lost(item[1])
