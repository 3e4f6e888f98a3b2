"""
Issue 9 end to end: a real beacon process against an attacker with its own
keys and raw sockets, on loopback.

* A name is not free for the taking after the beacon restarts (killed with
  SIGKILL: what it had written survives), only after its owner releases it
  with ``pilotctl release``.
* A signed keepalive sent with a forged source address steers neither
  relayed frames nor mail pushes there, and earns that address at most 3x
  the bytes sent in its name.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time

import pytest

from pilotproto.identity import Identity
from pilotproto.identity.keys import KEY_FILE
from pilotproto.identity.keys import load as load_identity
from pilotproto.wire import DecodeError, relay
from pilotproto.wire import beacon as msgs

from .conftest import TWISTD, assert_clean, environment, free_udp_port, pilotctl, wait_for

pytestmark = pytest.mark.integration


class BeaconProcess:
    def __init__(self, workdir, port, *extra):
        self.workdir, self.port, self.extra = workdir, port, extra
        self.process = None
        self.logs = []

    def start(self):
        log = os.path.join(self.workdir, f"beacon-{len(self.logs)}.log")
        self.logs.append(log)
        argv = TWISTD + ["-n", "--pidfile=", "--logfile", log, "pilot", "beacon", "--interface", "127.0.0.1", "--port", str(self.port)]
        self.process = subprocess.Popen(
            argv + list(self.extra), env=environment(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=self.workdir
        )
        assert wait_for(lambda: os.path.exists(log) and "BeaconDatagramProtocol starting" in open(log).read(), 10)
        return self

    def kill(self):
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def log_text(self):
        return "".join(open(p).read() for p in self.logs if os.path.exists(p))


class UDPNode:
    """A node (or an attacker's node) speaking the beacon protocol by hand."""

    def __init__(self, beacon_port, hostname, identity=None, public=True, host="127.0.0.1"):
        self.beacon = ("127.0.0.1", beacon_port)
        self.hostname = hostname
        self.public = public
        self.identity = identity or Identity.generate()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.relay_key = None
        self.counter = int(time.time() * 1e9)
        self.seq = int(time.time() * 1e9)
        self.frames = []

    def close(self):
        self.sock.close()

    def signed(self, msg):
        self.seq += 1
        return msgs.sign(msg, self.identity, self.seq)

    def ask(self, msg, timeout=2.0):
        self.sock.sendto(msgs.encode(msg), self.beacon)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                data, _ = self.sock.recvfrom(4096)
            except socket.timeout:
                break
            if data[:1] == bytes([relay.KIND_FROM_BEACON]):
                self.frames.append(data)
                continue
            try:
                reply = msgs.decode(data)
            except DecodeError:
                continue
            if reply.request_id == msg.request_id:
                return reply
        raise AssertionError(f"no answer to {type(msg).__name__}")

    def register(self):
        challenge = self.ask(msgs.Hello(1))
        flags = msgs.FLAG_PUBLIC if self.public else 0
        reply = self.ask(self.signed(msgs.Register(2, challenge.nonce, self.hostname, flags)))
        if isinstance(reply, msgs.Registered):
            key = challenge.beacon_key
            self.relay_key = relay.relay_key(self.identity.x25519_private(), key, self.identity.public_key, key)
        return reply

    def relay_to(self, other, payload):
        self.counter += 1
        frame = relay.seal_to_beacon(self.relay_key, self.identity.address.to_bytes(), other.identity.address.to_bytes(), self.counter, payload)
        self.sock.sendto(frame, self.beacon)

    def drain(self, seconds=0.5):
        """Every datagram that arrives within ``seconds``."""
        got = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                got.append(self.sock.recvfrom(4096)[0])
            except socket.timeout:
                break
        return got


def test_a_beacon_restart_frees_no_name_and_only_the_owner_releases_it(tmp_path):
    port = free_udp_port()
    beacon = BeaconProcess(str(tmp_path), port, "--state-dir", str(tmp_path / "state")).start()
    home = str(tmp_path / "victim")
    code, doc = pilotctl(home, "init", "--hostname", "victim", "--beacon", f"127.0.0.1:{port}")
    assert code == 0, doc
    owner = UDPNode(port, "victim", identity=load_identity(os.path.join(home, KEY_FILE)))
    thief = UDPNode(port, "victim")
    try:
        assert isinstance(owner.register(), msgs.Registered)
        time.sleep(1.5)  # the beacon writes its state once a second
        beacon.kill()
        beacon.start()
        # Right after the restart the thief is first: refused all the same.
        refused = thief.register()
        assert isinstance(refused, msgs.Error) and refused.code == "name_taken", refused
        assert isinstance(owner.register(), msgs.Registered)
        code, doc = pilotctl(home, "release")
        assert code == 0 and doc["data"]["released"] is True, doc
        assert isinstance(thief.register(), msgs.Registered)
        code, doc = pilotctl(home, "release")
        assert code == 1 and doc["code"] == "not_found", doc
    finally:
        owner.close()
        thief.close()
        beacon.kill()
    assert_clean(beacon.log_text())


def _spoofed(source, destination, payload):
    """A UDP datagram from ``source`` (host, port) that this host did not send from there."""
    udp = struct.pack("!HHHH", source[1], destination[1], 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
        socket.inet_aton(source[0]), socket.inet_aton(destination[0]),
    )  # fmt: skip
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        raw.sendto(ip + udp, (destination[0], 0))


def test_a_spoofed_keepalive_steers_neither_relay_nor_mail(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("forging source addresses needs a raw socket (root)")
    port = free_udp_port()
    beacon = BeaconProcess(str(tmp_path), port).start()
    mallory, peer = UDPNode(port, "mallory"), UDPNode(port, "peer")
    victim = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    victim.bind(("127.0.0.5", 0))
    victim_address = victim.getsockname()
    try:
        assert isinstance(mallory.register(), msgs.Registered)
        assert isinstance(peer.register(), msgs.Registered)
        sent = 0
        for _ in range(20):
            keepalive = msgs.encode(mallory.signed(msgs.Keepalive(4)))
            _spoofed(victim_address, ("127.0.0.1", port), keepalive)
            sent += len(keepalive)
        time.sleep(0.2)
        # Mallory's partner relays to it, and asks it for trust (a mail push).
        for _ in range(50):
            peer.relay_to(mallory, b"x" * 1000)
        handshake = peer.signed(msgs.HandshakeRequest(8, 1, False, b"mallory", "peer", "hi"))
        assert isinstance(peer.ask(handshake), msgs.Ok)
        at_mallory = mallory.drain(1.0)
        victim.settimeout(0.2)
        at_victim = []
        while True:
            try:
                at_victim.append(victim.recvfrom(4096)[0])
            except socket.timeout:
                break
        frames = [d for d in at_mallory if d[:1] == bytes([relay.KIND_FROM_BEACON])]
        pushes = [d for d in at_mallory if d[:1] == bytes([msgs.KIND]) and isinstance(msgs.decode(d), msgs.Deliver)]
        assert len(frames) == 50 and pushes
        assert all(d[:1] == bytes([msgs.KIND]) for d in at_victim)
        assert not any(isinstance(msgs.decode(d), msgs.Deliver) for d in at_victim)
        assert sum(len(d) for d in at_victim) <= 3 * sent
    finally:
        for s in (mallory, peer):
            s.close()
        victim.close()
        beacon.kill()
    assert_clean(beacon.log_text())


def test_one_address_cannot_hoard_names_and_the_limit_is_said(tmp_path):
    # Today's default is 32 new names per address per 10 minutes; a small
    # limit keeps the test short, and the flood is bounded in count.
    port = free_udp_port()
    beacon = BeaconProcess(str(tmp_path), port, "--register-per-address", "5/600").start()
    nodes = [UDPNode(port, f"hoard-{i}") for i in range(8)]
    try:
        answers = [node.register() for node in nodes]
        registered = [a for a in answers if isinstance(a, msgs.Registered)]
        limited = [a for a in answers if isinstance(a, msgs.Error)]
        assert len(registered) == 5, answers
        assert len(limited) == 3 and {a.code for a in limited} == {"rate_limited"}, answers
        assert all(a.retry_after > 0 for a in limited), answers
        # Nothing else degrades: an owner that registered keeps its name.
        again = nodes[0].register()
        assert isinstance(again, msgs.Registered), again
    finally:
        for node in nodes:
            node.close()
        beacon.kill()
    assert_clean(beacon.log_text())
