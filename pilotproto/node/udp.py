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
tuples from a cache here).  There are two sockets: the IPv4 one (the node's
port) and, where the host has IPv6, an IPv6-only one (``IPV6_V6ONLY``) on
the same port number if it is free; :meth:`UDPService.send` picks the socket
by the destination's family, and both deliver to the router.  A host without
IPv6 runs on IPv4 alone.  Other reactors (the memory reactors of the unit
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
        # The node's router takes a read's packets from one sender at once; another router one at a time.
        self._router_many = getattr(router, "datagrams_received", None)
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

    def packets_received(self, packets: list, addr) -> None:
        """From the socket port: several packets, in order, from one sender."""
        try:
            source = self._sources.get(addr)
        except ValueError:
            self.counters["dropped_bad_source"] += len(packets)
            return
        if self._router_many is not None:
            self._router_many(packets, source)
            return
        for data in packets:
            self._router.datagram_received(data, source)


@implementer(IDatagramSender)
class UDPService(service.Service):
    """Listens on the node's UDP port while running; sends from it.

    ``batching`` False (or ``PILOT_UDP_GSO=0`` in the environment) turns
    GSO/GRO off: one syscall per packet, for kernels or paths that
    mishandle them, and so tests cover both paths."""

    log = Logger()
    name = "udp"

    def __init__(self, reactor, port: int, interface: str = "", batching: bool | None = None, ipv6: bool = True):
        self._reactor = reactor
        self._port_number = port or 0
        self._interface = interface
        self._batching = batching_wanted() if batching is None else batching
        # A second, IPv6-only socket, unless the main one is IPv6 already (or bound to one IPv4 address).
        self._ipv6 = ipv6 and ":" not in interface and interface in ("", "0.0.0.0")
        self._listening = None  # Twisted's port (other reactors)
        self._listening6 = None
        self._socket: SocketPort | None = None  # our own (posix reactors)
        self._socket6: SocketPort | None = None
        self._protocol = None
        self._protocol6 = None
        self._destinations: dict = {}
        self.counters: collections.Counter = collections.Counter()

    def wire(self, router) -> None:
        """Where received datagrams go (checked: an IDatagramRouter)."""
        self._protocol = NodeDatagramProtocol(router, self.counters)
        # Twisted's ports (other reactors) each take their protocol as their own.
        self._protocol6 = NodeDatagramProtocol(router, self.counters)

    def startService(self):
        if self._protocol is None:
            raise PilotError("the UDP service was started before it was wired to a router")
        try:
            if isinstance(self._reactor, PosixReactorBase):
                self._socket = SocketPort.listen(self._reactor, self._port_number, self._interface,
                                                 self._protocol.packet_received, self.counters, self._batching,
                                                 deliver_many=self._protocol.packets_received)
            else:
                self._listening = self._reactor.listenUDP(self._port_number, self._protocol, interface=self._interface)
        except CannotListenError as e:
            raise PortInUse(f"cannot listen on UDP port {self._port_number}: {e.socketError}") from None
        except OSError as e:
            raise PortInUse(f"cannot listen on UDP port {self._port_number}: {e}") from None
        if self._ipv6:
            self._listen6()
        super().startService()

    def _listen6(self) -> None:
        # The IPv4 port's number if it is free for IPv6 too (one port to
        # open in firewalls), else any.  No IPv6 at all is no error.
        port = self.local_endpoint.port
        for number in (port, 0):
            try:
                if isinstance(self._reactor, PosixReactorBase):
                    self._socket6 = SocketPort.listen(self._reactor, number, "::", self._protocol.packet_received,
                                                      self.counters, self._batching,
                                                      deliver_many=self._protocol.packets_received)
                else:
                    self._listening6 = self._reactor.listenUDP(number, self._protocol6, interface="::")
                return
            except (CannotListenError, OSError) as e:
                error = e
        self.log.info("no IPv6 socket ({err}): running on IPv4 only", err=getattr(error, "socketError", error))

    def stopService(self):
        super().stopService()
        for sock in (self._socket, self._socket6):
            if sock is not None:
                sock.close()  # sends what is queued first: the sessions' goodbyes
        self._socket = self._socket6 = None
        ports = [p for p in (self._listening, self._listening6) if p is not None]
        self._listening = self._listening6 = None
        self._destinations.clear()
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])

    @property
    def local_endpoint(self) -> Endpoint | None:
        if self._socket is not None:
            host, port = self._socket.local_address()[:2]
            return Endpoint(host, port)
        if self._listening is None:
            return None
        host = self._listening.getHost()
        return Endpoint(host.host, host.port)

    @property
    def local_endpoint6(self) -> Endpoint | None:
        """The IPv6 socket's address (``::`` and its port), or None without one."""
        if self._socket6 is not None:
            host, port = self._socket6.local_address()[:2]
            return Endpoint(host, port)
        if self._listening6 is None:
            return None
        host = self._listening6.getHost()
        return Endpoint(host.host, host.port)

    def status(self) -> dict:
        """The socket's counters and whether kernel batching is on (for the node's info)."""
        io = self._socket.status() if self._socket is not None else {"gso": False, "gro": False, "dont_fragment": False}
        v6 = self.local_endpoint6
        return {**io, "batching": self._batching, "ipv6_port": v6.port if v6 else None, **dict(self.counters)}

    # -- IDatagramSender ---------------------------------------------------------

    def _route(self, destination: Endpoint) -> tuple:
        # The socket tuple of a destination and the socket it leaves from,
        # resolved once: the data path sends to the same few endpoints
        # hundreds of thousands of times.
        route = self._destinations.get(destination)
        if route is None:
            if len(self._destinations) >= MAX_DESTINATIONS:
                self._destinations.clear()
            v6 = ":" in destination.host and ":" not in self._interface
            route = self._destinations[destination] = ((destination.host, destination.port), self._socket6 if v6 else self._socket, v6)
        return route

    def send(self, data: bytes, destination: Endpoint, ttl: int | None = None) -> None:
        if self._socket is not None:
            addr, sock, _ = self._route(destination)
            if sock is None:
                self.counters["send_no_socket"] += 1  # IPv6 destination, no IPv6 here
            elif ttl is None:
                sock.enqueue(data, addr)
            else:
                sock.send_with_ttl(data, addr, ttl)
            return
        self._write(data, destination, ttl)

    def send_many(self, packets, destination: Endpoint) -> None:
        if self._socket is not None:
            addr, sock, _ = self._route(destination)
            if sock is None:
                self.counters["send_no_socket"] += len(packets)
                return
            sock.enqueue_many(packets, addr)
            return
        for packet in packets:
            self._write(packet, destination, None)

    def flush(self) -> None:
        for sock in (self._socket, self._socket6):
            if sock is not None:
                sock.flush()

    def _transport_for(self, destination: Endpoint):
        if ":" in destination.host and ":" not in self._interface:
            return self._protocol6.transport if self._listening6 is not None else None
        return self._protocol.transport if self._protocol is not None else None

    def _write(self, data, destination: Endpoint, ttl) -> None:
        transport = self._transport_for(destination)
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
