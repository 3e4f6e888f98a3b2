"""
A user-space "reorder box": an Ethernet bridge of two interfaces that holds
back a random fraction of frames for a fixed delay, so later frames overtake
them.

The kernel's ``netem`` qdisc would do this, but the lab cannot count on it
being built (it is missing on the machines this was written on), and
nftables can drop packets but not delay them.  So a site created with
``reorder > 0`` gets one more namespace on its uplink (built by
:class:`pilotproto.lab.Lab`, which runs this module there),

    site router "wan" <-> [box: "site" ... "core"] <-> core router "s<i>"

and this module runs in it, copying frames between the two interfaces with
``AF_PACKET`` sockets.  Frames a kernel hands over before the checksum is
filled in (veth passes partial checksums along) get their UDP/TCP checksum
computed here; without that the far end would drop them.  The uplink
interfaces have GSO limited to single segments so every frame fits the MTU.
"""

from __future__ import annotations

import argparse
import heapq
import random
import select
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
DEFAULT_DELAY = 0.03
MAX_FRAME = 65536
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
SOCKET_BUFFER = 8 * 1024 * 1024


def internet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def fix_checksum(frame: bytes) -> bytes:
    """``frame`` with its IPv4 UDP/TCP checksum recomputed (others unchanged)."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return frame
    ip = 14
    ihl = (frame[ip] & 0x0F) * 4
    total_length = struct.unpack_from("!H", frame, ip + 2)[0]
    flags_offset = struct.unpack_from("!H", frame, ip + 6)[0]
    proto = frame[ip + 9]
    if flags_offset & 0x3FFF or proto not in (6, 17):
        return frame  # fragments carry no complete L4 segment
    l4 = ip + ihl
    end = ip + total_length
    if end > len(frame) or l4 + 8 > end:
        return frame
    where = l4 + (6 if proto == 17 else 16)
    if proto == 6 and l4 + 20 > end:
        return frame
    segment = bytearray(frame[l4:end])
    segment[where - l4 : where - l4 + 2] = b"\0\0"
    pseudo = frame[ip + 12 : ip + 20] + struct.pack("!BBH", 0, proto, end - l4)
    checksum = internet_checksum(pseudo + bytes(segment))
    if proto == 17 and checksum == 0:
        checksum = 0xFFFF
    return frame[:where] + struct.pack("!H", checksum) + frame[where + 2 :]


class ReorderBox:
    """Copies frames between two interfaces, delaying some of them."""

    def __init__(self, left: str, right: str, fraction: float, delay: float, rng: random.Random, clock=time.monotonic):
        self.fraction = fraction
        self.delay = delay
        self.rng = rng
        self.clock = clock
        self.sockets = {}
        for mine, other in ((left, right), (right, left)):
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            # Room for bursts while a delayed frame's turn comes round.
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SOCKET_BUFFER)
            s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SOCKET_BUFFER)
            s.bind((mine, 0))
            self.sockets[mine] = (s, other)
        self.by_name = {name: pair[0] for name, pair in self.sockets.items()}
        self.held: list[tuple[float, int, str, bytes]] = []
        self._order = 0

    def run_forever(self) -> None:
        readers = [pair[0] for pair in self.sockets.values()]
        names = {pair[0]: name for name, pair in self.sockets.items()}
        while True:
            wait = None
            if self.held:
                wait = max(0.0, self.held[0][0] - self.clock())
            for s in select.select(readers, [], [], wait)[0]:
                frame, addr = s.recvfrom(MAX_FRAME)
                if addr[2] == PACKET_OUTGOING:
                    continue  # our own transmissions, seen again
                self.received(self.sockets[names[s]][1], frame)
            self.release_due()

    def received(self, out: str, frame: bytes) -> None:
        frame = fix_checksum(frame)
        if self.rng.random() < self.fraction:
            self._order += 1
            heapq.heappush(self.held, (self.clock() + self.delay, self._order, out, frame))
        else:
            self._send(out, frame)

    def release_due(self) -> None:
        now = self.clock()
        while self.held and self.held[0][0] <= now:
            _, _, out, frame = heapq.heappop(self.held)
            self._send(out, frame)

    def _send(self, out: str, frame: bytes) -> None:
        try:
            self.by_name[out].send(frame)
        except OSError:
            pass  # e.g. an oversized frame: lost, as on a real link


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pilotproto.lab.reorder")
    parser.add_argument("--fraction", type=float, required=True)
    parser.add_argument("--delay-ms", type=float, default=DEFAULT_DELAY * 1000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("left")
    parser.add_argument("right")
    args = parser.parse_args(argv)
    box = ReorderBox(args.left, args.right, args.fraction, args.delay_ms / 1000, random.Random(args.seed))
    print("ready", flush=True)
    box.run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
