"""
The node's TCP/TLS link to its beacon, kept up by a ``ClientService``.

::

    start() --> ClientService --connect--> VerifiedTLSEndpoint: TCP, the TLS handshake,
                  ^      |                 the certificate check, within BEACON_TLS_CONNECT s
                  |      |-- failed: last_error, retry after retry_delay(n)
                  |      '-- verified: connected (listener.tls_link_up())
                  '------------- lost: retry after retry_delay(1)
    stop() --> closes the connection; the Deferred fires once it has closed

The link carries whole datagrams (:mod:`pilotproto.wire.framing`); what
they mean is the node's business (``listener.tls_datagram_received``).
A connection counts as up only after the TLS handshake *and* the
certificate check: against the system's trust roots plus ``--beacon-ca``,
for the beacon's hostname or IP address (checked by ``service_identity``),
or, with ``--beacon-fingerprint``, against exactly one pinned certificate.
Nothing is sent before that, and a certificate that fails is a
:class:`BeaconUntrusted` error in the log and in ``last_error``; the link
keeps retrying (1 s, doubling to 30 s, ±20 %) but never falls back to an
unchecked connection.

Why the check is in the endpoint rather than in ClientService's
``prepareConnection``: a connection that ``prepareConnection`` rejects
stays open, and its closing reaches ClientService as a disconnection it has
no transition for (Twisted 26: ``NoTransition`` in ``Waiting``; in
``Connecting`` too, when the handshake itself fails).  So
:class:`VerifiedTLSEndpoint` fires only once the certificate has passed, a
refused certificate is a failed connection attempt, ClientService never
sees the protocol of a connection it must not use, and its count of failed
attempts (our backoff) grows as it should.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import random

from cryptography import x509
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from twisted.application.internet import ClientService

# Public as a parameter type of optionsForClientTLS, but only importable from here.
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    TimeoutError,
    gatherResults,
    succeed,
)
from twisted.internet.endpoints import SSL4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError, DNSLookupError, NoRouteError
from twisted.internet.interfaces import IHandshakeListener, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import (
    CertificateOptions,
    TLSVersion,
    optionsForClientTLS,
    platformTrust,
)
from twisted.logger import Logger
from zope.interface import implementer

from ..common.timeouts import BEACON_TLS_CONNECT
from ..common.wiring import check_provides
from ..errors import InvalidArgument, PilotError, Unavailable
from ..wire import DecodeError
from ..wire.framing import FrameDecoder, FrameWriter
from .interfaces import ITLSLink, ITLSLinkListener

#: seconds before the first retry after a failure; doubled per failure in a row
FIRST_RETRY = 1.0
#: the longest wait between retries
MAX_RETRY = 30.0


class BeaconUntrusted(PilotError):
    """The beacon's TLS certificate is not trusted."""

    code = "beacon_untrusted"
    hint = "Pass --beacon-ca FILE (the CA that signed the beacon's certificate) or --beacon-fingerprint SHA256."


# -- certificate checks ---------------------------------------------------------


@implementer(IOpenSSLTrustRoot)
class SystemAndFileTrust:
    """The platform's trust roots plus the CA certificates of one PEM file."""

    def __init__(self, ca_file: str | None = None):
        self.ca_file = ca_file
        self._certs = load_ca_file(ca_file) if ca_file else []

    def _addCACertsToContext(self, context):
        platformTrust()._addCACertsToContext(context)
        store = context.get_cert_store()
        for cert in self._certs:
            store.add_cert(cert)


def load_ca_file(path: str) -> list:
    try:
        with open(path, "rb") as f:
            certs = x509.load_pem_x509_certificates(f.read())
    except OSError as e:
        raise InvalidArgument(f"cannot read --beacon-ca {path}: {e.strerror}", hint="Give a PEM file of CA certificates.") from None
    except ValueError as e:
        raise InvalidArgument(f"--beacon-ca {path} holds no usable PEM certificate ({e})", hint="Give a PEM file of CA certificates.") from None
    return [crypto.X509.from_cryptography(c) for c in certs]


def client_tls_options(host: str, ca_file: str | None = None, fingerprint: bytes | None = None):
    """How to check the beacon: by CA and name, or by a pinned fingerprint.

    With a fingerprint, OpenSSL checks no chain (a self-signed beacon
    certificate is fine); :class:`_Handshake` compares the leaf's
    SHA-256 before anything is sent."""
    if fingerprint is not None:
        return CertificateOptions(raiseMinimumTo=TLSVersion.TLSv1_2)
    return optionsForClientTLS(
        host,
        trustRoot=SystemAndFileTrust(ca_file),
        extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_2},
    )


def certificate_fingerprint(der: bytes) -> bytes:
    return hashlib.sha256(der).digest()


def _colons(raw: bytes) -> str:
    return ":".join(f"{b:02X}" for b in raw)


def describe_failure(failure, where: str) -> PilotError:
    """The error a user sees when the link to ``where`` failed with ``failure``."""
    error = failure.value
    if isinstance(error, PilotError):
        return error
    if isinstance(error, VerificationError):
        host = where.rsplit(":", 1)[0]
        return BeaconUntrusted(
            f"the beacon's TLS certificate at {where} does not name {host} "
            "(a certificate names an IP address only in an IP subjectAltName)"
        )
    if isinstance(error, SSL.Error):
        reason = _ssl_reason(error)
        if "verify failed" in reason:
            return BeaconUntrusted(f"the beacon's TLS certificate at {where} is not signed by a CA this node trusts ({reason})")
        return BeaconUntrusted(f"TLS with the beacon at {where} failed: {reason}")
    return Unavailable(f"cannot reach the beacon over TLS at {where}: {_connect_reason(failure)}")


def _connect_reason(failure) -> str:
    """Why a TCP connection failed, in a few words (Twisted's messages repeat themselves)."""
    if failure.check(ConnectionRefusedError):
        return "connection refused (nothing listens on that port)"
    if failure.check(DNSLookupError):
        return "the name does not resolve"
    if failure.check(NoRouteError):
        return "no route to that host"
    return failure.getErrorMessage()


def _ssl_reason(error) -> str:
    try:
        return "; ".join(str(part[2]) for part in error.args[0]) or str(error)
    except (IndexError, TypeError):
        return str(error)


# -- one connection ------------------------------------------------------------------


@implementer(IHandshakeListener)
class _Handshake(Protocol):
    """Waits for the TLS handshake and the certificate check, then hands the
    connection to the protocol ``factory`` builds (and forwards to it).

    ``ready`` fires with that protocol, or fails with why the connection
    could not be used (a :class:`BeaconUntrusted`, or the reason it closed).
    """

    def __init__(self, link, factory, fingerprint: bytes | None):
        self.link = link
        self.factory = factory
        self.fingerprint = fingerprint
        self.ready = Deferred()
        self.app = None
        self.error: PilotError | None = None
        #: the attempt was given up (stopped, timed out): never hand the connection on
        self.abandoned = False
        #: fires when the connection has closed
        self.closed = Deferred()

    def connectionMade(self):
        self.link.open_protocols.add(self)

    def handshakeCompleted(self):
        if self.fingerprint is not None:
            cert = self.transport.getPeerCertificate()
            der = crypto.dump_certificate(crypto.FILETYPE_ASN1, cert) if cert is not None else b""
            seen = certificate_fingerprint(der)
            if not hmac.compare_digest(seen, self.fingerprint):
                self.error = BeaconUntrusted(
                    f"the beacon's TLS certificate at {self.link.where} has SHA-256 {_colons(seen)}, "
                    f"not the pinned {_colons(self.fingerprint)}"
                )
                self.transport.abortConnection()
                return
        if self.abandoned:
            self.transport.abortConnection()
            return
        self.app = self.factory.buildProtocol(self.transport.getPeer())
        self.app.makeConnection(self.transport)
        self.ready.callback(self.app)

    def abandon(self) -> None:
        self.abandoned = True
        if self.transport is not None:
            self.transport.abortConnection()

    def dataReceived(self, data):
        # Nothing counts before the certificate has passed.
        if self.app is not None:
            self.app.dataReceived(data)

    def connectionLost(self, reason):
        self.link.open_protocols.discard(self)
        if self.app is not None:
            self.app.connectionLost(reason)
        elif not self.ready.called:
            self.ready.errback(self.error if self.error is not None else reason)
        self.closed.callback(None)


class _OneProtocol(Factory):
    def __init__(self, protocol):
        self._protocol = protocol

    def buildProtocol(self, addr):
        return self._protocol


@implementer(IStreamClientEndpoint)
class VerifiedTLSEndpoint:
    """Connects through ``endpoint`` (TCP with TLS) and fires only once the
    certificate has passed, all within ``timeout`` seconds on ``clock``.

    A failure is reported to ``link.attempt_failed`` and passed on."""

    def __init__(self, clock, endpoint, link, fingerprint: bytes | None, timeout: float = BEACON_TLS_CONNECT):
        self._clock = clock
        self._endpoint = endpoint
        self._link = link
        self._fingerprint = fingerprint
        self._timeout = timeout

    def connect(self, factory) -> Deferred:
        handshake = _Handshake(self._link, factory, self._fingerprint)
        dialling = self._endpoint.connect(_OneProtocol(handshake))

        def abandon(result):
            dialling.cancel()
            handshake.abandon()

        result = Deferred(abandon)

        def succeeded(protocol):
            if not result.called:
                result.callback(protocol)

        def failed(failure):
            if not result.called:
                result.errback(failure)

        dialling.addErrback(failed)
        handshake.ready.addCallbacks(succeeded, failed)
        result.addTimeout(self._timeout, self._clock)
        return result.addErrback(self._link.attempt_failed, self._timeout)

    def __repr__(self) -> str:
        return f"<VerifiedTLSEndpoint {self._link.where}>"


class _Frames(Protocol):
    """Frames in and out of a verified connection.  Out, they are batched
    (:class:`~pilotproto.wire.framing.FrameWriter`): relayed tunnel packets
    sent in one reactor turn leave in one TLS write."""

    def __init__(self, link, clock=None):
        self.link = link
        self.clock = clock
        self._decoder = FrameDecoder()
        self._writer: FrameWriter | None = None

    def connectionMade(self):
        call_soon = (lambda f: self.clock.callLater(0, f)) if self.clock is not None else None
        self._writer = FrameWriter(self.transport.write, call_soon)
        # Built only once the certificate has passed (see _Handshake).
        self.link.verified(self)

    def dataReceived(self, data):
        try:
            frames = self._decoder.feed(data)
        except DecodeError:
            self.link.counters["tls_bad_framing"] += 1
            self.transport.loseConnection()
            return
        for frame in frames:
            self.link.datagram_received(frame)

    def send(self, data: bytes) -> None:
        self._writer.send(data)

    def connectionLost(self, reason):
        if self._writer is not None:
            self._writer.close()
        self.link.lost(self, reason)


class _FramesFactory(Factory):
    def __init__(self, link, clock=None):
        self.link = link
        self.clock = clock

    def buildProtocol(self, addr):
        return _Frames(self.link, self.clock)


# -- the link --------------------------------------------------------------------------


@implementer(ITLSLink)
class BeaconTLSLink:
    """A verified TLS connection to the beacon at ``host:port``, kept up while started.

    ``listener`` (:class:`ITLSLinkListener`) hears each datagram and each
    time a verified connection is ready.  ``send(data)`` returns False (and
    sends nothing) while there is none.  ``endpoint`` replaces the TCP+TLS
    endpoint (tests); ``rng`` jitters the retries.
    """

    log = Logger()

    def __init__(
        self,
        reactor,
        host: str,
        port: int,
        *,
        listener,
        ca_file: str | None = None,
        fingerprint: bytes | None = None,
        rng=None,
        endpoint=None,
        counters: collections.Counter | None = None,
        timeout: float = BEACON_TLS_CONNECT,
    ):
        self.where = f"{host}:{port}"
        self._listener = check_provides(listener, ITLSLinkListener, "BeaconTLSLink listener")
        self._rng = rng if rng is not None else random.Random()
        if endpoint is None:
            options = client_tls_options(host, ca_file, fingerprint)
            endpoint = SSL4ClientEndpoint(reactor, host, port, options, timeout=timeout)
        self._service = ClientService(
            VerifiedTLSEndpoint(reactor, endpoint, self, fingerprint, timeout),
            _FramesFactory(self, reactor),
            retryPolicy=self.retry_delay,
            clock=reactor,
        )
        self.protocol: _Frames | None = None
        #: the latest failure as ``{"code", "message"}``; None once connected
        self.last_error: dict | None = None
        self.counters = counters if counters is not None else collections.Counter()
        #: connections whose transport is still open (verified or not)
        self.open_protocols: set[_Handshake] = set()

    def retry_delay(self, failures: int) -> float:
        """ClientService's retry policy: seconds to wait after ``failures`` failures in a row."""
        delay = min(FIRST_RETRY * 2 ** min(failures - 1, 16), MAX_RETRY)
        return delay * self._rng.uniform(0.8, 1.2)

    # -- ITLSLink ------------------------------------------------------------------

    def start(self) -> None:
        if not self._service.running:
            self._service.startService()

    def stop(self) -> Deferred:
        """Stop reconnecting and close the connection; fires once every connection has closed."""
        stopping = self._service.stopService() if self._service.running else succeed(None)
        return stopping.addCallback(lambda _: self.when_closed())

    # -- what the rendezvous asks --------------------------------------------------

    @property
    def up(self) -> bool:
        """Is a verified connection ready?"""
        return self.protocol is not None

    def send(self, data: bytes) -> bool:
        if self.protocol is None:
            self.counters["tls_send_while_down"] += 1
            return False
        self.protocol.send(data)
        return True

    def send_many(self, datagrams) -> bool:
        """:meth:`send` for a burst: the frames join the same batched TLS write."""
        protocol = self.protocol
        if protocol is None:
            self.counters["tls_send_while_down"] += 1
            return False
        for data in datagrams:
            protocol.send(data)
        return True

    def when_closed(self) -> Deferred:
        """Fires once no connection of this link is open."""
        if not self.open_protocols:
            return succeed(None)
        return gatherResults([p.closed for p in self.open_protocols]).addCallback(lambda _: None)

    # -- what the connections report -----------------------------------------------

    def attempt_failed(self, failure, timeout: float):
        """A connection attempt failed: say why (unless we abandoned it), and pass it on."""
        if failure.check(CancelledError):
            return failure
        if failure.check(TimeoutError):
            problem = Unavailable(f"the beacon at {self.where} did not finish a TLS connection within {timeout:g} s")
        else:
            problem = describe_failure(failure, self.where)
        self.last_error = {"code": problem.code, "message": problem.message}
        if isinstance(problem, BeaconUntrusted):
            self.last_error["hint"] = problem.hint  # what to pass to trust it
        if isinstance(problem, BeaconUntrusted):
            self.log.error("{message} ({hint})", message=problem.message, hint=problem.hint)
        else:
            self.log.info("{message}", message=problem.message)
        return failure

    def verified(self, protocol: _Frames) -> None:
        self.protocol = protocol
        self.last_error = None
        self.log.info("connected to the beacon over TLS at {where}", where=self.where)
        self._listener.tls_link_up()

    def lost(self, protocol: _Frames, reason) -> None:
        if self.protocol is protocol:
            self.protocol = None
            self.log.info("the TLS connection to the beacon at {where} closed: {why}", where=self.where, why=reason.getErrorMessage())

    def datagram_received(self, data: bytes) -> None:
        self.counters["tls_datagrams"] += 1
        self._listener.tls_datagram_received(data)
