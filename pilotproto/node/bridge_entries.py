"""
One forward and one expose: the listener each owns, the bridges it starts,
and its counts (see :mod:`pilotproto.node.bridge` for one bridged connection).

- :class:`ForwardEntry` owns a TCP listener; every accepted connection is a
  :class:`~pilotproto.node.bridge.Bridge` whose far side is a stream dialled
  to the peer (``IPilotNode.dial``).
- :class:`ExposeEntry` owns a virtual port (``IPilotNode.listen``); every
  stream a peer opens there (trusted, and in ``allow`` when that is set) is a
  bridge whose far side is a TCP connection to the local service.

A connection that fails is counted, logged as one line with its code and
hint, and kept as ``last_error``; the entry and its other connections go on.
"""

from __future__ import annotations

import errno

import attrs
from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from ..common import timeouts
from ..errors import InvalidArgument, NotFound, PermissionDenied, PilotError, Timeout, Unavailable
from ..identity.address import Address
from ..streams.errors import ConnectionRefused
from .bridge import Bridge, IBridgeOwner, Side
from .bridge_specs import ExposeSpec, ForwardSpec

#: seconds an expose waits for its local TCP service to accept a connection
TCP_CONNECT_TIMEOUT = 10.0

log = Logger()


class PortInUse(PilotError):
    """That local TCP port is in use by another program."""

    code = "port_in_use"
    hint = "Choose another local port, or 0 for any free one."


@attrs.define
class BridgeCounts:
    """What ``forward --list``, ``expose --list`` and ``status`` show of one entry."""

    active: int = 0
    total: int = 0
    failed: int = 0
    refused: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    last_error: dict | None = None

    def describe(self) -> dict:
        return attrs.asdict(self)


def error_doc(exc: BaseException, at: float) -> dict:
    """A failure as ``{code, message, hint, at}`` (what ``last_error`` shows)."""
    if not isinstance(exc, PilotError):
        exc = PilotError(f"internal error: {exc!r}", hint="This is a bug; see the daemon log.")
    return {"code": exc.code, "message": exc.message, "hint": exc.hint, "at": round(at, 3)}


class _Entry:
    """What forwards and exposes share: counts, and the bridges' end-of-life bookkeeping."""

    def __init__(self, reactor):
        self.reactor = reactor
        self.counts = BridgeCounts()
        #: why the listener is not up (restored at start, its port taken), or None
        self.listen_error: dict | None = None

    def _started(self) -> None:
        self.counts.active += 1
        self.counts.total += 1

    def bridge_opened(self, bridge) -> None:
        """Counted when the near side came up."""

    def bridge_failed(self, bridge, failure) -> None:
        self.counts.active -= 1
        self.counts.failed += 1
        problem = self.explain(failure.value)
        self.counts.last_error = error_doc(problem, self.reactor.seconds())
        log.warn("{what}: a connection failed: [{code}] {message} ({hint})", what=self.name, code=problem.code,
                 message=problem.message, hint=problem.hint or "")

    def bridge_closed(self, bridge) -> None:
        self.counts.active -= 1

    def bytes_moved(self, bridge, to_overlay: bool, count: int) -> None:
        if to_overlay:
            self.counts.bytes_sent += count
        else:
            self.counts.bytes_received += count

    def explain(self, exc: BaseException) -> PilotError:
        return exc if isinstance(exc, PilotError) else PilotError(str(exc))


@implementer(IBridgeOwner)
class ForwardEntry(_Entry):
    """``bind:local_port`` -> ``target:port`` over the overlay."""

    def __init__(self, reactor, node, spec: ForwardSpec):
        super().__init__(reactor)
        self._node = node
        self.spec = spec
        self.listening = None

    @property
    def name(self) -> str:
        return f"forward {self.spec.listen_text} -> {self.spec.target}:{self.spec.port}"

    def listen(self) -> None:
        """Listen now; raises PortInUse (or another PilotError) if the port cannot be had."""
        factory = _ForwardFactory(self)
        try:
            self.listening = self.reactor.listenTCP(self.spec.local_port, factory, interface=self.spec.bind)
        except error.CannotListenError as e:
            raise _listen_error(self.spec, e) from None
        self.listen_error = None
        self.spec = attrs.evolve(self.spec, local_port=self.listening.getHost().port)

    def stop(self) -> defer.Deferred:
        listening, self.listening = self.listening, None
        return defer.maybeDeferred(listening.stopListening) if listening is not None else defer.succeed(None)

    def connection(self):
        """A TCP connection arrived: its protocol is a new bridge's near side."""
        self._started()
        return Bridge(self, stream_side=Side.FAR).near_protocol()

    def open_far(self, bridge, factory) -> defer.Deferred:
        d = defer.maybeDeferred(self._node.dial, self.spec.target, self.spec.port, factory)
        return d.addTimeout(timeouts.STREAM_CONNECT, self.reactor)

    def explain(self, exc) -> PilotError:
        if isinstance(exc, defer.TimeoutError):
            return Timeout(f"{self.spec.target} did not accept a stream to port {self.spec.port} "
                           f"within {timeouts.STREAM_CONNECT:g} s", hint="Check the peer with: pilotctl ping "
                           f"{self.spec.target}")
        if isinstance(exc, ConnectionRefused):
            return ConnectionRefused(
                f"{self.spec.target} refused port {self.spec.port}: nothing listens there",
                hint=f"On {self.spec.target}, serve port {self.spec.port}: pilotctl expose {self.spec.port} TCPPORT, "
                f"or watch it with: pilotctl listen {self.spec.port}",
            )
        return super().explain(exc)

    def describe(self) -> dict:
        return {**self.spec.to_dict(), "listening": self.listening is not None, "error": self.listen_error,
                **self.counts.describe()}


class _ForwardFactory(Factory):
    noisy = False

    def __init__(self, entry: ForwardEntry):
        self._entry = entry

    def buildProtocol(self, addr):
        return self._entry.connection()


def _listen_error(spec: ForwardSpec, e: error.CannotListenError) -> PilotError:
    code = getattr(e.socketError, "errno", None)
    where = spec.listen_text
    if code == errno.EADDRINUSE:
        return PortInUse(f"TCP {where} is in use by another program",
                         hint=f"Choose another local port (0 for any free one). To see who has it: ss -tlpn 'sport = :{spec.local_port}'")
    if code == errno.EACCES:
        return PermissionDenied(f"TCP port {spec.local_port} needs root", hint="Choose a port above 1023, or 0 for any.")
    if code == errno.EADDRNOTAVAIL:
        return Unavailable(f"cannot listen on {where}: {spec.bind} is not an address of this host",
                           hint="Give an address of this host, e.g. 127.0.0.1 (the default) or 0.0.0.0.")
    return PilotError(f"cannot listen on TCP {where}: {e.socketError}")


@implementer(IBridgeOwner)
class ExposeEntry(_Entry):
    """Virtual port ``port`` -> the local TCP service ``host:tcp_port``."""

    def __init__(self, reactor, node, spec: ExposeSpec, allow_names: dict | None = None):
        super().__init__(reactor)
        self._node = node
        self.spec = spec
        #: address -> the name it was given as (for people: matching is by address)
        self.allow_names = dict(allow_names or {})
        self.listening = None

    @property
    def name(self) -> str:
        return f"expose port {self.spec.port} -> {self.spec.service_text}"

    def listen(self) -> defer.Deferred:
        """Listen on the virtual port; fails with CannotListenError (already_running) if it is taken."""

        def listening(port):
            self.listening = port
            self.listen_error = None
            return self

        return defer.maybeDeferred(self._node.listen, self.spec.port, _ExposeFactory(self)).addCallback(listening)

    def stop(self) -> defer.Deferred:
        listening, self.listening = self.listening, None
        return defer.maybeDeferred(listening.stopListening) if listening is not None else defer.succeed(None)

    def stream(self, peer):
        """A peer opened a stream to the port: a new bridge, or None (refused) if it is not allowed."""
        if self.spec.allow and peer.address not in self.spec.allow:
            self.counts.refused += 1
            log.info("{what}: refused a stream from {peer} ({address}): not in its --allow list",
                     what=self.name, peer=peer.hostname or peer.address, address=peer.address)
            return None
        self._started()
        return Bridge(self, stream_side=Side.NEAR).near_protocol()

    def open_far(self, bridge, factory) -> defer.Deferred:
        endpoint = HostnameEndpoint(self.reactor, self.spec.host, self.spec.tcp_port, timeout=TCP_CONNECT_TIMEOUT)
        return endpoint.connect(factory)

    def explain(self, exc) -> PilotError:
        where = self.spec.service_text
        if isinstance(exc, error.ConnectionRefusedError):
            return ConnectionRefused(f"the local service at {where} refused the connection",
                                     hint=f"Start the service on {where}, or expose the port it really uses.")
        if isinstance(exc, (error.TimeoutError, defer.TimeoutError)):
            return Timeout(f"the local service at {where} did not accept within {TCP_CONNECT_TIMEOUT:g} s",
                           hint="Check that it runs and is not overloaded.")
        if isinstance(exc, error.DNSLookupError):
            return Unavailable(f"cannot resolve {self.spec.host}", hint="Check the host name given to expose.")
        if isinstance(exc, error.ConnectError):
            return Unavailable(f"cannot connect to the local service at {where}: {exc}",
                               hint="Check that it runs and listens there.")
        return super().explain(exc)

    def describe(self) -> dict:
        allow = [{"address": a, "name": self.allow_names.get(a)} for a in self.spec.allow]
        return {**self.spec.to_dict(), "allow": allow, "listening": self.listening is not None,
                "error": self.listen_error, **self.counts.describe()}


class _ExposeFactory(Factory):
    noisy = False

    def __init__(self, entry: ExposeEntry):
        self._entry = entry

    def buildProtocol(self, addr):
        return self._entry.stream(addr)


@defer.inlineCallbacks
def resolve_allow(node, entries: list[str]):
    """``{address: name}`` for ``--allow`` entries (expose, mcp serve): addresses as given, names through
    trust, else the beacon; a name that several trusted keys carry is refused (give the address)."""
    found = {}
    trusted = None
    for text in entries:
        if Address.looks_like(text):
            found.setdefault(text, None)
            continue
        if trusted is None:
            trusted = (yield node.trusted()).get("trusted", [])
        matches = [t["address"] for t in trusted if t.get("hostname") == text]
        if len(matches) > 1:
            raise InvalidArgument(f"{len(matches)} trusted keys go by the name {text!r}: {', '.join(matches)}",
                                  hint="Name the peer by its address in --allow.")
        if not matches:
            try:
                matches = [(yield node.lookup(text))["address"]]
            except NotFound:
                raise NotFound(f"--allow names {text!r}, which is neither trusted nor visible to this node",
                               hint="Trust it first (pilotctl handshake), or give its address.") from None
        found[str(Address.parse(matches[0]))] = text
    return found


@defer.inlineCallbacks
def add_entry(table: dict, key, entry, save, busy: PilotError):
    """Start ``entry`` (its ``listen()``) and keep it in ``table`` under ``key``, saved.

    ``busy`` is raised if a live entry holds ``key`` already.  Nothing is
    kept or saved if listening fails, and the entry stops again if saving
    does."""
    existing = table.get(key)
    if existing is not None and existing.listening is not None:
        raise busy
    yield entry.listen()  # fails (already_running) if something else listens there: nothing saved
    table[key] = entry
    try:
        save()
    except PilotError:
        del table[key]
        entry.stop()
        raise
    log.info("{what}: listening", what=entry.name)
    return entry.describe()


def remove_entry(table: dict, key, save, missing: PilotError) -> defer.Deferred:
    """Stop the entry under ``key`` and save the table without it; ``missing`` if there is none."""
    entry = table.get(key)
    if entry is None:
        raise missing
    del table[key]
    save()
    log.info("{what}: removed", what=entry.name)
    return entry.stop().addCallback(lambda _: {"removed": entry.describe()})
