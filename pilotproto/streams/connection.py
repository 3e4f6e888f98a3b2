"""
The per-peer multiplexer: many streams and datagrams over one session.

One :class:`StreamConnection` lives as long as the encrypted session with a
peer (across rekeys and path changes).  The session layer hands it the
plaintext of every stream packet (session message type ``0x10``) and gives
it ``send_packet(bytes)`` to seal and send one; everything else (packet
numbers, acknowledgements, loss recovery, congestion control, pacing, flow
control) happens here, driven by the injected clock.

Each side marks its packets with a random ``src_tag`` and echoes the tag it
last heard from the peer as ``dst_tag``: a packet addressed to another tag
is a leftover of an older connection and is dropped, and a new ``src_tag``
from the peer means the peer started over (it restarted), so every stream
fails and the connection starts afresh.
"""

from __future__ import annotations

import random as _random
from collections import Counter

from twisted.logger import Logger

from . import frames, receiving, sending
from .bbr import BBR
from .errors import CODE_REFUSED, CODE_TOO_MANY_STREAMS, ConnectionClosed, DatagramTooLarge
from .flow import INITIAL_CONNECTION_CREDIT, INITIAL_STREAM_CREDIT, ReceiveWindow, SendCredit
from .packets import ReceivedPackets
from .recovery import Pacer, Recovery
from .scheduler import FrameScheduler
from .stream import K_MAX_DATA, K_MAX_STREAM_DATA, K_RESET, K_STOP, K_STREAM, Stream
from ..wire.codec import DecodeError

MAX_PACKET = 1150
#: an ACK frame never takes more of a packet than this (about 36 ranges)
ACK_ROOM = 300


class StreamConnection:
    log = Logger()

    def __init__(
        self,
        clock,
        send_packet,
        is_low_side: bool,
        on_stream_opened=None,
        on_datagram=None,
        *,
        max_packet: int = MAX_PACKET,
        stream_window: int = 4 * 1024 * 1024,
        connection_window: int = 16 * 1024 * 1024,
        send_buffer: int = 4 * 1024 * 1024,
        max_ack_delay: float = 0.025,
        ack_every: int = 2,
        congestion_control=BBR,
        pacing: bool = True,
        max_incoming_streams: int = 4096,
        datagram_queue: int = 256,
        random=None,
    ):
        if max_packet < 128:
            raise ValueError("max_packet must be at least 128 bytes")
        self._clock = clock
        self._send_packet = send_packet
        self.is_low_side = is_low_side
        self._local_bit = 0 if is_low_side else 1
        self.on_stream_opened = on_stream_opened
        self.on_datagram = on_datagram
        self.max_packet = max_packet
        self.max_datagram = max_packet - frames.HEADER_SIZE - frames.DATAGRAM_OVERHEAD
        self.stream_window = stream_window
        self.connection_window = connection_window
        self.send_buffer = send_buffer
        self.max_ack_delay = max_ack_delay
        self.ack_every = ack_every
        self._cc_factory = congestion_control
        self.pacing = pacing
        self.max_incoming_streams = max_incoming_streams
        self.datagram_queue = datagram_queue
        self.stats: Counter = Counter()
        self.closed = False
        self.local_tag = (random or _random.SystemRandom()).randrange(1, 1 << 32)
        self._flush_call = None
        self._ack_call = None
        self._loss_call = None
        self._pace_call = None
        self._receiving = False
        self._start()

    def _start(self) -> None:
        """Fresh state for a new connection with the peer (at creation, or after it restarted)."""
        self.peer_tag: int | None = None
        self._next_number = 0
        self.received = ReceivedPackets(ack_every=self.ack_every)
        self.recovery = Recovery(self._cc_factory(self.max_packet), self.max_ack_delay)
        self.pacer = Pacer(self.max_packet)
        self.streams: dict[int, Stream] = {}
        self._next_local = 0
        self._peer_floor = 0
        self._peer_opened: set[int] = set()
        self._incoming = 0
        self.peer_credit = SendCredit(INITIAL_CONNECTION_CREDIT)
        self.window = ReceiveWindow(self.connection_window, INITIAL_CONNECTION_CREDIT)
        self._scheduler = FrameScheduler(
            self.window, self.peer_credit, self.stats, self.datagram_queue,
            max_data_due=self.connection_window > INITIAL_CONNECTION_CREDIT,
        )
        self._probes = 0

    @property
    def cc(self):
        return self.recovery.cc

    # -- application API -----------------------------------------------------

    def open_stream(self, port: int) -> Stream:
        """A new stream to ``port`` on the peer; it can carry data at once (no round trip to open)."""
        if self.closed:
            raise ConnectionClosed("this session's stream connection is closed")
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"port out of range: {port}")
        stream_id = 2 * self._next_local + self._local_bit
        if stream_id > frames.MAX_U32:
            raise ConnectionClosed("this session opened all the streams it can; reconnect")
        self._next_local += 1
        stream = self._add_stream(stream_id, port, local=True)
        self.stream_ready(stream)
        self.stats["streams_opened"] += 1
        return stream

    def send_datagram(self, port: int, data: bytes) -> None:
        """Queue an unreliable datagram for ``port``; dropped (oldest first) if too many are waiting."""
        if len(data) > self.max_datagram:
            raise DatagramTooLarge(f"a datagram of {len(data)} bytes exceeds the {self.max_datagram}-byte limit")
        if self.closed:
            raise ConnectionClosed("this session's stream connection is closed")
        self._scheduler.add_datagram(frames._DATAGRAM.pack(frames.DATAGRAM, port, len(data)) + bytes(data))
        self._schedule_flush()

    def close(self, error=None) -> None:
        """The session is gone: fail every stream with ``error`` (a PilotError) and stop."""
        if self.closed:
            return
        self.closed = True
        for call in (self._flush_call, self._ack_call, self._loss_call, self._pace_call):
            _cancel(call)
        self._flush_call = self._ack_call = self._loss_call = self._pace_call = None
        self._fail_all(error or ConnectionClosed())

    def _fail_all(self, error) -> None:
        self.recovery.discard_all()
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            stream.connection_lost(error)

    # -- packets in --------------------------------------------------------------

    def packet_received(self, data: bytes) -> None:
        """The plaintext of one session message of type 0x10 from the peer."""
        if self.closed:
            return
        try:
            packet = frames.decode_packet(bytes(data))
        except DecodeError:
            self.stats["packets_malformed"] += 1
            return
        if packet.dst_tag not in (0, self.local_tag):
            self.stats["packets_stale"] += 1
            return
        if self.peer_tag is None:
            self.peer_tag = packet.src_tag
        elif packet.src_tag != self.peer_tag:
            self.log.info("the peer restarted its stream connection; failing {n} streams", n=len(self.streams))
            self._fail_all(ConnectionClosed("the peer restarted; its streams are gone"))
            self._start()
            self.peer_tag = packet.src_tag
            self.stats["peer_restarts"] += 1
        received = self.received
        if received.is_duplicate(packet.number):
            self.stats["packets_duplicate"] += 1
            return
        now = self._clock.seconds()
        eliciting = False
        for frame in packet.frames:
            if type(frame) is not frames.Ack and type(frame) is not frames.Padding:
                eliciting = True
                break
        received.record(packet.number, eliciting, now)
        self.stats["packets_received"] += 1
        self.stats["bytes_received"] += len(data)
        self._receiving = True
        try:
            for frame in packet.frames:
                kind = type(frame)
                if kind is frames.StreamFrame:
                    self._on_stream_frame(frame)
                elif kind is frames.Ack:
                    self._on_ack(frame, now)
                elif kind is frames.MaxStreamData:
                    # It may come before the STREAM frame that opens the
                    # stream (same packet or reordered): open it now.
                    stream = self._stream_for(frame.stream_id, None)
                    if stream is not None:
                        stream.receive_max_stream_data(frame.limit)
                elif kind is frames.MaxData:
                    if self.peer_credit.raise_to(frame.limit):
                        self._scheduler.unblock()
                elif kind is frames.Datagram:
                    self.stats["datagrams_received"] += 1
                    if self.on_datagram is not None:
                        self.on_datagram(frame.port, frame.data)
                elif kind is frames.ResetStream:
                    stream = self._stream_for(frame.stream_id, None)
                    if stream is not None:
                        self._grew(stream, stream.receive_reset(frame.code, frame.final_size))
                elif kind is frames.StopSending:
                    stream = self._stream_for(frame.stream_id, None)
                    if stream is not None:
                        stream.receive_stop_sending(frame.code)
                if self.closed:
                    return
        finally:
            self._receiving = False
        if received.ack_pending and not received.ack_now and self._ack_call is None:
            self._ack_call = self._clock.callLater(self.max_ack_delay, self._ack_timer)
        self._flush()

    def _on_stream_frame(self, frame) -> None:
        stream = self._stream_for(frame.stream_id, frame.port)
        if stream is None:
            self.stats["frames_for_closed_streams"] += 1
            return
        self._grew(stream, stream.receive(frame.offset, frame.data, frame.fin))

    def _grew(self, stream: Stream, grew: int) -> None:
        if grew:
            self.window.receive(self.window.highest + grew)
            if not self.window.allows(self.window.highest):
                self.stats["connection_flow_violations"] += 1
                stream.protocol_violation()

    def _stream_for(self, stream_id: int, port):
        stream = self.streams.get(stream_id)
        if stream is not None:
            if stream.port is None and port is not None:
                stream.port = port
                self._announce(stream)
            return stream
        if stream_id & 1 == self._local_bit:
            return None  # one of ours, finished (or never opened)
        index = stream_id >> 1
        if index < self._peer_floor or index in self._peer_opened:
            return None  # the peer's, finished
        if self._incoming >= 2 * self.max_incoming_streams or index >= self._peer_floor + 2 * self.max_incoming_streams:
            # Far past the limit (streams over it are reset in _announce, but
            # each still costs a Stream): frames that would open more are
            # dropped, so a peer cannot make us hold unbounded streams or ids.
            self.stats["streams_dropped_too_many"] += 1
            return None
        self._peer_opened.add(index)
        while self._peer_floor in self._peer_opened:
            self._peer_opened.discard(self._peer_floor)
            self._peer_floor += 1
        stream = self._add_stream(stream_id, port, local=False)
        self._incoming += 1
        if port is not None:
            self._announce(stream)
        return stream

    def _add_stream(self, stream_id: int, port, local: bool) -> Stream:
        stream = Stream(
            self, stream_id, port, local, INITIAL_STREAM_CREDIT, self.stream_window, INITIAL_STREAM_CREDIT,
            self.send_buffer,
        )
        self.streams[stream_id] = stream
        if stream.max_data_due:
            self.stream_control(stream)
        return stream

    def _announce(self, stream: Stream) -> None:
        """The first frame of an incoming stream named its port: offer it to the listener."""
        if stream.receiving not in receiving.READING:
            # The peer reset it (or broke it) before the frame with its port
            # arrived: nobody has seen it, so there is nobody to offer it to.
            return
        if self._incoming > self.max_incoming_streams:
            self.stats["streams_refused_too_many"] += 1
            stream.reset(CODE_TOO_MANY_STREAMS)
            return
        accepted = bool(self.on_stream_opened(stream, stream.port)) if self.on_stream_opened else False
        if stream.sending not in sending.WRITABLE or stream.receiving not in receiving.READING:
            return  # the listener already reset it
        if not accepted:
            self.stats["streams_refused"] += 1
            stream.reset(CODE_REFUSED)
            return
        self.stats["streams_accepted"] += 1
        if stream.sent_offset == 0:
            stream.announce = True
            self.stream_ready(stream)

    # -- acknowledgements and loss -------------------------------------------

    def _on_ack(self, ack, now: float) -> None:
        if ack.largest >= self._next_number:
            self.stats["acks_invalid"] += 1
            return
        cc = self.recovery.cc
        limited = cc.bytes_in_flight < cc.cwnd / 2
        acked, lost = self.recovery.on_ack(ack.ranges, ack.delay_us / 1e6, now, limited)
        for packet in acked:
            for item in packet.items:
                kind = item[0]
                if kind == K_STREAM:
                    item[1].on_frame_acked(item[2], item[3], item[4])
                elif kind == K_RESET:
                    item[1].on_reset_acked()
        if lost:
            self._lost(lost)
        if acked:
            self.stats["cwnd"] = int(cc.cwnd)
            self.stats["srtt_us"] = int(self.recovery.smoothed_rtt * 1e6)

    def _lost(self, lost: list) -> None:
        stats = self.stats
        stats["packets_lost"] += len(lost)
        for packet in lost:
            stats["bytes_lost"] += packet.size
            for item in packet.items:
                kind = item[0]
                if kind == K_STREAM:
                    stats["stream_bytes_retransmitted"] += item[3]
                    item[1].on_frame_lost(item[2], item[3], item[4])
                elif kind == K_MAX_DATA:
                    self._scheduler.max_data_due = True
                elif kind == K_MAX_STREAM_DATA:
                    item[1].on_credit_lost()
                elif kind == K_RESET:
                    item[1].on_reset_lost()
                elif kind == K_STOP:
                    item[1].on_stop_lost()

    def _ack_timer(self) -> None:
        self._ack_call = None
        self.received.ack_now = True
        self._flush()

    def _loss_timer(self) -> None:
        self._loss_call = None
        deadline = self.recovery.deadline()
        if deadline is None or self.closed:
            return
        now = self._clock.seconds()
        if now < deadline - 1e-6:
            self._loss_call = self._clock.callLater(deadline - now, self._loss_timer)
            return
        lost, probe = self.recovery.on_timeout(now)
        if lost:
            self._lost(lost)
        if probe:
            self.stats["probe_timeouts"] += 1
            self._probes = 2
            # Probe with the oldest unacknowledged data, so a lost tail is repaired at once.
            for packet in self.recovery.oldest_in_flight(1):
                for item in packet.items:
                    if item[0] == K_STREAM:
                        item[1].on_frame_lost(item[2], item[3], item[4])
        self._flush()

    # -- stream callbacks ----------------------------------------------------

    def stream_ready(self, stream: Stream) -> None:
        """``stream`` may have frames to send."""
        self._scheduler.stream_ready(stream)
        self._schedule_flush()

    def stream_control(self, stream: Stream) -> None:
        """``stream`` may owe control frames (RESET_STREAM, STOP_SENDING, MAX_STREAM_DATA)."""
        self._scheduler.stream_control(stream)
        self._schedule_flush()

    def stream_consumed(self, stream: Stream, n: int) -> None:
        self.window.consume(n)
        if self.window.update_due():
            self._scheduler.max_data_due = True
            self._schedule_flush()

    def stream_finished(self, stream: Stream) -> None:
        if self.streams.pop(stream.id, None) is not None and not stream.local:
            self._incoming -= 1
        self._scheduler.forget(stream)

    # -- packets out ---------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if self._flush_call is None and not self._receiving and not self.closed:
            self._flush_call = self._clock.callLater(0, self._flush)

    def _has_work(self) -> bool:
        return bool(self._probes) or self._scheduler.has_work()

    def _flush(self) -> None:
        """Send what flow control, congestion control and the pacer allow."""
        _cancel(self._flush_call)
        self._flush_call = None
        if self.closed:
            return
        now = self._clock.seconds()
        cc = self.recovery.cc
        pacer = self.pacer
        if self.pacing:
            pacer.refill(now, cc.pacing_rate(self.recovery.smoothed_rtt))
        size = self.max_packet
        paced_out = False
        while True:
            allowed = bool(self._probes) or cc.can_send(size)
            if allowed and self.pacing and not self._probes and not pacer.ready(size):
                allowed = False
                paced_out = True
            if not self._build(now, allowed and self._has_work()):
                break
        if self._has_work():
            if paced_out and self._pace_call is None:
                self._pace_call = self._clock.callLater(pacer.wait(size), self._pace_timer)
        elif cc.bytes_in_flight + size <= cc.cwnd:
            cc.on_app_limited()
        deadline = self.recovery.deadline()
        if deadline is not None:
            call = self._loss_call
            if call is None or call.getTime() > deadline + 1e-4:
                _cancel(call)
                self._loss_call = self._clock.callLater(max(0.0, deadline - now), self._loss_timer)

    def _pace_timer(self) -> None:
        self._pace_call = None
        self._flush()

    def _build(self, now: float, eliciting: bool) -> bool:
        """Build and send one packet; False when there was nothing (allowed) to send."""
        received = self.received
        parts = [b""]
        room = self.max_packet - frames.HEADER_SIZE
        items = []
        with_ack = received.ack_pending and (received.ack_now or eliciting)
        if with_ack:
            ack = received.build_ack(now, min(room, ACK_ROOM))
            if ack is not None:
                parts.append(ack)
                room -= len(ack)
        sent_eliciting = False
        if eliciting:
            sent_eliciting = self._scheduler.fill(parts, items, room)
            if not sent_eliciting and self._probes:
                parts.append(bytes([frames.PING]))
                sent_eliciting = True
        if len(parts) == 1:
            return False
        number = self._next_number
        self._next_number = number + 1
        parts[0] = frames.HEADER.pack(frames.PACKET_TYPE, self.local_tag, self.peer_tag or 0, number)
        packet = b"".join(parts)
        size = len(packet)
        if sent_eliciting:
            self.recovery.on_sent(number, now, size, items)
            self.pacer.on_sent(size)
            if self._probes:
                self._probes -= 1
        if with_ack:
            received.ack_sent()
            _cancel(self._ack_call)
            self._ack_call = None
        stats = self.stats
        stats["packets_sent"] += 1
        stats["bytes_sent"] += size
        self._send_packet(packet)
        return True


def _cancel(call) -> None:
    if call is not None and call.active():
        call.cancel()
