"""
What leaves a :class:`~pilotproto.streams.connection.StreamConnection`:
when a flush may send (congestion window, pacer, probes, acknowledgements
owed), the general packet builder, and the bulk-transfer fast path.

The fast path: in a bulk transfer nearly every packet is the same, the
packet header and one STREAM frame of the next ``max_packet - 32`` bytes of
the only busy stream, nothing else owed.  The general path (``_build``,
``FrameScheduler.fill``, ``Stream.next_frame``) makes each such packet with
a dozen calls and as many small objects; ``_send_burst``, as quinn and
quic-go do for their common case, makes all the packets the congestion
window and the pacer allow in one loop: the packet header and the frame
header packed by one ``struct`` call, the payload a slice of a
``memoryview`` of the send buffer (one copy, into the packet), one
``SentPacket`` per packet sharing one rate snapshot, and the bookkeeping
(offsets, credit, counters, the controller and the pacer) done once per
burst.  Its packets are byte for byte what the general path makes in that
case (``tests/test_streams_burst.py`` checks it): a frame without a port
(the stream's first frame, which may carry one, goes the usual way), FIN on
the frame that ends at the last byte written once the stream is closed.
"""

from __future__ import annotations

import struct

from . import frames
from .recovery import SentPacket
from .sending import SendState
from .handler import K_STREAM

#: the default largest packet (type byte to the last frame); each connection has its own ``max_packet``
MAX_PACKET = 1150
#: an ACK frame never takes more of a packet than this (about 36 ranges)
ACK_ROOM = 300
_PING = bytes([frames.PING])
#: the packet header and a STREAM frame header, packed together
BURST_HEAD = struct.Struct("!BIIQBIQH")
BURST_OVERHEAD = BURST_HEAD.size  # 32
if BURST_OVERHEAD != frames.HEADER_SIZE + frames.STREAM_OVERHEAD:
    raise ImportError("the burst header must be a packet header followed by a STREAM frame header")
_STREAM_FIN = frames.STREAM | frames.STREAM_FIN


class PacketsOut:
    """The sending half of ``StreamConnection`` (a mixin: it reads and updates the connection's state)."""

    def _schedule_flush(self) -> None:
        if self._flush_call is None and not self._receiving and not self.closed:
            self._flush_call = self._clock.callLater(0, self._flush)

    def _has_work(self) -> bool:
        return bool(self._probes) or self._scheduler.has_work()

    def _flush(self) -> None:
        """Send what flow control, congestion control and the pacer allow."""
        cancel_call(self._flush_call)
        self._flush_call = None
        if self.closed:
            return
        now = self._clock.seconds()
        cc = self.recovery.cc
        pacer = self.pacer
        if self.pacing:
            srtt = self.recovery.smoothed_rtt
            pacer.refill(now, cc.pacing_rate(srtt), cc.cwnd, srtt)
        size = self.max_packet
        paced_out = False
        if self._send_packets is not None:
            self._batch = []
        received = self.received
        while True:
            eliciting = self._has_work()
            if eliciting and not self._probes:
                if not cc.can_send(size):
                    eliciting = False
                elif self.pacing and not pacer.ready(size):
                    eliciting = False
                    paced_out = True
            if eliciting and not self._probes and not received.ack_pending:
                stream = self._scheduler.bulk_stream()
                if stream is not None:
                    # Whole packets of one stream: as many in one loop as the window and the pacer allow.
                    count = int((cc.cwnd - cc.bytes_in_flight) // size)
                    if self.pacing:
                        count = min(count, int(pacer.tokens // size))
                    if self._send_burst(stream, count, now):
                        continue
            # Most packets received make nothing to send: no call to _build then.
            if not (eliciting or (received.ack_pending and received.ack_now)) or not self._build(now, eliciting):
                break
        batch, self._batch = self._batch, None
        if batch:
            self._send_packets(batch)  # one burst: the socket may hand it to the kernel in one call
        if self._has_work():
            if paced_out and self._pace_call is None:
                self._pace_call = self._clock.callLater(pacer.wait(size), self._pace_timer)
        elif cc.bytes_in_flight + size <= cc.cwnd:
            cc.on_app_limited()
        deadline = self.recovery.deadline()
        if deadline is not None:
            call = self._loss_call
            if call is None or call.getTime() > deadline + 1e-4:
                cancel_call(call)
                self._loss_call = self._clock.callLater(max(0.0, deadline - now), self._loss_timer)

    def _burst_sent(self, stream, packets: list) -> None:
        """``_send_burst`` made ``packets`` of ``stream``'s data: send them, requeue the stream."""
        if not stream.has_frames():
            self._scheduler.stream_done(stream)
        if self._batch is not None:
            self._batch.extend(packets)
        else:
            send = self._send_packet
            for packet in packets:
                send(packet)

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
            if self._probes:
                parts.append(_PING)  # the peer acknowledges a probe at once
                room -= 1
                sent_eliciting = True
            sent_eliciting = self._scheduler.fill(parts, items, room) or sent_eliciting
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
            cancel_call(self._ack_call)
            self._ack_call = None
        stats = self.stats
        stats["packets_sent"] += 1
        stats["bytes_sent"] += size
        if self._batch is not None:
            self._batch.append(packet)
        else:
            self._send_packet(packet)
        return True

    def _send_burst(self, stream, count: int, now: float) -> int:
        """Send up to ``count`` packets of ``stream``'s new data; returns how many went out.

        The caller checked that the window and the pacer allow ``count`` packets
        of ``self.max_packet`` bytes, and that ``stream`` has only new data
        to send (``FrameScheduler.bulk_stream``)."""
        payload = self.max_packet - BURST_OVERHEAD
        credit = stream.credit
        peer_credit = self.peer_credit
        first = start = stream.sent_offset
        # What next_frame allows: the bytes written, the stream's credit, the connection's credit.
        limit = min(
            stream.write_offset, start + credit.limit - credit.used, start + peer_credit.limit - peer_credit.used
        )
        if limit <= start or payload <= 0 or count <= 0:
            return 0
        fin_at = stream.write_offset if stream.sending is SendState.DATA_SENT and not stream.fin_sent else -1
        pack = BURST_HEAD.pack
        local_tag, peer_tag, stream_id = self.local_tag, self.peer_tag or 0, stream.id
        recovery = self.recovery
        rate = recovery.cc.rate_snapshot(now)
        seq = recovery.next_seq()
        number = self._next_number
        base = stream.send_buffer_offset
        packets = []
        records = []
        total = 0
        fin = False
        with memoryview(stream.send_buffer) as view:
            while count and start < limit:
                count -= 1
                stop = start + payload
                if stop > limit:
                    stop = limit
                length = stop - start
                fin = stop == fin_at
                packet = pack(frames.PACKET_TYPE, local_tag, peer_tag, number, _STREAM_FIN if fin else frames.STREAM,
                              stream_id, start, length) + view[start - base : stop - base]  # fmt: skip
                size = len(packet)
                packets.append(packet)
                records.append(SentPacket(number, now, size, ((K_STREAM, stream, start, length, fin),), seq, rate))
                total += size
                number += 1
                seq += 1
                start = stop
        # The view is released: the stream may write or compact its buffer again.
        self._next_number = number
        stream.sent_offset = start
        if start > credit.used:
            credit.used = start
        peer_credit.used += start - first
        if fin:
            stream.fin_sent = True
        recovery.on_burst_sent(records, now, total)
        self.pacer.tokens -= total
        stats = self.stats
        stats["packets_sent"] += len(packets)
        stats["bytes_sent"] += total
        self._burst_sent(stream, packets)
        return len(packets)


def cancel_call(call) -> None:
    if call is not None and call.active():
        call.cancel()
