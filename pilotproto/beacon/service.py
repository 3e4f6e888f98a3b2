"""
The beacon as a Twisted service: its UDP port(s) and the registry's expiry.

``--port`` is the main port: registration, lookup, STUN.  ``--alt-port``
(and, with ``--alt-address``, a second IP) answers STUN too, so that nodes
can tell how their NAT maps and filters (RFC 5780).  With both, the beacon
listens on all four address x port combinations and answers a STUN
CHANGE-REQUEST from the socket it asks for; ``--alt-address`` then needs a
concrete ``--interface`` (the primary address).

``--interface6`` adds an IPv6 listener on the same port (``::`` for every
IPv6 address of the host): nodes with IPv6 register, look up and learn their
IPv6 reflexive endpoint there.  The two sockets share the server, and each
hands a datagram for the other family (a relayed frame, a pushed letter)
to the other socket.

``--state-dir`` keeps names, visibility lists and mail in SQLite
(:mod:`pilotproto.beacon.store`), written once a second and when the beacon
stops; without it the beacon remembers nothing across a restart and says so
in its log.  ``--store redis://HOST:PORT/DB`` keeps them in Redis instead,
shared with every beacon given the same address: a fleet
(:mod:`pilotproto.beacon.fleet`), whose listeners start only once the
beacon holds the fleet's state.  ``limits`` (:class:`~pilotproto.beacon.limits.Limits`) are the
quotas of ``docs/security.md``.
"""

from __future__ import annotations

import os
import socket

from twisted.application import internet, service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ..errors import InvalidArgument
from ..wire import Endpoint
from .protocol import BatchingPort, BeaconDatagramProtocol
from .server import BeaconServer
from .store import FLUSH_INTERVAL, MemoryStore, SQLiteStore
from .tls import TLSListenerService, server_tls_options


class _ExpiryService(service.Service):
    def __init__(self, reactor, server, interval):
        self._loop = LoopingCall(server.expire)
        self._loop.clock = reactor
        self._interval = interval

    def startService(self):
        super().startService()
        self._loop.start(self._interval, now=False)

    def stopService(self):
        if self._loop.running:
            self._loop.stop()
        return super().stopService()


class _StoreService(service.Service):
    """Writes the store's queued changes every ``FLUSH_INTERVAL`` s, off the datagram path."""

    log = Logger()

    def __init__(self, reactor, store):
        self.store = store
        self._loop = LoopingCall(self._flush)
        self._loop.clock = reactor

    def _flush(self):
        try:
            self.store.flush()
        except Exception:
            # A full disk must not stop the beacon: the batch is kept and retried.
            self.log.failure("cannot write the beacon's state; retrying")

    def startService(self):
        super().startService()
        if isinstance(self.store, MemoryStore):
            self.log.warn("no --state-dir: names, visibility lists and mail will not survive a restart")
        self._loop.start(FLUSH_INTERVAL, now=False)

    def stopService(self):
        if self._loop.running:
            self._loop.stop()
        self.store.close()
        return super().stopService()


class _AfterReady(service.MultiService):
    """Starts its children (the beacon's listeners) once ``ready`` fires:
    a fleet beacon answers nobody before it holds the fleet's state."""

    def __init__(self, ready):
        super().__init__()
        self._ready = ready

    def privilegedStartService(self):
        """Nothing: twistd would bind the ports here, before the fleet's state
        is loaded (so a fleet beacon cannot bind ports below 1024 and then drop
        root with --uid; give it the capability instead, docs/deploy.md)."""

    def startService(self):
        service.Service.startService(self)
        self._ready.addCallback(self._start_children)

    def _start_children(self, _):
        if self.running:
            for child in self:
                child.startService()


class _UDPService(internet.UDPServer):
    """A UDPServer whose port is visible once started (tests bind port 0),
    reading with GRO and forwarding relay frames in GSO bursts (:class:`BatchingPort`)."""

    def _getPort(self):
        port, protocol = self.args
        listening = BatchingPort(port, protocol, interface=self.kwargs.get("interface", ""), reactor=self.reactor)
        listening.startListening()
        return listening


class _V6OnlyPort(BatchingPort):
    """An IPv6-only UDP port: a dual-stack one on ``::`` would take the IPv4
    port too, which the IPv4 socket holds."""

    def createInternetSocket(self):
        sock = super().createInternetSocket()
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        return sock


class _UDP6Service(service.Service):
    """The IPv6 main socket while running."""

    def __init__(self, reactor, port: int, protocol, interface: str):
        self._reactor, self._number, self._protocol, self._interface = reactor, port, protocol, interface
        self._port = None

    def privilegedStartService(self):
        """Binds here, with the other listeners (twistd may drop root afterwards)."""
        service.Service.privilegedStartService(self)
        self._listen()

    def startService(self):
        service.Service.startService(self)
        self._listen()

    def _listen(self):
        if self._port is None:
            self._port = _V6OnlyPort(self._number, self._protocol, self._interface, reactor=self._reactor)
            self._port.startListening()

    def stopService(self):
        service.Service.stopService(self)
        port, self._port = self._port, None
        return port.stopListening() if port is not None else None


class _DualStackProtocol(BeaconDatagramProtocol):
    """One of the beacon's two main sockets (IPv4 and IPv6): a datagram to
    the other family leaves from the other socket."""

    #: the main socket of the other family (set once both exist)
    other_family: "BeaconDatagramProtocol | None" = None

    def __init__(self, server, local, sockets, ipv6: bool):
        super().__init__(server, local, sockets)
        self.ipv6 = ipv6

    def _elsewhere(self, destination):
        if self.other_family is not None and type(destination) is Endpoint and (":" in destination.host) != self.ipv6:
            return self.other_family
        return None

    def send(self, data: bytes, destination: Endpoint) -> None:
        other = self._elsewhere(destination)
        (other.send if other is not None else super().send)(data, destination)

    def _forward(self, data: bytes, destination: Endpoint) -> None:
        other = self._elsewhere(destination)
        (other._forward if other is not None else super()._forward)(data, destination)


class BeaconService(service.MultiService):
    def __init__(
        self,
        reactor,
        interface="0.0.0.0",
        port=9000,
        alt_port=None,
        alt_address=None,
        tls_port=None,
        tls_cert=None,
        tls_key=None,
        state_dir=None,
        limits=None,
        store=None,
        interface6=None,
    ):
        super().__init__()
        self.reactor = reactor
        _check_alternates(interface, port, alt_port, alt_address)
        primary = other = None
        if alt_port is not None and alt_address is not None:
            primary, other = Endpoint(interface, port), Endpoint(alt_address, alt_port)
        #: the fleet's Redis connection (``store="redis://..."``), or None
        self.fleet = None
        listeners = self
        if store is not None:
            if state_dir:
                raise InvalidArgument("give --store or --state-dir, not both", hint="A fleet keeps its state in Redis only.")
            self.server, self.fleet = _join_fleet(reactor, store, other, primary, limits)
            # First child: it stops last, once the listeners have.
            self.fleet.setServiceParent(self)
            listeners = _AfterReady(self.fleet.ready)
            listeners.setServiceParent(self)
        else:
            store = SQLiteStore(state_dir) if state_dir else MemoryStore()
            # First child: it stops last, so its final flush sees every change.
            _StoreService(reactor, store).setServiceParent(self)
            self.server = BeaconServer(reactor, other_address=other, primary_address=primary, limits=limits, store=store)
        #: every socket by the endpoint it answers from (CHANGE-REQUEST routing)
        self.sockets: dict[Endpoint, BeaconDatagramProtocol] = {}
        #: the IPv6 main socket (``interface6``), or None
        self.protocol6 = None
        if interface6 is None:
            self.protocol = BeaconDatagramProtocol(self.server, _local(interface, port), self.sockets)
        else:
            if ":" not in interface6 or ":" in interface:
                raise InvalidArgument(
                    f"--interface6 {interface6} needs an IPv6 address (and --interface an IPv4 one)",
                    hint="Pass --interface6 :: to listen on every IPv6 address of this host.",
                )
            if not port:
                raise InvalidArgument("--interface6 needs a fixed --port (not 0)", hint="Both families listen on the same port.")
            self.protocol = _DualStackProtocol(self.server, _local(interface, port), self.sockets, ipv6=False)
            self.protocol6 = _DualStackProtocol(self.server, _local(interface6, port), self.sockets, ipv6=True)
            self.protocol.other_family, self.protocol6.other_family = self.protocol6, self.protocol
        # Mail is pushed from the main port, where nodes keep their NAT mapping open.
        self.server.send = self.protocol.send
        self._udp = _UDPService(port, self.protocol, interface=interface)
        self._udp.setServiceParent(listeners)
        if self.protocol6 is not None:
            _UDP6Service(reactor, port, self.protocol6, interface6).setServiceParent(listeners)
        self.alt_protocols = []
        if alt_port is not None or alt_address is not None:
            alt_interface = alt_address or interface
            alt_port = alt_port or port
            for host, udp_port in sorted({(alt_interface, alt_port), (interface, alt_port), (alt_interface, port)} - {(interface, port)}):
                proto = BeaconDatagramProtocol(self.server, _local(host, udp_port), self.sockets)
                self.alt_protocols.append(proto)
                _UDPService(udp_port, proto, interface=host).setServiceParent(listeners)
        #: the TCP/TLS listener (``--tls-port``), or None
        self.tls = None
        if tls_port is not None:
            self.tls = _tls_listener(reactor, self.server, interface, tls_port, tls_cert, tls_key)
            self.tls.setServiceParent(listeners)
        _ExpiryService(reactor, self.server, 5).setServiceParent(listeners)

    @property
    def port(self) -> int:
        return self.protocol.transport.getHost().port


def _join_fleet(reactor, url, other, primary, limits):
    """The server of a fleet beacon, and the service that connects it to Redis."""
    from .fleet import RedisFleet
    from .fleet_service import FleetService, _txredisapi
    from .limits import Limits
    from .redis_store import RedisAddress, RedisStore

    address = RedisAddress.parse(url)
    _txredisapi()  # missing: say so now, as a usage error
    limits = limits if limits is not None else Limits()
    beacon_id = os.urandom(8).hex()
    store = RedisStore(reactor, beacon_id, hold=limits.name_hold, db=address.db)
    server = BeaconServer(reactor, other_address=other, primary_address=primary, limits=limits, store=store)
    fleet = RedisFleet(reactor, server, store, beacon_id)
    server.join_fleet(fleet)
    return server, FleetService(reactor, address, server, store, fleet)


def _check_alternates(interface, port, alt_port, alt_address) -> None:
    # Bound to the wildcard, the main socket would clash with ALT:PORT
    # ("address already in use") and could not say which address answered.
    if alt_address is not None and not _concrete(interface):
        raise InvalidArgument(
            "--alt-address needs the beacon's primary address as --interface, not the wildcard",
            hint="Pass --interface PRIMARY_IP (the address nodes use in --beacon) with --alt-address ALT_IP.",
        )
    if alt_address is not None and alt_address == interface:
        raise InvalidArgument("--alt-address must differ from --interface", hint="Give a second address of this host.")
    if alt_port is not None and alt_port == port:
        raise InvalidArgument("--alt-port must differ from --port", hint="Give a second UDP port, e.g. --alt-port 9001.")
    if alt_port is not None and alt_address is not None and 0 in (port, alt_port):
        raise InvalidArgument(
            "with --alt-address and --alt-port, both ports must be given (not 0)",
            hint="The beacon announces its ports to nodes in STUN OTHER-ADDRESS, so it must know them in advance.",
        )


def _tls_listener(reactor, server, interface, tls_port, tls_cert, tls_key):
    if not tls_cert or not tls_key:
        raise InvalidArgument("--tls-port needs --tls-cert and --tls-key", hint="Give the PEM certificate and key files.")
    return TLSListenerService(reactor, server, interface, tls_port, server_tls_options(tls_cert, tls_key))


def _concrete(host: str | None) -> bool:
    return bool(host) and host not in ("0.0.0.0", "::")


def _local(host: str, port: int) -> Endpoint | None:
    """The address a socket answers from, when it is bound to a concrete one."""
    return Endpoint(host, port) if _concrete(host) and port else None
