"""
The record layer: one direction-pair of AES-256-GCM keys after a handshake.

A :class:`Session` seals plaintext into whole transport data packets and
opens them again.  The 64-bit packet counter is the AEAD nonce and is never
reused: it only counts up, and sealing stops for good before it could wrap.
The packet header (kind, version, receiver index, counter) is the associated
data, so none of it can be changed in flight.

Limits follow WireGuard's timers: a session asks to be replaced after
``rekey_after_time`` seconds or ``rekey_after_messages`` packets, and refuses
to seal or open anything after ``reject_after_time`` seconds or
``reject_after_messages`` packets.  Time is read from an injected clock.
"""

from __future__ import annotations

import struct

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..common.replay import DEFAULT_WINDOW, ReplayWindow
from ..wire import KIND_TUNNEL_DATA, PROTOCOL_VERSION, DecodeError
from ..wire.tunnel import DATA_HEADER, DATA_HEADER_LEN, TunnelData
from .errors import KeyExpired, ReplayError, TunnelAuthError

#: Noise's AES-GCM nonce (32 zero bits, then the counter) and the data header, each one struct call per packet
_NONCE = struct.Struct("!4xQ")
_HEADER = TunnelData.header

REKEY_AFTER_TIME = 120.0
REJECT_AFTER_TIME = 180.0
# WireGuard's numbers: far below the AES-GCM nonce space, and the reject
# limit leaves room below 2**64 for packets already in flight.
REKEY_AFTER_MESSAGES = 2**60
REJECT_AFTER_MESSAGES = 2**64 - 2**13 - 1


@attrs.frozen
class Limits:
    rekey_after_time: float = REKEY_AFTER_TIME
    reject_after_time: float = REJECT_AFTER_TIME
    rekey_after_messages: int = REKEY_AFTER_MESSAGES
    reject_after_messages: int = REJECT_AFTER_MESSAGES
    replay_window: int = DEFAULT_WINDOW


@attrs.frozen
class TransportKeys:
    """What a finished handshake hands the record layer."""

    send_key: bytes = attrs.field(repr=False)
    receive_key: bytes = attrs.field(repr=False)
    local_index: int
    remote_index: int
    is_initiator: bool
    handshake_hash: bytes = attrs.field(repr=False, default=b"")


class Session:
    """
    Seal and open transport data for one handshake's keys.

    ``local_index`` is the index peers put in packets they send us (our
    lookup key); ``remote_index`` is the one we put in packets we send.
    """

    def __init__(self, keys: TransportKeys, clock, limits: Limits = Limits()):
        self.keys = keys
        self.local_index = keys.local_index
        self.remote_index = keys.remote_index
        self.is_initiator = keys.is_initiator
        self._clock = clock
        self.limits = limits
        self.created_at = clock.seconds()
        # One AEAD context per key for the session's life (never one per packet),
        # and its bound methods looked up once.
        self._sealer = AESGCM(keys.send_key)
        self._opener = AESGCM(keys.receive_key)
        self._encrypt = self._sealer.encrypt
        self._decrypt = self._opener.decrypt
        self._send_counter = 0
        self._window = ReplayWindow(limits.replay_window)
        self.packets_received = 0
        # Read per packet: plain attributes, not lookups through the frozen limits.
        self._reject_after_time = limits.reject_after_time
        self._reject_after_messages = limits.reject_after_messages

    def __repr__(self) -> str:
        role = "initiator" if self.is_initiator else "responder"
        return f"<Session {role} local={self.local_index:#010x} remote={self.remote_index:#010x}>"

    @property
    def packets_sent(self) -> int:
        return self._send_counter

    def age(self, now: float | None = None) -> float:
        return (self._clock.seconds() if now is None else now) - self.created_at

    def needs_rekey(self, now: float | None = None) -> bool:
        """True once this session should be replaced by a fresh handshake."""
        return (
            self.age(now) >= self.limits.rekey_after_time
            or self._send_counter >= self.limits.rekey_after_messages
            or self._window.newest >= self.limits.rekey_after_messages
        )

    def expired(self, now: float | None = None) -> bool:
        """True once this session may no longer seal or open anything."""
        return self.age(now) >= self.limits.reject_after_time

    def can_seal(self, now: float | None = None) -> bool:
        return not self.expired(now) and self._send_counter < self.limits.reject_after_messages

    def can_seal_many(self, count: int) -> bool:
        """True when a burst of ``count`` packets can be sealed now (:meth:`seal_many`)."""
        return (
            self._clock.seconds() - self.created_at < self._reject_after_time
            and self._send_counter + count <= self._reject_after_messages
        )

    def seal(self, plaintext: bytes) -> bytes:
        """The whole data packet carrying ``plaintext``; raises KeyExpired past the limits."""
        if self._clock.seconds() - self.created_at >= self.limits.reject_after_time:
            raise KeyExpired(f"session {self.local_index:#010x} is older than {self.limits.reject_after_time:g} s")
        counter = self._send_counter
        if counter >= self.limits.reject_after_messages:
            raise KeyExpired(f"session {self.local_index:#010x} has sealed its last packet")
        self._send_counter = counter + 1
        header = _HEADER(self.remote_index, counter)
        return header + self._encrypt(_NONCE.pack(counter), plaintext, header)

    def seal_many(self, plaintexts) -> list[bytes]:
        """The data packets carrying ``plaintexts``, in order (one burst of the stream layer).

        The limits are checked once for the whole burst; KeyExpired (and
        nothing sealed) when any packet of it would pass them."""
        if self._clock.seconds() - self.created_at >= self._reject_after_time:
            raise KeyExpired(f"session {self.local_index:#010x} is older than {self.limits.reject_after_time:g} s")
        first = self._send_counter
        end = first + len(plaintexts)
        if end > self._reject_after_messages:
            raise KeyExpired(f"session {self.local_index:#010x} has too few packets left for a burst of {len(plaintexts)}")
        self._send_counter = end
        pack_header, nonce, encrypt, remote = DATA_HEADER.pack, _NONCE.pack, self._encrypt, self.remote_index
        packets = []
        append = packets.append
        for counter, plaintext in zip(range(first, end), plaintexts):
            head = pack_header(KIND_TUNNEL_DATA, PROTOCOL_VERSION, remote, counter)
            append(head + encrypt(nonce(counter), plaintext, head))
        return packets

    def open_data(self, data: bytes, counter: int, now: float) -> bytes:
        """The plaintext of the whole data packet ``data`` at time ``now``.

        The receive path's form of :meth:`open`: the caller has read the
        header (kind and version checked, ``counter`` its counter) and found
        this session by its receiver index, so nothing is decoded twice.
        The header, as received, is the associated data: a changed one fails
        authentication."""
        if now - self.created_at >= self._reject_after_time:
            raise KeyExpired(f"session {self.local_index:#010x} is older than {self.limits.reject_after_time:g} s")
        if counter >= self._reject_after_messages:
            raise ReplayError(f"counter {counter} is past this session's limit")
        window = self._window
        if not window.check(counter):
            raise ReplayError(f"counter {counter} was already received or is too old")
        try:
            plaintext = self._decrypt(_NONCE.pack(counter), memoryview(data)[DATA_HEADER_LEN:], data[:DATA_HEADER_LEN])
        except InvalidTag:
            raise TunnelAuthError(f"data packet {counter} failed authentication") from None
        # Recorded only now, once authentic: a forged counter never moves the window.
        window.mark(counter)
        self.packets_received += 1
        return plaintext

    def open(self, packet: bytes | TunnelData) -> bytes:
        """The plaintext of a data packet addressed to this session."""
        if isinstance(packet, bytes):
            try:
                decoded = TunnelData.decode(packet)
            except DecodeError as e:
                raise TunnelAuthError(f"not a tunnel data packet: {e}") from None
        else:
            decoded, packet = packet, packet.encode()
        if decoded.receiver_index != self.local_index:
            raise TunnelAuthError("data packet addressed to another session")
        return self.open_data(packet, decoded.counter, self._clock.seconds())
