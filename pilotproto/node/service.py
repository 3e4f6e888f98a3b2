"""
``PilotNode``: a pilot node as a Twisted service, and the boss of its workers.

Add it to any ``MultiService`` (``twistd pilot node`` is a thin wrapper
around it).  Like magic-wormhole's ``Boss``, it does no work itself: it
loads the identity and settings, makes the workers, wires each to the
collaborators it needs through the interfaces in
:mod:`pilotproto.interfaces` (each checked when wired), and answers
:class:`~pilotproto.interfaces.IPilotNode` by asking them.

The workers, and who talks to whom::

    UDPService --datagrams--> DatagramRouter --+--> BeaconLink (rendezvous)
        ^                         ^            +--> NatService (NAT discovery)
        |                         |            '--> Sessions (tunnels, paths, streams)
        |   BeaconLink's TLS link-'                    |         |
        '--- every layer sends through IDatagramSender  |         '--> PortTable --> Echo, Mail (1001, 1002), ...
                                                       '--> TrustManager (via the boss: ITrustListener)
    Forwards (pilotctl forward / expose) --> IPilotNode dial / listen

Things that start and stop are child services, started in this order and
stopped in the reverse one: the UDP socket (and the extra sockets of
birthday punches), the beacon link, NAT
discovery, the mail (durable inbox, outbox, events), the forwards (and
the control socket, which the layer above attaches, see
:class:`pilotproto.control.service.ControlService`).  Sessions and trust stop
first, so their goodbyes still have a socket to leave by.
"""

from __future__ import annotations

import base64
import os
import time

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from .. import __version__
from ..common.ids import RandomIds
from ..errors import InvalidArgument
from ..identity import Address, load_or_create
from ..interfaces import IPilotNode, ITrustListener
from ..rendezvous.cards import AgentCards
from ..rendezvous.beacons import BeaconSet
from ..rendezvous.link import BeaconLink
from ..rendezvous.sealed import SealedMailReader, SealedPoster
from ..rendezvous.sealed_parts import Reassembly
from ..session.sessions import Sessions
from ..trust.manager import TrustManager
from .config import NodeConfig, parse_fingerprint, parse_hostport, resolve_home
from .forwards import Forwards
from .mcp_servers import McpServers
from .delivery import MailPeers
from .messages import Mail
from .nat import NatService
from .ports import PortTable
from .punch_sockets import PunchSockets
from .router import DatagramRouter
from .services import start_standard_services
from .udp import UDPService


@implementer(IPilotNode, ITrustListener)
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
        on_shutdown=None,
        allow_direct: bool = True,
        auto_approve: bool | None = None,
        beacon_tls: str | None = None,
        beacon_ca: str | None = None,
        beacon_fingerprint: str | None = None,
        randbytes=os.urandom,
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
        self._on_shutdown = on_shutdown
        self._started_at: float | None = None
        ids = RandomIds(randbytes)
        self._build(ids, allow_direct)

    def _build(self, ids, allow_direct) -> None:
        """Make the workers and wire them; the order of the child services is the start order."""
        config, reactor = self.config, self.reactor
        self.udp = UDPService(reactor, config.port)
        #: every --beacon, one BeaconLink each, as one rendezvous (rendezvous/beacons.py)
        self.link = BeaconSet(reactor, [
            BeaconLink(
                reactor,
                self.identity,
                hostname=config.hostname,
                public=bool(config.public),
                beacon=parse_hostport(beacon),
                tls=config.beacon_tls_hostport(i),
                ca_file=config.beacon_ca,
                fingerprint=parse_fingerprint(pin) if (pin := config.beacon_fingerprint_of(i)) else None,
                udp=self.udp,
                ids=ids,
            )
            for i, beacon in enumerate(config.beacons)
        ])
        self.nat = NatService(reactor, self.udp, beacon_name=parse_hostport(config.beacons[0]) if config.beacons else None)
        #: extra sockets a birthday punch opens (symmetric NAT <-> port-restricted cone)
        self.punch_sockets = PunchSockets(reactor, self.nat.prober)
        self.trust = TrustManager(
            reactor,
            self.identity,
            self.home,
            requests=self.link.requests,
            directory=self.link,
            listener=self,
            hostname=config.hostname,
            auto_approve=bool(config.auto_approve),
        )
        #: who listens on which virtual port
        self.ports = PortTable(config.hostname, str(self.address), reactor)
        self.sessions = Sessions(
            reactor,
            self.identity,
            trust=self.trust,
            udp=self.udp,
            relay=self.link,
            directory=self.link,
            candidates=self.nat,
            acceptor=self.ports,
            ids=ids,
            allow_direct=allow_direct,
            punch=self.punch_sockets,
        )
        self.ports.wire(self.sessions)
        # Peers still on the relay hear at once when discovery reads our NAT differently.
        self.nat.watch_nat_type(lambda _nat_type: self.sessions.local_nat_changed())
        #: messages and files (port 1001) and events (port 1002), durable both ways
        self.mail = Mail(reactor, self.home, MailPeers(self.trust, self.link, self.ports), ids,
                         config.hostname, str(self.address), poster=SealedPoster(self.identity, links=self.link.links))
        start_standard_services(self.ports, self.mail.inbox, self.mail.events)
        self.router = DatagramRouter(self.link, self.nat, self.sessions)
        #: our agent card (HOME/card.json), published after every registration, and find
        self.cards = AgentCards(reactor, self.identity, self.home, self.link.requests, hostname=config.hostname)
        self.link.watch_registration(self.cards)
        self.udp.wire(self.router)
        self.punch_sockets.wire(self.router)
        # Sealed mail (store-and-forward) is read off the beacon's pushes before trust sees them:
        # a reader per beacon (acks go to the beacon that delivered), pieces joined in one place.
        sealed_parts = Reassembly(reactor)
        self.link.wire(router=self.router, observer=self.nat, mail=lambda link: SealedMailReader(
            self.identity, link.requests, self.trust, sink=self.mail.forwarder, parts=sealed_parts))
        for child in (self.udp, self.punch_sockets, self.link, self.nat, self.mail):
            child.setServiceParent(self)
        #: pilotctl forward / expose: TCP <-> overlay bridges, restored from config.json (after the UDP socket)
        self.forwarding = Forwards(reactor, self, self.home, config.forwards, config.exposes)
        self.forwarding.setServiceParent(self)
        #: pilotctl mcp serve: a process per incoming stream, restored from config.json
        self.mcp = McpServers(reactor, self, self.home, config.mcp_servers)
        self.mcp.setServiceParent(self)

    # -- identity ------------------------------------------------------------

    @property
    def hostname(self) -> str:
        return self.config.hostname

    @property
    def address(self) -> Address:
        return self.identity.address

    # -- lifecycle ---------------------------------------------------------------

    def startService(self):
        self._started_at = time.time()
        super().startService()
        self.log.info(
            "pilot node {name} ({address}) on UDP {local}, beacon {beacon}",
            name=self.hostname,
            address=str(self.address),
            local=str(self.udp.local_endpoint),
            beacon=", ".join(self.config.beacons),
        )

    def stopService(self):
        # Goodbyes first (Close to every peer), while the socket is still open.
        self.sessions.stop()
        self.trust.stop()
        return super().stopService()

    def when_registered(self) -> defer.Deferred:
        """A Deferred that fires with our public endpoint once we are registered."""
        return self.link.when_registered()

    # -- ITrustListener: the boss passes trust changes to the sessions ------------

    def trust_established(self, public_key: bytes) -> None:
        self.sessions.trust_established(public_key)
        self.mail.trust_established(public_key)

    def trust_revoked(self, public_key: bytes) -> None:
        self.sessions.trust_revoked(public_key)
        self.mail.trust_revoked(public_key)

    # -- IPilotNode ---------------------------------------------------------------------

    def info(self) -> defer.Deferred:
        reflexive, local = self.link.reflexive_endpoint, self.udp.local_endpoint
        status = self.link.status()
        return defer.succeed({
            "hostname": self.hostname,
            "address": str(self.address),
            "public_key": base64.b64encode(self.identity.public_key).decode(),
            "public": self.config.public,
            "beacon": self.config.beacon,
            "registered": status["registered"],
            "reflexive_endpoint": str(reflexive) if reflexive else None,
            "local_endpoint": str(local) if local else None,
            "nat_type": self.nat.nat_type,
            "beacon_transport": status["beacon_transport"],
            "beacon_error": status["beacon_error"],
            #: every beacon's state; the single-beacon fields above are the first one's
            "beacons": status["beacons"],
            "uptime_s": round(time.time() - self._started_at, 3) if self._started_at else 0.0,
            "pid": os.getpid(),
            "home": self.home,
            "version": __version__,
            "udp": self.udp.status(),
            "port_mapping": self.nat.port_mapping(),
        })

    def lookup(self, target: str) -> defer.Deferred:
        return defer.maybeDeferred(self.link.lookup, target)

    def ping(self, target: str, count: int = 4, interval: float = 1.0, timeout: float = 2.0, payload: bytes = b""):
        """Ping a trusted peer over its encrypted session; fires with a summary dict."""
        if not isinstance(count, int) or isinstance(count, bool) or not (1 <= count <= 10_000):
            return defer.fail(InvalidArgument("count must be a whole number from 1 to 10000"))
        for name, value in (("interval", interval), ("timeout", timeout)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not (0 <= value <= 60):
                return defer.fail(InvalidArgument(f"{name} must be a number of seconds from 0 to 60"))
        if not isinstance(payload, bytes) or len(payload) > 1000:
            return defer.fail(InvalidArgument("a ping payload is at most 1000 bytes"))
        return defer.maybeDeferred(self.sessions.ping, target, count, float(interval), float(timeout), payload)

    def peers(self) -> defer.Deferred:
        return defer.succeed({"peers": self.sessions.describe()})

    def handshake(self, target, reason) -> defer.Deferred:
        return defer.maybeDeferred(self.trust.handshake, target, reason)

    def pending(self) -> defer.Deferred:
        return defer.maybeDeferred(lambda: {"pending": self.trust.pending(), "outgoing": self.trust.outgoing()})

    def approve(self, peer) -> defer.Deferred:
        return defer.maybeDeferred(self.trust.approve, peer)

    def reject(self, peer) -> defer.Deferred:
        return defer.maybeDeferred(self.trust.reject, peer)

    def trusted(self) -> defer.Deferred:
        return defer.maybeDeferred(lambda: {"trusted": self.trust.trusted()})

    def revoke(self, peer) -> defer.Deferred:
        # The trust manager tells us (trust_revoked), and we end the sessions.
        return defer.maybeDeferred(self.trust.revoke, peer)

    def dial(self, target: str, port: int, factory) -> defer.Deferred:
        """Open a stream to ``port`` on ``target``; fires with the connected protocol."""
        return defer.maybeDeferred(self.ports.dial, target, port, factory)

    def listen(self, port: int, factory) -> defer.Deferred:
        """Run ``factory``'s protocols on every stream peers open to ``port``."""
        return defer.maybeDeferred(self.ports.listen, port, factory)

    def recv(self, count=None, timeout=0) -> defer.Deferred:
        return defer.maybeDeferred(self.mail.inbox.recv, count, timeout)

    # -- agent cards (the AgentCards worker) --

    def card_set(self, card) -> defer.Deferred:
        return defer.maybeDeferred(self.cards.set, card)

    def card_show(self, peer=None) -> defer.Deferred:
        return defer.maybeDeferred(self.cards.show, peer)

    def card_delete(self) -> defer.Deferred:
        return defer.maybeDeferred(self.cards.delete)

    def find(self, tag=None, capability=None, text=None) -> defer.Deferred:
        return defer.maybeDeferred(self.cards.find, tag, capability, text)

    # -- messages and events (the mail worker) --

    def send_message(self, target, data, wait=10) -> defer.Deferred:
        return defer.maybeDeferred(self.mail.send_message, target, data, wait)

    def inbox(self, after=0, count=None, timeout=0, kind=None) -> defer.Deferred:
        return defer.maybeDeferred(self.mail.inbox.inbox, after, count, timeout, kind)

    def inbox_delete(self, seqs) -> defer.Deferred:
        return defer.maybeDeferred(self.mail.inbox.delete, seqs)

    def outbox(self, id=None, wait=0, count=100) -> defer.Deferred:
        return defer.maybeDeferred(self.mail.outbox_messages, id, wait, count)

    def publish(self, topic, data) -> defer.Deferred:
        return defer.maybeDeferred(self.mail.events.publish, topic, data)

    def subscribe(self, pattern, after, on_event) -> defer.Deferred:
        return defer.maybeDeferred(self.mail.events.subscribe, pattern, after, on_event)

    # -- forwards and exposes (the Forwards worker) ---------------------------------------

    def forward(self, bind, local_port, target, port) -> defer.Deferred:
        return defer.maybeDeferred(self.forwarding.forward, bind, local_port, target, port)

    def forwards(self) -> defer.Deferred:
        return defer.maybeDeferred(self.forwarding.forwards)

    def unforward(self, bind, local_port) -> defer.Deferred:
        return defer.maybeDeferred(self.forwarding.unforward, bind, local_port)

    def expose(self, port, host, tcp_port, allow=()) -> defer.Deferred:
        return defer.maybeDeferred(self.forwarding.expose, port, host, tcp_port, allow)

    def exposes(self) -> defer.Deferred:
        return defer.maybeDeferred(self.forwarding.exposes)

    def unexpose(self, port) -> defer.Deferred:
        return defer.maybeDeferred(self.forwarding.unexpose, port)

    # -- MCP servers (the McpServers worker) ------------------------------------------------

    def mcp_serve(self, port, argv, cwd, allow=()) -> defer.Deferred:
        return defer.maybeDeferred(self.mcp.serve, port, argv, cwd, allow)

    def mcp_servers(self) -> defer.Deferred:
        return defer.maybeDeferred(self.mcp.servers)

    def mcp_unserve(self, port) -> defer.Deferred:
        return defer.maybeDeferred(self.mcp.unserve, port)

    def shutdown(self) -> defer.Deferred:
        stop = self._on_shutdown if self._on_shutdown is not None else self.stopService
        # Answer first, then stop: the caller wants to hear that we heard.
        self.reactor.callLater(0.05, stop)
        return defer.succeed({"stopping": True, "pid": os.getpid()})


__all__ = ["PilotNode"]
