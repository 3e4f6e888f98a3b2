"""
The daemon's side of streams over the control socket: ``connect``,
``listen`` and ``accept`` (see ``docs/control.md``).

They work through any :class:`~pilotproto.interfaces.IPilotNode`
(``node.dial`` and ``node.listen``, both Deferreds).  ``connect`` and
``accept`` splice a control connection onto an overlay stream: bytes,
half-closes and back-pressure pass straight through, each side registered
as the other's producer.  ``listen`` keeps its connection as
an event feed: one JSON line per incoming stream, which a client claims with
``accept`` on a new connection within ``ACCEPT_TIMEOUT`` seconds (otherwise
the stream is reset, as a full accept queue would refuse it).
"""

from __future__ import annotations

import itertools

from twisted.internet import defer
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from ..common import timeouts
from ..common.names import check_port
from ..errors import InvalidArgument, NotFound, Timeout
from .codec import encode_event
from .piping import widen_pipe
from .server import Upgrade

#: seconds an incoming stream waits for its ``accept``
ACCEPT_TIMEOUT = timeouts.STREAM_ACCEPT
#: seconds ``connect`` waits for the peer to accept (lookup and tunnel handshake included)
CONNECT_TIMEOUT = timeouts.STREAM_CONNECT
#: incoming streams a listener may hold unaccepted
MAX_PENDING = 64

log = Logger()


@implementer(IHalfCloseableProtocol)
class StreamEnd(Protocol):
    """
    The protocol the daemon runs on a stream that a control connection pipes.

    Until :meth:`attach` the stream is paused and whatever already arrived
    (data, EOF, the end) is kept, so nothing is lost between the stream
    opening and the client's ``accept``.
    """

    def __init__(self, on_lost=None):
        self._socket = None
        self._held: list[bytes] = []
        self._eof = False
        self._lost = False
        self._on_lost = on_lost

    def connectionMade(self):
        if self._socket is None:
            self.transport.pauseProducing()

    def dataReceived(self, data):
        if self._socket is not None:
            self._socket.write(data)
        else:
            self._held.append(data)

    def readConnectionLost(self):
        if self._socket is not None:
            # The client may have closed already (an HTTP client dropping a
            # pooled connection): a closed socket has no write side to end.
            if getattr(self._socket, "connected", True):
                self._socket.loseWriteConnection()
        else:
            self._eof = True

    def writeConnectionLost(self):
        """Our write side closed; the read side decides when we are done."""

    def connectionLost(self, reason=None):
        self._lost = True
        if self._socket is not None:
            self._socket.loseConnection()
        elif self._on_lost is not None:
            self._on_lost()

    def abort(self):
        if not self._lost and self.transport is not None:
            self.transport.abortConnection()

    def attach(self, socket_transport) -> "SocketEnd":
        """Splice the stream onto ``socket_transport`` (an upgraded control connection)."""
        self._socket = socket_transport
        widen_pipe(socket_transport)
        held, self._held = self._held, []
        for data in held:
            socket_transport.write(data)
        if self._lost:
            socket_transport.loseConnection()
            return SocketEnd(None)
        if self._eof:
            socket_transport.loseWriteConnection()
        # Each side pauses the other: a full socket buffer stops the stream's
        # flow-control credit, a full stream send buffer stops reading the socket.
        socket_transport.registerProducer(self.transport, True)
        self.transport.registerProducer(socket_transport, True)
        self.transport.resumeProducing()
        return SocketEnd(self.transport)


class SocketEnd:
    """The owner of an upgraded control connection: its bytes go to the stream."""

    def __init__(self, stream_transport):
        self._stream = stream_transport

    def dataReceived(self, data):
        if self._stream is not None:
            self._stream.write(data)

    def readConnectionLost(self):
        if self._stream is not None:
            self._stream.loseWriteConnection()

    def connectionLost(self, reason=None):
        # The client closed: data it wrote still goes out, then the stream closes.
        if self._stream is not None:
            self._stream.loseConnection()


class _EventFeed:
    """The owner of a ``listen`` connection: it only ever sends event lines."""

    def __init__(self, listener: "_Listener", transport):
        self._listener = listener
        self._transport = transport

    def send(self, event: dict) -> None:
        self._transport.write(encode_event(event))

    def dataReceived(self, data):
        pass  # nothing is asked of a listener after "listen"

    def readConnectionLost(self):
        self._transport.loseConnection()

    def connectionLost(self, reason=None):
        self._listener.stop()


class _Pending:
    def __init__(self, stream_id: int, end: StreamEnd, peer, port: int, timer):
        self.stream_id = stream_id
        self.end = end
        self.peer = peer
        self.port = port
        self.timer = timer


class _Listener(Factory):
    """Listens on one virtual port for one ``listen`` connection."""

    noisy = False

    def __init__(self, commands: "StreamCommands", port: int):
        self._commands = commands
        self.port = port
        self.feed = None
        self.listening = None
        self.pending: dict[int, _Pending] = {}

    def buildProtocol(self, addr):
        if self.feed is None or len(self.pending) >= MAX_PENDING:
            return None  # refused, as by a full accept queue
        return self._commands.incoming(self, addr)

    def stop(self) -> None:
        if self.listening is not None:
            self.listening.stopListening()
            self.listening = None
        for pending in list(self.pending.values()):
            self._commands.expire(pending.stream_id)


class StreamCommands:
    """The ``connect``, ``listen`` and ``accept`` commands for ``node`` (an IPilotNode)."""

    def __init__(self, node, clock):
        self._node = node
        self._clock = clock
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[_Listener, _Pending]] = {}

    # -- connect -------------------------------------------------------------------

    def connect(self, target, port) -> defer.Deferred:
        if not isinstance(target, str) or not target:
            raise InvalidArgument("connect needs a target: a peer's hostname or address")
        check_port(port)
        d = defer.maybeDeferred(self._node.dial, target, port, Factory.forProtocol(StreamEnd))

        def timed_out(failure):
            failure.trap(defer.CancelledError, defer.TimeoutError)
            raise Timeout(
                f"{target} did not accept a stream to port {port} within {CONNECT_TIMEOUT:g} s",
                hint="Check that the peer's daemon runs, and 'pilotctl ping' it.",
            )

        d.addTimeout(CONNECT_TIMEOUT, self._clock)
        d.addErrback(timed_out)
        d.addCallback(self._connected, port)
        return d

    def _connected(self, end: StreamEnd, port: int) -> Upgrade:
        peer, host = end.transport.getPeer(), end.transport.getHost()
        data = {"peer": peer.hostname or peer.address, "address": peer.address, "port": port,
                "local_hostname": host.hostname, "local_address": host.address}
        return Upgrade(data, end.attach, end.abort)

    # -- listen ----------------------------------------------------------------------

    def listen(self, port) -> defer.Deferred:
        check_port(port)
        listener = _Listener(self, port)
        d = defer.maybeDeferred(self._node.listen, port, listener)
        d.addCallback(self._listening, listener)
        return d

    def _listening(self, listening, listener: "_Listener") -> Upgrade:
        listener.listening = listening
        host = listening.getHost()

        def take_over(transport):
            listener.feed = _EventFeed(listener, transport)
            return listener.feed

        data = {"port": listener.port, "hostname": host.hostname, "address": host.address}
        return Upgrade(data, take_over, listener.stop)

    def incoming(self, listener: _Listener, peer) -> StreamEnd:
        stream_id = next(self._ids)
        end = StreamEnd(on_lost=lambda: self._forget(stream_id))
        timer = self._clock.callLater(ACCEPT_TIMEOUT, self.expire, stream_id)
        pending = _Pending(stream_id, end, peer, listener.port, timer)
        listener.pending[stream_id] = pending
        self._pending[stream_id] = (listener, pending)
        listener.feed.send(
            {"event": "incoming", "stream_id": stream_id, "peer": peer.hostname or peer.address,
             "address": peer.address, "port": listener.port}
        )
        return end

    def expire(self, stream_id: int) -> None:
        """Nobody accepted the stream (in time, or its listener went): reset it."""
        entry = self._forget(stream_id)
        if entry is not None:
            entry.end.abort()

    def _forget(self, stream_id: int):
        listener, pending = self._pending.pop(stream_id, (None, None))
        if pending is None:
            return None
        listener.pending.pop(stream_id, None)
        if pending.timer.active():
            pending.timer.cancel()
        return pending

    # -- accept ------------------------------------------------------------------------

    def accept(self, stream_id) -> Upgrade:
        if not isinstance(stream_id, int) or isinstance(stream_id, bool):
            raise InvalidArgument("stream_id must be the number from an \"incoming\" event")
        pending = self._forget(stream_id)
        if pending is None:
            raise NotFound(
                f"no incoming stream {stream_id} waits to be accepted",
                hint=f"Accept within {ACCEPT_TIMEOUT:g} s of the event, on a new control connection, once.",
            )
        peer = pending.peer
        data = {"stream_id": stream_id, "peer": peer.hostname or peer.address, "address": peer.address,
                "port": pending.port}
        return Upgrade(data, pending.end.attach, pending.end.abort)
