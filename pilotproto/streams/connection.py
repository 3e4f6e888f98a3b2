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

from ..wire.codec import DecodeError
from . import frames, receiving, sending
from .ackfreq import AckFrequency
from .bbr import BBR
from .blackhole import SMALL_PACKET, BlackHoleDetector, resize
from .errors import CODE_REFUSED, CODE_TOO_MANY_STREAMS, ConnectionClosed, DatagramTooLarge
from .flow import INITIAL_CONNECTION_CREDIT, INITIAL_STREAM_CREDIT, ReceiveWindow, SendCredit, WindowTuner
from .frames import ACK, ACK_FREQUENCY, DATAGRAM, MAX_DATA, MAX_STREAM_DATA, PING, RESET_STREAM, STOP_SENDING, STREAM
from .incoming import PeerStreamIds
from .packets import ReceivedPackets
from .recovery import Pacer, Recovery
from .scheduler import FrameScheduler
from .outgoing import MAX_PACKET, PacketsOut, cancel_call
from .handler import K_STREAM
from .stream import Stream

#: a stream's receive window starts here and auto-tunes up to ``stream_window`` (flow.py)
STREAM_WINDOW_START = 512 * 1024


class StreamConnection(PacketsOut):
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
        stream_window: int = 6 * 1024 * 1024,
        connection_window: int = 16 * 1024 * 1024,
        send_buffer: int = 4 * 1024 * 1024,
        max_ack_delay: float = 0.025,
        ack_every: int = 2,
        ack_frequency: bool = True,
        congestion_control=BBR,
        pacing: bool = True,
        max_incoming_streams: int = 4096,
        datagram_queue: int = 256,
        random=None,
        send_packets=None,
    ):
        """``send_packet(bytes)`` seals and sends one packet; ``send_packets(list)``, when
        given, is used instead for all the packets one flush makes (one burst, for the
        socket to hand the kernel at once).  ``stream_window`` and ``connection_window``
        are the most the receive windows auto-tune to; ``ack_frequency`` asks the peer
        for fewer ACKs as the window grows (ackfreq.py)."""
        if max_packet < 128:
            raise ValueError("max_packet must be at least 128 bytes")
        self._clock = clock
        self._send_packet = send_packet
        self._send_packets = send_packets
        self._batch: list | None = None
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
        self.tune_acks = ack_frequency
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
        self.on_black_hole = None  # full-size packets vanish, small ones arrive: blackhole.py
        self.black_holes = BlackHoleDetector(SMALL_PACKET, self._black_hole)
        self._start()

    def _start(self) -> None:
        """Fresh state for a new connection with the peer (at creation, or after it restarted)."""
        self.peer_tag: int | None = None
        self._next_number = 0
        self.received = ReceivedPackets(ack_every=self.ack_every, max_ack_delay=self.max_ack_delay)
        self.recovery = Recovery(self._cc_factory(self.max_packet), self.max_ack_delay)
        self.pacer = Pacer(self.max_packet)
        self.ack_frequency = AckFrequency(self.max_packet, self.max_ack_delay, self.ack_every)
        self._tuner = WindowTuner(self._clock, self.recovery)
        self.streams: dict[int, Stream] = {}
        self._next_local = 0
        self._peer_ids = PeerStreamIds(self.stats)
        self.peer_credit = SendCredit(INITIAL_CONNECTION_CREDIT)
        start = min(self.connection_window, max(INITIAL_CONNECTION_CREDIT, 3 * STREAM_WINDOW_START // 2))
        self.window = ReceiveWindow(start, INITIAL_CONNECTION_CREDIT, self.connection_window, self._tuner)
        self._scheduler = FrameScheduler(
            self.window, self.peer_credit, self.stats, self.datagram_queue,
            max_data_due=start > INITIAL_CONNECTION_CREDIT, ack_frequency=self.ack_frequency,
        )
        self._probes = 0

    @property
    def cc(self):
        return self.recovery.cc

    @property
    def _peer_opened(self) -> set[int]:
        """The peer's stream indices seen above the floor (tests bound its size)."""
        return self._peer_ids.opened

    def set_max_packet(self, size: int) -> None:
        """From now on every packet is at most ``size`` bytes (path MTU discovery moved it)."""
        resize(self, size)

    def _black_hole(self) -> None:
        self.stats["black_holes"] += 1
        if self.on_black_hole is not None:
            self.on_black_hole()

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
            cancel_call(call)
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
        if self._receive(data):
            self._flush()

    def packets_received(self, packets) -> None:
        """Several such plaintexts that arrived together (one read from the socket).

        The same as ``packet_received`` for each, except that one flush at the
        end sends what they all made due: one ACK for the lot, and what the
        windows their ACKs opened allow, as one burst (quinn does the same
        with what one ``recvmmsg`` returns)."""
        due = False
        for data in packets:
            if self._receive(data):
                due = True
        if due and not self.closed:
            self._flush()

    def _receive(self, data: bytes) -> bool:
        """Apply one packet; True when a flush is due."""
        if self.closed:
            return False
        if type(data) is not bytes:
            data = bytes(data)
        try:
            src_tag, dst_tag, number, eliciting, parsed = frames.parse_packet(data)
        except DecodeError:
            self.stats["packets_malformed"] += 1
            return False
        if dst_tag != 0 and dst_tag != self.local_tag:
            self.stats["packets_stale"] += 1
            return False
        if self.peer_tag is None:
            self.peer_tag = src_tag
        elif src_tag != self.peer_tag:
            self.log.info("the peer restarted its stream connection; failing {n} streams", n=len(self.streams))
            self._fail_all(ConnectionClosed("the peer restarted; its streams are gone"))
            self._start()
            self.peer_tag = src_tag
            self.stats["peer_restarts"] += 1
        received = self.received
        now = self._clock.seconds()
        if not received.receive(number, eliciting, now):
            self.stats["packets_duplicate"] += 1
            return False
        stats = self.stats
        stats["packets_received"] += 1
        stats["bytes_received"] += len(data)
        self._receiving = True
        acknowledged = False
        try:
            for frame in parsed:
                kind = frame[0]
                if kind == STREAM:
                    self._on_stream_frame(frame)
                elif kind == ACK:
                    acknowledged = True
                    self._on_ack(frame[2], frame[1], now)
                elif kind == MAX_STREAM_DATA:
                    # It may come before the STREAM frame that opens the
                    # stream (same packet or reordered): open it now.
                    stream = self._stream_for(frame[1], None)
                    if stream is not None:
                        stream.receive_max_stream_data(frame[2])
                elif kind == MAX_DATA:
                    if self.peer_credit.raise_to(frame[1]):
                        self._scheduler.unblock()
                elif kind == DATAGRAM:
                    stats["datagrams_received"] += 1
                    if self.on_datagram is not None:
                        self.on_datagram(frame[1], frame[2])
                elif kind == RESET_STREAM:
                    stream = self._stream_for(frame[1], None)
                    if stream is not None:
                        self._grew(stream, stream.receive_reset(frame[2], frame[3]))
                elif kind == STOP_SENDING:
                    stream = self._stream_for(frame[1], None)
                    if stream is not None:
                        stream.receive_stop_sending(frame[2])
                elif kind == ACK_FREQUENCY:
                    received.frequency_requested(*frame[1:], self.max_ack_delay)
                elif kind == PING:
                    received.ack_now = True  # a probe: the sender waits for this ACK to repair a tail
                if self.closed:
                    return False
        finally:
            self._receiving = False
        if received.ack_pending and not received.ack_now and self._ack_call is None:
            self._ack_call = self._clock.callLater(received.max_ack_delay, self._ack_timer)
        # Most packets a receiver gets (data, no ACK) leave nothing to send and change nothing a
        # flush looks at (window, data in flight, timers): no flush then.  Whatever this packet
        # made due (credit, a reset, data written by a callback) shows in the scheduler.
        return bool(acknowledged or received.ack_now or self._probes or self._scheduler.has_work())

    def _on_stream_frame(self, frame) -> None:
        _, stream_id, offset, data, fin, port = frame
        stream = self.streams.get(stream_id)
        if stream is None or (port is not None and stream.port is None):
            stream = self._stream_for(stream_id, port)
            if stream is None:
                self.stats["frames_for_closed_streams"] += 1
                return
        grew = stream.receive(offset, data, fin)
        if grew:
            self._grew(stream, grew)

    def _grew(self, stream: Stream, grew: int) -> None:
        if grew:
            window = self.window
            window.highest += grew
            if window.highest > window.limit:
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
        if not self._peer_ids.admit(stream_id >> 1, self.max_incoming_streams):
            return None
        stream = self._add_stream(stream_id, port, local=False)
        if port is not None:
            self._announce(stream)
        return stream

    def _add_stream(self, stream_id: int, port, local: bool) -> Stream:
        stream = Stream(
            self, stream_id, port, local, INITIAL_STREAM_CREDIT, min(self.stream_window, STREAM_WINDOW_START),
            INITIAL_STREAM_CREDIT, self.send_buffer, self.stream_window, self._tuner,
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
        if self._peer_ids.live > self.max_incoming_streams:
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

    def _on_ack(self, ranges: tuple, delay_us: int, now: float) -> None:
        if ranges[0][1] >= self._next_number:
            self.stats["acks_invalid"] += 1
            return
        recovery = self.recovery
        cc = recovery.cc
        limited = cc.bytes_in_flight < cc.cwnd / 2
        acked, lost = recovery.on_ack(ranges, delay_us / 1e6, now, limited)
        delay = self._scheduler.acked(acked)
        if delay is not None:
            recovery.max_ack_delay = delay  # the peer acknowledges this soon from now on
        if lost:
            self._lost(lost)
        self.black_holes.on_acked(acked)
        if acked:
            self.stats["cwnd"] = int(cc.cwnd)
            self.stats["srtt_us"] = int(recovery.smoothed_rtt * 1e6)
            if self.tune_acks and self.ack_frequency.on_ack(now, cc.cwnd, recovery.smoothed_rtt):
                # A longer delay counts from now (the probe timeout must allow for it); a shorter one once acked.
                recovery.max_ack_delay = max(recovery.max_ack_delay, self.ack_frequency.due[1])

    def _lost(self, lost: list) -> None:
        self._scheduler.lost(lost)
        self.black_holes.on_lost(lost)

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
            self.black_holes.on_probe_timeout(self.max_packet)
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
        window = self.window
        window.consumed += n
        # ReceiveWindow.update_due, inline: this runs for every packet delivered
        if window.consumed + window.window - window.limit >= window.window // 4:
            self._scheduler.max_data_due = True
            self._schedule_flush()

    def stream_finished(self, stream: Stream) -> None:
        if self.streams.pop(stream.id, None) is not None and not stream.local:
            self._peer_ids.live -= 1
        self._scheduler.forget(stream)
