"""
The Twisted client of the daemon's control socket.

:class:`ControlLink` is one control connection: a request line, its answer,
then (after an upgrading command) whatever the answer made of the
connection, piped to an application protocol behind :class:`PipeTransport`
whose ``getHost``/``getPeer`` name pilot addresses.  :class:`ControlEndpoint`
wraps one upgrading request as an ordinary ``IStreamClientEndpoint`` whose
``connect`` fires once the daemon said ok, so ``ClientService`` and friends
can use it; :func:`call` runs one plain command.  The wire format is
:mod:`pilotproto.control.codec`'s, shared with the daemon and the blocking
client.  :class:`~pilotproto.control.daemon.DaemonNode` is built on these.
"""

from __future__ import annotations

import errno
import os
from typing import Callable

from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IPushProducer,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from ..errors import NotRunning, PermissionDenied, PilotError, Timeout
from ..streams.transport import PilotAddress
from .codec import BadResponse, decode_response, encode_request, split_line
from .piping import widen_pipe


@implementer(ITransport, IConsumer, IPushProducer)
class PipeTransport:
    """An upgraded control connection, seen by a protocol as a stream to a pilot peer."""

    def __init__(self, transport, host: PilotAddress, peer: PilotAddress):
        self._transport = transport
        self._host = host
        self._peer = peer

    def __getattr__(self, name):
        # disconnecting, connected, producer, ...: the UNIX connection's own.
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
    One control connection carrying one request.

    ``answered`` fires with the ok data, or fails with the daemon's error
    rebuilt as a PilotError (cancelling it drops the connection).  After an
    ok the connection's further bytes wait for :meth:`pipe_to`.
    """

    def __init__(self, request_line: bytes):
        self._request_line = request_line
        self.answered = defer.Deferred(lambda d: self._drop())
        self._buffer = b""
        self._app = None

    def connectionMade(self):
        self.transport.write(self._request_line)

    def dataReceived(self, data):
        if self._app is not None:
            self._app.dataReceived(data)
            return
        self._buffer += data
        if self.answered.called:
            return  # stream bytes, kept for pipe_to
        try:
            found = split_line(self._buffer)
            if found is None:
                return
            line, self._buffer = found
            response = decode_response(line)
        except BadResponse as e:
            self._fail(e)
            return
        if response.ok:
            self.answered.callback(response.data)
        else:
            self._fail(response.error)

    def _fail(self, error: PilotError):
        self._drop()
        if not self.answered.called:
            self.answered.errback(error)

    def _drop(self):
        if self.transport is not None:
            self.transport.abortConnection()

    def pipe_to(self, protocol, host: PilotAddress, peer: PilotAddress):
        """From now on the connection's bytes are ``protocol``'s."""
        self._app = protocol
        widen_pipe(self.transport)
        protocol.makeConnection(PipeTransport(self.transport, host, peer))
        rest, self._buffer = self._buffer, b""
        if rest:
            protocol.dataReceived(rest)

    def readConnectionLost(self):
        half = IHalfCloseableProtocol(self._app, None) if self._app is not None else None
        if half is not None:
            half.readConnectionLost()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self):
        half = IHalfCloseableProtocol(self._app, None) if self._app is not None else None
        if half is not None:
            half.writeConnectionLost()

    def connectionLost(self, reason=None):
        if not self.answered.called:
            self.answered.errback(NotRunning(
                "the daemon closed the control connection before answering",
                hint="It may be shutting down; check 'pilotctl daemon status'."))
        if self._app is not None:
            self._app.connectionLost(reason)


@implementer(IHalfCloseableProtocol)
class PipedProtocol(Protocol):
    """Runs ``protocol`` on a connection that is already a pipe (a socket adopted
    after a blocking exchange), behind a :class:`PipeTransport`."""

    def __init__(self, protocol, host: PilotAddress, peer: PilotAddress):
        self.app = protocol
        self._host = host
        self._peer = peer

    def connectionMade(self):
        widen_pipe(self.transport)
        self.app.makeConnection(PipeTransport(self.transport, self._host, self._peer))

    def dataReceived(self, data):
        self.app.dataReceived(data)

    def readConnectionLost(self):
        half = IHalfCloseableProtocol(self.app, None)
        if half is not None:
            half.readConnectionLost()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self):
        half = IHalfCloseableProtocol(self.app, None)
        if half is not None:
            half.writeConnectionLost()

    def connectionLost(self, reason=None):
        self.app.connectionLost(reason)


def open_link(reactor, socket_path: str, home: str, cmd: str, args: dict, timeout: float) -> defer.Deferred:
    """A connection carrying ``cmd``; fires with ``(link, data)`` once the daemon said ok.

    NotRunning when no daemon answers, Timeout after ``timeout`` seconds
    without an answer, or the daemon's own error."""
    link = ControlLink(encode_request(1, cmd, args))
    endpoint = UNIXClientEndpoint(reactor, socket_path, timeout=max(1, int(timeout)))
    d = endpoint.connect(Factory.forProtocol(lambda: link))

    def not_running(failure):
        failure.trap(ConnectError)
        if getattr(failure.value, "osError", None) in (errno.EACCES, errno.EPERM):
            # Another user's daemon (or its 0700 home): docs/control.md's permission_denied.
            raise PermissionDenied(f"cannot open the control socket {socket_path}: permission denied",
                                   hint="Run as the user that started the daemon (the socket is private to that user).")
        stale = " (stale control socket)" if os.path.lexists(socket_path) else ""
        raise NotRunning(f"no pilot daemon is running for {home}{stale}")

    def timed_out(failure):
        failure.trap(defer.TimeoutError)
        raise Timeout(f"the daemon did not answer {cmd!r} within {timeout:g} s",
                      hint="Check 'pilotctl daemon status' and the daemon log.")

    d.addErrback(not_running)
    d.addCallback(lambda _: link.answered)
    d.addCallback(lambda data: (link, data))
    d.addTimeout(timeout, reactor)
    d.addErrback(timed_out)
    return d


def call(reactor, socket_path: str, home: str, cmd: str, args: dict, timeout: float) -> defer.Deferred:
    """Run one plain command; fires with its data."""
    d = open_link(reactor, socket_path, home, cmd, args, timeout)

    def done(result):
        link, data = result
        link.transport.loseConnection()
        return data

    return d.addCallback(done)


@implementer(IStreamClientEndpoint)
class ControlEndpoint:
    """
    An upgrading command as a client endpoint: ``connect(factory)`` sends
    ``cmd`` and, once the daemon said ok, runs ``factory``'s protocol on the
    connection; ``addresses(data)`` gives its ``(host, peer)`` from the ok data.
    """

    def __init__(self, reactor, socket_path: str, home: str, cmd: str, args: dict, timeout: float,
                 addresses: Callable[[dict], tuple[PilotAddress, PilotAddress]]):
        self._reactor = reactor
        self._socket_path = socket_path
        self._home = home
        self._cmd = cmd
        self._args = args
        self._timeout = timeout
        self._addresses = addresses

    def __repr__(self):
        return f"<ControlEndpoint {self._cmd} {self._args} at {self._socket_path}>"

    def connect(self, protocol_factory) -> defer.Deferred:
        d = open_link(self._reactor, self._socket_path, self._home, self._cmd, self._args, self._timeout)
        return d.addCallback(self._upgraded, protocol_factory)

    def _upgraded(self, result, protocol_factory):
        link, data = result
        host, peer = self._addresses(data)
        protocol = protocol_factory.buildProtocol(peer)
        if protocol is None:
            link.transport.abortConnection()
            raise PilotError("the protocol factory declined to build a protocol")
        link.pipe_to(protocol, host, peer)
        return protocol
