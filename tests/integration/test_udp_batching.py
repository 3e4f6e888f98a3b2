"""
The node's UDP socket on real loopback sockets, with kernel batching (GSO on
send, GRO on receive) and with the fallback forced (one syscall per packet):
both deliver the same datagrams, and a real stream between two in-process
nodes arrives byte-exact either way.
"""

from __future__ import annotations

import collections
import hashlib
import os
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock

from pilotproto.node.udpsock import SocketPort, probe_gso

from .inproc import make_node, start_beacon, stop_all, trust_each_other

pytestmark = pytest.mark.integration

GSO = pytest.param(True, id="gso", marks=pytest.mark.skipif(
    not probe_gso(2), reason="this kernel has no UDP_SEGMENT (Linux < 4.18): only the plain path runs"))
PLAIN = pytest.param(False, id="plain")


def _burst():
    """What a stream sender makes: full packets, a short tail, acks, and a second destination's packets."""
    full = [i.to_bytes(4, "big") + os.urandom(1196) for i in range(150)]
    return full + [b"tail" * 50, b"ack-1", b"ack-2"]


@pytest.mark.parametrize("batching", [GSO, PLAIN])
def test_real_datagrams_arrive_the_same_with_and_without_batching(batching):
    clock = MemoryReactorClock()  # only for callLater and addReader: reads are driven here
    got = collections.defaultdict(list)
    sender_counters, receiver_counters = collections.Counter(), collections.Counter()
    sender = SocketPort.listen(clock, 0, "127.0.0.1", lambda d, a: None, sender_counters, batching)
    one = SocketPort.listen(clock, 0, "127.0.0.1", lambda d, a: got["one"].append((d, a)), receiver_counters, batching)
    two = SocketPort.listen(clock, 0, "127.0.0.1", lambda d, a: got["two"].append((d, a)), collections.Counter(), batching)
    try:
        packets = _burst()
        for data in packets:
            sender.enqueue(data, one.local_address())
        sender.enqueue(b"for two", two.local_address())
        clock.advance(0)
        deadline = time.monotonic() + 5
        while (len(got["one"]) < len(packets) or not got["two"]) and time.monotonic() < deadline:
            one.doRead()
            two.doRead()
            time.sleep(0.001)
        assert [d for d, _ in got["one"]] == packets
        assert [d for d, _ in got["two"]] == [b"for two"]
        assert {a for _, a in got["one"]} == {sender.local_address()}
        assert sender_counters["packets_sent"] == len(packets) + 1
        assert receiver_counters["datagrams"] == len(packets)
        if batching:
            assert sender.status()["gso"] is True and sender.status()["gro"] is True
            # 150 full packets in 64 KiB bursts (53 each) + the tail packet riding on the last one + 1 ack run
            assert sender_counters["send_syscalls"] < 10 and sender_counters["gso_bursts"] >= 3
            assert receiver_counters["recv_syscalls"] < 10
        else:
            assert sender_counters["send_syscalls"] == len(packets) + 1 and sender_counters["gso_bursts"] == 0
            assert receiver_counters["recv_syscalls"] == len(packets)
    finally:
        for port in (sender, one, two):
            port.close()


class Sink(Protocol):
    def connectionMade(self):
        self.digest, self.size = hashlib.sha256(), 0

    def dataReceived(self, data):
        self.digest.update(data)
        self.size += len(data)

    def connectionLost(self, reason=None):
        self.factory.finished.callback((self.size, self.digest.hexdigest()))


@pytest.mark.parametrize("batching", [GSO, PLAIN])
@pytest_twisted.inlineCallbacks
def test_a_stream_arrives_byte_exact_with_and_without_batching(tmp_path, monkeypatch, batching):
    monkeypatch.setenv("PILOT_UDP_GSO", "1" if batching else "0")
    beacon = start_beacon()
    a = make_node(tmp_path, beacon, "agent-a")
    b = make_node(tmp_path, beacon, "agent-b")
    try:
        yield trust_each_other(a, b)
        factory = Factory.forProtocol(Sink)
        factory.finished = defer.Deferred()
        yield b.listen(9000, factory)
        data = os.urandom(4 * 1024 * 1024)
        sender = yield a.dial("agent-b", 9000, Factory.forProtocol(Protocol))
        sender.transport.write(data)
        sender.transport.loseConnection()
        size, digest = yield factory.finished.addTimeout(60, reactor)
        assert (size, digest) == (len(data), hashlib.sha256(data).hexdigest())
        info = yield a.info()
        udp = info["udp"]
        assert udp["gso"] is batching and udp["gro"] is batching and udp["batching"] is batching
        # Path MTU discovery may raise the packet size to 9216 on loopback: 4 MiB is still 450+ packets.
        assert udp["packets_sent"] > len(data) // 9216
        if batching:
            # Most packets leave in bursts: far fewer syscalls than packets.
            assert udp["gso_bursts"] > 0 and udp["send_syscalls"] < udp["packets_sent"]
        else:
            assert udp.get("gso_bursts", 0) == 0 and udp["send_syscalls"] == udp["packets_sent"]
    finally:
        yield stop_all(a, b)
        beacon.stopService()
