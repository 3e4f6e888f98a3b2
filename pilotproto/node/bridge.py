"""
One bridged connection: a TCP connection spliced onto an overlay stream.

``pilotctl forward`` accepts a TCP connection and dials a stream for it;
``pilotctl expose`` accepts a stream and connects to a TCP service for it.
Either way one side (the *near* one) is up first and the other (the *far*
one) is being opened; a :class:`Bridge` is that pair.  While the far side
opens, the near side is paused (nothing is read, so nothing is buffered
without bound) and whatever had already arrived is held.  Once both are up
they are spliced, as :mod:`pilotproto.control.upgrade` splices a control
connection onto a stream:

- bytes pass straight through, each side registered as the other's
  streaming producer, so a full write buffer on one side stops reading on
  the other (TCP stops reading its socket; a stream stops granting
  flow-control credit): back-pressure both ways, no unbounded buffer;
- half-closes pass through: a read side's end (TCP FIN, stream FIN)
  half-closes the other side's write; an end whose two directions are both
  done closes (Twisted's TCP does not do that by itself);
- the whole connection ends when either side is lost: gracefully (the
  written bytes still go out) when that side had finished cleanly, with an
  abort (TCP RST, stream RESET) when it failed mid-way, so the far client
  learns something broke instead of reading a short reply as complete.

A far side that cannot be opened aborts the near one at once (``curl``
then fails fast with "connection reset") and the owner records the error;
the other bridges of the same forward are not touched.

The bridge's lifecycle is :data:`BRIDGE_TRANSITIONS`; data and half-closes
are not transitions, they are passed on (or held) by :meth:`Bridge.data`
and :meth:`Bridge.eof`.
"""

from __future__ import annotations

import enum

import attrs
from twisted.internet import error
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from zope.interface import Interface, implementer

from ..common.wiring import check_provides


class IBridgeOwner(Interface):
    """The forward or expose a bridge belongs to: it opens the far side and keeps the counts."""

    def open_far(bridge, factory):
        """Start opening the far side with ``factory``; a Deferred (cancellable) firing when it is up."""

    def bridge_opened(bridge):
        """Both sides are up and spliced."""

    def bridge_failed(bridge, failure):
        """The far side could not be opened (the near side was aborted)."""

    def bridge_closed(bridge):
        """The bridge ended (after ``bridge_opened``, or after the near side left early)."""

    def bytes_moved(bridge, to_overlay, count):
        """``count`` bytes went to the overlay peer (``to_overlay``) or came from it."""


class Side(enum.Enum):
    NEAR = "near"
    FAR = "far"


class State(enum.Enum):
    CONNECTING = "the near side is up and paused; the far side is opening"
    OPEN = "both sides are up and spliced"
    CLOSED = "over: counted, nothing more passes"


@attrs.frozen
class FarUp:
    """The far side connected."""

    end: BridgeEnd


@attrs.frozen
class FarFailed:
    """The far side could not be opened."""

    failure: object


@attrs.frozen
class Lost:
    """One side's connection is gone."""

    side: Side
    reason: object


@implementer(IHalfCloseableProtocol)
class BridgeEnd(Protocol):
    """A thin protocol: socket callbacks become the bridge's calls."""

    def __init__(self, bridge: Bridge, side: Side):
        self.bridge = bridge
        self.side = side
        self.read_done = False
        self.write_done = False

    def connectionMade(self):
        self.bridge.end_made(self)

    def dataReceived(self, data):
        self.bridge.data(self.side, data)

    def readConnectionLost(self):
        self.read_done = True
        self.bridge.eof(self.side)
        self._close_if_done()

    def writeConnectionLost(self):
        self.write_done = True
        self._close_if_done()

    def _close_if_done(self):
        # Both directions ended: a TCP connection stays half-open until told.
        if self.read_done and self.write_done:
            self.transport.loseConnection()

    def connectionLost(self, reason=None):
        self.bridge.feed(Lost(self.side, reason))


class Bridge:
    """
    One TCP connection and one stream, spliced.  ``stream_side`` says which
    side is the overlay stream (for the byte counts); ``owner`` provides
    :class:`IBridgeOwner`.
    """

    def __init__(self, owner, stream_side: Side):
        self._owner = check_provides(owner, IBridgeOwner, "Bridge.owner")
        self._stream_side = stream_side
        self.state = State.CONNECTING
        self.ends: dict[Side, BridgeEnd] = {}
        #: what arrived on the near side before the far one was up (bounded: the near side is paused)
        self._held: list[bytes] = []
        self._held_eof = False
        self._attempt = None
        #: the near side's connection failed mid-way, or the far one never opened
        self.error = None

    def __repr__(self):
        return f"<Bridge {self.state.name}>"

    def near_protocol(self) -> BridgeEnd:
        """The protocol for the side that is up first."""
        return BridgeEnd(self, Side.NEAR)

    def far_factory(self) -> Factory:
        return Factory.forProtocol(lambda: BridgeEnd(self, Side.FAR))

    # -- what the ends report -----------------------------------------------------------

    def end_made(self, end: BridgeEnd) -> None:
        self.ends[end.side] = end
        if end.side is Side.NEAR:
            end.transport.pauseProducing()
            self._attempt = self._owner.open_far(self, self.far_factory())
            self._attempt.addCallbacks(lambda _: None, lambda f: self.feed(FarFailed(f)))
        else:
            self.feed(FarUp(end))

    def data(self, side: Side, data: bytes) -> None:
        if self.state is State.OPEN:
            self._other(side).transport.write(data)
            self._owner.bytes_moved(self, side is not self._stream_side, len(data))
        elif self.state is State.CONNECTING and side is Side.NEAR:
            self._held.append(data)

    def eof(self, side: Side) -> None:
        if self.state is State.OPEN:
            self._other(side).transport.loseWriteConnection()
        elif self.state is State.CONNECTING and side is Side.NEAR:
            self._held_eof = True

    def _other(self, side: Side) -> BridgeEnd:
        return self.ends[Side.FAR if side is Side.NEAR else Side.NEAR]

    # -- the machine ---------------------------------------------------------------------

    def feed(self, event) -> None:
        """The one entry point: look the transition up, move, run its outputs."""
        key = (self.state, type(event)) if not isinstance(event, Lost) else (self.state, event.side)
        self.state, outputs = BRIDGE_TRANSITIONS[key]
        for output in outputs:
            output(self, event)

    # -- outputs ----------------------------------------------------------------------------

    def _splice(self, event: FarUp) -> None:
        near, far = self.ends[Side.NEAR], event.end
        held, self._held = self._held, []
        for data in held:
            self.data(Side.NEAR, data)
        if self._held_eof:
            far.transport.loseWriteConnection()
        # Each side pauses the other: a full buffer on one stops reading on the other.
        near.transport.registerProducer(far.transport, True)
        far.transport.registerProducer(near.transport, True)
        near.transport.resumeProducing()

    def _tell_opened(self, event) -> None:
        self._owner.bridge_opened(self)

    def _abort_near(self, event: FarFailed) -> None:
        self.error = event.failure
        self.ends[Side.NEAR].transport.abortConnection()

    def _tell_failed(self, event: FarFailed) -> None:
        self._owner.bridge_failed(self, event.failure)

    def _cancel_far(self, event) -> None:
        attempt, self._attempt = self._attempt, None
        if attempt is not None and not attempt.called:
            attempt.cancel()

    def _abort_late_far(self, event: FarUp) -> None:
        # The near side left while the far one was opening, and the cancel came too late.
        event.end.transport.abortConnection()

    def _close_other(self, event: Lost) -> None:
        lost = self.ends[event.side]
        other = self._other(event.side).transport
        clean = event.reason is None or event.reason.check(error.ConnectionDone) is not None
        if clean or lost.read_done:
            # Everything the lost side sent has been passed on: let it drain, then close.
            other.loseConnection()
        else:
            self.error = event.reason
            other.abortConnection()

    def _tell_closed(self, event) -> None:
        self._held = []
        self._owner.bridge_closed(self)


_B = Bridge
CONNECTING, OPEN, CLOSED = State
NEAR, FAR = Side

#: (state, event type, or the side a Lost comes from) -> (next state, outputs); every pair is listed.
BRIDGE_TRANSITIONS = {
    (CONNECTING, FarUp): (OPEN, [_B._splice, _B._tell_opened]),
    (CONNECTING, FarFailed): (CLOSED, [_B._abort_near, _B._tell_failed]),
    (CONNECTING, NEAR): (CLOSED, [_B._cancel_far, _B._tell_closed]),
    (CONNECTING, FAR): (CONNECTING, []),  # cannot happen: a far side is up (FarUp) before it is lost

    (OPEN, FarUp): (OPEN, []),  # cannot happen: one far side
    (OPEN, FarFailed): (OPEN, []),  # cannot happen: it is up
    (OPEN, NEAR): (CLOSED, [_B._close_other, _B._tell_closed]),
    (OPEN, FAR): (CLOSED, [_B._close_other, _B._tell_closed]),

    (CLOSED, FarUp): (CLOSED, [_B._abort_late_far]),
    (CLOSED, FarFailed): (CLOSED, []),  # the cancelled attempt, or the near side already aborted
    (CLOSED, NEAR): (CLOSED, []),  # the other side's close reached it
    (CLOSED, FAR): (CLOSED, []),
}

del _B
