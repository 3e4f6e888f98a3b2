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

import errno
import os
import socket
import struct

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

SOL_UDP = getattr(socket, "SOL_UDP", 17)
#: Linux's ``UDP_SEGMENT`` and ``UDP_GRO`` (``<linux/udp.h>``); Python 3.11 has no names for them
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
UDP_GRO = getattr(socket, "UDP_GRO", 104)
#: the kernel's ``UDP_MAX_SEGMENTS`` on every kernel with GSO (newer ones allow 128)
MAX_SEGMENTS = 64
#: a GSO burst is one UDP datagram to the kernel: under 64 KiB with the IPv6 and UDP headers
MAX_BURST_BYTES = 65535 - 40 - 8
#: the largest datagram (or glued GRO burst) one read returns
RECV_BUFFER = 65535
#: packets read per reactor wake-up at most (Twisted's own port reads up to 256 KiB)
MAX_PACKETS_PER_WAKEUP = 256
#: socket buffers we ask for (the kernel caps them at net.core.[rw]mem_max)
SOCKET_BUFFER = 4 * 1024 * 1024
#: Linux's IP_MTU_DISCOVER / IPV6_MTU_DISCOVER and their PMTUDISC_PROBE value (<linux/in.h>, <linux/in6.h>):
#: every packet leaves with DF set and is never fragmented locally, and the kernel's cached
#: path MTU (from ICMP) is not applied, so path MTU discovery's probes measure the path itself
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IPV6_MTU_DISCOVER = getattr(socket, "IPV6_MTU_DISCOVER", 23)
PMTUDISC_PROBE = getattr(socket, "IP_PMTUDISC_PROBE", 3)
#: the environment variable that forces one syscall per packet ("0", "off", "no", "false")
GSO_ENV = "PILOT_UDP_GSO"

_SEGMENT_SIZE = struct.Struct("=H")
_GRO_SIZE = struct.Struct("=i")
_ANC_SPACE = socket.CMSG_SPACE(_GRO_SIZE.size)
#: errors that mean "the kernel could not take it now": the packet is lost, the sender retransmits
_DROPPED = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.ENOMEM)
#: errors a GSO send gets where the device or path cannot segment (quic-go and quinn turn GSO off on them)
_GSO_REFUSED = (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP)


def batching_wanted(environ=None) -> bool:
    """False when ``PILOT_UDP_GSO`` says to use one syscall per packet."""
    value = (os.environ if environ is None else environ).get(GSO_ENV, "")
    return value.strip().lower() not in ("0", "off", "no", "false")


def gso_runs(packets, max_segments: int = MAX_SEGMENTS, max_bytes: int = MAX_BURST_BYTES):
    """Split ``packets`` (in order) into ``(segment_size, [packets])`` runs one GSO send can carry.

    A run is packets of one size, and may end with one shorter packet (the
    kernel cuts a buffer into ``segment_size`` pieces and the rest); a
    longer packet starts a new run.  A run holds at most ``max_segments``
    packets and ``max_bytes`` bytes.  Order is kept: the receiver's
    reordering logic should see what the sender sent.
    """
    runs = []
    size = 0
    run: list = []
    total = 0
    for packet in packets:
        n = len(packet)
        if run and n <= size and len(run) < max_segments and total + n <= max_bytes:
            run.append(packet)
            total += n
            if n < size:
                runs.append((size, run))
                run = []
            continue
        if run:
            runs.append((size, run))
        run, size, total = [packet], n, n
    if run:
        runs.append((size, run))
    return runs


def split_gro(buffer, length: int, segment_size: int) -> list[bytes]:
    """The packets in the first ``length`` bytes of ``buffer``, glued by GRO in ``segment_size`` pieces.

    ``segment_size`` 0 (no GRO ancillary data) means one packet."""
    view = memoryview(buffer)
    if segment_size <= 0 or segment_size >= length:
        return [bytes(view[:length])]
    return [bytes(view[offset:min(offset + segment_size, length)]) for offset in range(0, length, segment_size)]


def gro_segment_size(ancdata) -> int:
    """The segment size in ``recvmsg`` ancillary data, or 0 if the kernel glued nothing."""
    for level, kind, data in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and len(data) >= _GRO_SIZE.size:
            return _GRO_SIZE.unpack_from(data)[0]
    return 0


def set_dont_fragment(sock: socket.socket) -> bool:
    """Set PMTUDISC_PROBE on ``sock`` (both families on an IPv6 socket: it may carry IPv4 too).

    A send larger than the interface MTU then fails with EMSGSIZE (counted
    as ``send_too_big``) instead of leaving as fragments."""
    options = [(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER), (socket.IPPROTO_IP, IP_MTU_DISCOVER)] if sock.family == socket.AF_INET6 else [(socket.IPPROTO_IP, IP_MTU_DISCOVER)]
    done = False
    for level, option in options:
        try:
            sock.setsockopt(level, option, PMTUDISC_PROBE)
            done = True
        except OSError:
            pass  # not Linux, or no IPv4 on this socket: the kernel may fragment, as before
    return done


def probe_gso(family: int) -> bool:
    """Whether this kernel takes ``UDP_SEGMENT`` (tried on a throw-away socket: on
    ours the option would set a default segment size for every send)."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.setsockopt(SOL_UDP, UDP_SEGMENT, 1200)
            return True
    except OSError:
        return False


@implementer(IReadDescriptor)
class SocketPort:
    """One bound, non-blocking UDP socket, read and written without Twisted's ``udp.Port``.

    ``deliver(data, addr)`` gets every packet read (``addr`` as the socket
    gives it).  ``counters`` (a ``collections.Counter``) gets
    ``datagrams`` (packets read), ``recv_syscalls``, ``packets_sent``,
    ``send_syscalls``, ``gso_bursts``, ``send_dropped`` (the kernel had no
    room) and ``send_errors`` (anything else).
    """

    log = Logger()

    def __init__(self, reactor, sock: socket.socket, deliver, counters, batching: bool = True):
        self._reactor = reactor
        self._sock = sock
        self._deliver = deliver
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
    def listen(cls, reactor, port: int, interface: str, deliver, counters, batching: bool = True) -> "SocketPort":
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
        self = cls(reactor, sock, deliver, counters, batching)
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
        recvfrom, deliver = self._sock.recvfrom, self._deliver
        count = 0
        try:
            while count < MAX_PACKETS_PER_WAKEUP:
                data, addr = recvfrom(RECV_BUFFER)
                count += 1
                deliver(data, addr)
        except (BlockingIOError, InterruptedError):
            return  # drained: the next wake-up reads on (the finally counts what we read)
        except OSError as e:
            self._read_error(e)
        finally:
            self.counters["datagrams"] += count
            self.counters["recv_syscalls"] += count

    def _read_gro(self) -> None:
        recvmsg_into, deliver, buffer = self._sock.recvmsg_into, self._deliver, self._buffer
        count = calls = 0
        try:
            while count < MAX_PACKETS_PER_WAKEUP:
                length, ancdata, flags, addr = recvmsg_into([buffer], _ANC_SPACE)
                calls += 1
                if flags & socket.MSG_TRUNC:
                    self.counters["dropped_truncated"] += 1
                    continue
                packets = split_gro(buffer, length, gro_segment_size(ancdata) if ancdata else 0)
                count += len(packets)
                for packet in packets:
                    deliver(packet, addr)
        except (BlockingIOError, InterruptedError):
            return  # drained: the next wake-up reads on (the finally counts what we read)
        except OSError as e:
            self._read_error(e)
        finally:
            self.counters["datagrams"] += count
            self.counters["recv_syscalls"] += calls

    def _read_error(self, error: OSError) -> None:
        # ICMP errors for an earlier send (ECONNREFUSED ...) surface on a later read;
        # the socket is fine, the reactor calls again when more arrives.
        self.counters["recv_errors"] += 1
        self.log.debug("UDP read failed: {err}", err=error)

    # -- sending --------------------------------------------------------------------

    def enqueue(self, data, addr: tuple) -> None:
        """Send ``data`` to ``addr`` (a socket address tuple) with this turn's other packets."""
        queue = self._queue.get(addr)
        if queue is None:
            queue = self._queue[addr] = []
            if self._flush_call is None and not self._closed:
                self._flush_call = self._reactor.callLater(0, self._flush_turn)
        queue.append(data)
        if len(queue) >= MAX_SEGMENTS or len(queue) * len(data) > MAX_BURST_BYTES - len(data):
            # A whole burst is ready: send it now rather than hold the packets back.
            del self._queue[addr]
            self.send_burst(queue, addr)

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
            if len(run) == 1:
                self.send_now(run[0], addr)
            else:
                self._send_gso(size, run, addr)

    def _send_gso(self, size: int, run: list, addr: tuple) -> None:
        self.counters["send_syscalls"] += 1
        try:
            self._sock.sendmsg([b"".join(run)], [(SOL_UDP, UDP_SEGMENT, _SEGMENT_SIZE.pack(size))], 0, addr)
        except OSError as e:
            if e.errno in _GSO_REFUSED:
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
        if error.errno in _DROPPED:
            self.counters["send_dropped"] += packets
        elif error.errno == errno.EMSGSIZE:
            # Bigger than the interface MTU (DF, no local fragments): a lost
            # packet; path MTU discovery's probe timer counts it as too big.
            self.counters["send_too_big"] += packets
        else:
            # An unreachable network or a refused port is a lost datagram too.
            self.counters["send_errors"] += packets
            self.log.debug("send to {dst} failed: {err}", dst=addr, err=error)
