"""
A simulated network for testing and benchmarking the stream layer without
sockets: a heap-ordered clock and a one-way pipe with delay, bandwidth, a
bounded queue, random loss and reordering (randomness from an injected,
seeded ``random.Random``).

:class:`twisted.internet.task.Clock` re-sorts its whole call list on every
``callLater``, which makes a simulation with thousands of packets in flight
quadratic; :class:`SimClock` keeps the same API on a heap.
"""

from __future__ import annotations

import heapq
import itertools

from zope.interface import implementer
from twisted.internet.interfaces import IDelayedCall, IReactorTime


@implementer(IDelayedCall)
class SimCall:
    __slots__ = ("_clock", "time", "func", "args", "cancelled", "called")

    def __init__(self, clock, time, func, args):
        self._clock = clock
        self.time = time
        self.func = func
        self.args = args
        self.cancelled = False
        self.called = False

    def getTime(self):
        return self.time

    def cancel(self):
        if self.cancelled or self.called:
            raise RuntimeError("call already cancelled or called")
        self.cancelled = True
        self._clock._live -= 1

    def delay(self, seconds):
        self.reset(self.time - self._clock.now + seconds)

    def reset(self, seconds):
        self.time = self._clock.now + seconds
        self._clock._push(self)

    def active(self):
        return not (self.cancelled or self.called)


@implementer(IReactorTime)
class SimClock:
    def __init__(self, start: float = 0.0):
        self.now = start
        self._heap: list = []
        self._seq = itertools.count()
        self._live = 0
        self.events_run = 0

    def seconds(self) -> float:
        return self.now

    def callLater(self, delay, func, *args, **kw):
        if kw:
            args = (lambda: func(*args, **kw),)
            func = _call_thunk
        call = SimCall(self, self.now + max(0.0, delay), func, args)
        self._live += 1
        self._push(call)
        return call

    def _push(self, call):
        heapq.heappush(self._heap, (call.time, next(self._seq), call))

    def getDelayedCalls(self):
        return [c for _, _, c in self._heap if c.active()]

    def _pop_due(self, until: float):
        heap = self._heap
        while heap:
            time, _, call = heap[0]
            if time > until:
                return None
            heapq.heappop(heap)
            if call.cancelled or call.called or call.time != time:
                continue
            return call
        return None

    def advance(self, amount: float) -> None:
        """Run every call due within ``amount`` seconds, in time order, then set the time."""
        until = self.now + amount
        while True:
            call = self._pop_due(until)
            if call is None:
                break
            self.now = max(self.now, call.time)
            self._run(call)
        self.now = until

    def run_until(self, done, limit: float, max_events: int = 50_000_000) -> bool:
        """Run events until ``done()`` is true (True), or simulated ``limit`` seconds pass (False)."""
        deadline = self.now + limit
        for _ in range(max_events):
            if done():
                return True
            call = self._pop_due(deadline)
            if call is None:
                self.now = deadline
                return done()
            self.now = max(self.now, call.time)
            self._run(call)
        raise RuntimeError("simulation ran too many events")

    def _run(self, call):
        call.called = True
        self._live -= 1
        self.events_run += 1
        call.func(*call.args)


def _call_thunk(thunk):
    thunk()


class SimPipe:
    """One direction of a link: ``send(packet)`` delivers it later to ``deliver`` (set after construction)."""

    def __init__(self, clock, rng, *, delay=0.005, bandwidth=None, queue_bytes=1 << 20, loss=0.0,
                 reorder=0.0, reorder_delay=0.005):
        self.clock = clock
        self.rng = rng
        self.delay = delay
        self.bandwidth = bandwidth
        self.queue_bytes = queue_bytes
        self.loss = loss
        self.reorder = reorder
        self.reorder_delay = reorder_delay
        self.deliver = None
        self.busy_until = 0.0
        self.sent = 0
        self.dropped = 0
        self.overflowed = 0
        self.delivered_bytes = 0
        self.tap = None  # optional callable(packet), sees every packet sent

    def send(self, packet: bytes) -> None:
        self.sent += 1
        if self.tap is not None:
            self.tap(packet)
        now = self.clock.now
        arrival = now + self.delay
        if self.bandwidth:
            start = max(now, self.busy_until)
            if (start - now) * self.bandwidth > self.queue_bytes:
                self.overflowed += 1
                return
            self.busy_until = start + len(packet) / self.bandwidth
            arrival = self.busy_until + self.delay
        if self.loss and self.rng.random() < self.loss:
            self.dropped += 1
            return
        if self.reorder and self.rng.random() < self.reorder:
            arrival += self.rng.uniform(0, self.reorder_delay)
        self.clock.callLater(arrival - now, self._arrive, packet)

    def _arrive(self, packet):
        self.delivered_bytes += len(packet)
        self.deliver(packet)


def connected_pair(clock, rng, link=None, **options):
    """Two :class:`StreamConnection` objects joined by a pair of :class:`SimPipe`.

    ``link`` holds SimPipe keyword arguments for both directions; ``options``
    go to both connections (``on_stream_opened_a`` / ``_b`` and
    ``on_datagram_a`` / ``_b`` to each side).
    """
    from .connection import StreamConnection

    link = link or {}
    a_to_b = SimPipe(clock, rng, **link)
    b_to_a = SimPipe(clock, rng, **link)
    side = {k: options.pop(k) for k in list(options) if k[-2:] in ("_a", "_b")}
    a = StreamConnection(
        clock, a_to_b.send, True, side.get("on_stream_opened_a"), side.get("on_datagram_a"), random=rng, **options
    )
    b = StreamConnection(
        clock, b_to_a.send, False, side.get("on_stream_opened_b"), side.get("on_datagram_b"), random=rng, **options
    )
    a_to_b.deliver = b.packet_received
    b_to_a.deliver = a.packet_received
    return a, b, a_to_b, b_to_a


class Collector:
    """A stream handler that records what a stream delivers (hashing it, optionally keeping it)."""

    def __init__(self, keep: bool = True, close_on_eof=None):
        import hashlib

        self.keep = keep
        #: a stream to close for writing when the peer's EOF arrives (like a TCP server closing)
        self.close_on_eof = close_on_eof
        self.chunks: list[bytes] = []
        self.hash = hashlib.sha256()
        self.received = 0
        self.events: list = []
        self.failure = None

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    def data_received(self, data):
        self.received += len(data)
        self.hash.update(data)
        if self.keep:
            self.chunks.append(data)

    def eof_received(self):
        self.events.append("eof")
        if self.close_on_eof is not None:
            self.close_on_eof.close_write()

    def accepted(self):
        self.events.append("accepted")

    def pause_writing(self):
        self.events.append("pause")

    def resume_writing(self):
        self.events.append("resume")

    def send_finished(self):
        self.events.append("send_finished")

    def stream_closed(self):
        self.events.append("closed")

    def stream_failed(self, reason):
        self.failure = reason
        self.events.append("failed")
