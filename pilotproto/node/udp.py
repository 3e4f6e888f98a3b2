"""
The node's one UDP socket, as a child service of the node.

The protocol is thin: every datagram becomes ``router.datagram_received(data,
Direct(endpoint))`` and nothing else; the router (see
:mod:`pilotproto.node.router`) classifies it.  Sending is the
:class:`~pilotproto.interfaces.IDatagramSender` every layer is given.
"""

from __future__ import annotations

import collections
import socket

from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

from ..errors import PilotError
from ..interfaces import IDatagramRouter, IDatagramSender
from ..wire import Endpoint
from ..wire.sources import Direct


class PortInUse(PilotError):
    """The node's UDP port is in use by another program."""

    code = "port_in_use"
    hint = "Choose another --port, or --port 0 for any free port."


class NodeDatagramProtocol(DatagramProtocol):
    log = Logger()

    def __init__(self, router, counters: collections.Counter):
        if not IDatagramRouter.providedBy(router):
            raise TypeError(f"{router!r} does not provide IDatagramRouter")
        self._router = router
        self.counters = counters

    def datagramReceived(self, data, addr):
        self.counters["datagrams"] += 1
        try:
            source = Direct(Endpoint(addr[0], addr[1]))
        except ValueError:
            self.counters["dropped_bad_source"] += 1
            return
        self._router.datagram_received(data, source)


@implementer(IDatagramSender)
class UDPService(service.Service):
    """Listens on the node's UDP port while running; sends from it."""

    log = Logger()
    name = "udp"

    def __init__(self, reactor, port: int, interface: str = ""):
        self._reactor = reactor
        self._port_number = port or 0
        self._interface = interface
        self._listening = None
        self._protocol = None
        self.counters: collections.Counter = collections.Counter()

    def wire(self, router) -> None:
        """Where received datagrams go (checked: an IDatagramRouter)."""
        self._protocol = NodeDatagramProtocol(router, self.counters)

    def startService(self):
        if self._protocol is None:
            raise PilotError("the UDP service was started before it was wired to a router")
        try:
            self._listening = self._reactor.listenUDP(self._port_number, self._protocol, interface=self._interface)
        except CannotListenError as e:
            raise PortInUse(f"cannot listen on UDP port {self._port_number}: {e.socketError}") from None
        super().startService()

    def stopService(self):
        super().stopService()
        listening, self._listening = self._listening, None
        if listening is None:
            return defer.succeed(None)
        return defer.maybeDeferred(listening.stopListening)

    @property
    def local_endpoint(self) -> Endpoint | None:
        if self._listening is None:
            return None
        host = self._listening.getHost()
        return Endpoint(host.host, host.port)

    # -- IDatagramSender ---------------------------------------------------------

    def send(self, data: bytes, destination: Endpoint, ttl: int | None = None) -> None:
        transport = self._protocol.transport if self._protocol is not None else None
        if transport is None:
            self.counters["send_while_stopped"] += 1
            return
        try:
            if ttl is not None:
                self._write_with_ttl(transport, data, destination, ttl)
            else:
                transport.write(data, destination.as_tuple())
        except OSError as e:
            # A full socket buffer or an unreachable network is a lost
            # datagram, which every sender here already retries.
            self.counters["send_errors"] += 1
            self.log.debug("send to {dst} failed: {err}", dst=str(destination), err=e)

    @staticmethod
    def _write_with_ttl(transport, data, destination, ttl):
        # A priming probe: it must leave our NAT but die before the peer's.
        sock = transport.socket
        level, option = (socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS) if ":" in destination.host else (socket.IPPROTO_IP, socket.IP_TTL)
        previous = sock.getsockopt(level, option)
        sock.setsockopt(level, option, ttl)
        try:
            transport.write(data, destination.as_tuple())
        finally:
            sock.setsockopt(level, option, previous)
