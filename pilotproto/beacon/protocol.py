"""
The beacon's UDP socket: bytes in, bytes out; all decisions are the server's.

Relayed frames are the beacon's bulk traffic, so the socket batches them the
way the node's does (:mod:`pilotproto.node.udpsock`):

* **GRO on receive**: :class:`BatchingPort` (Twisted's port with another
  ``doRead``) asks for ``UDP_GRO``, so a node's GSO burst of relay frames
  arrives as one buffer (one ``recvmsg``, and the kernel does not cut it into
  one socket-buffer entry per frame) and is split here.
* **GSO on send**: while a read batch is handled, frames forwarded to one
  destination are queued and leave at the end of the batch (or once a full
  burst is queued) as runs of equal-size frames, one ``sendmsg`` each.  The
  burst then crosses the network as one packet until the last device cuts
  it, and the receiving node's GRO socket reads it in one call.

Outside a read batch (a fake transport in tests, the other family's socket
of a dual-stack beacon) a forwarded frame is sent at once.
"""

from __future__ import annotations

import socket

from twisted.internet import udp
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from ..common.udpgso import (
    DROPPED_ERRNOS,
    GRO_ANCILLARY_SPACE,
    GSO_REFUSED_ERRNOS,
    MAX_PACKETS_PER_WAKEUP,
    MAX_SEGMENTS,
    RECV_BUFFER,
    SOL_UDP,
    UDP_GRO,
    batching_wanted,
    gro_segment_size,
    gso_runs,
    probe_gso,
    send_gso,
    split_gro,
)
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


class BatchingPort(udp.Port):
    """Twisted's UDP port, read with GRO (when the kernel has it and
    ``PILOT_UDP_GSO`` does not say no), and telling its protocol when a read
    batch starts and ends (``batch_started``/``batch_done``), so what the
    batch makes it send can leave in GSO bursts."""

    #: is UDP_GRO on (set when the socket is made)
    gro = False

    def createInternetSocket(self):
        sock = super().createInternetSocket()
        if batching_wanted():
            try:
                sock.setsockopt(SOL_UDP, UDP_GRO, 1)
                self.gro = True
            except OSError:
                self.gro = False  # no GRO here: one frame per read, Twisted's way
        return sock

    def doRead(self):
        protocol = self.protocol
        protocol.batch_started()
        try:
            if self.gro:
                self._read_gro()
            else:
                super().doRead()
        finally:
            protocol.batch_done()

    def _read_gro(self) -> None:
        if getattr(self, "_buffer", None) is None:
            self._buffer = bytearray(RECV_BUFFER)
        protocol = self.protocol
        buffer, recvmsg_into, datagram_received = self._buffer, self.socket.recvmsg_into, protocol.datagramReceived
        six = self.addressFamily == socket.AF_INET6
        count = 0
        while count < MAX_PACKETS_PER_WAKEUP:
            try:
                length, ancdata, flags, addr = recvmsg_into([buffer], GRO_ANCILLARY_SPACE)
            except OSError:
                # Drained (EAGAIN), or an ICMP error for an earlier send
                # surfacing here: the socket is fine either way.
                return
            if flags & socket.MSG_TRUNC:
                continue
            if six:
                addr = addr[:2]
            packets = split_gro(buffer, length, gro_segment_size(ancdata) if ancdata else 0)
            count += len(packets)
            if len(packets) > 1:
                protocol.datagrams_received(packets, addr)
                continue
            try:
                datagram_received(packets[0], addr)
            except Exception:
                log.failure("the beacon failed to handle a datagram from {addr}", addr=addr)


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
        #: does this kernel take GSO sends (probed at start)
        self.gso = False
        #: inside a read batch: forwarded frames wait in ``_queued`` for its end
        self._batching = False
        #: (host, port) -> frames forwarded there during this batch, in order
        self._queued: dict = {}
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
        self.gso = isinstance(sock, socket.socket) and batching_wanted() and probe_gso(sock.family)

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
        when the endpoint was made); queued for a GSO burst during a read batch."""
        sock = getattr(self.transport, "socket", None)
        if type(destination) is not Endpoint or sock is None:
            self.send(data, destination)
            return
        addr = (destination.host, destination.port)
        if not self._batching:
            self._sendto(sock, data, addr)
            return
        queue = self._queued.get(addr)
        if queue is None:
            queue = self._queued[addr] = []
        queue.append(data)
        if len(queue) >= MAX_SEGMENTS:
            del self._queued[addr]
            self._send_burst(sock, queue, addr)

    def batch_started(self) -> None:
        """The port starts reading what the kernel holds: hold forwarded frames."""
        self._batching = True

    def batch_done(self) -> None:
        """The read batch is over: send what it queued, one destination at a time."""
        self._batching = False
        if not self._queued:
            return
        queued, self._queued = self._queued, {}
        sock = getattr(self.transport, "socket", None)
        if sock is None:
            self.server.counters["relay_dropped_send_buffer"] += sum(map(len, queued.values()))
            return
        for addr, frames in queued.items():
            self._send_burst(sock, frames, addr)

    def _send_burst(self, sock, frames: list, addr: tuple) -> None:
        if not self.gso or len(frames) == 1:
            for frame in frames:
                self._sendto(sock, frame, addr)
            return
        for size, run in gso_runs(frames):
            if len(run) == 1:
                self._sendto(sock, run[0], addr)
                continue
            try:
                send_gso(sock, run, size, addr)
            except OSError as e:
                if e.errno in GSO_REFUSED_ERRNOS:
                    # The device or path cannot segment: plain sends from now on, this run first.
                    self.gso = False
                    self.server.counters["gso_refused"] += 1
                    log.info("UDP GSO refused ({err}); the relay sends one frame per syscall", err=e)
                    for frame in run:
                        self._sendto(sock, frame, addr)
                else:
                    self._send_failed(e, len(run))
                continue
            self.server.counters["relay_gso_bursts"] += 1

    def _sendto(self, sock, data, addr: tuple) -> None:
        try:
            sock.sendto(data, addr)
        except OSError as e:
            self._send_failed(e, 1)

    def _send_failed(self, error: OSError, frames: int) -> None:
        if error.errno in DROPPED_ERRNOS:
            # The socket buffer is full: dropped, as a router would.
            self.server.counters["relay_dropped_send_buffer"] += frames
        else:
            self.server.counters["send_errors"] += frames

    def datagrams_received(self, packets: list, addr) -> None:
        """The packets of one GRO read from ``addr``, in order: a node's burst
        of relay frames goes through the relay's burst path at once."""
        if all(packet[:1] == b"\xd0" for packet in packets):
            server = self.server
            server.counters["datagrams"] += len(packets)
            try:
                forwards = server.relaying.forward_many(packets, addr, server.fleet)
            except Exception:
                server.counters["internal_errors"] += 1
                log.failure("the beacon failed to relay a burst from {source}", source=addr)
                return
            for answer, destination in forwards:
                self._forward(answer, destination)
            return
        for packet in packets:
            try:
                self.datagramReceived(packet, addr)
            except Exception:
                log.failure("the beacon failed to handle a datagram from {addr}", addr=addr)

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
