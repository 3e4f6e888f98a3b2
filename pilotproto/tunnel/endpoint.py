"""
The node's tunnel endpoint: routes every tunnel packet to the right peer.

One :class:`TunnelEndpoint` per node.  It owns the receiver-index table (a
dict from our random 32-bit index to the peer and session it belongs to, so
a data packet finds its session in one lookup, with no node address in
clear), the responder's flood gate, the per-initiator timestamps that refuse
replayed initiations, and asks the trust policy about initiators.

Responder order of checks, cheapest first, so that work grows only as a
sender proves more: decode -> mac1 (one BLAKE2s) -> load / cookie gate ->
Noise decryption (the DH operations) -> signature and key binding -> trust
-> timestamp.  An untrusted or replayed initiation gets no answer at all, so
a scanner cannot tell a private node from an absent one; every drop is
counted in :attr:`TunnelEndpoint.stats`.
"""

from __future__ import annotations

import collections
import os
import struct

from ..common.wiring import check_provides
from ..interfaces import ITrustPolicy
from ..wire import KIND_TUNNEL_DATA, PROTOCOL_VERSION, DecodeError
from ..wire.tunnel import DATA_HEADER, DATA_HEADER_LEN, TAG_LEN, TunnelCookieReply, TunnelInit, TunnelResponse, decode_tunnel_packet
from .cookie import CookieChecker, Verdict, check_mac1
from .errors import TunnelError
from .events import ITunnelOwner
from .handshake import HandshakeTimers, PeerTunnel
from .ik import LocalKeys, consume_initiation, tai64n
from .record import Limits

_INDEX_ATTEMPTS = 64
#: the shortest data packet: its header and the AEAD tag (a keepalive)
_MIN_DATA = DATA_HEADER_LEN + TAG_LEN
_read_data_header = DATA_HEADER.unpack_from


_DATA_KIND = bytes([KIND_TUNNEL_DATA])


class IndexTable:
    """Random 32-bit receiver indices -> ``(peer, session or None)``."""

    def __init__(self, randbytes=os.urandom):
        self._randbytes = randbytes
        self._entries: dict[int, tuple[PeerTunnel, object]] = {}
        #: the receive path's lookup (``lookup`` without the call)
        self.get = self._entries.get

    def __len__(self) -> int:
        return len(self._entries)

    def allocate(self, peer) -> int:
        for _ in range(_INDEX_ATTEMPTS):
            index = int.from_bytes(self._randbytes(4), "big")
            if index not in self._entries:
                self._entries[index] = (peer, None)
                return index
        raise TunnelError("could not find a free session index")

    def bind(self, index: int, peer, session) -> None:
        self._entries[index] = (peer, session)

    def release(self, index: int) -> None:
        self._entries.pop(index, None)

    def lookup(self, index: int):
        return self._entries.get(index)


class MonotonicTimestamps:
    """TAI64N timestamps from ``clock`` that never repeat or go backwards."""

    def __init__(self, clock):
        self._clock = clock
        self._last = b""

    def __call__(self) -> bytes:
        stamp = tai64n(self._clock.seconds())
        if stamp <= self._last:
            seconds, nanos = struct.unpack("!QI", self._last)
            nanos += 1
            if nanos >= 1_000_000_000:
                seconds, nanos = seconds + 1, 0
            stamp = struct.pack("!QI", seconds, nanos)
        self._last = stamp
        return stamp


class TunnelEndpoint:
    """
    Every tunnel of one node.

    ``trust`` (:class:`~pilotproto.interfaces.ITrustPolicy`) is asked about
    every initiator once its identity is proven.  ``owner``
    (:class:`~pilotproto.tunnel.events.ITunnelOwner`) moves every tunnel's
    packets and hears what arrives: data with the source it came from, and
    every authenticated packet with its source and size (the path layer
    learns roaming endpoints from them).
    """

    def __init__(
        self,
        identity,
        clock,
        *,
        trust,
        owner,
        randbytes=os.urandom,
        timers: HandshakeTimers = HandshakeTimers(),
        limits: Limits = Limits(),
        cookie_options: dict | None = None,
    ):
        self.local = LocalKeys.from_identity(identity)
        self._clock = clock
        self._trust = check_provides(trust, ITrustPolicy, "TunnelEndpoint.trust")
        self._owner = check_provides(owner, ITunnelOwner, "TunnelEndpoint.owner")
        self._randbytes = randbytes
        self.timers = timers
        self.limits = limits
        self.stats: collections.Counter = collections.Counter()
        self.indices = IndexTable(randbytes)
        self.timestamps = MonotonicTimestamps(clock)
        self.gate = CookieChecker(self.local.x25519_public, clock, randbytes=randbytes, **(cookie_options or {}))
        self.peers: dict[bytes, PeerTunnel] = {}
        self._greatest_timestamp: dict[bytes, bytes] = {}

    def peer(self, ed25519_public: bytes) -> PeerTunnel:
        """The tunnel to ``ed25519_public``, made on first use."""
        tunnel = self.peers.get(ed25519_public)
        if tunnel is None:
            tunnel = self.peers[ed25519_public] = PeerTunnel(
                local=self.local,
                remote_ed25519=ed25519_public,
                clock=self._clock,
                owner=self._owner,
                indices=self.indices,
                randbytes=self._randbytes,
                timestamps=self.timestamps,
                timers=self.timers,
                limits=self.limits,
                stats=self.stats,
            )
        return tunnel

    def remove_peer(self, ed25519_public: bytes) -> None:
        """Tear down and forget the tunnel to a peer (say, on revoke)."""
        tunnel = self.peers.pop(ed25519_public, None)
        if tunnel is not None:
            tunnel.stop()

    def stop(self) -> None:
        for key in list(self.peers):
            self.remove_peer(key)

    def datagram_received(self, data: bytes, source, reply) -> None:
        """Handle one tunnel packet from ``source``.

        ``source`` is a typed source (:mod:`pilotproto.wire.sources`): the
        cookie gate binds cookies to ``source.key()``, and it is passed up
        with what the packet carried.  ``reply(packet)`` sends a cookie reply
        back the way this packet came; everything else a tunnel sends goes
        through the owner.
        """
        if data[:1] == _DATA_KIND:
            self.data_packets_received((data,), source)
            return
        try:
            packet = decode_tunnel_packet(data)
        except DecodeError:
            self.stats["malformed"] += 1
            return
        if isinstance(packet, TunnelInit):
            self._initiation(packet, data, source, reply)
        elif isinstance(packet, TunnelResponse):
            self._response(packet, data)
        else:
            self._cookie(packet)

    def packets_received(self, packets, source, reply) -> None:
        """:meth:`datagram_received` for several packets from one ``source``
        (a GRO read): runs of data packets go through :meth:`data_packets_received`."""
        run = []
        for data in packets:
            if data[:1] == _DATA_KIND:
                run.append(data)
                continue
            if run:
                self.data_packets_received(run, source)
                run = []
            self.datagram_received(data, source, reply)
        if run:
            self.data_packets_received(run, source)

    def data_packets_received(self, packets, source) -> None:
        """Transport data packets from ``source``, in order (a burst a GRO read returned).

        The hot receive path: per packet one header unpack, one index lookup
        and the record layer's open; the owner hears each run of one
        tunnel's packets at once (:meth:`ITunnelOwner.tunnel_data_many`),
        then that they authenticated (once, with their total size).  Data
        first: a PathAck from a new endpoint makes it the path before the
        path would probe it as a stranger, and whatever the data makes us
        send goes out before these packets count as the path's answer."""
        stats = self.stats
        lookup = self.indices.get
        now = self._clock.seconds()
        tunnel = None
        plaintexts: list = []
        size = opened = 0
        for data in packets:
            if len(data) < _MIN_DATA:
                stats["malformed"] += 1
                continue
            kind, version, index, counter = _read_data_header(data)
            if kind != KIND_TUNNEL_DATA or version != PROTOCOL_VERSION:
                stats["malformed"] += 1
                continue
            entry = lookup(index)
            if entry is None or entry[1] is None:
                stats["data_unknown_index"] += 1
                continue
            if entry[0] is not tunnel:
                if opened:
                    self._data_run(tunnel, plaintexts, source, size, opened)
                    plaintexts, size, opened = [], 0, 0
                tunnel = entry[0]
            plaintext = tunnel.data_packet_received(entry[1], data, counter, now)
            if plaintext is None:
                continue
            opened += 1
            size += len(data)
            if plaintext:
                plaintexts.append(plaintext)
        if opened:
            self._data_run(tunnel, plaintexts, source, size, opened)

    def _data_run(self, tunnel, plaintexts: list, source, size: int, opened: int) -> None:
        self.stats["data_received"] += opened
        key = tunnel.remote_ed25519
        if plaintexts:
            self._owner.tunnel_data_many(key, plaintexts, source)
        self._owner.tunnel_authenticated(key, source, size)

    def _initiation(self, packet: TunnelInit, data: bytes, source, reply) -> None:
        binding = source.key()
        verdict = self.gate.admit_initiation(data, binding)
        if verdict is Verdict.SEND_COOKIE:
            self.stats["cookie_sent"] += 1
            reply(self.gate.make_reply(packet.sender_index, data, binding))
            return
        if verdict is not Verdict.PROCESS:
            self.stats[f"init_{verdict.value}"] += 1
            return
        self.stats["init_dh"] += 1
        try:
            consumed = consume_initiation(self.local, packet)
        except TunnelError:
            self.stats["init_invalid"] += 1
            return
        initiator = consumed.initiator_ed25519
        if initiator == self.local.ed25519_public:
            self.stats["init_from_self"] += 1
            return
        if not self._trust.is_trusted(initiator):
            self.stats["init_untrusted"] += 1
            return
        if consumed.timestamp <= self._greatest_timestamp.get(initiator, b""):
            self.stats["init_replayed"] += 1
            return
        self._greatest_timestamp[initiator] = consumed.timestamp
        tunnel = self.peer(initiator)
        self._owner.tunnel_authenticated(initiator, source, len(data))
        tunnel.initiation_received(consumed)

    def _response(self, packet: TunnelResponse, data: bytes) -> None:
        if not check_mac1(self.local.x25519_public, data):
            self.stats["response_bad_mac1"] += 1
            return
        entry = self.indices.lookup(packet.receiver_index)
        if entry is None or entry[1] is not None:
            self.stats["response_unexpected"] += 1
            return
        entry[0].response_received(packet)

    def _cookie(self, packet: TunnelCookieReply) -> None:
        entry = self.indices.lookup(packet.receiver_index)
        if entry is None or entry[1] is not None:
            self.stats["cookie_unexpected"] += 1
            return
        entry[0].cookie_received(packet)
