"""
The node's extra UDP sockets, for birthday punching (see
:mod:`pilotproto.session.birthday`), as a child service of the node.

The node has one socket (:mod:`pilotproto.node.udp`) and every peer is
reached from it — except a peer behind a port-restricted cone when we are
behind a symmetric NAT: then we open many sockets, one of them wins, and
that peer's direct path leaves from it for as long as the path lives.  So a
punch socket is an :class:`~pilotproto.interfaces.IDatagramSender` of its
own, and every datagram it receives goes to the node's router like the main
socket's, with a :class:`~pilotproto.session.birthday_schedule.ViaSocket`
source naming the socket: an answer to it (a PathAck) goes back out of the
same socket, and a path proven on it sends from it.

Bounded: at most ``limit`` sockets open at once across every peer (each is
a file descriptor), and all of them close when the node stops.
"""

from __future__ import annotations

import collections
import socket

from twisted.application import service
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

from ..common.wiring import check_provides
from ..errors import PilotError
from ..interfaces import IDatagramRouter, IDatagramSender
from ..session.birthday_schedule import IMappingObservations, IPunchSocket, IPunchSockets, ViaSocket
from ..wire import Endpoint
from .udpsock import set_dont_fragment

#: punch sockets open at once, across every peer: four full birthday punches
MAX_OPEN = 1024


@implementer(IPunchSocket, IDatagramSender)
class PunchSocket(DatagramProtocol):
    """One extra socket: receives into the router, sends like the node's socket."""

    log = Logger()

    def __init__(self, owner: "PunchSockets"):
        self._owner = owner
        self._port = None

    def listen(self, reactor, interface: str) -> None:
        """Bind to any free port (raises CannotListenError)."""
        self._port = reactor.listenUDP(0, self, interface=interface)
        sock = getattr(self._port, "socket", None)
        if isinstance(sock, socket.socket):
            # The winning socket carries the session afterwards, path-MTU probes included.
            set_dont_fragment(sock)

    @property
    def local_port(self) -> int | None:
        return self._port.getHost().port if self._port is not None else None

    def datagramReceived(self, data, addr):
        counters = self._owner.counters
        counters["datagrams"] += 1
        try:
            source = ViaSocket(Endpoint(addr[0], addr[1]), socket=self)
        except ValueError:
            counters["dropped_bad_source"] += 1
            return
        self._owner.router.datagram_received(data, source)

    # -- IDatagramSender ---------------------------------------------------------

    def send(self, data: bytes, destination: Endpoint, ttl: int | None = None) -> None:
        transport = self.transport
        if transport is None or self._port is None:
            self._owner.counters["send_while_closed"] += 1
            return
        try:
            if ttl is None:
                transport.write(data, destination.as_tuple())
                return
            # A priming packet: out of our NAT, not as far as the peer's.
            sock = transport.socket
            level, option = (socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS) if ":" in destination.host else (socket.IPPROTO_IP, socket.IP_TTL)
            previous = sock.getsockopt(level, option)
            sock.setsockopt(level, option, ttl)
            try:
                transport.write(data, destination.as_tuple())
            finally:
                sock.setsockopt(level, option, previous)
        except OSError as e:
            # A lost datagram, which every sender here retries.
            self._owner.counters["send_errors"] += 1
            self.log.debug("punch socket send to {dst} failed: {err}", dst=str(destination), err=e)

    def send_many(self, packets, destination: Endpoint) -> None:
        for packet in packets:
            self.send(packet, destination)

    def flush(self) -> None:
        """Nothing is held: every send leaves at once."""

    def close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            self._owner.closed(self)
            port.stopListening()


@implementer(IPunchSockets)
class PunchSockets(service.Service):
    """Opens punch sockets on demand while running; closes every one on stop.

    ``observations`` (IMappingObservations) is NAT discovery, whose observed
    mapping ports a birthday punch passes on for port prediction."""

    log = Logger()
    name = "punch-sockets"

    def __init__(self, reactor, observations, interface: str = "", limit: int = MAX_OPEN):
        self._reactor = reactor
        self._observations = check_provides(observations, IMappingObservations, "PunchSockets.observations")
        self._interface = interface
        self._limit = limit
        self._open: set[PunchSocket] = set()
        self.router = None
        self.counters: collections.Counter = collections.Counter()

    def wire(self, router) -> None:
        """Where received datagrams go (checked: an IDatagramRouter)."""
        self.router = check_provides(router, IDatagramRouter, "PunchSockets.router")

    @property
    def open_count(self) -> int:
        return len(self._open)

    def open(self, count: int) -> list[PunchSocket]:
        if self.router is None:
            raise PilotError("the punch sockets were used before they were wired to a router")
        if not self.running:
            return []
        opened = []
        for _ in range(max(0, min(count, self._limit - len(self._open)))):
            sock = PunchSocket(self)
            try:
                sock.listen(self._reactor, self._interface)
            except (CannotListenError, OSError) as e:
                # Out of descriptors or ports: punch with what we have.
                self.counters["open_errors"] += 1
                self.log.info("opened {n} of {count} punch sockets: {err}", n=len(opened), count=count, err=e)
                break
            self._open.add(sock)
            opened.append(sock)
        self.counters["opened"] += len(opened)
        return opened

    def closed(self, sock: PunchSocket) -> None:
        self._open.discard(sock)

    def observed_ports(self) -> tuple[int, ...]:
        return tuple(self._observations.observed_ports())

    def stopService(self):
        super().stopService()
        for sock in list(self._open):
            sock.close()
