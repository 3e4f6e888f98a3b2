"""
``PilotNode``: a pilot node as a Twisted service.

Add it to any ``MultiService`` (``twistd pilot node`` is a thin wrapper
around it).  It owns the node's identity, its UDP socket, the machine that
keeps it registered with the beacon, and, unless told otherwise, the local
control socket that ``pilotctl`` and other-language SDKs talk to.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import socket
import time

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from .. import __version__
from ..errors import InvalidArgument, NotFound, PilotError, Unavailable
from ..identity import Address, load_or_create
from ..wire import DecodeError, Endpoint
from ..wire import KIND_TUNNEL_DATA, KIND_TUNNEL_INIT, relay
from ..wire import beacon as msgs
from ..rendezvous.registration import BeaconClient, SeqCounter
from ..rendezvous.tls import BeaconTLSLink
from ..rendezvous.transport import BeaconTransport
from .config import CONTROL_SOCKET, NodeConfig, parse_fingerprint, parse_hostport, resolve_home
from ..session.natprobe import NatProber
from .protocol import NodeDatagramProtocol
from ..rendezvous.requests import BeaconRequests
from ..trust.manager import TrustManager
from .ports import PortTable
from .services import start_standard_services
from ..session.sessions import Sessions

#: how often NAT discovery runs again without a reason (NATs change with networks)
NAT_RECHECK_INTERVAL = 300.0


class PilotNode(service.MultiService):
    log = Logger()

    def __init__(
        self,
        home: str | None = None,
        hostname: str | None = None,
        beacon: str | None = None,
        public: bool | None = None,
        port: int | None = None,
        reactor=None,
        control_socket: bool = True,
        on_shutdown=None,
        allow_direct: bool = True,
        auto_approve: bool | None = None,
        beacon_tls: str | None = None,
        beacon_ca: str | None = None,
        beacon_fingerprint: str | None = None,
    ):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.home = resolve_home(home)
        self.config = NodeConfig.load(self.home).merged(
            hostname=hostname, beacon=beacon, public=public, port=port, auto_approve=auto_approve,
            beacon_tls=beacon_tls, beacon_ca=beacon_ca, beacon_fingerprint=beacon_fingerprint,
        )
        if not self.config.hostname:
            raise InvalidArgument("the node needs a hostname", hint="Pass --hostname NAME, or run: pilotctl init --hostname NAME")
        if not self.config.beacon:
            raise InvalidArgument("the node needs a beacon address", hint="Pass --beacon HOST:PORT")
        self.identity = load_or_create(self.home)
        self._beacon_hostport = parse_hostport(self.config.beacon)
        self.beacon_endpoint: Endpoint | None = None
        self._control_enabled = control_socket
        self._on_shutdown = on_shutdown
        self._control_port = None
        self._udp_port = None
        self._started_at = None
        self._registered_waiters: list[defer.Deferred] = []
        self.protocol = NodeDatagramProtocol(self)
        self.seq = SeqCounter(reactor)
        self.beacon_client = BeaconClient(
            reactor,
            self.identity,
            self._send_to_beacon,
            self.config.hostname,
            public=self.config.public,
            seq=self.seq,
            on_registered=self._registered,
        )
        self.requests = BeaconRequests(reactor, self.identity, self._send_to_beacon, self.seq)
        self.beacon_link, self.beacon_transport = self._beacon_transport(reactor)
        self.trust = TrustManager(
            reactor,
            self.identity,
            self.home,
            self._send_to_beacon,
            self.seq,
            self.lookup,
            hostname=self.config.hostname,
            auto_approve=self.config.auto_approve,
            on_revoked=self._trust_revoked,
            on_trusted=self._trust_established,
        )
        self._relay_key = None
        # Relay counters start at the clock, like seq, so they keep growing across restarts.
        self._relay_counter = int(time.time() * 1e9)
        self.sessions = Sessions(
            reactor,
            self.identity,
            is_trusted=self.is_trusted,
            send_datagram=self.protocol.send,
            send_relay=self.send_relay,
            lookup=self.lookup,
            local_candidates=self.local_candidates,
            relay_kind=self.relay_kind,
            allow_direct=allow_direct,
            on_stream=lambda state, stream, port: self.ports.incoming(state, stream, port),
            on_datagram=lambda state, port, data: self.ports.datagram(state, port, data),
        )
        #: who listens on which virtual port
        self.ports = PortTable(self)
        start_standard_services(self.ports)
        #: NAT behaviour seen from here; "unknown" until discovery says otherwise
        self.nat_type = "unknown"
        self.nat_prober = NatProber(reactor, self.protocol.send, self.source_endpoint, on_result=self._nat_discovered)
        self._nat_recheck = LoopingCall(self._probe_nat)
        self._nat_recheck.clock = reactor

    # -- identity ------------------------------------------------------------

    @property
    def hostname(self) -> str:
        return self.config.hostname

    @property
    def address(self) -> Address:
        return self.identity.address

    # -- lifecycle ---------------------------------------------------------------

    def startService(self):
        super().startService()
        from ..endpoints import running_nodes

        running_nodes.add(self)
        self._started_at = time.time()
        self._udp_port = self.reactor.listenUDP(self.config.port, self.protocol)
        if self._control_enabled:
            from ..control.server import listen_control_socket

            self._control_port = listen_control_socket(self.reactor, os.path.join(self.home, CONTROL_SOCKET), self)
        self.log.info(
            "pilot node {name} ({address}) on UDP {local}, beacon {beacon}",
            name=self.hostname,
            address=str(self.address),
            local=str(self.local_endpoint),
            beacon=self.config.beacon,
        )
        d = self._resolve_beacon()
        d.addCallback(self._beacon_resolved)
        d.addErrback(lambda f: self.log.failure("cannot start talking to the beacon", f))

    def _resolve_beacon(self) -> defer.Deferred:
        host, port = self._beacon_hostport
        try:
            ipaddress.ip_address(host)
            return defer.succeed(Endpoint(host, port))
        except ValueError:
            pass
        d = defer.maybeDeferred(self.reactor.resolve, host)
        d.addCallback(lambda ip: Endpoint(ip, port))
        return d

    def _beacon_resolved(self, endpoint):
        self.beacon_endpoint = endpoint
        if self.running:
            self.beacon_client.start()
            self.beacon_transport.start()
            # Alongside registration, not after it: nothing waits for the result.
            self._nat_recheck.start(NAT_RECHECK_INTERVAL, now=True)

    @defer.inlineCallbacks
    def stopService(self):
        self.sessions.stop()
        self.beacon_client.stop()
        self.beacon_transport.stop()
        yield self.beacon_link.when_closed()
        self.requests.cancel_all()
        self.trust.stop()
        if self._nat_recheck.running:
            self._nat_recheck.stop()
        self.nat_prober.stop()
        if self._control_port is not None:
            yield defer.maybeDeferred(self._control_port.stopListening)
            self._control_port = None
        if self._udp_port is not None:
            yield defer.maybeDeferred(self._udp_port.stopListening)
            self._udp_port = None
        for waiter in self._registered_waiters:
            waiter.errback(Unavailable("the node stopped before it registered"))
        self._registered_waiters = []
        yield super().stopService()

    # -- the beacon ----------------------------------------------------------------

    def _beacon_transport(self, reactor):
        host, port = self.config.beacon_tls_hostport()
        fingerprint = self.config.beacon_fingerprint
        link = BeaconTLSLink(
            reactor,
            host,
            port,
            ca_file=self.config.beacon_ca,
            fingerprint=parse_fingerprint(fingerprint) if fingerprint else None,
            on_datagram=self._beacon_stream_datagram,
            on_up=self.beacon_client.transport_changed,
        )
        transport = BeaconTransport(
            reactor,
            hello_unanswered_since=lambda: self.beacon_client.hello_unanswered_since,
            send_udp=lambda data: self.beacon_endpoint is not None and self.protocol.send(data, self.beacon_endpoint),
            link=link,
            on_change=lambda kind: self.beacon_client.transport_changed(),
        )
        return link, transport

    def _send_to_beacon(self, data: bytes) -> None:
        if self.beacon_transport.kind == "tls" and self.beacon_link.send(data):
            return
        # UDP, or TLS that is not up (yet): try UDP rather than nothing; a
        # beacon that was merely restarting answers there first.
        if self.beacon_endpoint is not None:
            self.protocol.send(data, self.beacon_endpoint)

    def _beacon_stream_datagram(self, data: bytes) -> None:
        """A datagram from the beacon over TLS: handled as if it came by UDP."""
        counters, source = self.protocol.counters, self.beacon_endpoint
        try:
            if data[:1] == bytes([msgs.KIND]):
                handled = self.beacon_message_received(msgs.decode(data), source, by_udp=False)
            elif data[:1] == bytes([relay.KIND_FROM_BEACON]):
                handled = self.relay_received(relay.decode_from_beacon(data), source)
            else:
                counters["tls_dropped_unknown_kind"] += 1
                return
            if not handled:
                counters["dropped_unsolicited"] += 1
        except DecodeError:
            counters["dropped_malformed"] += 1
        except Exception:
            counters["internal_errors"] += 1
            self.log.failure("node failed to handle a datagram from the beacon over TLS")

    def relay_kind(self) -> str:
        """How relayed packets travel from here: "relay" (UDP) or "relay-tcp" (TLS)."""
        return "relay-tcp" if self.beacon_transport.kind == "tls" else "relay"

    def beacon_message_received(self, msg, source: Endpoint, by_udp: bool = True) -> bool:
        if source != self.beacon_endpoint:
            return False
        if by_udp and self.beacon_transport.udp_message_received(msg):
            return True
        handled = (
            self.requests.message_received(msg)
            or self.beacon_client.message_received(msg)
            or self.trust.message_received(msg)
        )
        self._check_reflexive_endpoint()
        return handled

    # -- NAT discovery ----------------------------------------------------------------

    def stun_received(self, data: bytes, source: Endpoint) -> bool:
        """A STUN datagram: an answer to NAT discovery, or nothing of ours."""
        return self.nat_prober.datagram_received(data, source)

    def _probe_nat(self):
        if self.beacon_endpoint is not None:
            self.nat_prober.start(self.beacon_endpoint)

    def _check_reflexive_endpoint(self):
        # A new public endpoint (rebinding, a new address, another network)
        # may mean another NAT: classify again.
        observed, probed = self.reflexive_endpoint, self.nat_prober.reflexive
        if observed is not None and probed is not None and observed != probed:
            self.log.info("public endpoint now {new} (NAT discovery saw {old}): discovering the NAT again", new=str(observed), old=str(probed))
            self._probe_nat()

    def _nat_discovered(self, nat_type: str) -> None:
        self.nat_type = nat_type

    def relay_received(self, frame, source: Endpoint) -> bool:
        """A tunnel packet the beacon relayed from another node."""
        if source != self.beacon_endpoint:
            return False
        self.sessions.relay_received(frame.sender, frame.payload)
        return True

    def tunnel_datagram_received(self, data: bytes, source: Endpoint) -> bool:
        """A tunnel packet straight from a peer."""
        if not data or not (KIND_TUNNEL_INIT <= data[0] <= KIND_TUNNEL_DATA):
            return False
        self.sessions.datagram_received(data, source)
        return True

    def send_relay(self, destination: bytes, payload: bytes) -> None:
        """Send a tunnel packet to the node at ``destination`` through the beacon."""
        if self._relay_key is None or self.beacon_endpoint is None:
            self.protocol.counters["relay_unavailable"] += 1
            return
        self._relay_counter += 1
        frame = relay.seal_to_beacon(self._relay_key, self.address.to_bytes(), destination, self._relay_counter, payload)
        self._send_to_beacon(frame)

    def _registered(self, observed):
        self.trust.registered()
        beacon_key = self.beacon_client.beacon_key
        try:
            self._relay_key = relay.relay_key(
                self.identity.x25519_private(), beacon_key, self.identity.public_key, beacon_key
            )
        except PilotError:
            self.log.error("the beacon sent an unusable relay key; relaying is off")
            self._relay_key = None
        waiters, self._registered_waiters = self._registered_waiters, []
        for waiter in waiters:
            waiter.callback(observed)

    def when_registered(self) -> defer.Deferred:
        """A Deferred that fires with our public endpoint once we are registered."""
        if self.beacon_client.registered:
            return defer.succeed(self.beacon_client.observed)
        d = defer.Deferred()
        self._registered_waiters.append(d)
        return d

    @property
    def local_endpoint(self) -> Endpoint | None:
        if self._udp_port is None:
            return None
        host = self._udp_port.getHost()
        return Endpoint(host.host, host.port)

    @property
    def reflexive_endpoint(self) -> Endpoint | None:
        # Over TLS the beacon sees our TCP address, which no peer can use.
        return self.beacon_client.observed if self.beacon_transport.kind == "udp" else None

    def source_endpoint(self) -> Endpoint | None:
        """The address and port our datagrams to the beacon leave from.

        The socket is bound to the wildcard, so its own name does not say
        which interface address the kernel sends from."""
        local = self.local_endpoint
        if local is None or self.beacon_endpoint is None:
            return None
        family = socket.AF_INET6 if ":" in self.beacon_endpoint.host else socket.AF_INET
        try:
            # Connecting a UDP socket sends nothing; it only asks the kernel
            # which source address it would route from.
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect(self.beacon_endpoint.as_tuple())
                host = probe.getsockname()[0]
        except OSError:
            return None
        return Endpoint(host, local.port)

    def lan_endpoints(self) -> list[Endpoint]:
        """Our address on the local network, as a peer on the same LAN would reach it."""
        ep = self.source_endpoint()
        return [] if ep is None or ep == self.reflexive_endpoint else [ep]

    def local_candidates(self):
        """(nat_type, public endpoints, LAN endpoints) to offer a peer."""
        public = [self.reflexive_endpoint] if self.reflexive_endpoint else []
        return self.nat_type, public, self.lan_endpoints()

    def lookup(self, target: str) -> defer.Deferred:
        """Find a node by hostname or address; fires with a dict (see ``ctl_lookup``)."""
        d = self.requests.lookup(target)

        def describe(result: msgs.LookupResult):
            return {
                "hostname": result.hostname,
                "address": str(Address.from_bytes(result.address)),
                "public_key": base64.b64encode(result.public_key).decode(),
                "endpoints": [str(e) for e in result.endpoints],
                "public": bool(result.flags & msgs.FLAG_PUBLIC),
            }

        def not_found(failure):
            failure.trap(NotFound)
            raise NotFound(f"no node {target!r} is visible to this node", hint=NotFound.hint)

        return d.addCallbacks(describe, not_found)

    # -- control socket commands ---------------------------------------------------

    def ctl_info(self):
        return {
            "hostname": self.hostname,
            "address": str(self.address),
            "public_key": base64.b64encode(self.identity.public_key).decode(),
            "public": self.config.public,
            "beacon": self.config.beacon,
            "registered": self.beacon_client.registered,
            "reflexive_endpoint": str(self.reflexive_endpoint) if self.reflexive_endpoint else None,
            "local_endpoint": str(self.local_endpoint) if self.local_endpoint else None,
            "nat_type": self.nat_type,
            "beacon_transport": self.beacon_transport.kind,
            "beacon_error": self.beacon_client.last_error or self.beacon_transport.last_error,
            "uptime_s": round(time.time() - self._started_at, 3) if self._started_at else 0.0,
            "pid": os.getpid(),
            "home": self.home,
            "version": __version__,
        }

    def ctl_lookup(self, target):
        return self.lookup(target)

    def is_trusted(self, public_key: bytes) -> bool:
        """Does this node trust ``public_key``?  (Asked by the tunnel responder.)"""
        trust = getattr(self, "trust", None)
        return trust is not None and trust.is_trusted(public_key)

    def on_trust_revoked(self, public_key: bytes) -> None:
        """Trust in a peer ended: its live sessions go within a second."""
        self.sessions.revoke(public_key)

    def on_trust_established(self, public_key: bytes) -> None:
        self.sessions.trusted(public_key)

    def ping(self, target: str, count: int = 4, interval: float = 1.0, timeout: float = 2.0, payload: bytes = b""):
        """Ping a trusted peer over its encrypted session; fires with a summary dict."""
        if not isinstance(count, int) or not (1 <= count <= 10_000):
            raise InvalidArgument("count must be a whole number from 1 to 10000")
        for name, value in (("interval", interval), ("timeout", timeout)):
            if not isinstance(value, (int, float)) or not (0 <= value <= 60):
                raise InvalidArgument(f"{name} must be a number of seconds from 0 to 60")
        if len(payload) > 1000:
            raise InvalidArgument("a ping payload is at most 1000 bytes")
        return self.sessions.ping(target, count, float(interval), float(timeout), payload)

    def ctl_ping(self, target, count=4, interval=1.0, reply_timeout=2.0, payload=""):
        if not isinstance(payload, str):
            raise InvalidArgument("payload must be text")
        return self.ping(target, count, interval, reply_timeout, payload.encode("utf-8"))

    def listen(self, port: int, factory):
        """Run ``factory``'s protocols on every stream peers open to ``port``."""
        return self.ports.listen(port, factory)

    def dial(self, target: str, port: int, factory):
        """Open a stream to ``port`` on ``target``; fires with the connected protocol."""
        return self.ports.dial(target, port, factory)

    def ctl_peers(self):
        return {"peers": self.sessions.describe()}

    def ctl_shutdown(self):
        stop = self._on_shutdown if self._on_shutdown is not None else self.stopService
        # Answer first, then stop: the caller wants to hear that we heard.
        self.reactor.callLater(0.05, stop)
        return {"stopping": True, "pid": os.getpid()}

    # -- trust commands --

    def _trust_revoked(self, public_key: bytes) -> None:
        # Sessions with a peer we no longer trust end now (the session layer's hook).
        teardown = getattr(self, "on_trust_revoked", None)
        if teardown is not None:
            teardown(public_key)

    def _trust_established(self, public_key: bytes) -> None:
        established = getattr(self, "on_trust_established", None)
        if established is not None:
            established(public_key)

    def ctl_handshake(self, target, reason):
        return self.trust.handshake(target, reason)

    def ctl_pending(self):
        return {"pending": self.trust.pending(), "outgoing": self.trust.outgoing()}

    def ctl_approve(self, peer):
        return self.trust.approve(peer)

    def ctl_reject(self, peer):
        return self.trust.reject(peer)

    def ctl_trust(self):
        return {"trusted": self.trust.trusted()}

    def ctl_revoke(self, peer):
        # trust.revoke calls self.on_trust_revoked (through _trust_revoked).
        return self.trust.revoke(peer)

    # -- stream commands --

    @property
    def inbox(self):
        """Messages and files peers sent to port 1001 (:mod:`pilotproto.node.inbox`)."""
        inbox = self.__dict__.get("_inbox")
        if inbox is None:
            from .inbox import Inbox

            inbox = self._inbox = Inbox(self.home, self.reactor)
        return inbox

    @property
    def stream_commands(self):
        """The control socket's stream upgrades (:mod:`pilotproto.control.upgrade`)."""
        commands = self.__dict__.get("_stream_commands")
        if commands is None:
            from ..control.upgrade import StreamCommands

            commands = self._stream_commands = StreamCommands(self, self.reactor)
        return commands

    def ctl_connect(self, target, port):
        return self.stream_commands.connect(target, port)

    def ctl_listen(self, port):
        return self.stream_commands.listen(port)

    def ctl_accept(self, stream_id):
        return self.stream_commands.accept(stream_id)

    def ctl_recv(self, count=None, timeout=0):
        return self.inbox.recv(count, timeout)


__all__ = ["PilotNode", "PilotError"]
