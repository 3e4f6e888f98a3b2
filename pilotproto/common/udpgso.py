"""
Linux UDP batching: the socket options, limits and helpers both the node's
socket (``node/udpsock.py``) and the beacon's (``beacon/protocol.py``) use.

* **GSO on send** (``UDP_SEGMENT``): a burst of equal-size packets to one
  destination leaves in one ``sendmsg`` whose ancillary data names the
  segment size; :func:`gso_runs` splits a burst into the runs the kernel
  accepts.
* **GRO on receive** (``UDP_GRO``): one ``recvmsg`` returns several packets
  from one sender glued together; :func:`gro_segment_size` reads their
  segment size from the ancillary data and :func:`split_gro` cuts them apart.

Support is probed on a throw-away socket (:func:`probe_gso`);
``PILOT_UDP_GSO=0`` forces one syscall per packet (:func:`batching_wanted`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct

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

SEGMENT_SIZE = struct.Struct("=H")
GRO_SIZE = struct.Struct("=i")
GRO_ANCILLARY_SPACE = socket.CMSG_SPACE(GRO_SIZE.size)
#: errors that mean "the kernel could not take it now": the packet is lost, the sender retransmits
DROPPED_ERRNOS = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.ENOMEM)
#: errors a GSO send gets where the device or path cannot segment (quic-go and quinn turn GSO off on them)
GSO_REFUSED_ERRNOS = (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP)


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


def send_gso(sock, run: list, segment_size: int, addr) -> None:
    """One ``sendmsg`` carrying ``run`` (a :func:`gso_runs` run) for the kernel to cut
    into ``segment_size`` datagrams.  The packets are the iovec, gathered by the
    kernel rather than joined here.  OSError as ``sendmsg`` raises it (see
    ``GSO_REFUSED_ERRNOS`` and ``DROPPED_ERRNOS``)."""
    sock.sendmsg(run, [(SOL_UDP, UDP_SEGMENT, SEGMENT_SIZE.pack(segment_size))], 0, addr)


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
        if level == SOL_UDP and kind == UDP_GRO and len(data) >= GRO_SIZE.size:
            return GRO_SIZE.unpack_from(data)[0]
    return 0


def set_dont_fragment(sock: socket.socket) -> bool:
    """Set PMTUDISC_PROBE on ``sock`` (both families on an IPv6 socket: it may carry IPv4 too).

    A send larger than the interface MTU then fails with EMSGSIZE (counted
    as ``send_too_big``) instead of leaving as fragments."""
    options = [(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER), (socket.IPPROTO_IP, IP_MTU_DISCOVER)] if sock.family == socket.AF_INET6 else [(socket.IPPROTO_IP, IP_MTU_DISCOVER)]
    done = False
    for level, option in options:
        # Not Linux, or no IPv4 on this socket: the kernel may fragment, as before.
        with contextlib.suppress(OSError):
            sock.setsockopt(level, option, PMTUDISC_PROBE)
            done = True
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
