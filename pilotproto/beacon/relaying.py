"""
The beacon's UDP relay, per frame: checked and forwarded from the header alone.

A 0xD0 frame (:mod:`pilotproto.wire.relay`) is never decoded into an
object: the forwarder reads the sender and destination addresses, the
counter and the tag by offset, finds both live records in one dict each
(:meth:`Registry.live_by_address`), checks the tag with the sender's kept
hasher over a memoryview of the payload, and builds the 0xD1 frame with one
copy.  The rules are the slow path's, cheapest first:

* the sender is a live registration whose key can use the relay;
* the tag proves the frame came from that key (BLAKE2b under the relay key
  it shares with this beacon process);
* the counter is fresh (a replay window per sender);
* a frame from an address the sender has not validated is carried (the tag
  proves who sent it, and it goes to the destination's proven address) but
  that address gets at most 3x back, and a path challenge
  (:mod:`pilotproto.beacon.paths`);
* the destination is live and ``allowed(sender, destination)`` (its
  visibility rules);
* both byte quotas have room (:meth:`Quotas.relay`).

Per-node state (replay window, hasher) is made on the node's first relay
frame, so registering costs nothing for it.

A node's GSO burst reaches the beacon as one GRO read: :meth:`RelayForwarder.forward_many`
takes the read's frames together, and a run of frames with the same sender
and destination shares the record lookups, the source and visibility checks;
every frame still has its size, tag, counter and quota checked.
"""

from __future__ import annotations

from ..common.replay import ReplayWindow
from ..identity import x25519_from_ed25519_public
from ..wire import Endpoint, relay

#: a relaying node's ``last_seen`` is refreshed at most this often
TOUCH_RESOLUTION = 1.0


def relay_hasher(beacon_private: bytes, beacon_public: bytes, node_public_key: bytes):
    """The keyed tag hasher for a node's relay frames, or False if its key
    cannot use the relay (not a valid curve point)."""
    try:
        key = relay.relay_key(beacon_private, x25519_from_ed25519_public(node_public_key), node_public_key, beacon_public)
    except Exception:
        return False
    return relay.tag_hasher(key)


def same_source(source, endpoint) -> bool:
    """Is ``source`` (an Endpoint, or a raw UDP address tuple) the record's validated ``endpoint``?"""
    if type(source) is tuple:
        # Only a UDP endpoint can match a UDP source (a StreamEndpoint with the
        # same host and port is a TCP connection, not this socket's peer).
        return type(endpoint) is Endpoint and source[1] == endpoint.port and source[0] == endpoint.host
    return source == endpoint


class RelayForwarder:
    """Forwards relay frames for the beacon server.

    ``hasher_for(public_key)`` makes a node's tag hasher (or False);
    ``allowed(sender, destination)`` is the server's visibility rule."""

    def __init__(self, clock, registry, paths, quotas, counters, hasher_for, allowed):
        self._clock = clock
        self._registry = registry
        self._paths = paths
        self._quotas = quotas
        self._counters = counters
        self._hasher_for = hasher_for
        self._allowed = allowed

    def forward(self, data, source, fleet=None) -> list:
        """The datagrams a 0xD0 frame from ``source`` (an Endpoint or a raw
        UDP address tuple) makes the beacon send: ``(data, destination)``."""
        counters = self._counters
        size = len(data)
        if size < relay.TO_BEACON_OVERHEAD or data[1] != relay.VERSION:
            counters["dropped_malformed"] += 1
            return []
        now = self._clock.seconds()
        registry = self._registry
        sender = registry.live_by_address(data[2:10], now)
        if sender is None:
            counters["relay_dropped_unknown_sender"] += 1
            return []
        mac = sender.relay_mac
        if mac is None:
            mac = sender.relay_mac = self._hasher_for(sender.public_key)
        if mac is False:
            counters["relay_dropped_unknown_sender"] += 1
            return []
        if not relay.frame_tag_ok(mac, data):
            counters["relay_dropped_bad_tag"] += 1
            return []
        window = sender.relay_window
        if window is None:
            window = sender.relay_window = ReplayWindow()
        if not window.accept(int.from_bytes(data[18:26], "big")):
            counters["relay_dropped_replay"] += 1
            return []
        if now - sender.last_seen >= TOUCH_RESOLUTION:
            # Liveness is judged in seconds (ttl 30 s): one touch a second is enough.
            registry.touch(sender)
        out = []
        if not same_source(source, sender.endpoint):
            if type(source) is tuple:
                source = Endpoint(source[0], source[1])
            if not self._paths.arrived(sender, source, size):
                out = self._paths.answer(sender, source, [])
        destination = registry.live_by_address(data[10:18], now)
        if destination is None and fleet is not None:
            # Live on another beacon of the fleet, perhaps: it forwards the frame.
            return fleet.relay(sender, data) + out
        if destination is None or not self._allowed(sender, destination):
            counters["relay_dropped_no_destination"] += 1
            return out
        payload = size - relay.TO_BEACON_OVERHEAD
        if not self._quotas.relay(sender, destination.public_key, payload, now):
            return out
        counters["relayed_frames"] += 1
        counters["relayed_bytes"] += payload
        forward = (relay.forward_from_beacon(data), destination.endpoint)
        if out:
            return [forward, *out]
        return [forward]

    def forward_many(self, frames: list, source, fleet=None) -> list:
        """:meth:`forward` for the 0xD0 frames of one read from ``source``, in order."""
        out: list = []
        i, count = 0, len(frames)
        while i < count:
            addresses = frames[i][2:18]
            j = i + 1
            while j < count and frames[j][2:18] == addresses:
                j += 1
            out.extend(self._forward_run(frames[i:j], source, fleet) if j - i > 1 else self.forward(frames[i], source, fleet))
            i = j
        return out

    def _forward_run(self, frames: list, source, fleet) -> list:
        """Frames with one sender and one destination: the per-pair checks once."""
        first = frames[0]
        now = self._clock.seconds()
        registry = self._registry
        sender = registry.live_by_address(first[2:10], now) if len(first) >= relay.TO_BEACON_OVERHEAD else None
        destination = registry.live_by_address(first[10:18], now) if sender is not None else None
        if (
            sender is None
            or destination is None
            or not same_source(source, sender.endpoint)
            or sender.relay_mac is None
            or sender.relay_mac is False
            or sender.relay_window is None
            or not self._allowed(sender, destination)
        ):
            # Anything unusual (a first frame, a new source, a destination
            # elsewhere in the fleet or not visible, a malformed frame): one
            # frame at a time, so the drops are counted as the slow path counts them.
            out = []
            for frame in frames:
                out.extend(self.forward(frame, source, fleet))
            return out
        counters = self._counters
        if now - sender.last_seen >= TOUCH_RESOLUTION:
            registry.touch(sender)
        mac, accept, quota = sender.relay_mac, sender.relay_window.accept, self._quotas.relay
        destination_key, endpoint, overhead, version = destination.public_key, destination.endpoint, relay.TO_BEACON_OVERHEAD, relay.VERSION
        tag_ok, forward_from_beacon = relay.frame_tag_ok, relay.forward_from_beacon
        passed = []
        for frame in frames:
            if len(frame) < overhead or frame[1] != version:
                counters["dropped_malformed"] += 1
            elif not tag_ok(mac, frame):
                counters["relay_dropped_bad_tag"] += 1
            elif not accept(int.from_bytes(frame[18:26], "big")):
                counters["relay_dropped_replay"] += 1
            else:
                passed.append(frame)
        relayed_bytes = sum(map(len, passed)) - overhead * len(passed)
        # One quota check for the run when the buckets hold it all: taking the
        # frames one by one at the same instant would pass each of them too.
        # Otherwise frame by frame, so the policer cuts where it would anyway.
        if not passed or quota(sender, destination_key, relayed_bytes, now, quiet=True):
            out = [(forward_from_beacon(frame), endpoint) for frame in passed]
        else:
            out = []
            relayed_bytes = 0
            for frame in passed:
                if quota(sender, destination_key, len(frame) - overhead, now):
                    relayed_bytes += len(frame) - overhead
                    out.append((forward_from_beacon(frame), endpoint))
        counters["relayed_frames"] += len(out)
        counters["relayed_bytes"] += relayed_bytes
        return out
