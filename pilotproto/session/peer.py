"""
One record per peer: its tunnel, the path its packets take, its streams,
and what runs on the session itself (pings, path probes, candidate calls).

A :class:`Peer` lives as long as one tunnel: when the tunnel is torn down
(the peer closed the session, or restarted) and a new one appears, the
sessions layer makes a new record that keeps the peer's name, its
candidates and whether it revoked its trust, and starts a fresh path, so a
new session can punch again.

Every packet's typed source (:mod:`pilotproto.wire.sources`) is passed in
with what it carried, because some answers depend on it: a ping that came
through the relay while we send direct is answered through the relay (the
peer could not hear us directly, so our direct path may be dead too), a
probe is acked straight back to the endpoint it came from, and only a
PathAck that arrived directly proves a direct path.
"""

from __future__ import annotations

import base64
import random

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from ..common.wiring import provides
from ..errors import PilotError
from ..identity import Address
from ..interfaces import IDatagramSender, ILocalCandidates, IRelay, IStreamAcceptor
from ..streams import StreamConnection
from ..streams.frames import PACKET_TYPE
from ..wire import session as smsg
from ..wire.sources import Direct, Relayed
from .birthday import Birthday, IBirthdayOwner
from .birthday_schedule import BirthdayOptions, IPunchSockets, via_of
from .paths import IPathOwner, PathTimers, PeerPath
from .peer_mtu import IMtuOwner, PeerMtu
from .pmtu import route_mtu

#: the first plaintext byte of a stream packet (the rest is the stream layer's)
STREAM_TYPE = PACKET_TYPE
#: a CallMeMaybe not answered in this time is sent again, this many times
CALL_ME_MAYBE_RETRY = 0.7
CALL_ME_MAYBE_TRIES = 5


@attrs.frozen
class PeerLinks:
    """What every peer record of one node is wired to (checked once, shared by all)."""

    clock: object
    udp: object = attrs.field(validator=provides(IDatagramSender))
    relay: object = attrs.field(validator=provides(IRelay))
    candidates: object = attrs.field(validator=provides(ILocalCandidates))
    acceptor: object = attrs.field(validator=provides(IStreamAcceptor))
    #: ``ids()`` -> a random 64-bit int (ping ids, probe nonces)
    ids: object = attrs.field(validator=attrs.validators.is_callable())
    #: this node's Ed25519 public key (decides which side's stream ids are "low")
    own_key: bytes = attrs.field(validator=attrs.validators.instance_of(bytes))
    allow_direct: bool = True
    path_timers: PathTimers = PathTimers()
    #: extra sockets for birthday punches (None: this node only ever probes)
    punch: object = attrs.field(default=None, validator=attrs.validators.optional(provides(IPunchSockets)))
    birthday: BirthdayOptions = BirthdayOptions()
    #: ``route_mtu(host, port)`` -> the local route's MTU towards a peer, or None (path MTU search ceiling)
    route_mtu: object = attrs.field(default=route_mtu, validator=attrs.validators.is_callable())


@implementer(IPathOwner, IBirthdayOwner, IMtuOwner)
class Peer:
    """The session with one peer, whose Ed25519 public key is ``key``."""

    log = Logger()

    def __init__(self, key: bytes, tunnel, links: PeerLinks):
        self.key = key
        self.address = Address.from_public_key(key)
        self.hostname: str | None = None
        #: the :class:`~pilotproto.tunnel.PeerTunnel` this record lives as long as
        self.tunnel = tunnel
        self._links = links
        self.path = PeerPath(links.clock, self, allow_direct=links.allow_direct, timers=links.path_timers)
        #: the birthday punch (symmetric NAT <-> port-restricted cone), seeded from the injected ids
        self.birthday = Birthday(links.clock, self, links.punch, links.birthday, random.Random(links.ids()))
        #: path MTU discovery on the path in use, direct or relay (probe nonces from the injected ids)
        self.mtu = PeerMtu(links.clock, self, route_mtu=links.route_mtu, random_bytes=lambda n: links.ids().to_bytes(8, "big")[:n])
        #: the reliable streams and datagrams multiplexed on this session (made on first use)
        self.streams: StreamConnection | None = None
        #: ping id -> (Deferred waiting for the pong, when the ping left)
        self.pings: dict[int, tuple[defer.Deferred, float]] = {}
        self.revoked_by_peer = False
        self.last_rtt: float | None = None
        self.up = False
        #: the session is over (closed, revoked, shut down): nothing more runs on it
        self.ended = False
        self._heard_candidates_at: float | None = None
        self._call_timer = None

    def label(self) -> str:
        return self.hostname or str(self.address)

    def carry_over(self, previous: Peer) -> None:
        """Keep what outlives one session of ``previous``: name, candidates, revocation."""
        self.hostname = previous.hostname
        self.revoked_by_peer = previous.revoked_by_peer
        self.last_rtt = previous.last_rtt
        old = previous.path
        self.path.add_candidates(old.candidates - old.lan_candidates, lan=old.lan_candidates)

    # -- IPathOwner ---------------------------------------------------------------

    def send_datagram(self, packet: bytes, endpoint, via=None) -> None:
        (via or self._links.udp).send(packet, endpoint)

    def send_datagrams(self, packets: list, endpoint, via=None) -> None:
        (via or self._links.udp).send_many(packets, endpoint)

    def send_relay(self, packet: bytes) -> None:
        self._links.relay.send_relay(self.address.to_bytes(), packet)

    def send_relay_many(self, packets: list) -> None:
        relay = self._links.relay
        destination = self.address.to_bytes()
        # A relay that frames a burst at once (the beacon link) takes it whole.
        send_many = getattr(relay, "send_relay_many", None)
        if send_many is not None:
            send_many(destination, packets)
            return
        for packet in packets:
            relay.send_relay(destination, packet)

    def send_probe(self, endpoint, ttl=None, via=None) -> None:
        session = self.tunnel.current
        if session is None or not session.can_seal():
            return
        packet = session.seal(smsg.encode(smsg.PathProbe(self._links.ids())))
        (via or self._links.udp).send(packet, endpoint, ttl=ttl)

    def path_changed(self, direct: bool, via) -> None:
        self.birthday.path_changed(direct, via)
        self.mtu.path_changed(self.path.direct if direct else None, via)
        if direct and self.birthday.attempts:
            # A birthday punch can hit several of the symmetric side's
            # sockets, and each side may prove a different one first: tell
            # the peer which route we keep, and it follows (PeerPath.received).
            self.send_probe(self.path.direct, via=via)

    # -- IMtuOwner ---------------------------------------------------------------------

    def send_direct(self, plaintext: bytes, endpoint, via) -> None:
        session = self.tunnel.current
        if session is not None and session.can_seal():
            (via or self._links.udp).send(session.seal(plaintext), endpoint)

    def send_relayed(self, plaintext: bytes) -> None:
        session = self.tunnel.current
        if session is not None and session.can_seal():
            self.send_relay(session.seal(plaintext))

    def relay_beacon(self):
        # One beacon link names where its UDP frames go (None before registering);
        # a set of beacons, which may carry each peer's frames through another, does not.
        return getattr(self._links.relay, "beacon_endpoint", None)

    def peer_relays_by_tcp(self) -> bool:
        return self.path.peer_nat == "udp_blocked"

    def set_packet_size(self, size: int) -> None:
        if self.streams is not None:
            self.streams.set_max_packet(size)

    # -- IBirthdayOwner -----------------------------------------------------------------

    def send_message(self, msg) -> None:
        if self.tunnel.current is not None:
            self.tunnel.send_data(smsg.encode(msg))

    def on_relay(self) -> bool:
        return not self.path.using_direct()

    def request_punch(self) -> None:
        # Restricted NATs open only if both sides send: a coordinated punch.
        self.call_me_maybe(reply=False)

    def relay_kind(self) -> str:
        return self._links.relay.relay_kind()

    # -- the session ------------------------------------------------------------------

    def session_up(self) -> None:
        self.up = True
        self.revoked_by_peer = False
        if not self.path.using_direct():
            # Size the relay path's packets (a direct path starts its own search).
            self.mtu.path_changed(None, None)
        self.call_me_maybe(reply=False)

    def end(self, error: PilotError, streams_error: PilotError | None = None) -> None:
        """The session is over: fail what waits on it and stop its timers (once)."""
        self.up = False
        if self.ended:
            return
        self.ended = True
        pings, self.pings = self.pings, {}
        for d, _ in pings.values():
            d.errback(error)
        streams, self.streams = self.streams, None
        if streams is not None:
            streams.close(streams_error or error)
        self.path.stop()
        self.birthday.stop()
        self.mtu.stop()
        self._cancel_call()

    def message_received(self, msg, source: Direct | Relayed) -> None:
        """A session message other than Close (ending sessions is the sessions layer's)."""
        handler = self._HANDLERS.get(type(msg))
        if handler is not None:
            handler(self, msg, source)

    # -- session messages ------------------------------------------------------------

    def _rx_ping(self, msg: smsg.Ping, source) -> None:
        pong = smsg.encode(smsg.Pong(msg.id, msg.payload))
        session = self.tunnel.current
        if isinstance(source, Relayed) and self.path.using_direct() and session is not None and session.can_seal():
            # Answer on the path the ping took: the peer could not reach
            # us directly, so our direct path may be dead too.
            self.send_relay(session.seal(pong))
        else:
            self.tunnel.send_data(pong)

    def _rx_pong(self, msg: smsg.Pong, source) -> None:
        waiting = self.pings.pop(msg.id, None)
        if waiting is None:
            return
        d, sent_at = waiting
        rtt_ms = round((self._links.clock.seconds() - sent_at) * 1000.0, 3)
        self.last_rtt = rtt_ms
        # A pong through the relay while we send direct says the peer's side still relays.
        path = self.path.kind if isinstance(source, Direct) or not self.path.using_direct() else "relay"
        d.callback({"rtt_ms": rtt_ms, "path": path, "bytes": len(msg.payload)})

    def _rx_probe(self, msg: smsg.PathProbe, source) -> None:
        session = self.tunnel.current
        if isinstance(source, Direct) and session is not None and session.can_seal() and self._links.allow_direct:
            # Straight back to where the probe came from (the very socket): that proves the path both ways.
            ack = session.seal(smsg.encode(smsg.PathAck(msg.nonce)))
            (via_of(source) or self._links.udp).send(ack, source.endpoint)
            self.path.probed(source)

    def _rx_ack(self, msg: smsg.PathAck, source) -> None:
        self.path.acked(source)

    def _rx_call_me_maybe(self, msg: smsg.CallMeMaybe, source) -> None:
        self._heard_candidates_at = self._links.clock.seconds()
        self.path.peer_nat = msg.nat_type
        if self.up and not self.path.using_direct():
            # Whether the peer is on the TLS relay decides the relay's packet size.
            self.mtu.path_changed(None, None)
        self.path.add_candidates(msg.public, lan=msg.lan)
        if not msg.reply:
            self.call_me_maybe(reply=True)
        self.path.start_punch()
        if self._links.allow_direct:
            our_public = self._links.candidates.local_candidates()[1]
            # A birthday punch is an IPv4 affair (IPv6 needs no port guessing): IPv4 targets only.
            peer_public4 = [ep for ep in msg.public if ":" not in ep.host]
            self.birthday.consider(self.path.our_nat, msg.nat_type, peer_public4, our_public)

    def _rx_birthday(self, msg: smsg.Birthday, source) -> None:
        if self._links.allow_direct:
            self.birthday.message_received(msg)

    def _rx_mtu_probe(self, msg: smsg.MtuProbe, source) -> None:
        # Relayed probes size the peer's relay path: answered even with direct paths off.
        if self._links.allow_direct or isinstance(source, Relayed):
            self.mtu.probe_received(msg, source)

    def _rx_mtu_ack(self, msg: smsg.MtuAck, source) -> None:
        self.mtu.ack_received(msg, source)

    _HANDLERS = {
        smsg.MtuProbe: _rx_mtu_probe,
        smsg.MtuAck: _rx_mtu_ack,
        smsg.Ping: _rx_ping,
        smsg.Pong: _rx_pong,
        smsg.PathProbe: _rx_probe,
        smsg.PathAck: _rx_ack,
        smsg.CallMeMaybe: _rx_call_me_maybe,
        smsg.Birthday: _rx_birthday,
    }

    # -- direct paths -----------------------------------------------------------------

    def call_me_maybe(self, reply: bool, tries: int = CALL_ME_MAYBE_TRIES) -> None:
        """Tell the peer, through the session, where to reach us directly.

        The peer answers with its own candidates and both sides punch.  A
        call that hears no answer is repeated: on a lossy path one lost
        datagram must not cost the direct path.
        """
        if not self._links.allow_direct or self.ended or self.tunnel.current is None:
            return
        nat_type, public, lan = self._links.candidates.local_candidates()
        self.path.our_nat = nat_type
        self.tunnel.send_data(smsg.encode(smsg.CallMeMaybe(reply, nat_type, tuple(public), tuple(lan))))
        if reply:
            return
        clock = self._links.clock
        asked_at = clock.seconds()
        self._cancel_call()

        def check():
            self._call_timer = None
            answered = self._heard_candidates_at is not None and self._heard_candidates_at >= asked_at
            if not answered and tries > 1 and not self.path.using_direct():
                self.call_me_maybe(reply=False, tries=tries - 1)

        self._call_timer = clock.callLater(CALL_ME_MAYBE_RETRY, check)

    def _cancel_call(self) -> None:
        if self._call_timer is not None and self._call_timer.active():
            self._call_timer.cancel()
        self._call_timer = None

    # -- pings and streams -------------------------------------------------------------

    def ping(self, timeout: float, payload: bytes) -> defer.Deferred:
        """One ping: fires with ``{"rtt_ms", "path", "bytes"}``, or None if no pong came in ``timeout``."""
        clock = self._links.clock
        ping_id = self._links.ids()
        d = defer.Deferred()
        self.pings[ping_id] = (d, clock.seconds())
        self.tunnel.send_data(smsg.encode(smsg.Ping(ping_id, payload)))

        def lost(failure):
            failure.trap(defer.TimeoutError)
            self.pings.pop(ping_id, None)
            return None

        d.addTimeout(timeout, clock)
        return d.addErrback(lost)

    def stream_connection(self) -> StreamConnection:
        """The stream multiplexer of this session, made on first use."""
        if self.streams is None:
            self.streams = StreamConnection(
                self._links.clock,
                self.tunnel.send_data,
                # Both sides must agree who is "low" so stream ids never collide.
                self._links.own_key < self.key,
                on_stream_opened=self._stream_opened,
                on_datagram=self._stream_datagram,
                max_packet=self.mtu.packet_size(),
                # A flush's packets are sealed, pathed and queued as one burst.
                send_packets=self.tunnel.send_data_many,
            )
            self.streams.on_black_hole = self.mtu.black_hole
        return self.streams

    def _stream_opened(self, stream, port: int) -> bool:
        return self._links.acceptor.stream_opened(self, stream, port)

    def _stream_datagram(self, port: int, data: bytes) -> None:
        self._links.acceptor.datagram_received(self, port, data)

    def describe(self) -> dict:
        path = self.path
        return {
            "hostname": self.hostname,
            "address": str(self.address),
            "public_key": base64.b64encode(self.key).decode(),
            "state": "up" if self.up else "down",
            "path": path.kind,
            "endpoint": str(path.direct) if path.using_direct() else "relay",
            "rtt_ms": self.last_rtt,
            # The path's confirmed IP MTU (None: no search, as on the TLS relay), which path, the search's state and ceiling.
            **self.mtu.describe(),
            "bytes_sent": path.bytes_sent,
            "bytes_received": path.bytes_received,
            # Only for a pair that needed one: how the birthday punch went.
            **({"birthday": dict(self.birthday.stats)} if self.birthday.attempts else {}),
        }
