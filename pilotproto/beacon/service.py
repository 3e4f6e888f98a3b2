"""
The beacon as a Twisted service: its UDP port(s) and the registry's expiry.

``--port`` is the main port: registration, lookup, STUN.  ``--alt-port``
(and, with ``--alt-address``, a second IP) answers STUN too, so that nodes
can tell how their NAT maps and filters (RFC 5780).
"""

from __future__ import annotations

from twisted.application import internet, service
from twisted.internet.task import LoopingCall

from ..wire import Endpoint
from .protocol import BeaconDatagramProtocol
from .server import BeaconServer


class _ExpiryService(service.Service):
    def __init__(self, server, interval):
        self._loop = LoopingCall(server.expire)
        self._interval = interval

    def startService(self):
        super().startService()
        self._loop.start(self._interval, now=False)

    def stopService(self):
        if self._loop.running:
            self._loop.stop()
        return super().stopService()


class _UDPService(internet.UDPServer):
    """A UDPServer whose port is visible once started (tests bind port 0)."""


class BeaconService(service.MultiService):
    def __init__(self, reactor, interface="0.0.0.0", port=9000, alt_port=None, alt_address=None):
        super().__init__()
        self.reactor = reactor
        other = None
        if (alt_port is not None or alt_address is not None) and _concrete(alt_address or interface):
            other = Endpoint(alt_address or interface, alt_port or port)
        self.server = BeaconServer(reactor, other_address=other)
        self.protocol = BeaconDatagramProtocol(self.server, _local(interface, port))
        self._udp = _UDPService(port, self.protocol, interface=interface)
        self._udp.setServiceParent(self)
        self.alt_protocols = []
        if alt_port is not None or alt_address is not None:
            alt_interface = alt_address or interface
            alt_port = alt_port or port
            for host, udp_port in {(alt_interface, alt_port), (interface, alt_port), (alt_interface, port)} - {(interface, port)}:
                proto = BeaconDatagramProtocol(self.server, _local(host, udp_port))
                self.alt_protocols.append(proto)
                _UDPService(udp_port, proto, interface=host).setServiceParent(self)
        _ExpiryService(self.server, 5).setServiceParent(self)

    @property
    def port(self) -> int:
        return self.protocol.transport.getHost().port


def _concrete(host: str | None) -> bool:
    return bool(host) and host not in ("0.0.0.0", "::")


def _local(host: str, port: int) -> Endpoint | None:
    """The address a socket answers from, when it is bound to a concrete one."""
    return Endpoint(host, port) if _concrete(host) and port else None
