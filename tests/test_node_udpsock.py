"""
The node's UDP socket I/O without a running reactor: how bursts are cut into
GSO runs and GRO buffers into packets, how sends coalesce per reactor turn
(on a Clock), how a full or refusing kernel is counted instead of raised,
the source cache, and the environment switch that forces one syscall per packet.
"""

from __future__ import annotations

import collections
import errno
import socket
import struct

import pytest
from twisted.internet.testing import MemoryReactorClock

from pilotproto.node import udpsock
from pilotproto.node.udpsock import MAX_BURST_BYTES, MAX_SEGMENTS, SocketPort, batching_wanted, gro_segment_size, gso_runs, split_gro
from pilotproto.wire import Endpoint
from pilotproto.wire.sources import Direct, DirectSources


def _packets(*sizes):
    return [bytes([i % 256]) * size for i, size in enumerate(sizes)]


def test_equal_packets_make_one_run_and_a_shorter_last_packet_ends_it():
    packets = _packets(1200, 1200, 1200, 700, 1200, 1200)
    assert [(size, len(run)) for size, run in gso_runs(packets)] == [(1200, 4), (1200, 2)]


def test_a_longer_packet_starts_a_new_run():
    packets = _packets(500, 500, 1200, 1200, 90)
    assert [(size, len(run)) for size, run in gso_runs(packets)] == [(500, 2), (1200, 3)]


def test_runs_respect_the_kernels_segment_and_byte_limits():
    small = _packets(*[100] * (MAX_SEGMENTS + 5))
    assert [len(run) for _, run in gso_runs(small)] == [MAX_SEGMENTS, 5]
    big = _packets(*[1400] * 100)
    runs = gso_runs(big)
    assert all(sum(map(len, run)) <= MAX_BURST_BYTES for _, run in runs)
    assert [len(run) for _, run in runs] == [46, 46, 8]


def test_runs_keep_every_packet_in_order():
    sizes = [1200] * 70 + [30, 1200, 1300, 1300, 5, 5, 5, 1200]
    packets = _packets(*sizes)
    assert [p for _, run in gso_runs(packets) for p in run] == packets


def test_gro_buffers_split_back_into_the_packets_gso_glued():
    for size, run in gso_runs(_packets(1200, 1200, 1200, 333, 64, 64)):
        glued = bytearray(b"".join(run) + b"junk past the end")
        assert split_gro(glued, sum(map(len, run)), size) == run


def test_without_a_segment_size_a_read_is_one_packet():
    assert split_gro(bytearray(b"abcdef"), 4, 0) == [b"abcd"]
    assert split_gro(bytearray(b"abcdef"), 6, 6) == [b"abcdef"]


def test_the_segment_size_comes_from_the_gro_ancillary_data():
    assert gro_segment_size([(udpsock.SOL_UDP, udpsock.UDP_GRO, struct.pack("=i", 1180))]) == 1180
    assert gro_segment_size([(socket.SOL_SOCKET, 99, b"\0\0\0\0")]) == 0
    assert gro_segment_size([]) == 0


@pytest.mark.parametrize("value, wanted", [("", True), ("1", True), ("0", False), ("off", False), ("False", False)])
def test_the_environment_can_force_one_syscall_per_packet(value, wanted):
    assert batching_wanted({"PILOT_UDP_GSO": value}) is wanted
    assert batching_wanted({}) is True


class FakeUDPSocket:
    """What SocketPort calls on a socket; ``fail`` maps a call name to the errno it raises next."""

    family = socket.AF_INET

    def __init__(self):
        self.calls: list = []
        self.fail: dict = {}
        self.options: dict = {}

    def setblocking(self, flag):
        self.calls.append(("setblocking", flag))

    def setsockopt(self, level, option, value):
        self.options[(level, option)] = value

    def getsockopt(self, level, option):
        return self.options.get((level, option), 64)

    def _maybe_fail(self, name):
        code = self.fail.pop(name, None)
        if code is not None:
            raise OSError(code, errno.errorcode[code])

    def sendto(self, data, addr):
        self._maybe_fail("sendto")
        self.calls.append(("sendto", bytes(data), addr, self.options.get((socket.IPPROTO_IP, socket.IP_TTL))))

    def sendmsg(self, buffers, ancdata, flags, addr):
        self._maybe_fail("sendmsg")
        (level, kind, size), = ancdata
        assert (level, kind) == (udpsock.SOL_UDP, udpsock.UDP_SEGMENT)
        self.calls.append(("sendmsg", b"".join(buffers), struct.unpack("=H", size)[0], addr))

    def sent(self):
        return [c[0] for c in self.calls if c[0] != "setblocking"]


A = ("127.0.0.1", 5000)
B = ("127.0.0.1", 6000)


def _port(gso=True):
    reactor, sock, counters = MemoryReactorClock(), FakeUDPSocket(), collections.Counter()
    port = SocketPort(reactor, sock, deliver=None, counters=counters, batching=gso)
    port.gso = gso  # whatever this kernel says: the test decides
    return reactor, sock, counters, port


def test_sends_wait_for_the_end_of_the_turn_and_leave_in_one_gso_burst_per_destination():
    reactor, sock, counters, port = _port()
    for data in _packets(1200, 1200, 1200, 600):
        port.enqueue(data, A)
    port.enqueue(b"ack", B)
    assert sock.sent() == []
    reactor.advance(0)
    assert [(c[0], c[2]) for c in sock.calls if c[0] == "sendmsg"] == [("sendmsg", 1200)]
    assert [c[1] for c in sock.calls if c[0] == "sendto"] == [b"ack"]
    assert counters["packets_sent"] == 5 and counters["send_syscalls"] == 2 and counters["gso_bursts"] == 1


def test_a_full_burst_leaves_at_once():
    reactor, sock, counters, port = _port()
    for data in _packets(*[1000] * MAX_SEGMENTS):
        port.enqueue(data, A)
    assert sock.sent() == ["sendmsg"] and counters["packets_sent"] == MAX_SEGMENTS  # the segment cap
    for data in _packets(*[1200] * 100):
        port.enqueue(data, B)
    assert sock.sent() == ["sendmsg", "sendmsg"] and counters["packets_sent"] == MAX_SEGMENTS + 54  # the 64 KiB cap
    reactor.advance(0)
    assert sock.sent() == ["sendmsg"] * 3 and counters["packets_sent"] == MAX_SEGMENTS + 100


def test_without_gso_every_packet_is_one_sendto():
    reactor, sock, counters, port = _port(gso=False)
    port.enqueue(b"x" * 1200, A)
    port.enqueue(b"y" * 1200, A)
    port.flush()
    assert sock.sent() == ["sendto", "sendto"] and counters["send_syscalls"] == 2


def test_a_full_socket_buffer_is_a_counted_drop_not_an_exception():
    reactor, sock, counters, port = _port()
    sock.fail["sendmsg"] = errno.EAGAIN
    port.send_burst(_packets(1200, 1200, 1200), A)
    sock.fail["sendto"] = errno.ENOBUFS
    port.send_now(b"x", A)
    sock.fail["sendto"] = errno.ENETUNREACH
    port.send_now(b"y", A)
    assert counters["send_dropped"] == 4 and counters["send_errors"] == 1 and counters["packets_sent"] == 0
    assert port.gso


def test_a_kernel_that_refuses_gso_turns_it_off_and_the_burst_still_leaves():
    reactor, sock, counters, port = _port()
    sock.fail["sendmsg"] = errno.EIO
    packets = _packets(1200, 1200, 1200)
    port.send_burst(packets, A)
    assert not port.gso and counters["gso_refused"] == 1
    assert [c[1] for c in sock.calls if c[0] == "sendto"] == packets
    port.send_burst(packets, A)
    assert "sendmsg" not in sock.sent()[-3:]


def test_a_ttl_send_leaves_at_once_with_its_ttl_and_restores_the_default():
    reactor, sock, counters, port = _port()
    port.enqueue(b"queued", A)
    port.send_with_ttl(b"probe", A, 3)
    assert [c[1:] for c in sock.calls if c[0] == "sendto"] == [(b"probe", A, 3)]
    assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_TTL) == 64


def test_sources_are_made_once_per_address_and_bounded():
    sources = DirectSources(size=2)
    first = sources.get(("127.0.0.1", 1))
    assert first == Direct(Endpoint("127.0.0.1", 1)) and sources.get(("127.0.0.1", 1)) is first
    sources.get(("127.0.0.2", 1))
    sources.get(("127.0.0.3", 1))
    assert len(sources._known) == 1
    with pytest.raises(ValueError):
        sources.get(("not an address", 1))


def test_a_burst_handed_over_at_once_leaves_in_whole_runs_and_the_rest_waits_for_the_turn():
    reactor, sock, counters, port = _port()
    port.enqueue_many(_packets(*[1200] * 60), A)  # 54 fit the 64 KiB cap
    assert [(c[0], c[2]) for c in sock.calls if c[0] == "sendmsg"] == [("sendmsg", 1200)]
    assert counters["packets_sent"] == 54
    reactor.advance(0)
    assert counters["packets_sent"] == 60 and sock.sent() == ["sendmsg", "sendmsg"]


def test_a_wakeups_reads_go_up_as_runs_per_sender():
    class Reads(FakeUDPSocket):
        def __init__(self, datagrams):
            super().__init__()
            self.datagrams = list(datagrams)

        def recvfrom(self, size):
            if not self.datagrams:
                raise BlockingIOError()
            return self.datagrams.pop(0)

    sock = Reads([(b"1", A), (b"2", A), (b"3", B), (b"4", A)])
    runs = []
    port = SocketPort(MemoryReactorClock(), sock, deliver=None, counters=collections.Counter(), batching=False,
                      deliver_many=lambda packets, addr: runs.append((packets, addr)))  # fmt: skip
    port.doRead()
    assert runs == [([b"1", b"2"], A), ([b"3"], B), ([b"4"], A)]
