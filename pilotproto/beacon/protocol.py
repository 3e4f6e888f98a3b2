"""The beacon's UDP socket: bytes in, bytes out; all decisions are the server's."""

from __future__ import annotations

from twisted.internet.protocol import DatagramProtocol

from ..wire import Endpoint
from .tls import StreamEndpoint


class BeaconDatagramProtocol(DatagramProtocol):
    def __init__(self, server, local: Endpoint | None = None, sockets: dict | None = None):
        self.server = server
        #: the address this socket answers on (STUN RESPONSE-ORIGIN)
        self.local = local
        #: every socket of this beacon by its local endpoint, shared among
        #: them, so an answer to a STUN CHANGE-REQUEST can leave from another
        self.sockets = sockets if sockets is not None else {}
        if local is not None:
            self.sockets[local] = self

    def send(self, data: bytes, destination: Endpoint) -> None:
        """Send a datagram that answers no request (the server's mail pushes)."""
        if isinstance(destination, StreamEndpoint):
            # A node registered over TCP/TLS: never by UDP to its TCP address.
            destination.sink.deliver(data)
            return
        if self.transport is None:
            return
        try:
            self.transport.write(data, destination.as_tuple())
        except OSError:
            # A lost push is retransmitted by the mailbox.
            self.server.counters["send_errors"] += 1

    def _forward(self, data: bytes, destination: Endpoint) -> None:
        """A relayed frame to a validated UDP endpoint: straight to the socket,
        without Twisted's per-write address checks (the address was checked
        when the endpoint was made)."""
        sock = getattr(self.transport, "socket", None)
        if type(destination) is not Endpoint or sock is None:
            self.send(data, destination)
            return
        try:
            sock.sendto(data, (destination.host, destination.port))
        except BlockingIOError:
            # The socket buffer is full: dropped, as a router would.
            self.server.counters["relay_dropped_send_buffer"] += 1
        except OSError:
            self.server.counters["send_errors"] += 1

    def datagramReceived(self, data, addr):
        if data[:1] == b"\xd0":
            # A relay frame: the server's fast path takes the raw address
            # (building an Endpoint costs more than forwarding the frame).
            for answer, destination in self.server.relay_udp(data, addr):
                self._forward(answer, destination)
            return
        source = Endpoint(addr[0], addr[1])
        for reply in self.server.datagram_received(data, source, self.local):
            answer, destination = reply
            origin = getattr(reply, "origin", None)
            sender = self if origin is None or origin == self.local else self.sockets.get(origin)
            if sender is None:
                self.server.counters["dropped_no_origin_socket"] += 1
                continue
            sender.send(answer, destination)
