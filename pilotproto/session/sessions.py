"""
Encrypted sessions with trusted peers, and what runs on them today: ping.

``Sessions`` owns the node's :class:`~pilotproto.tunnel.TunnelEndpoint` and
one :class:`PeerState` per peer: its tunnel, its path (relay or direct, see
:mod:`pilotproto.session.paths`), the pings waiting for a pong, and whether the
peer told us it revoked its trust.  The node feeds it datagrams from peers
and frames from the relay, and asks it to ping, list peers, and tear down
the sessions of a peer whose trust was revoked.
"""

from __future__ import annotations

import base64
import os

from twisted.internet import defer
from twisted.logger import Logger

from ..errors import NotTrusted, PilotError, Refused, Timeout
from ..identity import Address
from ..streams import StreamConnection
from ..streams.errors import ConnectionClosed
from ..tunnel import TunnelEndpoint
from ..wire import DecodeError, Endpoint
from ..wire import session as smsg
from .paths import PathTimers, PeerPath, direct_source, relay_source, source_endpoint

STREAM_PACKET = b"\x10"
CONNECT_TIMEOUT = 15.0
CLOSE_GRACE = 0.2
#: a CallMeMaybe not answered in this time is sent again, this many times
CALL_ME_MAYBE_RETRY = 0.7
CALL_ME_MAYBE_TRIES = 5


class PeerState:
    def __init__(self, key: bytes, path: PeerPath):
        self.key = key
        self.address = Address.from_public_key(key)
        self.hostname: str | None = None
        self.path = path
        self.pings: dict[int, tuple[defer.Deferred, float]] = {}
        self.revoked_by_peer = False
        self.last_rtt: float | None = None
        self.heard_candidates_at: float | None = None
        self.call_timer = None
        #: the reliable streams and datagrams multiplexed on this session
        self.streams: StreamConnection | None = None
        self.up = False

    def label(self) -> str:
        return self.hostname or str(self.address)


class Sessions:
    log = Logger()

    def __init__(
        self,
        clock,
        identity,
        *,
        is_trusted,
        send_datagram,
        send_relay,
        lookup,
        local_candidates=lambda: ("unknown", (), ()),
        on_stream=lambda state, stream, port: False,
        on_datagram=lambda state, port, data: None,
        relay_kind=lambda: "relay",
        allow_direct=True,
        path_timers=PathTimers(),
        **tunnel_options,
    ):
        self._clock = clock
        self._is_trusted = is_trusted
        self._send_datagram = send_datagram
        self._send_relay = send_relay
        self._lookup = lookup
        self._local_candidates = local_candidates
        self._on_stream = on_stream
        self._on_stream_datagram = on_datagram
        self._own_key = identity.public_key
        self._relay_kind = relay_kind
        self.allow_direct = allow_direct
        self.path_timers = path_timers
        self.connect_timeout = CONNECT_TIMEOUT
        self.peers: dict[bytes, PeerState] = {}
        self._source = None
        self.endpoint = TunnelEndpoint(
            identity,
            clock,
            is_trusted=is_trusted,
            send_factory=lambda key: self._state(key).path.send,
            on_data=self._on_data,
            on_up=self._on_up,
            on_down=self._on_down,
            on_authenticated=self._on_authenticated,
            **tunnel_options,
        )

    # -- datagrams in ------------------------------------------------------

    def datagram_received(self, data: bytes, source: Endpoint) -> None:
        """A tunnel packet straight from a peer."""
        self._receive(data, direct_source(source), lambda packet: self._send_datagram(packet, source))

    def relay_received(self, sender: bytes, data: bytes) -> None:
        """A tunnel packet the beacon relayed from the node at ``sender``."""
        self._receive(data, relay_source(sender), lambda packet: self._send_relay(sender, packet))

    def _receive(self, data, source, reply):
        self._source = (source, len(data))
        try:
            self.endpoint.datagram_received(data, source, reply)
        finally:
            self._source = None

    # -- peers -------------------------------------------------------------

    def _state(self, key: bytes) -> PeerState:
        state = self.peers.get(key)
        if state is None:
            address = Address.from_public_key(key)
            path = PeerPath(
                self._clock,
                address.to_bytes(),
                self._send_datagram,
                self._send_relay,
                send_probe=lambda endpoint, ttl=None: self._send_probe(key, endpoint, ttl),
                request_punch=lambda: self._call_me_maybe(key, reply=False),
                relay_kind=self._relay_kind,
                allow_direct=self.allow_direct,
                timers=self.path_timers,
                label=str(address),
            )
            state = self.peers[key] = PeerState(key, path)
        return state

    @defer.inlineCallbacks
    def resolve(self, target: str):
        """The trusted peer ``target`` names.

        A peer with a live session is used at once (its endpoints are
        refreshed from the beacon in the background), so neither a slow nor
        a dead beacon holds up traffic that does not need it.
        """
        state = self._known(target)
        if state is not None:
            refresh = self._lookup(target)
            refresh.addCallback(self._learn, state)
            refresh.addErrback(lambda failure: None)
        else:
            found = yield self._lookup(target)
            state = self._learn(found)
        if not self._is_trusted(state.key):
            raise NotTrusted(
                f"this node does not trust {state.label()} ({state.address})",
                hint=f"Ask for trust first: pilotctl handshake {state.label()} \"why\"",
            )
        if state.revoked_by_peer:
            raise Refused(f"{state.label()} has revoked its trust in this node")
        return state

    def _learn(self, found: dict, state: PeerState | None = None) -> PeerState:
        key = base64.b64decode(found["public_key"])
        if state is None or state.key != key:
            state = self._state(key)
        state.hostname = found["hostname"]
        state.path.label = found["hostname"]
        state.path.add_candidates(Endpoint(*_split(ep)) for ep in found.get("endpoints", ()))
        return state

    def _known(self, target: str) -> PeerState | None:
        for state in self.peers.values():
            if target in (state.hostname, str(state.address)) and state.up:
                return state
        return None

    def connect(self, state: PeerState) -> defer.Deferred:
        """Fires once the session with ``state``'s peer can carry data."""
        d = self.endpoint.peer(state.key).connect()

        def timed_out(failure):
            failure.trap(defer.TimeoutError, Timeout)
            raise Timeout(
                f"{state.label()} did not answer the tunnel handshake",
                hint="A session needs trust on both sides: has the peer approved your handshake?",
            )

        d.addTimeout(self.connect_timeout, self._clock)
        return d.addErrback(timed_out)

    @defer.inlineCallbacks
    def ping(self, target: str, count: int = 4, interval: float = 1.0, timeout: float = 2.0, payload: bytes = b""):
        """Ping ``target`` over its session; fires with a summary dict."""
        state = yield self.resolve(target)
        yield self.connect(state)
        waits = []
        for seq in range(1, count + 1):
            if seq > 1:
                yield _sleep(self._clock, interval)
            waits.append(self._one_ping(state, seq, timeout, payload))
        try:
            results = yield defer.gatherResults(waits, consumeErrors=True)
        except defer.FirstError as e:
            e.subFailure.raiseException()
        replies = [r for r in results if r is not None]
        rtts = [r["rtt_ms"] for r in replies]
        return {
            "target": state.label(),
            "address": str(state.address),
            "sent": count,
            "received": len(replies),
            "loss_pct": round(100.0 * (count - len(replies)) / count, 1) if count else 0.0,
            "replies": results,
            "min_ms": min(rtts) if rtts else None,
            "avg_ms": round(sum(rtts) / len(rtts), 3) if rtts else None,
            "max_ms": max(rtts) if rtts else None,
            "path": state.path.kind,
            "endpoint": str(state.path.direct) if state.path.using_direct() else None,
            "our_nat": state.path.our_nat,
            "peer_nat": state.path.peer_nat,
            "path_changes": state.path.switches + state.path.fallbacks,
        }

    def _one_ping(self, state: PeerState, seq: int, timeout: float, payload: bytes) -> defer.Deferred:
        ping_id = int.from_bytes(os.urandom(8), "big")
        d = defer.Deferred()
        state.pings[ping_id] = (d, self._clock.seconds())
        self.endpoint.peer(state.key).send_data(smsg.encode(smsg.Ping(ping_id, payload)))

        def lost(failure):
            failure.trap(defer.TimeoutError)
            state.pings.pop(ping_id, None)
            return None

        def numbered(reply):
            if reply is not None:
                reply["seq"] = seq
            return reply

        d.addTimeout(timeout, self._clock)
        return d.addErrback(lost).addCallback(numbered)

    def describe(self) -> list[dict]:
        out = []
        for state in self.peers.values():
            path = state.path
            out.append(
                {
                    "hostname": state.hostname,
                    "address": str(state.address),
                    "public_key": base64.b64encode(state.key).decode(),
                    "state": "up" if state.up else "down",
                    "path": path.kind,
                    "endpoint": str(path.direct) if path.using_direct() else "relay",
                    "rtt_ms": state.last_rtt,
                    "bytes_sent": path.bytes_sent,
                    "bytes_received": path.bytes_received,
                }
            )
        return out

    # -- trust changes -------------------------------------------------------

    def revoke(self, key: bytes) -> None:
        """We stopped trusting ``key``: tell it, then tear its sessions down."""
        state = self.peers.pop(key, None)
        tunnel = self.endpoint.peers.get(key)
        if tunnel is not None and tunnel.current is not None:
            tunnel.send_data(smsg.encode(smsg.Close(smsg.CLOSE_REVOKED, "trust revoked")))
        if state is not None:
            self._fail_pings(state, Refused(f"trust in {state.label()} was revoked"))
            self._close_streams(state, Refused(f"trust in {state.label()} was revoked"))
            self._halt(state)
        # Let the Close leave before the keys are gone.
        self._clock.callLater(CLOSE_GRACE, self.endpoint.remove_peer, key)

    def trusted(self, key: bytes) -> None:
        """Trust (re)established with ``key``: forget an old revocation."""
        state = self.peers.get(key)
        if state is not None:
            state.revoked_by_peer = False

    def stop(self) -> None:
        for key, tunnel in list(self.endpoint.peers.items()):
            if tunnel.current is not None:
                tunnel.send_data(smsg.encode(smsg.Close(smsg.CLOSE_SHUTDOWN, "node shutting down")))
        for state in self.peers.values():
            self._fail_pings(state, PilotError("the node is shutting down"))
            self._close_streams(state, ConnectionClosed("the node is shutting down"))
            self._halt(state)
        self.endpoint.stop()

    # -- tunnel callbacks ------------------------------------------------------

    def _on_authenticated(self, key: bytes, source: bytes) -> None:
        state = self._state(key)
        state.path.received(source, self._source[1] if self._source else 0)

    def _on_up(self, key: bytes) -> None:
        state = self._state(key)
        state.up = True
        state.revoked_by_peer = False
        self._call_me_maybe(key, reply=False)

    def _on_down(self, key: bytes) -> None:
        state = self.peers.get(key)
        if state is not None:
            state.up = False

    def _on_data(self, key: bytes, plaintext: bytes) -> None:
        state = self._state(key)
        if plaintext[:1] == STREAM_PACKET:
            self.streams_for(state).packet_received(plaintext)
            return
        source = self._source[0] if self._source else b"R"
        try:
            msg = smsg.decode(plaintext)
        except DecodeError:
            self.endpoint.stats["session_malformed"] += 1
            return
        tunnel = self.endpoint.peers.get(key)
        if isinstance(msg, smsg.Ping):
            pong = smsg.encode(smsg.Pong(msg.id, msg.payload))
            if source[:1] == b"R" and state.path.using_direct() and tunnel.current is not None:
                # Answer on the path the ping took: the peer could not reach
                # us directly, so our direct path may be dead too.
                self._send_relay(state.path.address, tunnel.current.seal(pong))
            else:
                tunnel.send_data(pong)
        elif isinstance(msg, smsg.Pong):
            self._pong(state, msg, source)
        elif isinstance(msg, smsg.PathProbe):
            endpoint = source_endpoint(source)
            if endpoint is not None and tunnel.current is not None and self.allow_direct:
                self._send_datagram(tunnel.current.seal(smsg.encode(smsg.PathAck(msg.nonce))), endpoint)
        elif isinstance(msg, smsg.PathAck):
            state.path.acked(source)
        elif isinstance(msg, smsg.CallMeMaybe):
            state.heard_candidates_at = self._clock.seconds()
            state.path.peer_nat = msg.nat_type
            state.path.add_candidates(msg.public, lan=msg.lan)
            if not msg.reply:
                self._call_me_maybe(key, reply=True)
            state.path.start_punch()
        elif isinstance(msg, smsg.Close):
            self._closed_by_peer(state, msg)

    def _pong(self, state, msg, source):
        waiting = state.pings.pop(msg.id, None)
        if waiting is None:
            return
        d, sent_at = waiting
        rtt_ms = round((self._clock.seconds() - sent_at) * 1000.0, 3)
        state.last_rtt = rtt_ms
        path = state.path.kind if source[:1] == b"D" or not state.path.using_direct() else "relay"
        d.callback({"rtt_ms": rtt_ms, "path": path, "bytes": len(msg.payload)})

    def _closed_by_peer(self, state, msg):
        if msg.reason == smsg.CLOSE_REVOKED:
            state.revoked_by_peer = True
            error = Refused(f"{state.label()} revoked its trust in this node")
        else:
            error = Refused(f"{state.label()} closed the session: {msg.message}")
        self.log.info("{peer} closed our session: {why}", peer=state.label(), why=msg.message)
        self._fail_pings(state, error)
        self._close_streams(state, error)
        self._halt(state)
        state.up = False
        # Not from inside the tunnel's own packet handling.
        self._clock.callLater(0, self.endpoint.remove_peer, state.key)

    # -- direct paths -----------------------------------------------------------

    def _call_me_maybe(self, key: bytes, reply: bool, tries: int = CALL_ME_MAYBE_TRIES) -> None:
        """Tell the peer, through the session, where to reach us directly.

        The peer answers with its own candidates and both sides punch.  A
        call that hears no answer is repeated: on a lossy path one lost
        datagram must not cost the direct path.
        """
        tunnel = self.endpoint.peers.get(key)
        if not self.allow_direct or tunnel is None or tunnel.current is None:
            return
        state = self._state(key)
        nat_type, public, lan = self._local_candidates()
        state.path.our_nat = nat_type
        tunnel.send_data(smsg.encode(smsg.CallMeMaybe(reply, nat_type, tuple(public), tuple(lan))))
        if reply:
            return
        asked_at = self._clock.seconds()
        if state.call_timer is not None and state.call_timer.active():
            state.call_timer.cancel()

        def check():
            state.call_timer = None
            answered = state.heard_candidates_at is not None and state.heard_candidates_at >= asked_at
            if not answered and tries > 1 and self.peers.get(key) is state and not state.path.using_direct():
                self._call_me_maybe(key, reply=False, tries=tries - 1)

        state.call_timer = self._clock.callLater(CALL_ME_MAYBE_RETRY, check)

    def _send_probe(self, key: bytes, endpoint: Endpoint, ttl=None) -> None:
        tunnel = self.endpoint.peers.get(key)
        if tunnel is None or tunnel.current is None or not tunnel.current.can_seal():
            return
        nonce = int.from_bytes(os.urandom(8), "big")
        packet = tunnel.current.seal(smsg.encode(smsg.PathProbe(nonce)))
        self._send_datagram(packet, endpoint, ttl=ttl)

    # -- streams ------------------------------------------------------------------

    def streams_for(self, state: PeerState) -> StreamConnection:
        """The stream multiplexer of ``state``'s session, made on first use."""
        if state.streams is None:
            tunnel = self.endpoint.peer(state.key)
            state.streams = StreamConnection(
                self._clock,
                tunnel.send_data,
                # Both sides must agree who is "low" so stream ids never collide.
                self._own_key < state.key,
                on_stream_opened=lambda stream, port: self._on_stream(state, stream, port),
                on_datagram=lambda port, data: self._on_stream_datagram(state, port, data),
            )
        return state.streams

    @defer.inlineCallbacks
    def open_stream(self, target: str, port: int):
        """A new stream to ``port`` on ``target``; fires with ``(peer state, stream)``."""
        state = yield self.resolve(target)
        yield self.connect(state)
        return state, self.streams_for(state).open_stream(port)

    def _close_streams(self, state: PeerState, error: PilotError) -> None:
        streams, state.streams = state.streams, None
        if streams is not None:
            streams.close(error)

    def _halt(self, state: PeerState) -> None:
        state.path.stop()
        if state.call_timer is not None and state.call_timer.active():
            state.call_timer.cancel()
        state.call_timer = None

    def _fail_pings(self, state: PeerState, error: PilotError) -> None:
        pings, state.pings = state.pings, {}
        for d, _ in pings.values():
            d.errback(error)


def _split(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _sleep(clock, seconds: float) -> defer.Deferred:
    d = defer.Deferred()
    clock.callLater(seconds, d.callback, None)
    return d
