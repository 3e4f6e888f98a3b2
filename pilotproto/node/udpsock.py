"""
The node's UDP socket without Twisted's per-datagram work: kernel batching.

Twisted's UDP port costs a syscall and an address check per datagram in
each direction; at a few hundred thousand packets a second that, not the
network, is the limit.  This module talks to the socket itself, as quic-go
(``sys_conn_oob.go``) and quinn-udp do:

* **GSO on send** (Linux ``UDP_SEGMENT``): a burst of equal-size packets to
  one destination leaves in one ``sendmsg`` whose ancillary data names the
  segment size; the kernel cuts it (the last packet may be shorter).
  :func:`gso_runs` splits a burst into the runs the kernel accepts.
* **GRO on receive** (``UDP_GRO``): one ``recvmsg`` returns several packets
  from one sender glued together, with their segment size in the ancillary
  data; :func:`split_gro` cuts them apart again.
* **Drain on wake-up**: each time the reactor says the socket is readable we
  read until it would block, but at most :data:`MAX_PACKETS_PER_WAKEUP`
  packets, so one busy peer cannot starve timers and the control socket.
* **Sends coalesce per reactor turn**: :class:`SocketPort` keeps what the
  layers send during one turn (and while a read batch is handled) per
  destination and flushes it at the end of the batch or on the next turn
  (``callLater(0)``); a destination with a full GSO burst queued is flushed
  at once.

Support is detected when the socket opens (the options are set on a
throw-away socket and on ours; a GSO send the kernel refuses with EIO or
EINVAL turns GSO off for good and the burst is resent packet by packet).
``PILOT_UDP_GSO=0`` in the environment (or ``batching=False``) forces the
plain path: one ``sendto`` and one ``recvfrom`` per packet, still without
Twisted's checks.  A full socket buffer (EAGAIN, ENOBUFS) is a dropped,
counted packet, never an exception: every sender here retransmits.
"""

from __future__ import annotations

import contextlib
import errno
import socket

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

# Re-exported: the node socket's tests, punch sockets and benchmarks use these names from here.
from ..common.udpgso import (  # noqa: F401
    DROPPED_ERRNOS,
    GRO_ANCILLARY_SPACE,
    GSO_ENV,
    GSO_REFUSED_ERRNOS,
    IP_MTU_DISCOVER,
    IPV6_MTU_DISCOVER,
    MAX_BURST_BYTES,
    MAX_PACKETS_PER_WAKEUP,
    MAX_SEGMENTS,
    PMTUDISC_PROBE,
    RECV_BUFFER,
    SEGMENT_SIZE,
    SOCKET_BUFFER,
    SOL_UDP,
    UDP_GRO,
    UDP_SEGMENT,
    batching_wanted,
    gro_segment_size,
    gso_runs,
    probe_gso,
    send_gso,
    set_dont_fragment,
    split_gro,
)


@implementer(IReadDescriptor)
class SocketPort:
    """One bound, non-blocking UDP socket, read and written without Twisted's ``udp.Port``.

    ``deliver(data, addr)`` gets every packet read (``addr`` as the socket
    gives it); given ``deliver_many(packets, addr)``, a wake-up's reads are
    handed on instead as runs of consecutive packets from one sender (a GRO
    read, or several), so the layers above do per-sender work once a run.  ``counters`` (a ``collections.Counter``) gets
    ``datagrams`` (packets read), ``recv_syscalls``, ``packets_sent``,
    ``send_syscalls``, ``gso_bursts``, ``send_dropped`` (the kernel had no
    room) and ``send_errors`` (anything else).
    """

    log = Logger()

    def __init__(self, reactor, sock: socket.socket, deliver, counters, batching: bool = True, deliver_many=None):
        self._reactor = reactor
        self._sock = sock
        self._deliver = deliver
        self._deliver_many = deliver_many
        self.counters = counters
        sock.setblocking(False)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
            except OSError:
                pass  # a smaller buffer only means earlier drops, which senders retry
        self.dont_fragment = set_dont_fragment(sock)
        self.gso = batching and probe_gso(sock.family)
        self.gro = False
        if batching:
            try:
                sock.setsockopt(SOL_UDP, UDP_GRO, 1)
                self.gro = True
            except OSError:
                pass  # no GRO: one packet per read, as before
        self._buffer = bytearray(RECV_BUFFER)
        self._queue: dict = {}
        self._flush_call = None
        self._closed = False

    @classmethod
    def listen(cls, reactor, port: int, interface: str, deliver, counters, batching: bool = True,
               deliver_many=None) -> "SocketPort":
        """Bind ``interface:port`` (IPv6 if ``interface`` has a colon) and start reading.

        An IPv6 socket is IPv6 only (``IPV6_V6ONLY``): IPv4 has a socket of
        its own on the same port, and a dual-stack one would clash with it."""
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((interface, port))
        except OSError:
            sock.close()
            raise
        self = cls(reactor, sock, deliver, counters, batching, deliver_many)
        reactor.addReader(self)
        return self

    def local_address(self) -> tuple:
        return self._sock.getsockname()

    def status(self) -> dict:
        return {"gso": self.gso, "gro": self.gro, "dont_fragment": self.dont_fragment}

    def close(self) -> None:
        """Send what is queued, stop reading and close the socket (once)."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self._reactor.removeReader(self)
        self._sock.close()

    # -- IReadDescriptor ----------------------------------------------------------

    def fileno(self) -> int:
        return -1 if self._closed else self._sock.fileno()

    def logPrefix(self) -> str:
        return "pilot-udp"

    def connectionLost(self, reason) -> None:
        """The reactor is shutting down and dropped us: close the socket."""
        if not self._closed:
            self._closed = True
            self._sock.close()

    def doRead(self) -> None:
        try:
            if self.gro:
                self._read_gro()
            else:
                self._read_plain()
        finally:
            # Whatever the packets made the layers send leaves now, in bursts.
            self.flush()

    def _read_plain(self) -> None:
        recvfrom = self._sock.recvfrom
        runs: list = []
        last_addr = run = None
        count = 0
        try:
            # Drained (BlockingIOError): the next wake-up reads on.
            with contextlib.suppress(BlockingIOError, InterruptedError):
                while count < MAX_PACKETS_PER_WAKEUP:
                    data, addr = recvfrom(RECV_BUFFER)
                    count += 1
                    if addr == last_addr:
                        run.append(data)
                    else:
                        run, last_addr = [data], addr
                        runs.append((addr, run))
        except OSError as e:
            self._read_error(e)
        finally:
            self.counters["datagrams"] += count
            self.counters["recv_syscalls"] += count
        self._hand_on(runs)

    def _read_gro(self) -> None:
        recvmsg_into, buffer = self._sock.recvmsg_into, self._buffer
        runs: list = []
        last_addr = run = None
        count = calls = 0
        try:
            # Drained (BlockingIOError): the next wake-up reads on.
            with contextlib.suppress(BlockingIOError, InterruptedError):
                while count < MAX_PACKETS_PER_WAKEUP:
                    length, ancdata, flags, addr = recvmsg_into([buffer], GRO_ANCILLARY_SPACE)
                    calls += 1
                    if flags & socket.MSG_TRUNC:
                        self.counters["dropped_truncated"] += 1
                        continue
                    packets = split_gro(buffer, length, gro_segment_size(ancdata) if ancdata else 0)
                    count += len(packets)
                    if addr == last_addr:
                        run.extend(packets)
                    else:
                        run, last_addr = packets, addr
                        runs.append((addr, run))
        except OSError as e:
            self._read_error(e)
        finally:
            self.counters["datagrams"] += count
            self.counters["recv_syscalls"] += calls
        self._hand_on(runs)

    def _hand_on(self, runs: list) -> None:
        # Read first, then handled: a wake-up's packets from one sender go up together.
        deliver_many = self._deliver_many
        if deliver_many is not None:
            for addr, packets in runs:
                deliver_many(packets, addr)
            return
        deliver = self._deliver
        for addr, packets in runs:
            for packet in packets:
                deliver(packet, addr)

    def _read_error(self, error: OSError) -> None:
        # ICMP errors for an earlier send (ECONNREFUSED ...) surface on a later read;
        # the socket is fine, the reactor calls again when more arrives.
        self.counters["recv_errors"] += 1
        self.log.debug("UDP read failed: {err}", err=error)

    # -- sending --------------------------------------------------------------------

    def enqueue(self, data, addr: tuple) -> None:
        """Send ``data`` to ``addr`` (a socket address tuple) with this turn's other packets."""
        queue = self._queue_for(addr)
        queue.append(data)
        if len(queue) >= MAX_SEGMENTS or len(queue) * len(data) > MAX_BURST_BYTES - len(data):
            # A whole burst is ready: send it now rather than hold the packets back.
            del self._queue[addr]
            self.send_burst(queue, addr)

    def enqueue_many(self, packets: list, addr: tuple) -> None:
        """:meth:`enqueue` for a burst to one destination (in order): whole GSO
        runs leave at once, the last, unfinished one waits for the turn's end."""
        if not packets:
            return
        queue = self._queue_for(addr)
        queue.extend(packets)
        last = len(packets[-1])
        if len(queue) < MAX_SEGMENTS and len(queue) * last <= MAX_BURST_BYTES - last:
            return
        if not self.gso:
            del self._queue[addr]
            self.send_burst(queue, addr)
            return
        runs = gso_runs(queue)
        self._queue[addr] = runs[-1][1]
        for size, run in runs[:-1]:
            self._send_run(size, run, addr)

    def _queue_for(self, addr: tuple) -> list:
        """This turn's packets for ``addr``; the first of a turn arms its flush."""
        queue = self._queue.get(addr)
        if queue is None:
            queue = self._queue[addr] = []
            if self._flush_call is None and not self._closed:
                self._flush_call = self._reactor.callLater(0, self._flush_turn)
        return queue

    def _flush_turn(self) -> None:
        self._flush_call = None
        self.flush()

    def flush(self) -> None:
        """Send everything queued, one destination at a time."""
        if not self._queue:
            return
        queued, self._queue = self._queue, {}
        for addr, packets in queued.items():
            self.send_burst(packets, addr)

    def send_burst(self, packets, addr: tuple) -> None:
        """Send ``packets`` to ``addr`` now: in GSO runs when the kernel can, else one by one."""
        if self._closed:
            self.counters["send_while_stopped"] += len(packets)
            return
        if not self.gso or len(packets) == 1:
            for packet in packets:
                self.send_now(packet, addr)
            return
        for size, run in gso_runs(packets):
            self._send_run(size, run, addr)

    def _send_run(self, size: int, run: list, addr: tuple) -> None:
        if self._closed:
            self.counters["send_while_stopped"] += len(run)
        elif len(run) == 1:
            self.send_now(run[0], addr)
        else:
            self._send_gso(size, run, addr)

    def _send_gso(self, size: int, run: list, addr: tuple) -> None:
        self.counters["send_syscalls"] += 1
        try:
            send_gso(self._sock, run, size, addr)
        except OSError as e:
            if e.errno in GSO_REFUSED_ERRNOS:
                # The device or path cannot segment (quic-go and quinn see EIO
                # without checksum offload, EINVAL on some IPv6 setups): plain
                # sends from now on, starting with this burst.
                self.gso = False
                self.counters["gso_refused"] += 1
                self.log.info("UDP GSO refused ({err}); sending one packet per syscall", err=e)
                for packet in run:
                    self.send_now(packet, addr)
            else:
                self._send_failed(e, len(run), addr)
            return
        self.counters["gso_bursts"] += 1
        self.counters["packets_sent"] += len(run)

    def send_now(self, data, addr: tuple) -> None:
        """One ``sendto``: a dropped or failed send is counted, never raised."""
        self.counters["send_syscalls"] += 1
        try:
            self._sock.sendto(data, addr)
        except OSError as e:
            self._send_failed(e, 1, addr)
            return
        self.counters["packets_sent"] += 1

    def send_with_ttl(self, data, addr: tuple, ttl: int) -> None:
        """One packet with IP TTL ``ttl`` (a priming probe: it must leave our NAT but die before the peer's)."""
        if self._closed:
            self.counters["send_while_stopped"] += 1
            return
        sock = self._sock
        level, option = (socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS) if sock.family == socket.AF_INET6 else (socket.IPPROTO_IP, socket.IP_TTL)
        previous = sock.getsockopt(level, option)
        sock.setsockopt(level, option, ttl)
        try:
            self.send_now(data, addr)
        finally:
            sock.setsockopt(level, option, previous)

    def _send_failed(self, error: OSError, packets: int, addr) -> None:
        if error.errno in DROPPED_ERRNOS:
            self.counters["send_dropped"] += packets
        elif error.errno == errno.EMSGSIZE:
            # Bigger than the interface MTU (DF, no local fragments): a lost
            # packet; path MTU discovery's probe timer counts it as too big.
            self.counters["send_too_big"] += packets
        else:
            # An unreachable network or a refused port is a lost datagram too.
            self.counters["send_errors"] += packets
            self.log.debug("send to {dst} failed: {err}", dst=addr, err=error)
