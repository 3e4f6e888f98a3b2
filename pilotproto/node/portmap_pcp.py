"""
Asking the gateway for a UDP port mapping with PCP (RFC 6887) or NAT-PMP
(RFC 6886), without blocking the reactor.

Both run over one small UDP socket of their own, opened for the duration of
an exchange: the router answers to the port a request came from, and the
node's own socket carries only pilot traffic.  A request is sent again after
250 ms, then 500 ms, then 1 s (the RFCs' schedule, cut short: a router that
has not answered in under two seconds does not speak the protocol), and only
answers from the gateway's address and port 5351 are read.

Each client offers ``request(internal_port, lifetime)`` and
``release(mapping)``, both returning Deferreds, which is what
:class:`~pilotproto.node.portmap.PortMapper` tries in turn.
"""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from ..errors import PilotError, Timeout
from ..wire import portmap as pm
from ..wire.codec import DecodeError

#: seconds between sends of one request; the last entry is the final wait
RETRY_DELAYS = (0.25, 0.5, 1.0)


class MappingRefused(PilotError):
    """The gateway speaks the protocol but would not map the port."""

    code = "port_mapping_refused"
    hint = "The router may have port mapping (UPnP/NAT-PMP/PCP) switched off; direct paths still work where the NAT allows."


class _Exchange(DatagramProtocol):
    """One request, sent on a schedule until an answer the decoder accepts arrives."""

    log = Logger()

    def __init__(self, clock, gateway: str, request: bytes, decode, delays=RETRY_DELAYS):
        self._clock = clock
        self._gateway = gateway
        self._request = request
        self._decode = decode
        self._delays = list(delays)
        self._timer = None
        self.done = defer.Deferred()

    def startProtocol(self):
        self._send()

    def _send(self):
        self._timer = None
        if not self._delays:
            self._finish(failure=Timeout(f"no answer from the gateway {self._gateway} on UDP port {pm.PORT}"))
            return
        try:
            self.transport.write(self._request, (self._gateway, pm.PORT))
        except OSError as e:
            self._finish(failure=Timeout(f"cannot reach the gateway {self._gateway}: {e.strerror or e}"))
            return
        self._timer = self._clock.callLater(self._delays.pop(0), self._send)

    def datagramReceived(self, data, addr):
        if addr != (self._gateway, pm.PORT) or self.done.called:
            return
        try:
            answer = self._decode(data)
        except DecodeError as e:
            self.log.debug("ignoring a malformed answer from the gateway: {e}", e=e)
            return
        self._finish(result=answer)

    def _finish(self, result=None, failure=None):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.done.called:
            return
        if failure is not None:
            self.done.errback(failure)
        else:
            self.done.callback(result)


def on_own_socket(reactor, protocol, done: defer.Deferred) -> defer.Deferred:
    """Run ``protocol`` on a fresh UDP socket until ``done`` fires; its result, once the socket is closed."""
    port = reactor.listenUDP(0, protocol)

    def close(result):
        d = defer.maybeDeferred(port.stopListening)
        d.addBoth(lambda _: result)
        return d

    return done.addBoth(close)


def _exchange(reactor, clock, gateway, request, decode):
    """Send ``request`` to the gateway from a fresh socket; the decoded answer."""
    exchange = _Exchange(clock, gateway, request, decode)
    return on_own_socket(reactor, exchange, exchange.done)


class PcpClient:
    """MAP requests in PCP; ``client_host`` is our address on the gateway's LAN."""

    protocol = "pcp"

    def __init__(self, reactor, gateway: str, client_host: str, *, clock=None, random_bytes=os.urandom):
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._gateway = gateway
        self._client_host = client_host
        # One nonce for the mapping's whole life: renewals and the delete
        # must carry it (RFC 6887 §11.1).
        self._nonce = random_bytes(12)

    def request(self, internal_port: int, lifetime: int, suggested_port: int = 0) -> defer.Deferred:
        wire = pm.pcp_map_request(self._client_host, internal_port, suggested_port or internal_port, lifetime, self._nonce)
        d = _exchange(self._reactor, self._clock, self._gateway, wire, lambda data: pm.decode_pcp(data, self._nonce))
        d.addCallback(_granted)
        return d

    def release(self, mapping: pm.Mapping) -> defer.Deferred:
        wire = pm.pcp_map_request(self._client_host, mapping.internal_port, 0, 0, self._nonce)
        return _exchange(self._reactor, self._clock, self._gateway, wire, lambda data: pm.decode_pcp(data, self._nonce))


class NatPmpClient:
    """NAT-PMP: a UDP mapping, and the external address it lives on."""

    protocol = "nat-pmp"

    def __init__(self, reactor, gateway: str, *, clock=None):
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._gateway = gateway

    @defer.inlineCallbacks
    def request(self, internal_port: int, lifetime: int, suggested_port: int = 0):
        address = yield _exchange(self._reactor, self._clock, self._gateway, pm.natpmp_external_address_request(), pm.decode_natpmp)
        if isinstance(address, pm.Failure):
            raise _refused(address)
        if not isinstance(address, pm.ExternalAddress):
            raise MappingRefused("the gateway answered the address request with a mapping")
        wire = pm.natpmp_map_request(internal_port, suggested_port or internal_port, lifetime)
        mapping = yield _exchange(self._reactor, self._clock, self._gateway, wire, pm.decode_natpmp)
        mapping = _granted(mapping)
        return pm.Mapping("nat-pmp", mapping.internal_port, mapping.external_port, mapping.lifetime, address.host, mapping.epoch)

    def release(self, mapping: pm.Mapping) -> defer.Deferred:
        wire = pm.natpmp_map_request(mapping.internal_port, 0, 0)
        return _exchange(self._reactor, self._clock, self._gateway, wire, pm.decode_natpmp)


def _granted(answer):
    if isinstance(answer, pm.Failure):
        raise _refused(answer)
    if not isinstance(answer, pm.Mapping) or answer.external_port == 0 or answer.lifetime == 0:
        raise MappingRefused(f"the gateway granted no usable mapping ({answer!r})")
    return answer


def _refused(failure: pm.Failure) -> MappingRefused:
    error = MappingRefused(f"{failure.protocol}: the gateway refused the mapping: {failure.reason}")
    error.unsupported_version = failure.unsupported_version
    return error
