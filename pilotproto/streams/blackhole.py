"""
A path MTU black hole, as the streams layer sees it (RFC 8899 section 4.3).

When the path shrinks under the packet size in use (a tunnel appears on the
way, a route changes) and the ICMP that would say so is filtered, every
full-size packet vanishes while small ones (ACKs, tails, pings) still get
through.  Congestion control alone would shrink the window for ever; the
cure is a smaller packet size, which only path MTU discovery can choose.

The rule, kept simple on purpose:

* a packet is *large* when it is bigger than ``small_limit`` (the packet
  size every path carries: what the MTU search's base allows);
* ``LOST_LARGE`` large packets declared lost, with no large packet
  acknowledged in between, while at least one small packet *was*
  acknowledged in that time: a black hole;
* or ``PROBE_TIMEOUTS`` probe timeouts in a row with nothing acknowledged
  while the packet size is above ``small_limit`` (a transfer made only of
  large packets gets no ACK at all to compare with);
* any large packet acknowledged clears the count; after reporting, the
  count starts over (the owner lowers the size first).

Ordinary congestion loses small and large packets alike, and the large ones
that do arrive clear the count, so a congested path is not mistaken for a
black hole.
"""

from __future__ import annotations

from . import frames

LOST_LARGE = 8
PROBE_TIMEOUTS = 3
#: the stream packet every path carries: the plaintext of a 1280-byte IPv6
#: packet (1280 - 40 IPv6 - 8 UDP - 14 tunnel header - 16 AES-GCM tag)
SMALL_PACKET = 1280 - 48 - 30


def resize(connection, size: int) -> None:
    """Set ``connection``'s packet size to ``size``, and everything counted in packets with it.

    The pacer's bucket, the controller's minimum window (BBR's and
    NewReno's are a number of packets) and the ACK frequency's packets per
    window follow.  Packets in flight keep their size; their frames, if
    lost, go out again in packets of the new size."""
    if size < 128:
        raise ValueError("max_packet must be at least 128 bytes")
    old, cc, pacer = connection.max_packet, connection.recovery.cc, connection.pacer
    if size == old:
        return
    connection.max_packet = pacer.max_packet = cc.max_packet = connection.ack_frequency.max_packet = size
    if hasattr(cc, "min_window"):
        cc.min_window = cc.min_window * size // old
    pacer.capacity = max(pacer.capacity, pacer.burst_packets * size)
    connection.max_datagram = size - frames.HEADER_SIZE - frames.DATAGRAM_OVERHEAD
    connection.stats["max_packet"] = size


class BlackHoleDetector:
    """Counts losses by size; calls ``on_black_hole()`` when the rule above holds."""

    def __init__(self, small_limit: int, on_black_hole):
        self.small_limit = small_limit
        self._on_black_hole = on_black_hole
        self._lost_large = 0
        self._small_acked = False
        self._timeouts = 0
        self.reported = 0

    def on_acked(self, packets) -> None:
        if not packets:
            return
        self._timeouts = 0
        limit = self.small_limit
        for packet in packets:
            if packet.size > limit:
                self._lost_large = 0
                self._small_acked = False
                return
        self._small_acked = True

    def on_lost(self, packets) -> None:
        limit = self.small_limit
        self._lost_large += sum(1 for packet in packets if packet.size > limit)
        if self._lost_large >= LOST_LARGE and self._small_acked:
            self._report()

    def on_probe_timeout(self, max_packet: int) -> None:
        if max_packet <= self.small_limit:
            self._timeouts = 0
            return
        self._timeouts += 1
        if self._timeouts >= PROBE_TIMEOUTS:
            self._report()

    def _report(self) -> None:
        self._lost_large = 0
        self._small_acked = False
        self._timeouts = 0
        self.reported += 1
        self._on_black_hole()
