"""
Virtual ports: who listens where on this node, and dialling out.

A stream names the 16-bit port it is for when it opens; ``PortTable``
hands it to the factory listening there (a refusal goes back to the
dialler as ``ConnectionRefused`` when nobody does).  ``dial`` opens a stream
and, like TCP's connect, fires once the peer has accepted it, with the
protocol already connected.
"""

from __future__ import annotations

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..common import timeouts
from ..common.names import check_port
from ..errors import AlreadyRunning, InvalidArgument, PilotError, Timeout
from .failures import as_connect_error, as_listen_error
from ..interfaces import ISessions, IStreamAcceptor
from ..streams.transport import PilotAddress, connect_protocol

@implementer(IListeningPort)
@attrs.define(eq=False)
class PilotListeningPort:
    table: "PortTable"
    port: int
    factory: object

    def startListening(self):
        """Listening began when the port table made this object."""

    def stopListening(self):
        self.table.stop_listening(self.port, self)
        return defer.succeed(None)

    def getHost(self):
        return self.table.host_address(self.port)


class _AwaitAccept:
    """Holds a dialled stream until the peer accepts (or refuses) it."""

    def __init__(self, deferred, accepted):
        self._deferred = deferred
        self._accepted = accepted

    def accepted(self):
        if not self._deferred.called:
            self._accepted()

    def stream_failed(self, reason):
        if not self._deferred.called:
            self._deferred.errback(reason)

    # Nothing reaches these before acceptance; data stays queued in the stream.
    def data_received(self, data):
        """Not delivered before acceptance."""

    def eof_received(self):
        """Not delivered before acceptance."""

    def pause_writing(self):
        """Nothing written yet."""

    def resume_writing(self):
        """Nothing written yet."""

    def send_finished(self):
        """Nothing written yet."""

    def stream_closed(self):
        """Reported to the protocol once it is connected."""


@implementer(IStreamAcceptor)
@attrs.define(eq=False)
class PortTable:
    """Who listens on which virtual port of the node ``hostname``/``address``."""

    hostname: str
    address: str
    #: times out a dial that is never answered (``IReactorTime``)
    clock: object
    _sessions: object = attrs.field(default=None, init=False)
    _listeners: dict = attrs.field(factory=dict, init=False)
    _datagram_handlers: dict = attrs.field(factory=dict, init=False)

    log = Logger()

    def wire(self, sessions) -> None:
        """The sessions streams are dialled through (they call us back for incoming ones)."""
        if not ISessions.providedBy(sessions):
            raise TypeError(f"{sessions!r} does not provide ISessions")
        self._sessions = sessions

    def host_address(self, port: int) -> PilotAddress:
        return PilotAddress(self.hostname, self.address, port)

    # -- listening ---------------------------------------------------------------

    def listen(self, port: int, factory) -> PilotListeningPort:
        """Listen on ``port``; raises CannotListenError (a PilotError too) if it cannot."""
        try:
            check_port(port)
        except PilotError as e:
            raise as_listen_error(port, e) from None
        if port in self._listeners:
            raise as_listen_error(
                port, AlreadyRunning(f"something already listens on port {port}", hint="Choose another port.")
            )
        listening = PilotListeningPort(self, port, factory)
        self._listeners[port] = listening
        factory.doStart()
        return listening

    def stop_listening(self, port: int, listening=None) -> None:
        current = self._listeners.get(port)
        if current is not None and (listening is None or current is listening):
            del self._listeners[port]
            current.factory.doStop()

    def listening_ports(self) -> list[int]:
        return sorted(self._listeners)

    def stream_opened(self, state, stream, port: int) -> bool:
        """A peer opened a stream to ``port``: run the listener's protocol on it."""
        listening = self._listeners.get(port)
        if listening is None:
            return False
        peer = PilotAddress(state.hostname, str(state.address), 0)
        protocol = listening.factory.buildProtocol(peer)
        if protocol is None:
            return False
        connect_protocol(stream, protocol, self.host_address(port), peer)
        return True

    # -- dialling --------------------------------------------------------------------

    def dial(self, target: str, port: int, factory) -> defer.Deferred:
        """Open a stream to ``target``'s ``port``; fires with the connected protocol.

        Fails the way Twisted's client endpoints do (:mod:`pilotproto.node.failures`):
        refused, unknown peer, timeout are ConnectError subclasses that are
        PilotErrors too."""
        check_port(port)
        dialling = self._dial(target, port, factory)
        # Lookup, tunnel handshake and the peer's accept, all in one bound: a
        # peer that never answers (or an answer lost for good) is a timeout,
        # never a connect that waits forever.
        dialling.addTimeout(timeouts.STREAM_CONNECT, self.clock, onTimeoutCancel=_dial_timed_out(target, port))
        return dialling.addErrback(_connect_failed)

    @defer.inlineCallbacks
    def _dial(self, target: str, port: int, factory):
        state, stream = yield self._sessions.open_stream(target, port)
        peer = PilotAddress(state.hostname, str(state.address), port)
        accepted = defer.Deferred(lambda d: stream.reset(0))
        stream.set_handler(_AwaitAccept(accepted, lambda: accepted.callback(None)))
        yield accepted
        protocol = factory.buildProtocol(peer)
        if protocol is None:
            stream.reset(0)
            raise InvalidArgument("the protocol factory declined to build a protocol")
        connect_protocol(stream, protocol, self.host_address(0), peer)
        return protocol

    # -- datagrams -------------------------------------------------------------------

    def on_datagrams(self, port: int, handler) -> None:
        """Call ``handler(peer_state, data)`` for every datagram to ``port`` (None: stop)."""
        check_port(port)
        if handler is None:
            self._datagram_handlers.pop(port, None)
        else:
            self._datagram_handlers[port] = handler

    def datagram_received(self, state, port: int, data: bytes) -> None:
        handler = self._datagram_handlers.get(port)
        if handler is not None:
            handler(state, data)


def _dial_timed_out(target: str, port: int):
    def timed_out(result, seconds):
        if isinstance(result, Failure) and result.check(defer.CancelledError):
            return Failure(Timeout(
                f"{target} did not accept a stream on port {port} within {seconds:g} s",
                hint=f"Check that {target} is up and trusts you: pilotctl ping {target}",
            ))
        return result

    return timed_out


def _connect_failed(failure):
    converted = as_connect_error(failure.value)
    return failure if converted is failure.value else Failure(converted)
