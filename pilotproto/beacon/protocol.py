"""The beacon's UDP socket: bytes in, bytes out; all decisions are the server's."""

from __future__ import annotations

import socket

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from ..wire import Endpoint
from .tls import StreamEndpoint

#: socket buffers asked for: a relay carrying a few hundred Mbit/s meets
#: bursts of a whole congestion window (hundreds of packets) between two
#: reactor wake-ups, which the kernel's default 208 KiB drops
SOCKET_BUFFER = 4 * 1024 * 1024
#: below this we warn: the kernel capped the buffer (net.core.rmem_max/wmem_max)
SMALL_BUFFER = 1024 * 1024

log = Logger()


def enlarge_buffers(sock, size: int = SOCKET_BUFFER) -> dict:
    """Ask for ``size``-byte receive and send buffers on ``sock``; what the
    kernel granted, by option name.  An unprivileged process gets at most
    ``net.core.rmem_max``/``wmem_max`` (the kernel caps silently, so it is
    read back); SO_RCVBUFFORCE is no answer for users, so this only warns."""
    granted = {}
    for name, option in (("rcvbuf", socket.SO_RCVBUF), ("sndbuf", socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
        except OSError:
            pass  # the default buffer: earlier drops under bursts, which senders retry
        # Linux reports twice what it accounts for (the bookkeeping overhead).
        granted[name] = sock.getsockopt(socket.SOL_SOCKET, option)
    return granted


class BeaconDatagramProtocol(DatagramProtocol):
    def __init__(self, server, local: Endpoint | None = None, sockets: dict | None = None):
        self.server = server
        #: the address this socket answers on (STUN RESPONSE-ORIGIN)
        self.local = local
        #: every socket of this beacon by its local endpoint, shared among
        #: them, so an answer to a STUN CHANGE-REQUEST can leave from another
        self.sockets = sockets if sockets is not None else {}
        #: the socket buffers the kernel granted (``enlarge_buffers``), once started
        self.buffers: dict = {}
        if local is not None:
            self.sockets[local] = self

    def startProtocol(self):
        sock = getattr(self.transport, "socket", None)
        if sock is None:
            return
        self.buffers = enlarge_buffers(sock)
        if min(self.buffers.values()) < SMALL_BUFFER:
            log.warn(
                "the beacon's UDP socket buffers are small ({buffers}): relayed bursts may be dropped; "
                "raise net.core.rmem_max and net.core.wmem_max to {want} (sysctl)",
                buffers=self.buffers, want=SOCKET_BUFFER)

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
