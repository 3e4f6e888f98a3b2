"""
Streams through the local daemon, for Twisted code in another process.

``DaemonNode`` has the ``dial``/``listen`` half of ``PilotNode``'s interface,
so the ``pilot:`` endpoints (and ``twistd web --listen pilot:80``) work in a
process that runs no node of its own: each stream is a control connection
upgraded to a raw pipe (``connect``, or ``listen`` + ``accept``; see
``docs/control.md``).  The protocol runs on the UNIX socket itself, behind a
thin wrapper whose ``getPeer``/``getHost`` name pilot addresses.
"""

from __future__ import annotations

import json
import os

from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IListeningPort,
    IPushProducer,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from ..errors import NotRunning, PilotError, ProtocolError
from ..common.home import CONTROL_SOCKET
from ..common.names import check_port
from ..streams.transport import PilotAddress
from .server import MAX_RESPONSE_LINE

log = Logger()


@implementer(ITransport, IConsumer, IPushProducer)
class PipeTransport:
    """An upgraded control connection, seen by a protocol as a stream to a pilot peer."""

    def __init__(self, transport, host: PilotAddress, peer: PilotAddress):
        self._transport = transport
        self._host = host
        self._peer = peer

    def __getattr__(self, name):
        return getattr(self._transport, name)

    def write(self, data):
        self._transport.write(data)

    def writeSequence(self, data):
        self._transport.writeSequence(data)

    def loseConnection(self):
        self._transport.loseConnection()

    def loseWriteConnection(self):
        self._transport.loseWriteConnection()

    def abortConnection(self):
        self._transport.abortConnection()

    def getPeer(self) -> PilotAddress:
        return self._peer

    def getHost(self) -> PilotAddress:
        return self._host

    def registerProducer(self, producer, streaming):
        self._transport.registerProducer(producer, streaming)

    def unregisterProducer(self):
        self._transport.unregisterProducer()

    def pauseProducing(self):
        self._transport.pauseProducing()

    def resumeProducing(self):
        self._transport.resumeProducing()

    def stopProducing(self):
        self._transport.stopProducing()

    # A UNIX socket has no Nagle to switch off; protocols that ask get the stream's answers.
    def getTcpNoDelay(self):
        return True

    def setTcpNoDelay(self, enabled):
        """Not applicable: there is no TCP socket to tune."""

    def getTcpKeepAlive(self):
        return False

    def setTcpKeepAlive(self, enabled):
        """Not applicable: the session has its own keepalives."""


@implementer(IHalfCloseableProtocol)
class ControlLink(Protocol):
    """
    One control connection: a request line, its answer, then what the answer
    made of the connection: a pipe for an application protocol
    (:meth:`pipe_to`) or a feed of event lines (:meth:`events_to`).

    ``answered`` fires with ``(link, data)`` on ``ok`` and fails with the
    daemon's error rebuilt as a PilotError.
    """

    def __init__(self, request: dict):
        self._request = request
        self.answered = defer.Deferred()
        self._buffer = b""
        self._app = None
        self._on_event = None
        self._on_lost = None

    def connectionMade(self):
        self.transport.write(json.dumps(self._request, separators=(",", ":")).encode("utf-8") + b"\n")

    def dataReceived(self, data):
        if self._app is not None:
            self._app.dataReceived(data)
            return
        self._buffer += data
        if not self.answered.called:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                if len(self._buffer) > MAX_RESPONSE_LINE:
                    self._fail(ProtocolError("the daemon's answer is too long"))
                return
            line, self._buffer = self._buffer[:newline], self._buffer[newline + 1 :]
            self._answer(line)
        elif self._on_event is not None:
            self._events()

    def _answer(self, line: bytes):
        try:
            doc = json.loads(line.decode("utf-8"))
        except ValueError:
            self._fail(ProtocolError("the daemon answered with a line that is not JSON"))
            return
        if not isinstance(doc, dict) or doc.get("status") not in ("ok", "error"):
            self._fail(ProtocolError("the daemon's answer has no status"))
        elif doc["status"] == "error":
            self._fail(PilotError.from_dict(doc))
        else:
            data = doc.get("data") if isinstance(doc.get("data"), dict) else {}
            self.answered.callback((self, data))

    def _fail(self, error: PilotError):
        self.transport.loseConnection()
        if not self.answered.called:
            self.answered.errback(error)

    def pipe_to(self, protocol, host: PilotAddress, peer: PilotAddress):
        """From now on the connection's bytes are ``protocol``'s."""
        self._app = protocol
        protocol.makeConnection(PipeTransport(self.transport, host, peer))
        rest, self._buffer = self._buffer, b""
        if rest:
            protocol.dataReceived(rest)

    def events_to(self, on_event, on_lost):
        """From now on each line is an event: ``on_event(dict)``; ``on_lost()`` at the end."""
        self._on_event = on_event
        self._on_lost = on_lost
        self._events()

    def _events(self):
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                return
            line, self._buffer = self._buffer[:newline], self._buffer[newline + 1 :]
            try:
                event = json.loads(line.decode("utf-8"))
            except ValueError:
                log.error("the daemon sent a listener event that is not JSON: {line!r}", line=line[:200])
                continue
            if isinstance(event, dict):
                self._on_event(event)

    def readConnectionLost(self):
        if self._app is not None:
            half = IHalfCloseableProtocol(self._app, None)
            if half is not None:
                half.readConnectionLost()
            else:
                self.transport.loseConnection()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self):
        half = IHalfCloseableProtocol(self._app, None) if self._app is not None else None
        if half is not None:
            half.writeConnectionLost()

    def connectionLost(self, reason=None):
        if not self.answered.called:
            self.answered.errback(
                NotRunning("the daemon closed the control connection before answering",
                           hint="It may be shutting down; check 'pilotctl daemon status'.")
            )
        if self._app is not None:
            self._app.connectionLost(reason)
        if self._on_lost is not None:
            self._on_lost()


@implementer(IListeningPort)
class DaemonListeningPort:
    """A ``listen`` connection to the daemon; closing it stops listening."""

    def __init__(self, link: ControlLink, host: PilotAddress):
        self._link = link
        self._host = host
        self._closed = defer.Deferred()

    def startListening(self):
        """Listening began when this object was made."""

    def stopListening(self):
        self._link.transport.loseConnection()
        return self._closed

    def getHost(self) -> PilotAddress:
        return self._host

    def _lost(self):
        if not self._closed.called:
            self._closed.callback(None)


class DaemonNode:
    """Dial and listen on virtual ports through the daemon whose home is ``home``."""

    def __init__(self, reactor, home: str):
        self._reactor = reactor
        self.home = home
        self.socket_path = os.path.join(home, CONTROL_SOCKET)
        self._ids = 0

    def _open(self, cmd: str, args: dict) -> defer.Deferred:
        """A control connection carrying one request; fires with ``(link, data)`` on ok."""
        self._ids += 1
        link = ControlLink({"id": self._ids, "cmd": cmd, "args": args})
        endpoint = UNIXClientEndpoint(self._reactor, self.socket_path)
        d = endpoint.connect(Factory.forProtocol(lambda: link))

        def not_running(failure):
            failure.trap(ConnectError)
            raise NotRunning(f"no pilot daemon answers at {self.socket_path}")

        d.addErrback(not_running)
        d.addCallback(lambda _: link.answered)
        return d

    @defer.inlineCallbacks
    def dial(self, target: str, port: int, factory):
        """Open a stream to ``port`` on ``target``; fires with the connected protocol."""
        check_port(port)
        link, data = yield self._open("connect", {"target": target, "port": port})
        peer = PilotAddress(data.get("peer"), data.get("address", ""), port)
        protocol = factory.buildProtocol(peer)
        if protocol is None:
            link.transport.abortConnection()
            raise PilotError("the protocol factory declined to build a protocol")
        link.pipe_to(protocol, PilotAddress(None, "", 0), peer)
        return protocol

    @defer.inlineCallbacks
    def listen(self, port: int, factory):
        """Run ``factory``'s protocols on streams peers open to ``port``; fires with an IListeningPort."""
        check_port(port)
        link, data = yield self._open("listen", {"port": port})
        host = PilotAddress(data.get("hostname"), data.get("address", ""), port)
        listening = DaemonListeningPort(link, host)
        factory.doStart()

        def lost():
            factory.doStop()
            listening._lost()

        link.events_to(lambda event: self._incoming(event, factory, host), lost)
        return listening

    def _incoming(self, event: dict, factory, host: PilotAddress) -> None:
        if event.get("event") != "incoming":
            return
        d = self._open("accept", {"stream_id": event.get("stream_id")})

        def accepted(result):
            link, data = result
            peer = PilotAddress(data.get("peer"), data.get("address", ""), 0)
            protocol = factory.buildProtocol(peer)
            if protocol is None:
                link.transport.abortConnection()
                return
            link.pipe_to(protocol, host, peer)

        def failed(failure):
            failure.trap(PilotError)
            log.warn("could not accept an incoming stream: {e}", e=failure.getErrorMessage())

        d.addCallbacks(accepted, failed)
