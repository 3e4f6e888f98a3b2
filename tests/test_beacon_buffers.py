"""The beacon's UDP sockets ask for large buffers (a relayed burst is a whole
congestion window), read back what the kernel granted, and warn when it capped them."""

from __future__ import annotations

import socket

from twisted.logger import globalLogPublisher

from pilotproto.beacon import protocol
from pilotproto.beacon.protocol import SOCKET_BUFFER, BeaconDatagramProtocol, enlarge_buffers


def _cap(name: str) -> int:
    with open(f"/proc/sys/net/core/{name}") as f:
        return int(f.read())


def test_a_real_socket_gets_the_buffers_the_kernel_allows():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        default = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        granted = enlarge_buffers(sock)
    finally:
        sock.close()
    # Linux doubles what it was asked for (bookkeeping) and caps at rmem_max/wmem_max.
    assert granted["rcvbuf"] >= min(SOCKET_BUFFER, _cap("rmem_max"))
    assert granted["sndbuf"] >= min(SOCKET_BUFFER, _cap("wmem_max"))
    if _cap("rmem_max") > default:
        assert granted["rcvbuf"] > default


class _CappedSocket:
    """A socket whose kernel grants 200 KiB whatever is asked (net.core.rmem_max low)."""

    def __init__(self):
        self.asked = {}

    def setsockopt(self, level, option, value):
        self.asked[option] = value

    def getsockopt(self, level, option):
        return 200 * 1024


class _Transport:
    def __init__(self, sock):
        self.socket = sock


def test_start_asks_for_large_buffers_and_warns_when_capped():
    sock = _CappedSocket()
    proto = BeaconDatagramProtocol(server=None)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        proto.makeConnection(_Transport(sock))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert sock.asked == {socket.SO_RCVBUF: SOCKET_BUFFER, socket.SO_SNDBUF: SOCKET_BUFFER}
    assert proto.buffers == {"rcvbuf": 200 * 1024, "sndbuf": 200 * 1024}
    warnings = [e for e in events if e.get("log_namespace") == protocol.__name__]
    assert warnings and "rmem_max" in warnings[0]["log_format"]


def test_start_is_quiet_when_the_buffers_are_large():
    class Roomy(_CappedSocket):
        def getsockopt(self, level, option):
            return 2 * SOCKET_BUFFER

    proto = BeaconDatagramProtocol(server=None)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        proto.makeConnection(_Transport(Roomy()))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert proto.buffers["rcvbuf"] == 2 * SOCKET_BUFFER
    assert not [e for e in events if e.get("log_namespace") == protocol.__name__]
