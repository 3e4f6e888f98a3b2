"""
The sender's side of one item on a stream (ports 1001 and 1002), and the
peers the mail workers reach.

:class:`StreamCarrier` is the outbox's :class:`~pilotproto.interfaces.IItemCarrier`:
it dials the peer's port, writes the header line and the body, half-closes,
and reads the receiver's one-line answer (:func:`~pilotproto.node.inbox.parse_reply`).
The whole exchange has a deadline on the injected clock, so a peer that
goes quiet mid-way is a failure the outbox retries, not a hang.

:class:`MailPeers` is the boss's adapter of trust and virtual ports to
:class:`~pilotproto.interfaces.IMailPeers`.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from ..common.wiring import check_provides
from ..errors import PilotError, ProtocolError, Timeout
from ..interfaces import IItemCarrier, IMailPeers
from .inbox import MAX_HEADER_LINE, encode_reply, parse_reply

#: seconds one delivery may take, the dial (lookup, tunnel handshake, accept) included
DELIVERY_TIMEOUT = 60.0


class StreamEnded(PilotError):
    """The stream ended before the receiver answered."""

    code = "connection_lost"
    hint = "The outbox tries again by itself."


@implementer(IHalfCloseableProtocol)
class SendOne(Protocol):
    """Writes ``payload`` (header line and body), then waits for the answer line; fires ``answered``."""

    def __init__(self, payload: bytes, answered: defer.Deferred):
        self._payload = payload
        self._answered = answered
        self._buffer = b""

    def connectionMade(self):
        self.transport.write(self._payload)
        self.transport.loseWriteConnection()

    def dataReceived(self, data):
        if self._answered.called:
            return
        self._buffer += data
        line, found, _ = self._buffer.partition(b"\n")
        if found:
            try:
                self._answered.callback(parse_reply(line))
            except PilotError as e:
                self._answered.errback(e)
            self.transport.loseConnection()
        elif len(self._buffer) > MAX_HEADER_LINE:
            self._answered.errback(ProtocolError("the receiver's answer is too long"))
            self.transport.abortConnection()

    def readConnectionLost(self):
        self.transport.loseConnection()

    def writeConnectionLost(self):
        """Our half-close went out; the answer comes on the read side."""

    def connectionLost(self, reason=None):
        if not self._answered.called:
            self._answered.errback(StreamEnded())

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()


def encode_item(header: dict, data: bytes) -> bytes:
    return encode_reply(header) + data


@implementer(IItemCarrier)
class StreamCarrier:
    """Delivers items over streams dialled through ``peers`` (IMailPeers); deadlines on ``clock``."""

    def __init__(self, clock, peers, timeout: float = DELIVERY_TIMEOUT):
        self._clock = clock
        self._peers = check_provides(peers, IMailPeers, "StreamCarrier.peers")
        self.timeout = timeout

    def deliver(self, address, port, header, data) -> defer.Deferred:
        protocols = []

        def cancel(d):
            for protocol in protocols:
                protocol.abort()

        answered = defer.Deferred(cancel)

        def build():
            protocol = SendOne(encode_item(header, data), answered)
            protocols.append(protocol)
            return protocol

        dialled = self._peers.dial(address, port, Factory.forProtocol(build))

        def failed(failure):
            if not answered.called:
                answered.errback(failure)

        dialled.addErrback(failed)

        def timed_out(failure):
            failure.trap(defer.CancelledError, defer.TimeoutError)
            dialled.cancel()
            raise Timeout(f"{address} did not answer on port {port} within {self.timeout:g} s")

        answered.addTimeout(self.timeout, self._clock)
        return answered.addErrback(timed_out)


@implementer(IMailPeers)
class MailPeers:
    """Trust (who may we send to) and ports (dialling) as the mail workers need them."""

    def __init__(self, trust, directory, ports):
        self._trust = trust
        self._directory = directory
        self._ports = ports

    def trusted_peers(self) -> list[dict]:
        # The key (base64) too: store-and-forward seals to it (node/sealed.py).
        return [{"hostname": p["hostname"], "address": p["address"], "public_key": p.get("public_key")}
                for p in self._trust.trusted()]

    def lookup(self, target):
        return defer.maybeDeferred(self._directory.lookup, target)

    def dial(self, target, port, factory):
        return self._ports.dial(target, port, factory)
