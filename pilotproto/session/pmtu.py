"""
Path MTU discovery for one path (direct, or the UDP relay to the beacon):
packetization-layer probing as in DPLPMTUD (RFC 8899).  One Automat machine.

::

    idle --start--> searching --done--> complete --raise_due--> searching
                      |  ^                  |
                      |  '--- black_hole ---'
                      '--- black_hole ---> searching (from the base again)
    any --stop--> stopped

Every path starts at ``BASE_MTU`` (1280: IPv6's minimum, which every path
that carries pilot at all carries).  The machine then probes larger sizes
with padded probes the peer acknowledges (the owner builds and sends them;
they carry no data, so a lost probe costs nothing but itself):

* first the ceiling (the local interface MTU, so on the usual 1500-byte path
  one probe settles it), then a binary search between the largest size
  acknowledged and the smallest size lost, down to ``GRANULARITY`` bytes;
* a size is lost when ``MAX_PROBES`` probes of it go unacknowledged, each
  given ``probe_timeout`` seconds;
* a confirmed size is reported at once (``on_change``), so bulk transfers
  use it while the search continues upwards;
* the search stops when the window is narrower than ``GRANULARITY``; every
  ``RAISE_INTERVAL`` seconds a complete search tries the ceiling again (a
  path may have grown);
* ``black_hole`` (the owner saw full-size packets lost while small ones get
  through) drops to the base at once and searches again from there.

Sizes here are IP-level MTUs; the owner subtracts the IP and UDP headers and
its own overhead to size its packets.
"""

from __future__ import annotations

import os
import socket
import struct

from automat import MethodicalMachine
from twisted.logger import Logger

from ..wire.tunnel import DATA_HEADER_LEN, TAG_LEN

BASE_MTU = 1280
#: a path announcing more than this is not believed (the largest jumbo frames)
MAX_MTU = 9216
GRANULARITY = 8
MAX_PROBES = 3
PROBE_TIMEOUT = 0.5
RAISE_INTERVAL = 600.0
#: IP + UDP header bytes, by address family
HEADERS = {4: 28, 6: 48}
#: what the tunnel adds to every plaintext: the data header (kind, version,
#: receiver index, counter) and the AES-GCM tag (wire/tunnel.py, tunnel/record.py)
TUNNEL_OVERHEAD = DATA_HEADER_LEN + TAG_LEN
#: Linux's IP_MTU and IPV6_MTU (<linux/in.h>, <linux/in6.h>); Python names only some
IP_MTU = getattr(socket, "IP_MTU", 14)
IPV6_MTU = getattr(socket, "IPV6_MTU", 24)


def family_of(host: str) -> int:
    return 6 if ":" in host else 4


def plaintext_size(mtu: int, family: int, framing: int = 0) -> int:
    """The largest tunnel plaintext whose whole IP packet is ``mtu`` bytes,
    when ``framing`` bytes wrap the tunnel packet (the relay's 0xD0 frame)."""
    return mtu - HEADERS[family] - framing - TUNNEL_OVERHEAD


def route_mtu(host: str, port: int) -> int | None:
    """The MTU of the local route towards ``host`` (the interface's, or a smaller
    per-route one), capped at MAX_MTU; None when the kernel cannot say.

    A throw-away UDP socket is connected (no packet is sent) and asked for
    IP_MTU, as the kernel answers only for a connected socket."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((host, port))
            if family == socket.AF_INET6:
                mtu = sock.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU)
            else:
                mtu = sock.getsockopt(socket.IPPROTO_IP, IP_MTU)
    except OSError:
        return None
    return min(int(mtu), MAX_MTU)


class PathMtu:
    """Finds the largest packet one path carries.

    ``send_probe(size, nonce)`` sends one probe whose IP packet is ``size``
    bytes; the owner calls :meth:`acked` with the nonce the peer echoes.
    ``on_change(mtu)`` hears every change of the confirmed MTU.
    """

    _machine = MethodicalMachine()
    log = Logger()

    def __init__(self, clock, send_probe, on_change, *, ceiling: int = 1500, probe_timeout: float = PROBE_TIMEOUT, random_bytes=os.urandom):
        self._clock = clock
        self._send_probe = send_probe
        self._on_change = on_change
        self.ceiling = max(BASE_MTU, min(int(ceiling), MAX_MTU))
        self._probe_timeout = probe_timeout
        self._random_bytes = random_bytes
        #: the largest size confirmed on this path
        self.mtu = BASE_MTU
        self._lost_at = self.ceiling + 1
        self._size = 0
        self._nonce = 0
        self._tries = 0
        self._timer = None
        self.probes_sent = 0

    # -- states -------------------------------------------------------------------

    @_machine.state(initial=True)
    def idle(self):
        "not probing yet"

    @_machine.state()
    def searching(self):
        "a probe of one size is out"

    @_machine.state()
    def complete(self):
        "the search converged; waiting to try the ceiling again"

    @_machine.state()
    def stopped(self):
        "the path is gone"

    # -- inputs --------------------------------------------------------------------

    @_machine.input()
    def start(self):
        "the path is in use (verified direct, or the relay)"

    @_machine.input()
    def stop(self):
        "the path went away"

    @_machine.input()
    def _probe_acked(self):
        "the peer acknowledged the probe out"

    @_machine.input()
    def _probe_lost(self):
        "MAX_PROBES probes of the current size went unanswered"

    @_machine.input()
    def _converged(self):
        "nothing left to search"

    @_machine.input()
    def raise_due(self):
        "time to see whether the path grew"

    @_machine.input()
    def black_hole(self):
        "full-size packets are being lost while small ones arrive"

    # -- public ---------------------------------------------------------------------

    def acked(self, nonce: int) -> None:
        """The peer echoed ``nonce``; anything but the probe out is ignored."""
        if self._size and nonce == self._nonce:
            self._probe_acked()

    @property
    def state(self) -> str:
        return self._state_name

    # -- outputs ---------------------------------------------------------------------

    def _arm(self, delay, callback):
        self._cancel()
        self._timer = self._clock.callLater(delay, callback)

    def _cancel(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _next_size(self) -> int | None:
        low, high = self.mtu, self._lost_at
        if high - low <= GRANULARITY:
            return None
        if high == self.ceiling + 1:
            return self.ceiling  # the usual path: one probe settles it
        return (low + high) // 2

    def _probe(self, size: int):
        self._size = size
        self._tries = 0
        self._send_one()

    def _send_one(self):
        self._timer = None
        if self._tries >= MAX_PROBES:
            self._probe_lost()
            return
        self._tries += 1
        self._nonce = struct.unpack("!Q", self._random_bytes(8))[0]
        self.probes_sent += 1
        self._send_probe(self._size, self._nonce)
        self._arm(self._probe_timeout, self._send_one)

    def _probe_next_or_finish(self):
        size = self._next_size()
        if size is None:
            self._size = 0
            self._converged()
        else:
            self._probe(size)

    @_machine.output()
    def _begin(self):
        self._state_name = "searching"
        self._lost_at = self.ceiling + 1
        self._probe_next_or_finish()

    @_machine.output()
    def _confirm(self):
        self._cancel()
        if self._size > self.mtu:
            self.mtu = self._size
            self._on_change(self.mtu)
        self._probe_next_or_finish()

    @_machine.output()
    def _too_big(self):
        self._lost_at = min(self._lost_at, self._size)
        self._probe_next_or_finish()

    @_machine.output()
    def _settle(self):
        self._state_name = "complete"
        self.log.debug("path MTU {mtu} (ceiling {ceiling})", mtu=self.mtu, ceiling=self.ceiling)
        if self.mtu < self.ceiling:
            self._arm(RAISE_INTERVAL, self.raise_due)

    @_machine.output()
    def _drop_to_base(self):
        self._cancel()
        self._size = 0
        if self.mtu != BASE_MTU:
            self.log.info("packets of {mtu} bytes are being lost: back to {base} and searching again", mtu=self.mtu, base=BASE_MTU)
            self.mtu = BASE_MTU
            self._on_change(self.mtu)

    @_machine.output()
    def _halt(self):
        self._cancel()
        self._size = 0
        self._state_name = "stopped"

    _state_name = "idle"

    # -- transitions -----------------------------------------------------------------

    idle.upon(start, enter=searching, outputs=[_begin])
    idle.upon(stop, enter=stopped, outputs=[_halt])
    for _ignored in (_probe_acked, _probe_lost, _converged, raise_due, black_hole):
        idle.upon(_ignored, enter=idle, outputs=[])

    searching.upon(_probe_acked, enter=searching, outputs=[_confirm])
    searching.upon(_probe_lost, enter=searching, outputs=[_too_big])
    searching.upon(_converged, enter=complete, outputs=[_settle])
    searching.upon(black_hole, enter=searching, outputs=[_drop_to_base, _begin])
    searching.upon(stop, enter=stopped, outputs=[_halt])
    for _ignored in (start, raise_due):
        searching.upon(_ignored, enter=searching, outputs=[])

    complete.upon(raise_due, enter=searching, outputs=[_begin])
    complete.upon(black_hole, enter=searching, outputs=[_drop_to_base, _begin])
    complete.upon(stop, enter=stopped, outputs=[_halt])
    for _ignored in (start, _probe_acked, _probe_lost, _converged):
        complete.upon(_ignored, enter=complete, outputs=[])

    for _ignored in (start, stop, _probe_acked, _probe_lost, _converged, raise_due, black_hole):
        stopped.upon(_ignored, enter=stopped, outputs=[])
    del _ignored
