"""
The node's one UDP socket, as a child service of the node.

Every datagram becomes ``router.datagram_received(data, Direct(endpoint))``
and nothing else; the router (see :mod:`pilotproto.node.router`) classifies
it.  Sending is the :class:`~pilotproto.interfaces.IDatagramSender` every
layer is given.

On a real reactor the socket is a :class:`~pilotproto.node.udpsock.SocketPort`:
kernel batching (GSO/GRO), reads drained per wake-up, sends coalesced per
reactor turn, no per-packet address parsing (sources come from a
:class:`~pilotproto.wire.sources.DirectSources` cache, destinations' socket
tuples from a cache here).  Other reactors (the memory reactors of the unit
tests) get Twisted's own ``listenUDP`` port, written one datagram at a time
at once, so a test sees a send as soon as it is made.
"""

from __future__ import annotations

import collections
import socket

from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

from ..errors import PilotError
from ..interfaces import IDatagramRouter, IDatagramSender
from ..wire import Endpoint
from ..wire.sources import DirectSources
from .udpsock import SocketPort, batching_wanted

#: destinations whose socket tuple is kept (a few per peer); the cache starts over when full
MAX_DESTINATIONS = 4096


class PortInUse(PilotError):
    """The node's UDP port is in use by another program."""

    code = "port_in_use"
    hint = "Choose another --port, or --port 0 for any free port."


class NodeDatagramProtocol(DatagramProtocol):
    """Datagrams in (from either kind of port) to the router, with their typed source."""

    log = Logger()

    def __init__(self, router, counters: collections.Counter):
        if not IDatagramRouter.providedBy(router):
            raise TypeError(f"{router!r} does not provide IDatagramRouter")
        self._router = router
        self._sources = DirectSources()
        self.counters = counters

    def datagramReceived(self, data, addr):
        """From Twisted's port: one datagram, counted here."""
        self.counters["datagrams"] += 1
        self.packet_received(data, addr)

    def packet_received(self, data, addr) -> None:
        """From the socket port, which counts in batches."""
        try:
            source = self._sources.get(addr)
        except ValueError:
            self.counters["dropped_bad_source"] += 1
            return
        self._router.datagram_received(data, source)


@implementer(IDatagramSender)
class UDPService(service.Service):
    """Listens on the node's UDP port while running; sends from it.

    ``batching`` False (or ``PILOT_UDP_GSO=0`` in the environment) turns
    GSO/GRO off: one syscall per packet, for kernels or paths that
    mishandle them, and so tests cover both paths."""

    log = Logger()
    name = "udp"

    def __init__(self, reactor, port: int, interface: str = "", batching: bool | None = None):
        self._reactor = reactor
        self._port_number = port or 0
        self._interface = interface
        self._batching = batching_wanted() if batching is None else batching
        self._listening = None  # Twisted's port (other reactors)
        self._socket: SocketPort | None = None  # our own (posix reactors)
        self._protocol = None
        self._destinations: dict = {}
        self.counters: collections.Counter = collections.Counter()

    def wire(self, router) -> None:
        """Where received datagrams go (checked: an IDatagramRouter)."""
        self._protocol = NodeDatagramProtocol(router, self.counters)

    def startService(self):
        if self._protocol is None:
            raise PilotError("the UDP service was started before it was wired to a router")
        try:
            if isinstance(self._reactor, PosixReactorBase):
                self._socket = SocketPort.listen(self._reactor, self._port_number, self._interface,
                                                 self._protocol.packet_received, self.counters, self._batching)
            else:
                self._listening = self._reactor.listenUDP(self._port_number, self._protocol, interface=self._interface)
        except CannotListenError as e:
            raise PortInUse(f"cannot listen on UDP port {self._port_number}: {e.socketError}") from None
        except OSError as e:
            raise PortInUse(f"cannot listen on UDP port {self._port_number}: {e}") from None
        super().startService()

    def stopService(self):
        super().stopService()
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()  # sends what is queued first: the sessions' goodbyes
        listening, self._listening = self._listening, None
        if listening is None:
            return defer.succeed(None)
        return defer.maybeDeferred(listening.stopListening)

    @property
    def local_endpoint(self) -> Endpoint | None:
        if self._socket is not None:
            host, port = self._socket.local_address()[:2]
            return Endpoint(host, port)
        if self._listening is None:
            return None
        host = self._listening.getHost()
        return Endpoint(host.host, host.port)

    def status(self) -> dict:
        """The socket's counters and whether kernel batching is on (for the node's info)."""
        io = self._socket.status() if self._socket is not None else {"gso": False, "gro": False}
        return {**io, "batching": self._batching, **dict(self.counters)}

    # -- IDatagramSender ---------------------------------------------------------

    def _address(self, destination: Endpoint) -> tuple:
        # The socket tuple of a destination, resolved once: the data path
        # sends to the same few endpoints hundreds of thousands of times.
        addr = self._destinations.get(destination)
        if addr is None:
            if len(self._destinations) >= MAX_DESTINATIONS:
                self._destinations.clear()
            addr = self._destinations[destination] = (destination.host, destination.port)
        return addr

    def send(self, data: bytes, destination: Endpoint, ttl: int | None = None) -> None:
        sock = self._socket
        if sock is not None:
            if ttl is None:
                sock.enqueue(data, self._address(destination))
            else:
                sock.send_with_ttl(data, self._address(destination), ttl)
            return
        self._write(data, destination, ttl)

    def send_many(self, packets, destination: Endpoint) -> None:
        sock = self._socket
        if sock is not None:
            addr = self._address(destination)
            for packet in packets:
                sock.enqueue(packet, addr)
            return
        for packet in packets:
            self._write(packet, destination, None)

    def flush(self) -> None:
        if self._socket is not None:
            self._socket.flush()

    def _write(self, data, destination: Endpoint, ttl) -> None:
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
