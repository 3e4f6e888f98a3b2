"""
Encrypted sessions with trusted peers: the node's tunnels, one record per
peer, and the API the node offers on them (ping, streams, the peer list).

``Sessions`` owns the node's :class:`~pilotproto.tunnel.TunnelEndpoint` and
is its :class:`~pilotproto.tunnel.ITunnelOwner`: every tunnel packet comes
in through :meth:`Sessions.tunnel_packet_received` with its typed source
(:class:`~pilotproto.wire.sources.Direct` from a peer's UDP endpoint,
:class:`~pilotproto.wire.sources.Relayed` through the beacon), and every
tunnel's packets leave through its peer's path.  The source travels with
the packet, as a value, to whoever needs it: the cookie gate, the path
(roaming), and the peer's message handlers (answers that depend on the way
a packet came).  Per-peer work is in :mod:`pilotproto.session.peer`.

Trust changes arrive as an :class:`~pilotproto.interfaces.ITrustListener`:
a revoked peer is told (Close) and its session torn down at once.
"""

from __future__ import annotations

import base64

from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from ..common import timeouts
from ..common.ids import new_request_id
from ..common.wiring import check_provides
from ..errors import NotTrusted, PilotError, Refused, Timeout
from ..interfaces import IPeerDirectory, ISessions, ITrustListener, ITrustPolicy
from ..streams.errors import ConnectionClosed
from ..tunnel import ITunnelOwner, TunnelEndpoint
from ..wire import DecodeError, Endpoint
from ..wire import session as smsg
from ..wire.sources import Direct, Relayed
from .birthday_schedule import BirthdayOptions
from .paths import PathTimers
from .peer import STREAM_TYPE, Peer, PeerLinks

#: after telling a revoked peer (Close), wait this long before dropping its keys
CLOSE_GRACE = 0.2


@implementer(ISessions, ITrustListener, ITunnelOwner)
class Sessions:
    """
    Every session of one node.

    Collaborators, each checked against its interface: ``trust``
    (ITrustPolicy: does the tunnel responder answer this key?), ``udp``
    (IDatagramSender) and ``relay`` (IRelay) move packets, ``directory``
    (IPeerDirectory) finds peers, ``candidates`` (ILocalCandidates) says
    where peers may reach us directly, ``acceptor`` (IStreamAcceptor) takes
    the streams and datagrams peers open to us.  ``ids()`` gives ping ids
    and probe nonces.  ``tunnel_options`` go to the TunnelEndpoint.
    """

    log = Logger()

    def __init__(
        self,
        clock,
        identity,
        *,
        trust,
        udp,
        relay,
        directory,
        candidates,
        acceptor,
        ids=new_request_id,
        allow_direct: bool = True,
        path_timers: PathTimers = PathTimers(),
        punch=None,
        birthday: BirthdayOptions = BirthdayOptions(),
        **tunnel_options,
    ):
        self._clock = clock
        self._trust = check_provides(trust, ITrustPolicy, "Sessions.trust")
        self._directory = check_provides(directory, IPeerDirectory, "Sessions.directory")
        self._links = PeerLinks(
            clock,
            udp=udp,
            relay=relay,
            candidates=candidates,
            acceptor=acceptor,
            ids=ids,
            own_key=identity.public_key,
            allow_direct=allow_direct,
            path_timers=path_timers,
            punch=punch,
            birthday=birthday,
        )
        #: seconds a tunnel handshake may take before open_stream / ping fail (tests shorten it)
        self.connect_timeout = timeouts.TUNNEL_HANDSHAKE
        #: one record per peer, by Ed25519 public key
        self.peers: dict[bytes, Peer] = {}
        self.endpoint = TunnelEndpoint(identity, clock, trust=trust, owner=self, **tunnel_options)

    @property
    def allow_direct(self) -> bool:
        return self._links.allow_direct

    @property
    def path_timers(self) -> PathTimers:
        return self._links.path_timers

    # -- packets in ------------------------------------------------------------------

    def tunnel_packet_received(self, data: bytes, source: Direct | Relayed) -> None:
        """A tunnel packet from ``source``; a reply (a cookie) goes back the way it came."""
        self.endpoint.datagram_received(data, source, self._reply_to(source))

    def tunnel_packets_received(self, packets, source: Direct | Relayed) -> None:
        """Several tunnel packets from one ``source`` (a GRO read, or one relayed
        sender's frames of a beacon burst), in order."""
        self.endpoint.packets_received(packets, source, self._reply_to(source))

    def _reply_to(self, source: Direct | Relayed):
        """How a reply (a cookie) goes back the way a packet came."""
        if isinstance(source, Direct):
            return lambda packet: self._links.udp.send(packet, source.endpoint)
        if isinstance(source, Relayed):
            return lambda packet: self._links.relay.send_relay(source.sender, packet)
        raise TypeError(f"a tunnel packet comes straight from a peer or through the relay, not from {source!r}")

    # -- ITunnelOwner: what the tunnels ask and tell -------------------------------------

    def tunnel_send(self, peer_key: bytes, packet: bytes) -> None:
        peer = self._record(peer_key)
        if peer is not None:
            peer.path.send(packet)

    def tunnel_send_many(self, peer_key: bytes, packets: list) -> None:
        peer = self._record(peer_key)
        if peer is not None:
            peer.path.send_many(packets)

    def tunnel_authenticated(self, peer_key: bytes, source, size: int) -> None:
        peer = self._record(peer_key)
        if peer is not None:
            peer.path.received(source, size)

    def tunnel_data_many(self, peer_key: bytes, plaintexts: list, source) -> None:
        peer = self._record(peer_key)
        if peer is None:
            return
        # Runs of stream packets go up together: one flush, one ACK and one
        # burst for what a whole read made due (StreamConnection.packets_received).
        run: list = []
        for plaintext in plaintexts:
            if plaintext[0] == STREAM_TYPE:
                run.append(plaintext)
                continue
            if run:
                self._stream_run(peer, run)
                run = []
            if peer.ended:
                return
            self._session_message(peer, plaintext, source)
        if run:
            self._stream_run(peer, run)

    @staticmethod
    def _stream_run(peer: Peer, run: list) -> None:
        if not peer.ended:
            peer.stream_connection().packets_received(run)

    def _session_message(self, peer: Peer, plaintext: bytes, source) -> None:
        try:
            msg = smsg.decode(plaintext)
        except DecodeError:
            self.endpoint.stats["session_malformed"] += 1
            return
        if isinstance(msg, smsg.Close):
            self._closed_by_peer(peer, msg)
        else:
            peer.message_received(msg, source)

    def tunnel_up(self, peer_key: bytes) -> None:
        peer = self._record(peer_key)
        if peer is not None:
            peer.session_up()

    def tunnel_down(self, peer_key: bytes) -> None:
        # Also from a tunnel being removed: the record still holds it.
        peer = self.peers.get(peer_key)
        if peer is not None:
            peer.up = False

    # -- peer records ------------------------------------------------------------------

    def _record(self, key: bytes) -> Peer | None:
        """The record of the live tunnel to ``key``; None when there is no tunnel.

        A tunnel the record does not hold (the old one was torn down, and
        the peer or we started over) gets a new record that keeps what
        outlives a session (see :meth:`Peer.carry_over`)."""
        tunnel = self.endpoint.peers.get(key)
        if tunnel is None:
            return None
        peer = self.peers.get(key)
        if peer is None or peer.tunnel is not tunnel:
            previous, peer = peer, Peer(key, tunnel, self._links)
            if previous is not None:
                previous.end(ConnectionClosed(f"the session with {previous.label()} was replaced"))
                peer.carry_over(previous)
            if peer.hostname is None:
                # A session the peer opened: name it as we trust it, before any lookup.
                peer.hostname = self._trust.hostname_of(key)
            self.peers[key] = peer
        return peer

    def _peer(self, key: bytes) -> Peer:
        """The record for ``key``, with a tunnel (made idle if there was none)."""
        self.endpoint.peer(key)
        return self._record(key)

    def _drop_tunnel(self, tunnel, forget: bool) -> None:
        key = tunnel.remote_ed25519
        if self.endpoint.peers.get(key) is tunnel:
            self.endpoint.remove_peer(key)
        peer = self.peers.get(key)
        if peer is not None and peer.tunnel is tunnel:
            peer.end(ConnectionClosed(f"the session with {peer.label()} ended"))
            if forget:
                del self.peers[key]

    # -- finding and connecting ----------------------------------------------------------

    @defer.inlineCallbacks
    def resolve(self, target: str):
        """The record of the trusted peer ``target`` names.

        A peer with a live session is used at once (its endpoints are
        refreshed from the beacon in the background), so neither a slow nor
        a dead beacon holds up traffic that does not need it.
        """
        peer = self._known(target)
        if peer is not None:
            refresh = self._directory.lookup(target)
            refresh.addCallback(self._learn)
            refresh.addErrback(lambda failure: None)
        else:
            found = yield self._directory.lookup(target)
            peer = self._learn(found)
        if not self._trust.is_trusted(peer.key):
            raise NotTrusted(
                f"this node does not trust {peer.label()} ({peer.address})",
                hint=f"Ask for trust first: pilotctl handshake {peer.label()} \"why\"",
            )
        if peer.revoked_by_peer:
            raise Refused(f"{peer.label()} has revoked its trust in this node")
        return peer

    def _learn(self, found: dict) -> Peer:
        peer = self._peer(base64.b64decode(found["public_key"]))
        peer.hostname = found["hostname"]
        peer.path.add_candidates(Endpoint(*_split(ep)) for ep in found.get("endpoints", ()))
        return peer

    def _known(self, target: str) -> Peer | None:
        for peer in self.peers.values():
            if target in (peer.hostname, str(peer.address)) and peer.up:
                return peer
        return None

    @defer.inlineCallbacks
    def connect(self, target: str):
        """The record of ``target``'s peer once its session can carry data."""
        peer = yield self.resolve(target)
        # The live record: a session that ended meanwhile has a new one.
        peer = self._peer(peer.key)
        d = peer.tunnel.connect()
        d.addTimeout(self.connect_timeout, self._clock)
        try:
            yield d
        except (defer.TimeoutError, Timeout):
            raise Timeout(
                f"{peer.label()} did not answer the tunnel handshake",
                hint="A session needs trust on both sides: has the peer approved your handshake?",
            ) from None
        return peer

    # -- what runs on sessions -------------------------------------------------------------

    @defer.inlineCallbacks
    def ping(self, target: str, count: int = 4, interval: float = 1.0, timeout: float = 2.0, payload: bytes = b""):
        """Ping ``target`` over its session; fires with a summary dict."""
        peer = yield self.connect(target)
        waits = []
        for seq in range(1, count + 1):
            if seq > 1:
                yield deferLater(self._clock, interval)
            waits.append(peer.ping(timeout, payload).addCallback(_numbered, seq))
        try:
            results = yield defer.gatherResults(waits, consumeErrors=True)
        except defer.FirstError as e:
            e.subFailure.raiseException()
        return _ping_summary(peer, count, results)

    @defer.inlineCallbacks
    def open_stream(self, target: str, port: int):
        """A new stream to ``port`` on ``target``; fires with ``(peer record, stream)``."""
        peer = yield self.connect(target)
        return peer, peer.stream_connection().open_stream(port)

    def describe(self) -> list[dict]:
        return [peer.describe() for peer in self.peers.values()]

    def local_nat_changed(self) -> None:
        """NAT discovery now says something else about us (e.g. a CGN's
        behaviour showed through after start): tell every peer still on the
        relay at once, so the pair punches with the truth instead of waiting
        for the path's retry (seconds).  A direct path needs nothing."""
        for peer in self.peers.values():
            if not peer.ended and not peer.path.using_direct():
                peer.call_me_maybe(reply=False)

    # -- ITrustListener ----------------------------------------------------------------------

    def trust_established(self, public_key: bytes) -> None:
        """Trust (again) mutual with ``public_key``: forget an old revocation."""
        peer = self.peers.get(public_key)
        if peer is not None:
            peer.revoked_by_peer = False

    def trust_revoked(self, public_key: bytes) -> None:
        """We stopped trusting ``public_key``: tell it, then tear its session down."""
        tunnel = self.endpoint.peers.get(public_key)
        if tunnel is not None and tunnel.current is not None:
            # On the session's own path, before the record ends.
            tunnel.send_data(smsg.encode(smsg.Close(smsg.CLOSE_REVOKED, "trust revoked")))
        peer = self.peers.get(public_key)
        if peer is not None:
            peer.end(Refused(f"trust in {peer.label()} was revoked"))
        if tunnel is not None:
            # Let the Close leave before the keys (and the record) are gone.
            self._clock.callLater(CLOSE_GRACE, self._drop_tunnel, tunnel, forget=True)
        elif peer is not None:
            del self.peers[public_key]

    def stop(self) -> None:
        """Tell every peer we are going, fail what waits, and stop every timer."""
        for tunnel in list(self.endpoint.peers.values()):
            if tunnel.current is not None:
                tunnel.send_data(smsg.encode(smsg.Close(smsg.CLOSE_SHUTDOWN, "node shutting down")))
        for peer in self.peers.values():
            peer.end(PilotError("the node is shutting down"), ConnectionClosed("the node is shutting down"))
        self.endpoint.stop()

    def _closed_by_peer(self, peer: Peer, msg: smsg.Close) -> None:
        if msg.reason == smsg.CLOSE_REVOKED:
            peer.revoked_by_peer = True
            error = Refused(f"{peer.label()} revoked its trust in this node")
        else:
            error = Refused(f"{peer.label()} closed the session: {msg.message}")
        self.log.info("{peer} closed our session: {why}", peer=peer.label(), why=msg.message)
        peer.end(error)
        # Not from inside the tunnel endpoint's packet handling.  The record
        # stays (it remembers a revocation) until a new session replaces it.
        self._clock.callLater(0, self._drop_tunnel, peer.tunnel, forget=False)


def _numbered(reply, seq: int):
    if reply is not None:
        reply["seq"] = seq
    return reply


def _ping_summary(peer: Peer, count: int, results: list) -> dict:
    replies = [r for r in results if r is not None]
    rtts = [r["rtt_ms"] for r in replies]
    path = peer.path
    return {
        "target": peer.label(),
        "address": str(peer.address),
        "sent": count,
        "received": len(replies),
        "loss_pct": round(100.0 * (count - len(replies)) / count, 1) if count else 0.0,
        "replies": results,
        "min_ms": min(rtts) if rtts else None,
        "avg_ms": round(sum(rtts) / len(rtts), 3) if rtts else None,
        "max_ms": max(rtts) if rtts else None,
        "path": path.kind,
        "endpoint": str(path.direct) if path.using_direct() else None,
        "our_nat": path.our_nat,
        "peer_nat": path.peer_nat,
        "path_changes": path.switches + path.fallbacks,
    }


def _split(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)
