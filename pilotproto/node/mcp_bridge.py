"""
One overlay stream spliced onto one process's stdin and stdout: what
``pilotctl mcp serve`` runs for every stream a peer opens to its port.

The stream arrives first; the owner then spawns the process (no shell) and
the two are spliced as :mod:`pilotproto.node.bridge` splices a TCP
connection onto a stream:

- bytes pass straight through (stream -> stdin, stdout -> stream), each side
  registered as the other's streaming producer: a stream whose send window is
  full stops the reading of the process's stdout, a stdin pipe that is full
  stops the stream granting credit; back-pressure both ways, no unbounded
  buffer;
- half-closes pass through: the stream's FIN closes stdin (an MCP stdio
  server exits on it), stdout's EOF sends the stream's FIN;
- stderr is not part of the protocol: its lines go to the owner (the daemon
  log, tagged with the port and the peer);
- the stream's end ends the process: SIGTERM at once, SIGKILL after
  :data:`KILL_GRACE` seconds if it is still there; the process's end closes the
  stream (what it wrote still goes out), so the far client learns at once.

A process that cannot be spawned resets the stream and the owner records
why.  The lifecycle is :data:`PROCESS_BRIDGE_TRANSITIONS`; data, half-closes
and stderr are not transitions, they are passed on by the bridge's methods.
"""

from __future__ import annotations

import contextlib
import enum

import attrs
from twisted.internet import error
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import ProcessProtocol, Protocol
from zope.interface import Interface, implementer

from ..common.wiring import check_provides
from ..errors import PilotError

#: seconds between SIGTERM and SIGKILL for a process whose stream ended
KILL_GRACE = 3.0
#: a stderr line longer than this is logged in pieces
MAX_STDERR_LINE = 4096


class IProcessOwner(Interface):
    """The MCP server a process bridge belongs to: it spawns, logs and counts."""

    def spawn(bridge, protocol):
        """Start the process with ``protocol`` (a ProcessProtocol); its IProcessTransport, or raise PilotError."""

    def bridge_failed(bridge, problem):
        """The process could not be started (a PilotError); the stream was reset."""

    def bridge_closed(bridge):
        """The stream and the process are both gone."""

    def stderr_line(bridge, line):
        """One line (text) the process wrote to stderr."""

    def bytes_moved(bridge, to_overlay, count):
        """``count`` bytes went to the peer (``to_overlay``) or came from it."""


class State(enum.Enum):
    IDLE = "the stream is not up yet"
    OPEN = "the stream and the process are up and spliced"
    STOPPING = "the stream is gone; the process is being ended"
    EXITED = "the process is gone; the stream is being closed"
    CLOSED = "both are gone: counted, nothing more passes"


@attrs.frozen
class StreamUp:
    end: StreamEnd


@attrs.frozen
class SpawnFailed:
    problem: PilotError


@attrs.frozen
class StreamLost:
    reason: object


@attrs.frozen
class ProcessEnded:
    reason: object


@attrs.frozen
class GraceOver:
    """The process outlived SIGTERM by KILL_GRACE seconds."""


@implementer(IHalfCloseableProtocol)
class StreamEnd(Protocol):
    """A thin protocol: the stream's callbacks become the bridge's calls."""

    def __init__(self, bridge: ProcessBridge):
        self.bridge = bridge

    def connectionMade(self):
        self.bridge.feed(StreamUp(self))

    def dataReceived(self, data):
        self.bridge.stream_data(data)

    def readConnectionLost(self):
        self.bridge.stream_eof()

    def writeConnectionLost(self):
        """Our FIN went out; the process's exit (or the peer's FIN) ends the bridge."""

    def connectionLost(self, reason=None):
        self.bridge.feed(StreamLost(reason))


class ProcessEnd(ProcessProtocol):
    """A thin protocol: the process's callbacks become the bridge's calls."""

    def __init__(self, bridge: ProcessBridge):
        self.bridge = bridge

    def outReceived(self, data):
        self.bridge.stdout_data(data)

    def errReceived(self, data):
        self.bridge.stderr_data(data)

    def outConnectionLost(self):
        self.bridge.stdout_eof()

    def processEnded(self, reason):
        self.bridge.feed(ProcessEnded(reason))


@implementer(IPushProducer)
class _StdoutProducer:
    """The process as the stream's producer: pausing it stops reading its stdout (and stderr).

    A Process has pause/resumeProducing but no stopProducing; the stream's
    end is the bridge's to act on (it ends the process), so stopping is a no-op.
    """

    def __init__(self, process):
        self._process = process

    def pauseProducing(self):
        self._process.pauseProducing()

    def resumeProducing(self):
        self._process.resumeProducing()

    def stopProducing(self):
        """The stream ended: the bridge's own state machine ends the process."""


class ProcessBridge:
    """One stream and one process; ``owner`` provides :class:`IProcessOwner`, ``clock`` times the SIGKILL."""

    def __init__(self, owner, clock, peer=None):
        self._owner = check_provides(owner, IProcessOwner, "ProcessBridge.owner")
        self._clock = clock
        #: who opened the stream (a PilotAddress), for the log
        self.peer = peer
        self.state = State.IDLE
        self.stream = None
        self.process = None
        self._stdin_open = True
        self._stderr = b""
        self._kill = None

    def __repr__(self):
        return f"<ProcessBridge {self.state.name}>"

    def stream_protocol(self) -> StreamEnd:
        return StreamEnd(self)

    # -- data and half-closes: passed on while both are up ------------------------------------

    def stream_data(self, data: bytes) -> None:
        if self.state is State.OPEN and self._stdin_open:
            self.process.write(data)
            self._owner.bytes_moved(self, False, len(data))

    def stream_eof(self) -> None:
        if self.state is State.OPEN:
            self._close_stdin()

    def stdout_data(self, data: bytes) -> None:
        if self.state in (State.OPEN, State.EXITED):
            self.stream.transport.write(data)
            self._owner.bytes_moved(self, True, len(data))

    def stdout_eof(self) -> None:
        if self.state is State.OPEN:
            self.stream.transport.loseWriteConnection()

    def stderr_data(self, data: bytes) -> None:
        self._stderr += data
        while b"\n" in self._stderr or len(self._stderr) > MAX_STDERR_LINE:
            line, sep, rest = self._stderr.partition(b"\n")
            if not sep:
                line, rest = self._stderr[:MAX_STDERR_LINE], self._stderr[MAX_STDERR_LINE:]
            self._stderr = rest
            self._owner.stderr_line(self, line.rstrip(b"\r").decode("utf-8", "replace"))

    def _close_stdin(self) -> None:
        if self._stdin_open:
            self._stdin_open = False
            self.process.closeStdin()

    # -- the machine ------------------------------------------------------------------------

    def feed(self, event) -> None:
        """The one entry point: look the transition up, move, run its outputs."""
        self.state, outputs = PROCESS_BRIDGE_TRANSITIONS[(self.state, type(event))]
        for output in outputs:
            output(self, event)

    # -- outputs ----------------------------------------------------------------------------

    def _spawn(self, event: StreamUp) -> None:
        self.stream = event.end
        try:
            self.process = self._owner.spawn(self, ProcessEnd(self))
        except PilotError as e:
            self.feed(SpawnFailed(e))
            return
        # Each side pauses the other: a full buffer on one stops reading on the other.
        self.stream.transport.registerProducer(_StdoutProducer(self.process), True)
        self.process.registerProducer(self.stream.transport, True)

    def _reset_stream(self, event: SpawnFailed) -> None:
        self.stream.transport.abortConnection()

    def _tell_failed(self, event: SpawnFailed) -> None:
        self._owner.bridge_failed(self, event.problem)

    def _terminate(self, event) -> None:
        self.process.unregisterProducer()
        self._close_stdin()
        self._signal("TERM")
        self._kill = self._clock.callLater(KILL_GRACE, self.feed, GraceOver())

    def _kill_now(self, event: GraceOver) -> None:
        self._kill = None
        self._signal("KILL")

    def _signal(self, name: str) -> None:
        with contextlib.suppress(error.ProcessExitedAlready, OSError):  # already gone: nothing to end
            self.process.signalProcess(name)

    def _close_stream(self, event: ProcessEnded) -> None:
        # Whatever stdout said is already written: let it drain, then FIN.
        self.stream.transport.unregisterProducer()
        self.stream.transport.loseConnection()

    def _cancel_kill(self, event) -> None:
        kill, self._kill = self._kill, None
        if kill is not None and kill.active():
            kill.cancel()

    def _tell_closed(self, event) -> None:
        if self._stderr:
            self.stderr_data(b"\n")
        self._owner.bridge_closed(self)


_P = ProcessBridge
IDLE, OPEN, STOPPING, EXITED, CLOSED = State

#: (state, event type) -> (next state, outputs); every pair is listed.
PROCESS_BRIDGE_TRANSITIONS = {
    (IDLE, StreamUp): (OPEN, [_P._spawn]),
    (IDLE, SpawnFailed): (IDLE, []),  # cannot happen: nothing was spawned
    (IDLE, StreamLost): (CLOSED, []),  # cannot happen: a stream is up before it is lost
    (IDLE, ProcessEnded): (IDLE, []),  # cannot happen
    (IDLE, GraceOver): (IDLE, []),  # cannot happen

    (OPEN, StreamUp): (OPEN, []),  # cannot happen: one stream
    (OPEN, SpawnFailed): (CLOSED, [_P._reset_stream, _P._tell_failed]),
    (OPEN, StreamLost): (STOPPING, [_P._terminate]),
    (OPEN, ProcessEnded): (EXITED, [_P._close_stream]),
    (OPEN, GraceOver): (OPEN, []),  # cannot happen: no timer yet

    (STOPPING, StreamUp): (STOPPING, []),
    (STOPPING, SpawnFailed): (STOPPING, []),
    (STOPPING, StreamLost): (STOPPING, []),
    (STOPPING, ProcessEnded): (CLOSED, [_P._cancel_kill, _P._tell_closed]),
    (STOPPING, GraceOver): (STOPPING, [_P._kill_now]),

    (EXITED, StreamUp): (EXITED, []),
    (EXITED, SpawnFailed): (EXITED, []),
    (EXITED, StreamLost): (CLOSED, [_P._tell_closed]),
    (EXITED, ProcessEnded): (EXITED, []),
    (EXITED, GraceOver): (EXITED, []),

    (CLOSED, StreamUp): (CLOSED, []),
    (CLOSED, SpawnFailed): (CLOSED, []),
    (CLOSED, StreamLost): (CLOSED, []),  # the reset we sent, coming back
    (CLOSED, ProcessEnded): (CLOSED, []),
    (CLOSED, GraceOver): (CLOSED, []),
}

del _P
