"""
The durable outbox: messages, events and subscription announcements on their
way to peers, at least once, in order per peer.

Every item is stored (:class:`~pilotproto.node.mailstore.OutboxStore`, on
disk) before anything is sent, and forgotten only once the receiver acked
it, so a crash or a restart of the sender loses nothing: the outbox is
reloaded at start and resumed.  The receiver drops duplicates by id, which
makes the whole exactly-once.

Each peer has its own :class:`PeerQueue`, a table state machine
(:data:`TRANSITIONS`): one item in flight at a time, the oldest first, so
what one sender sends arrives in order; a failure waits (backoff, doubling
from ``first_delay`` to ``max_delay``, on the injected clock) and retries
the *same* item; the peer reaching us (``peer_seen``) retries at once.
Items older than ``max_age`` are dropped.  A receiver's ``invalid_argument``,
``protocol_error`` or ``checksum_mismatch`` will not get better by retrying:
that item is dropped (and a ``send_message`` waiting for it fails); every
other failure (unreachable, ``no_space``, a timeout) is retried.

An optional :class:`ISealer` (store-and-forward, :mod:`pilotproto.node.sealed`)
hears of every item queued and settled: it may leave a sealed copy of a
message at the beacon, whose end-to-end *receipt* (:meth:`Outbox.receipt`)
settles the item as an ack over a stream does.  The store keeps each
message's state (``queued``, ``delivered`` via ``stream`` or ``beacon``,
``failed``) for :meth:`Outbox.messages`.
"""

from __future__ import annotations

import enum

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import Interface, implementer

from ..common.wiring import check_provides
from ..errors import PilotError, Refused
from ..interfaces import IItemCarrier, IOutbox

FIRST_DELAY = 1.0
MAX_DELAY = 60.0
MAX_AGE = 7 * 24 * 3600.0
#: the receiver's answers that no retry can change
PERMANENT = frozenset({"invalid_argument", "protocol_error", "checksum_mismatch"})

#: how long a settled message's state is kept for ``pilotctl outbox``
STATE_SECONDS = 7 * 24 * 3600.0

log = Logger()


class ISealer(Interface):
    """Hears what the outbox queues and settles (store-and-forward)."""

    def queued(row):
        """Item ``row`` (a dict: n, address, port, id, kind, header, data, created) waits for its peer."""

    def settled(n):
        """Item ``n`` left the outbox (acked, receipted, refused, expired or dropped)."""

    def stop():
        """The outbox stops: cancel every timer."""


class Phase(enum.Enum):
    IDLE = "nothing queued"
    SENDING = "one item in flight"
    BACKOFF = "waiting to retry the oldest item"
    STOPPED = "stopped (the node stops, or trust ended)"


@attrs.frozen
class Queued:
    """An item was added to this peer's queue."""


@attrs.frozen
class Empty:
    """The queue has nothing (left) to send."""


@attrs.frozen
class Acked:
    n: int
    reply: dict


@attrs.frozen
class Failed:
    n: int
    error: Exception

    @property
    def permanent(self) -> bool:
        return getattr(self.error, "code", None) in PERMANENT


@attrs.frozen
class Rejected:
    """The receiver refused the item for good (see PERMANENT)."""

    n: int
    error: Exception


@attrs.frozen
class RetryDue:
    """The backoff timer fired."""


@attrs.frozen
class PeerSeen:
    """The peer reached us: it is up now."""


@attrs.frozen
class Stop:
    """The node stops, or trust in the peer ended: nothing more is sent."""


class PeerQueue:
    """The items for one peer (``address``) of ``outbox``, one at a time."""

    def __init__(self, outbox: "Outbox", address: str):
        self.outbox = outbox
        self.address = address
        self.state = Phase.IDLE
        self.attempts = 0
        self.in_flight: dict | None = None
        self._delivery: defer.Deferred | None = None
        self._timer = None

    def __repr__(self):
        return f"<PeerQueue {self.address} {self.state.name} attempts={self.attempts}>"

    def feed(self, event) -> None:
        """The one entry point: look the transition up, move, run its outputs."""
        if isinstance(event, Failed) and event.permanent:
            event = Rejected(event.n, event.error)
        self.state, outputs = TRANSITIONS[(self.state, type(event))]
        for output in outputs:
            output(self, event)

    # -- outputs --------------------------------------------------------------------------

    def _send_next(self, event) -> None:
        row = self.outbox.next_row(self.address)
        if row is None:
            self.in_flight = None
            self.feed(Empty())
            return
        self.in_flight = row
        n = row["n"]
        d = self._delivery = defer.maybeDeferred(
            self.outbox.carrier.deliver, self.address, row["port"], row["header"], row["data"])
        d.addCallbacks(lambda reply: self.feed(Acked(n, reply)), lambda failure: self.feed(Failed(n, failure.value)))

    def _settle(self, event: Acked) -> None:
        self._delivery = None
        self.attempts = 0
        self.outbox.acked(event.n, event.reply)

    def _drop(self, event: Rejected) -> None:
        self._delivery = None
        self.attempts = 0
        self.outbox.rejected(self.in_flight, event.error)

    def _schedule_retry(self, event: Failed) -> None:
        self._delivery = None
        self.attempts += 1
        delay = self.outbox.delay(self.attempts)
        log.info("outbox: {kind} {id} to {peer} failed ({why}); retrying in {delay:g} s",
                 kind=self.in_flight["kind"], id=self.in_flight["id"], peer=self.address, why=str(event.error), delay=delay)
        self._timer = self.outbox.clock.callLater(delay, self.feed, RetryDue())

    def _cancel_timer(self, event) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _reset_backoff(self, event) -> None:
        self.attempts = 0

    def _cancel_delivery(self, event) -> None:
        d, self._delivery = self._delivery, None
        if d is not None:
            d.cancel()


_Q = PeerQueue
IDLE, SENDING, BACKOFF, STOPPED = Phase

#: (state, event type) -> (next state, outputs); every pair is listed.
TRANSITIONS = {
    (IDLE, Queued): (SENDING, [_Q._send_next]),
    (IDLE, Empty): (IDLE, []),
    (IDLE, Acked): (IDLE, []),  # late: cannot happen, nothing is in flight
    (IDLE, Failed): (IDLE, []),
    (IDLE, Rejected): (IDLE, []),
    (IDLE, RetryDue): (IDLE, []),
    (IDLE, PeerSeen): (IDLE, []),
    (IDLE, Stop): (STOPPED, []),

    (SENDING, Queued): (SENDING, []),  # it goes after the one in flight
    (SENDING, Empty): (IDLE, []),
    (SENDING, Acked): (SENDING, [_Q._settle, _Q._send_next]),
    (SENDING, Failed): (BACKOFF, [_Q._schedule_retry]),
    (SENDING, Rejected): (SENDING, [_Q._drop, _Q._send_next]),
    (SENDING, RetryDue): (SENDING, []),
    (SENDING, PeerSeen): (SENDING, [_Q._reset_backoff]),
    (SENDING, Stop): (STOPPED, [_Q._cancel_delivery]),

    (BACKOFF, Queued): (BACKOFF, []),  # waits behind the item being retried
    (BACKOFF, Empty): (BACKOFF, []),
    (BACKOFF, Acked): (BACKOFF, []),
    (BACKOFF, Failed): (BACKOFF, []),
    (BACKOFF, Rejected): (BACKOFF, []),
    (BACKOFF, RetryDue): (SENDING, [_Q._send_next]),
    (BACKOFF, PeerSeen): (SENDING, [_Q._cancel_timer, _Q._reset_backoff, _Q._send_next]),
    (BACKOFF, Stop): (STOPPED, [_Q._cancel_timer]),

    (STOPPED, Queued): (STOPPED, []),
    (STOPPED, Empty): (STOPPED, []),
    (STOPPED, Acked): (STOPPED, []),  # a cancelled delivery's late answer
    (STOPPED, Failed): (STOPPED, []),
    (STOPPED, Rejected): (STOPPED, []),
    (STOPPED, RetryDue): (STOPPED, []),
    (STOPPED, PeerSeen): (STOPPED, []),
    (STOPPED, Stop): (STOPPED, []),
}

del _Q


@implementer(IOutbox)
class Outbox:
    """Every peer's queue over ``store`` (an OutboxStore), delivered by ``carrier`` (IItemCarrier)."""

    def __init__(self, clock, store, carrier, first_delay: float = FIRST_DELAY, max_delay: float = MAX_DELAY,
                 max_age: float = MAX_AGE, sealer=None):
        self.clock = clock
        self.store = store
        self.carrier = check_provides(carrier, IItemCarrier, "Outbox.carrier")
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.max_age = max_age
        self.queues: dict[str, PeerQueue] = {}
        self._waiters: dict[int, list[defer.Deferred]] = {}
        self._running = False
        self.sealer = check_provides(sealer, ISealer, "Outbox.sealer") if sealer is not None else None

    def delay(self, attempts: int) -> float:
        """Seconds before retry number ``attempts`` (1, 2, ...): doubling, capped."""
        return min(self.max_delay, self.first_delay * 2 ** min(attempts - 1, 30))

    def _queue(self, address: str) -> PeerQueue:
        queue = self.queues.get(address)
        if queue is None:
            queue = self.queues[address] = PeerQueue(self, address)
        return queue

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Resume what the store holds (from before a restart)."""
        self._running = True
        self.store.prune_states(self.clock.seconds() - STATE_SECONDS)
        rows = self.store.rows()
        if self.sealer is not None:
            sealed = self.store.sealed()
            for row in rows:
                if row["n"] not in sealed:
                    self.sealer.queued(row)
        for address in dict.fromkeys(row["address"] for row in rows):
            self._queue(address).feed(Queued())

    def stop(self) -> None:
        self._running = False
        if self.sealer is not None:
            self.sealer.stop()
        queues, self.queues = self.queues, {}
        for queue in queues.values():
            queue.feed(Stop())
        waiters, self._waiters = self._waiters, {}
        for ds in waiters.values():
            for d in ds:
                d.errback(PilotError("the node is shutting down", hint="The item stays queued; it is sent after the restart."))

    # -- IOutbox -------------------------------------------------------------------------

    def enqueue(self, address, port, id, kind, header, data, replaces=None) -> int:
        created = self.clock.seconds()
        n = self.store.add(address, port, id, kind, header, data, created, replaces=replaces)
        if self._running:
            if self.sealer is not None:
                self.sealer.queued({"n": n, "address": address, "port": port, "id": id, "kind": kind, "header": header,
                                    "data": data, "created": created})
            self._queue(address).feed(Queued())
        return n

    def when_acked(self, n: int) -> defer.Deferred:
        def cancel(d):
            if d in self._waiters.get(n, ()):
                self._waiters[n].remove(d)

        d = defer.Deferred(cancel)
        self._waiters.setdefault(n, []).append(d)
        return d

    def peer_seen(self, address) -> None:
        queue = self.queues.get(address)
        if queue is not None:
            queue.feed(PeerSeen())

    def drop_peer(self, address) -> None:
        dropped = {row["n"] for row in self.store.rows(address)}
        self.store.drop_peer(address)
        queue = self.queues.pop(address, None)
        if queue is not None:
            queue.feed(Stop())
        for n in dropped:
            self._fire(n, error=Refused(f"trust in {address} ended before it acked"))
        for row in self.store.message_states(count=1_000_000):
            if row["address"] == address and row["state"] == "queued":
                self.store.settle(address, row["id"], "failed", self.clock.seconds(), error="trust ended")

    # -- what the queues ask and tell ------------------------------------------------------

    def next_row(self, address: str) -> dict | None:
        """The oldest item for ``address`` still worth sending (expired ones are dropped)."""
        now = self.clock.seconds()
        for row in self.store.rows(address):
            if row["created"] + self.max_age > now:
                return row
            log.warn("outbox: {kind} {id} to {peer} expired unacked after {days:g} days",
                     kind=row["kind"], id=row["id"], peer=address, days=self.max_age / 86400)
            self._forget(row, "failed", error="expired")
            self._fire(row["n"], error=PilotError(f"{address} did not ack within {self.max_age / 86400:g} days"))
        return None

    def _forget(self, row: dict, state: str, via: str | None = None, error: str | None = None) -> None:
        self.store.remove(row["n"])
        if row["kind"] == "message":
            self.store.settle(row["address"], row["id"], state, self.clock.seconds(), via=via, error=error)
        if self.sealer is not None:
            self.sealer.settled(row["n"])

    def acked(self, n: int, reply: dict) -> None:
        row = self.queues_row(n)
        if row is not None:
            self._forget(row, "delivered", via="stream")
        self._fire(n, reply=reply)

    def queues_row(self, n: int) -> dict | None:
        """The in-flight row ``n`` (the queues hold it while it is delivered)."""
        for queue in self.queues.values():
            if queue.in_flight is not None and queue.in_flight["n"] == n:
                return queue.in_flight
        return None

    def receipt(self, address: str, id_: str) -> bool:
        """``address`` stored our message ``id_`` (its sealed receipt came); False if it was settled before."""
        found = [row for row in self.store.rows(address) if row["id"] == id_]
        for row in found:
            self._forget(row, "delivered", via="beacon")
            self._fire(row["n"], reply={"status": "ok", "kind": row["kind"], "id": id_, "duplicate": False, "via": "beacon"})
        self.peer_seen(address)
        return bool(found)

    def rejected(self, row: dict, error: Exception) -> None:
        log.warn("outbox: {peer} refused {kind} {id} for good: {why}", peer=row["address"], kind=row["kind"],
                 id=row["id"], why=str(error))
        self._forget(row, "failed", error=str(error))
        self._fire(row["n"], error=error)

    def messages(self, id_: str | None = None, count: int = 100) -> list[dict]:
        """The newest messages' states (``queued``/``delivered``/``failed``), newest first."""
        return self.store.message_states(id_, count)

    def _fire(self, n: int, reply=None, error=None) -> None:
        for d in self._waiters.pop(n, []):
            if error is not None:
                d.errback(error)
            else:
                d.callback(reply)

    def describe(self) -> list[dict]:
        """Per peer: how many items wait, and the queue's state."""
        counts: dict[str, int] = {}
        for row in self.store.rows():
            counts[row["address"]] = counts.get(row["address"], 0) + 1
        return [{"address": a, "queued": c, "state": self.queues[a].state.name.lower() if a in self.queues else "idle"}
                for a, c in counts.items()]
