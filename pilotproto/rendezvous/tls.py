"""
The node's TCP/TLS link to its beacon: one Automat machine that keeps a
verified connection up, reconnecting with backoff.

::

    idle --start--> connecting --verified--> connected
                      ^    |                    |
                      |    '--failed--> waiting <'--lost
                      '---- retry due ---'
    any --stop--> stopped

The link carries whole datagrams (:mod:`pilotproto.wire.framing`); what
they mean is the node's business.  A connection counts as up only after the
TLS handshake *and* the certificate check: against the system's trust roots
plus ``--beacon-ca``, for the beacon's hostname or IP address (checked by
``service_identity``), or, with ``--beacon-fingerprint``, against exactly
one pinned certificate.  Nothing is sent before that, and a certificate
that fails is a :class:`BeaconUntrusted` error in the log and in
``last_error``; the link keeps retrying (with backoff) but never falls back
to an unchecked connection.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import random

from automat import MethodicalMachine
from cryptography import x509
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from twisted.internet.defer import CancelledError, Deferred, gatherResults, succeed
from twisted.internet.endpoints import SSL4ClientEndpoint
# Public as a parameter type of optionsForClientTLS, but only importable from here.
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions, TLSVersion, optionsForClientTLS, platformTrust
from twisted.logger import Logger
from zope.interface import implementer

from ..errors import InvalidArgument, PilotError, Unavailable
from ..wire import DecodeError
from ..wire.framing import FrameDecoder, encode_frame

FIRST_RETRY = 1.0
MAX_RETRY = 30.0
CONNECT_TIMEOUT = 10.0


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
    certificate is fine); :class:`BeaconTLSProtocol` compares the leaf's
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
    return Unavailable(f"cannot reach the beacon over TLS at {where}: {failure.getErrorMessage()}")


def _ssl_reason(error) -> str:
    try:
        return "; ".join(str(part[2]) for part in error.args[0]) or str(error)
    except (IndexError, TypeError):
        return str(error)


# -- the connection ------------------------------------------------------------------


@implementer(IHandshakeListener)
class BeaconTLSProtocol(Protocol):
    """Frames in and out; tells the link once the certificate has passed."""

    def __init__(self, link, fingerprint: bytes | None):
        self.link = link
        self.fingerprint = fingerprint
        self.verified = False
        self.error: PilotError | None = None
        self._decoder = FrameDecoder()
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
        self.verified = True
        self.link.verified(self)

    def dataReceived(self, data):
        if not self.verified:
            return
        try:
            frames = self._decoder.feed(data)
        except DecodeError:
            self.link.counters["tls_bad_framing"] += 1
            self.transport.loseConnection()
            return
        for frame in frames:
            self.link.datagram_received(frame)

    def send(self, data: bytes) -> None:
        self.transport.write(encode_frame(data))

    def connectionLost(self, reason):
        self.link.open_protocols.discard(self)
        self.closed.callback(None)
        if self.verified:
            self.link.lost(reason)
        else:
            self.link.failed(reason, self.error)


class _LinkFactory(Factory):
    def __init__(self, link):
        self.link = link

    def buildProtocol(self, addr):
        return BeaconTLSProtocol(self.link, self.link.fingerprint)


class BeaconTLSLink:
    """A verified TLS connection to the beacon, kept up while started.

    ``on_datagram(data)`` gets each datagram from the beacon; ``on_up()`` is
    called each time a verified connection is ready.  ``send(data)`` returns
    False (and sends nothing) while there is none.
    """

    _machine = MethodicalMachine()
    log = Logger()

    def __init__(self, reactor, host: str, port: int, *, ca_file=None, fingerprint: bytes | None = None, on_datagram, on_up=lambda: None, rng=None, endpoint=None):
        self._reactor = reactor
        self.where = f"{host}:{port}"
        self.fingerprint = fingerprint
        options = client_tls_options(host, ca_file, fingerprint)
        self._endpoint = endpoint if endpoint is not None else SSL4ClientEndpoint(reactor, host, port, options, timeout=CONNECT_TIMEOUT)
        self._on_datagram = on_datagram
        self._on_up = on_up
        self._rng = rng if rng is not None else random.Random()
        self._delay = FIRST_RETRY
        self._attempt = None
        self._timer = None
        self.protocol: BeaconTLSProtocol | None = None
        self._connecting: BeaconTLSProtocol | None = None
        #: the latest failure as ``{"code", "message"}``; None once connected
        self.last_error: dict | None = None
        self.counters: collections.Counter = collections.Counter()
        #: connections whose transport is still open (connected or not yet verified)
        self.open_protocols: set[BeaconTLSProtocol] = set()

    @property
    def connected(self) -> bool:
        return self.protocol is not None

    def send(self, data: bytes) -> bool:
        if self.protocol is None:
            self.counters["tls_send_while_down"] += 1
            return False
        self.protocol.send(data)
        return True

    def when_closed(self) -> Deferred:
        """Fires once no connection of this link is open (after ``stop``)."""
        if not self.open_protocols:
            return succeed(None)
        return gatherResults([p.closed for p in self.open_protocols]).addCallback(lambda _: None)

    def datagram_received(self, data: bytes) -> None:
        self.counters["tls_datagrams"] += 1
        self._on_datagram(data)

    # -- states --

    @_machine.state(initial=True)
    def idle(self):
        "not started"

    @_machine.state()
    def connecting(self):
        "dialling, or waiting for the handshake and certificate check"

    @_machine.state()
    def connected_(self):
        "a verified connection is up"

    @_machine.state()
    def waiting(self):
        "the last attempt failed; the retry timer runs"

    @_machine.state()
    def stopped(self):
        "stopped; a later start dials again"

    # -- inputs --

    @_machine.input()
    def start(self):
        "keep a connection up"

    @_machine.input()
    def stop(self):
        "close the connection and stop retrying"

    @_machine.input()
    def verified(self, protocol):
        "the handshake finished and the certificate passed"

    @_machine.input()
    def failed(self, reason, error=None):
        "the attempt failed before the connection was verified"

    @_machine.input()
    def lost(self, reason):
        "a verified connection ended"

    @_machine.input()
    def retry_due(self):
        "the backoff timer fired"

    # -- outputs --

    @_machine.output()
    def dial(self):
        self._connecting = None
        d = self._attempt = self._endpoint.connect(_LinkFactory(self))
        d.addCallbacks(self._dialled, self._not_dialled)

    def _dialled(self, protocol):
        self._attempt = None
        self._connecting = protocol

    def _not_dialled(self, failure):
        # A TCP-level failure: no protocol exists to report it.  A cancelled
        # attempt is one we abandoned on purpose.
        if not failure.check(CancelledError):
            self.failed(failure)

    @_machine.output()
    def remember(self, protocol):
        self._connecting = None
        self.protocol = protocol
        self._delay = FIRST_RETRY
        self.last_error = None
        self.log.info("connected to the beacon over TLS at {where}", where=self.where)

    @_machine.output()
    def announce_up(self, protocol):
        self._on_up()

    @_machine.output()
    def report_failure(self, reason, error=None):
        self._connecting = None
        self._attempt = None
        problem = error if error is not None else describe_failure(reason, self.where)
        self.last_error = {"code": problem.code, "message": problem.message}
        if isinstance(problem, BeaconUntrusted):
            self.log.error("{message} ({hint})", message=problem.message, hint=problem.hint)
        else:
            self.log.info("{message}", message=problem.message)

    @_machine.output()
    def report_lost(self, reason):
        self.protocol = None
        self.log.info("the TLS connection to the beacon at {where} closed: {why}", where=self.where, why=reason.getErrorMessage())

    @_machine.output()
    def arm_retry(self):
        self._timer = self._reactor.callLater(self._delay * self._rng.uniform(0.8, 1.2), self.retry_due)
        self._delay = min(self._delay * 2, MAX_RETRY)

    @_machine.output()
    def abandon_attempt(self):
        attempt, self._attempt = self._attempt, None
        if attempt is not None:
            attempt.cancel()
        connecting, self._connecting = self._connecting, None
        if connecting is not None and connecting.transport is not None:
            connecting.transport.abortConnection()

    @_machine.output()
    def close(self):
        protocol, self.protocol = self.protocol, None
        if protocol is not None:
            protocol.transport.loseConnection()

    @_machine.output()
    def close_stray(self, protocol):
        protocol.transport.loseConnection()

    @_machine.output()
    def cancel_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._delay = FIRST_RETRY

    # -- transitions --

    idle.upon(start, enter=connecting, outputs=[dial])
    idle.upon(stop, enter=stopped, outputs=[])
    for _late in (verified, failed, lost, retry_due):
        idle.upon(_late, enter=idle, outputs=[])

    connecting.upon(verified, enter=connected_, outputs=[remember, announce_up])
    connecting.upon(failed, enter=waiting, outputs=[report_failure, arm_retry])
    connecting.upon(stop, enter=stopped, outputs=[abandon_attempt])
    for _late in (start, lost, retry_due):
        connecting.upon(_late, enter=connecting, outputs=[])

    connected_.upon(lost, enter=waiting, outputs=[report_lost, arm_retry])
    connected_.upon(stop, enter=stopped, outputs=[close])
    for _late in (start, verified, failed, retry_due):
        connected_.upon(_late, enter=connected_, outputs=[])

    waiting.upon(retry_due, enter=connecting, outputs=[dial])
    waiting.upon(stop, enter=stopped, outputs=[cancel_timer])
    for _late in (start, verified, failed, lost):
        waiting.upon(_late, enter=waiting, outputs=[])

    stopped.upon(start, enter=connecting, outputs=[dial])
    stopped.upon(verified, enter=stopped, outputs=[close_stray])
    for _late in (stop, failed, lost, retry_due):
        stopped.upon(_late, enter=stopped, outputs=[])
    del _late
