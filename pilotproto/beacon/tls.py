"""
The beacon's TCP/TLS transport, for nodes whose networks block UDP.

A TLS connection carries the same datagrams as the UDP port (beacon
messages and relay frames; STUN stays on UDP, where it means something),
each with a 2-byte length prefix (:mod:`pilotproto.wire.framing`), and
:meth:`BeaconServer.datagram_received` handles them unchanged: the same
signatures, nonces, replay windows and visibility rules.

A node registered over TLS is "at" a :class:`StreamEndpoint`: its TCP peer
address plus the number of the connection, which no UDP source can equal
(attrs equality compares classes), so a datagram for it can never leave by
UDP to a look-alike address.  The endpoint carries the connection it names,
so replies, relayed frames and mail pushes find their way without a table.
Datagrams for one connection are batched (:class:`~pilotproto.wire.framing.FrameWriter`):
the first after a quiet spell goes at once, the ones that follow it in the
same reactor turn go together in one TLS write.
When the connection drops, datagrams for that endpoint are dropped and
counted; the registration is not removed at once but expires like any other
(a node that reconnects re-registers, or moves its record with its next
keepalive, within seconds).
"""

from __future__ import annotations

import collections
import itertools

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto
from twisted.application import service
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from ..errors import InvalidArgument
from ..wire import DecodeError, Endpoint, is_stun
from ..wire.framing import FrameDecoder, FrameWriter

#: a connection that carried nothing for this long is closed (nodes send a
#: keepalive every 5 s, so only a dead or idle peer gets here)
IDLE_TIMEOUT = 60.0
#: frames this beacon accepts: well above any pilot datagram (~1.5 kB)
MAX_FRAME = 4096
#: open connections accepted in all and from one address: a connection is
#: state a stranger makes before proving anything, so it is bounded
MAX_CONNECTIONS = 10_000
MAX_CONNECTIONS_PER_ADDRESS = 64


@attrs.frozen(order=True)
class StreamEndpoint(Endpoint):
    """Where a node connected over TLS is: its TCP peer and the connection."""

    stream: int = attrs.field(kw_only=True)
    sink: "BeaconStreamProtocol" = attrs.field(kw_only=True, eq=False, order=False, repr=False)

    def __str__(self) -> str:
        return f"tls:{Endpoint.__str__(self)}#{self.stream}"


def send_datagram(server, data: bytes, destination: Endpoint) -> None:
    """Send one datagram from the beacon: down a node's stream, or by UDP."""
    if isinstance(destination, StreamEndpoint):
        destination.sink.deliver(data)
    elif server.send is not None:
        server.send(data, destination)
    else:
        server.counters["dropped_no_transport"] += 1


@implementer(IPushProducer)
class BeaconStreamProtocol(Protocol, TimeoutMixin):
    """One node's TLS connection: frames in to the server, frames out."""

    log = Logger()

    def __init__(self, server, stream: int, clock=None):
        self.server = server
        self.stream = stream
        #: batches writes per reactor turn when set (None: one write per datagram)
        self.clock = clock
        self._writer: FrameWriter | None = None
        self.endpoint: StreamEndpoint | None = None
        self.open = False
        self.paused = False
        self._decoder = FrameDecoder(MAX_FRAME)

    def connectionMade(self):
        peer = self.transport.getPeer()
        self.endpoint = StreamEndpoint(peer.host, peer.port, stream=self.stream, sink=self)
        self.open = True
        call_soon = (lambda f: self.clock.callLater(0, f)) if self.clock is not None else None
        self._writer = FrameWriter(self.transport.write, call_soon)
        self.server.counters["tls_connections"] += 1
        # Datagram semantics downstream too: when the node reads slower than
        # we relay, frames are dropped (as a full socket buffer would) rather
        # than queued without bound.
        self.transport.registerProducer(self, True)
        self.setTimeout(IDLE_TIMEOUT)

    def dataReceived(self, data):
        try:
            frames = self._decoder.feed(data)
        except DecodeError:
            self.server.counters["tls_dropped_bad_framing"] += 1
            self.transport.loseConnection()
            return
        for frame in frames:
            self.resetTimeout()
            self._datagram(frame)

    def _datagram(self, frame: bytes) -> None:
        if is_stun(frame):
            # STUN reports UDP mappings; over TCP its answer would be a lie.
            self.server.counters["tls_dropped_stun"] += 1
            return
        self.server.counters["tls_datagrams"] += 1
        for data, destination in self.server.datagram_received(frame, self.endpoint, None):
            send_datagram(self.server, data, destination)

    def deliver(self, data: bytes) -> None:
        """A datagram for the node at the other end of this connection."""
        if not self.open:
            self.server.counters["tls_dropped_closed"] += 1
            return
        if self.paused:
            self.server.counters["tls_dropped_backpressure"] += 1
            return
        self._writer.send(data)

    def timeoutConnection(self):
        self.server.counters["tls_idle_closed"] += 1
        self.transport.abortConnection()

    def connectionLost(self, reason):
        self.open = False
        self.setTimeout(None)
        if self._writer is not None:
            self._writer.close()
        self.server.counters["tls_disconnections"] += 1
        factory = getattr(self, "factory", None)
        if factory is not None:
            factory.released(self)

    # IPushProducer: the transport tells us when its buffer is full.
    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False

    def stopProducing(self):
        self.open = False


class BeaconStreamFactory(Factory):
    def __init__(self, server, max_connections: int = MAX_CONNECTIONS, per_address: int = MAX_CONNECTIONS_PER_ADDRESS, clock=None):
        self.server = server
        #: the reactor, to batch each connection's writes per turn (None: unbatched)
        self.clock = clock
        self.max_connections = max_connections
        self.per_address = per_address
        self._serials = itertools.count(1)
        self._open: collections.Counter = collections.Counter()
        self._total = 0

    def buildProtocol(self, addr):
        host = getattr(addr, "host", None)
        if self._total >= self.max_connections or (host is not None and self._open[host] >= self.per_address):
            # None: Twisted closes the connection at once.
            self.server.counters["tls_refused_too_many"] += 1
            return None
        protocol = BeaconStreamProtocol(self.server, next(self._serials), self.clock)
        protocol.factory = self
        protocol.counted_host = host
        self._total += 1
        if host is not None:
            self._open[host] += 1
        return protocol

    def released(self, protocol) -> None:
        """``protocol``'s connection is gone: it no longer counts."""
        self._total -= 1
        host = protocol.counted_host
        if host is not None:
            self._open[host] -= 1
            if self._open[host] <= 0:
                del self._open[host]


def server_tls_options(cert_file: str, key_file: str) -> CertificateOptions:
    """TLS 1.2+ server options from PEM files; InvalidArgument if they are unusable.

    ``cert_file`` holds the beacon's certificate, optionally followed by the
    intermediates a client needs to reach its root."""
    try:
        with open(cert_file, "rb") as f:
            chain = x509.load_pem_x509_certificates(f.read())
        with open(key_file, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        options = CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(key),
            certificate=crypto.X509.from_cryptography(chain[0]),
            extraCertChain=[crypto.X509.from_cryptography(c) for c in chain[1:]],
            raiseMinimumTo=TLSVersion.TLSv1_2,
        )
        options.getContext()  # checks that the key belongs to the certificate
    except OSError as e:
        raise InvalidArgument(f"cannot read the beacon's TLS files: {e}", hint="Check --tls-cert and --tls-key.") from None
    except Exception as e:
        raise InvalidArgument(
            f"the beacon's TLS certificate or key is unusable: {e}",
            hint="--tls-cert takes a PEM certificate (chain), --tls-key its unencrypted PEM private key.",
        ) from None
    return options


class TLSListenerService(service.Service):
    """The beacon's TLS port; ``port`` is the bound port once started."""

    def __init__(self, reactor, server, interface: str, port: int, options: CertificateOptions):
        self._reactor = reactor
        self.factory = BeaconStreamFactory(server, clock=reactor)
        self._interface = interface
        self._port_number = port
        self._options = options
        self._listening = None

    def startService(self):
        super().startService()
        self._listening = self._reactor.listenSSL(self._port_number, self.factory, self._options, interface=self._interface)

    def stopService(self):
        super().stopService()
        listening, self._listening = self._listening, None
        if listening is not None:
            return listening.stopListening()

    @property
    def port(self) -> int:
        return self._listening.getHost().port
