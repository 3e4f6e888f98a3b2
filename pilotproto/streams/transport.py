"""
A stream as a Twisted transport, so any :class:`~twisted.internet.protocol.Protocol`
runs over the overlay unchanged.

:class:`StreamTransport` is an ``ITransport`` (write, loseConnection,
getPeer/getHost), an ``IPushProducer`` (the protocol can pause the data it
receives: the stream then stops granting flow-control credit, so the peer
stops sending), an ``IConsumer`` (a producer registered with it is paused
while the stream's send buffer is full), and supports half-close for
protocols that provide ``IHalfCloseableProtocol``.
"""

from __future__ import annotations

import attrs
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IPushProducer,
    ITCPTransport,
    ITransport,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from .receiving import READING
from .handler import IStreamHandler


@attrs.frozen
class PilotAddress:
    """One end of a stream: a node (its hostname, if known, and its pilot address) and a virtual port."""

    hostname: str | None
    address: str
    port: int

    def __str__(self) -> str:
        return f"{self.hostname or self.address}:{self.port}"

    @property
    def host(self) -> str:
        """The pilot address, where code written for ``IPv4Address`` reads ``host`` (WSGI's ``REMOTE_ADDR``)."""
        return self.address


@implementer(ITransport, ITCPTransport, IPushProducer, IConsumer, IStreamHandler)
class StreamTransport:
    def __init__(self, stream, host: PilotAddress, peer: PilotAddress):
        self.stream = stream
        self._host = host
        self._peer = peer
        self.protocol = None
        self.connected = True
        self.disconnecting = False
        self.disconnected = False
        self.write_closed = False
        self.read_closed = False
        self.producer = None
        self._streaming = False
        self._pull_call = None
        #: called with no arguments when the peer accepts a stream this side opened
        self.on_accepted = None

    def __repr__(self):
        return f"<StreamTransport {self._host} -> {self._peer} stream {self.stream.id}>"

    # -- ITransport ------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.write_closed or self.disconnected:
            return  # as with TCP, writes after loseConnection are dropped
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        self.stream.write(data)

    def writeSequence(self, data) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Close after every byte written so far has been delivered and acknowledged."""
        if self.disconnecting or self.disconnected:
            return
        self.disconnecting = True
        self.write_closed = True
        self.stream.close_write()

    def loseWriteConnection(self) -> None:
        """Half-close: send FIN, keep reading."""
        if self.write_closed or self.disconnected:
            return
        self.write_closed = True
        self.stream.close_write()

    def abortConnection(self) -> None:
        if self.disconnected:
            return
        self.stream.reset()
        self._lost(ConnectionAborted())

    def getPeer(self) -> PilotAddress:
        return self._peer

    def getHost(self) -> PilotAddress:
        return self._host

    # ITCPTransport odds and ends a protocol may call
    def getTcpNoDelay(self):
        return True

    def setTcpNoDelay(self, enabled):
        """Not applicable: there is no TCP socket to tune."""

    def getTcpKeepAlive(self):
        return False

    def setTcpKeepAlive(self, enabled):
        """Not applicable: the session has its own keepalives."""

    # -- IPushProducer: the data this transport delivers to the protocol ----------

    def pauseProducing(self) -> None:
        self.stream.pause_reading()

    def resumeProducing(self) -> None:
        if not self.disconnected:
            self.stream.resume_reading()

    def stopProducing(self) -> None:
        self.loseConnection()

    # -- IConsumer: data a producer writes through this transport -------------------

    def registerProducer(self, producer, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError(f"{self!r} already has a producer: {self.producer!r}")
        if self.disconnected:
            producer.stopProducing()
            return
        self.producer = producer
        self._streaming = bool(streaming)
        if self._streaming:
            if self.stream.writing_paused:
                producer.pauseProducing()
        else:
            self._pull()

    def unregisterProducer(self) -> None:
        self.producer = None
        self._cancel_pull()

    def _pull(self) -> None:
        """A pull producer writes when asked: ask once per reactor turn while the buffer has room."""
        self._pull_call = None
        producer = self.producer
        if producer is None or self._streaming or self.disconnected or self.stream.writing_paused:
            return
        producer.resumeProducing()
        if self.producer is producer and not self.stream.writing_paused and self._pull_call is None:
            self._pull_call = self.stream._conn._clock.callLater(0, self._pull)

    def _cancel_pull(self) -> None:
        if self._pull_call is not None and self._pull_call.active():
            self._pull_call.cancel()
        self._pull_call = None

    # -- IStreamHandler ----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def eof_received(self) -> None:
        self.read_closed = True
        half = IHalfCloseableProtocol(self.protocol, None)
        if half is not None:
            half.readConnectionLost()
        else:
            self.loseConnection()

    def accepted(self) -> None:
        if self.on_accepted is not None:
            self.on_accepted()

    def pause_writing(self) -> None:
        if self.producer is not None and self._streaming:
            self.producer.pauseProducing()

    def resume_writing(self) -> None:
        if self.producer is None:
            return
        if self._streaming:
            self.producer.resumeProducing()
        elif self._pull_call is None:
            self._pull()

    def send_finished(self) -> None:
        if self.disconnecting and self.stream.receiving in READING:
            # loseConnection closes both directions, as with TCP.
            self.stream.reset()
            self._lost(ConnectionDone())
            return
        half = IHalfCloseableProtocol(self.protocol, None)
        if half is not None and not self.disconnecting:
            half.writeConnectionLost()

    def stream_closed(self) -> None:
        self._lost(ConnectionDone())

    def stream_failed(self, reason) -> None:
        self._lost(reason)

    def _lost(self, reason) -> None:
        if self.disconnected:
            return
        self.disconnected = True
        self.connected = False
        self.disconnecting = False
        self._cancel_pull()
        producer, self.producer = self.producer, None
        if producer is not None:
            producer.stopProducing()
        self.protocol.connectionLost(Failure(reason))


def connect_protocol(stream, protocol, host_address: PilotAddress, peer_address: PilotAddress) -> StreamTransport:
    """Run ``protocol`` on ``stream``: ``connectionMade`` now, then data as it arrives."""
    transport = StreamTransport(stream, host_address, peer_address)
    transport.protocol = protocol
    protocol.makeConnection(transport)
    if not transport.disconnected:
        stream.set_handler(transport)
    return transport
