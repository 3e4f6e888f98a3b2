"""
``Forwards``: the node's worker for ``pilotctl forward`` and ``pilotctl expose``.

It owns every forward (a local TCP listener whose connections become
overlay streams) and every expose (a virtual port whose streams become TCP
connections to a local service); :mod:`pilotproto.node.bridge_entries` holds
one of each, :mod:`pilotproto.node.bridge` one bridged connection.  Both
live in the daemon, so they outlive the ``pilotctl`` that asked for them.

What was added successfully is saved in ``config.json`` (``forwards`` and
``exposes``, checked on load by :mod:`pilotproto.node.bridge_specs`) and
restored when the node starts: one whose port is now taken is logged and
listed with its ``error``, not fatal.  An add that fails changes nothing
saved; ``unforward``/``unexpose`` stop listening (connections already
bridged finish on their own) and remove the saved entry.

The worker reaches the overlay only through the node's
:class:`~pilotproto.interfaces.IPilotNode` (``dial``, ``listen``, and
``trusted``/``lookup`` to turn ``--allow`` names into addresses), checked
when wired.  It is a child service of the node, started after the UDP socket.
"""

from __future__ import annotations

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from ..common.names import check_udp_port
from ..common.wiring import check_provides
from ..errors import AlreadyRunning, InvalidArgument, NotFound, PilotError
from ..interfaces import IPilotNode
from .bridge_entries import ExposeEntry, ForwardEntry, add_entry, error_doc, remove_entry, resolve_allow
from .bridge_specs import (
    DEFAULT_BIND,
    ExposeSpec,
    ForwardSpec,
    check_allow_entry,
    check_bind,
)
from .config import NodeConfig

log = Logger()


class Forwards(service.Service):
    """The forwards and exposes of ``node`` (an IPilotNode), saved in ``home``'s config.json."""

    name = "forwards"

    def __init__(self, reactor, node, home: str, forwards=(), exposes=()):
        self.reactor = reactor
        self._node = check_provides(node, IPilotNode, "Forwards.node")
        self._home = home
        self._saved_forwards = [ForwardSpec.from_dict(d) for d in forwards]
        self._saved_exposes = [ExposeSpec.from_dict(d) for d in exposes]
        #: (bind, local_port) -> entry, in the order they were added
        self.forward_entries: dict[tuple[str, int], ForwardEntry] = {}
        #: virtual port -> entry
        self.expose_entries: dict[int, ExposeEntry] = {}

    # -- lifecycle ---------------------------------------------------------------------

    def startService(self):
        super().startService()
        for spec in self._saved_forwards:
            entry = ForwardEntry(self.reactor, self._node, spec)
            try:
                entry.listen()
            except PilotError as e:
                entry.listen_error = error_doc(e, self.reactor.seconds())
                log.error("{what}: cannot listen: [{code}] {message} ({hint})", what=entry.name, code=e.code,
                          message=e.message, hint=e.hint or "")
            else:
                log.info("{what}: listening", what=entry.name)
            self.forward_entries[(spec.bind, entry.spec.local_port)] = entry
        for spec in self._saved_exposes:
            entry = ExposeEntry(self.reactor, self._node, spec)
            self.expose_entries[spec.port] = entry
            entry.listen().addCallbacks(lambda e: log.info("{what}: listening", what=e.name),
                                        self._restore_failed, errbackArgs=(entry,))

    def _restore_failed(self, failure, entry: ExposeEntry) -> None:
        failure.trap(PilotError)
        e = failure.value
        entry.listen_error = error_doc(e, self.reactor.seconds())
        log.error("{what}: cannot listen: [{code}] {message} ({hint})", what=entry.name, code=e.code,
                  message=e.message, hint=e.hint or "")

    def stopService(self):
        super().stopService()
        entries = list(self.forward_entries.values()) + list(self.expose_entries.values())
        return defer.gatherResults([entry.stop() for entry in entries], consumeErrors=True)

    # -- forwards ------------------------------------------------------------------------

    def forward(self, bind, local_port, target, port) -> dict:
        """Listen on ``bind:local_port`` (0: any free port) and bridge each connection to ``target:port``."""
        spec = ForwardSpec.checked(DEFAULT_BIND if bind is None else bind, local_port, target, port)
        existing = self.forward_entries.get((spec.bind, spec.local_port)) if spec.local_port else None
        if existing is not None and existing.listening is not None:
            raise AlreadyRunning(
                f"a forward already listens on {spec.listen_text} (to {existing.spec.target}:{existing.spec.port})",
                hint=f"Remove it first: pilotctl forward --remove {spec.listen_text}",
            )
        entry = ForwardEntry(self.reactor, self._node, spec)
        entry.listen()  # raises: nothing was added or saved
        if existing is not None:
            del self.forward_entries[(spec.bind, spec.local_port)]  # a restored one whose port was taken
        self.forward_entries[(entry.spec.bind, entry.spec.local_port)] = entry
        try:
            self._save()
        except PilotError:
            del self.forward_entries[(entry.spec.bind, entry.spec.local_port)]
            entry.stop()
            raise
        log.info("{what}: listening", what=entry.name)
        return entry.describe()

    def forwards(self) -> dict:
        return {"forwards": [entry.describe() for entry in self.forward_entries.values()]}

    def unforward(self, bind, local_port) -> defer.Deferred:
        key = (check_bind(DEFAULT_BIND if bind is None else bind), check_udp_port(local_port))
        entry = self.forward_entries.get(key)
        if entry is None:
            where = f"[{key[0]}]:{key[1]}" if ":" in key[0] else f"{key[0]}:{key[1]}"
            raise NotFound(f"no forward listens on {where}", hint="See them with: pilotctl forward --list")
        del self.forward_entries[key]
        self._save()
        log.info("{what}: removed", what=entry.name)
        return entry.stop().addCallback(lambda _: {"removed": entry.describe()})

    # -- exposes -------------------------------------------------------------------------

    @defer.inlineCallbacks
    def expose(self, port, host, tcp_port, allow=()):
        """Serve virtual ``port`` with the local TCP service ``host:tcp_port``, to ``allow`` (default: every trusted peer)."""
        ExposeSpec.checked(port, "127.0.0.1" if host is None else host, tcp_port)  # fail before any lookup
        if allow is not None and not isinstance(allow, (list, tuple)):
            raise InvalidArgument("allow must be a list of peer names or addresses")
        names = yield resolve_allow(self._node, [check_allow_entry(a) for a in allow or ()])
        spec = ExposeSpec.checked(port, "127.0.0.1" if host is None else host, tcp_port, sorted(names))
        existing = self.expose_entries.get(spec.port)
        busy = AlreadyRunning(f"port {spec.port} is already exposed (to {existing.spec.service_text if existing else ''})",
                              hint=f"Remove it first: pilotctl expose --remove {spec.port}")
        entry = ExposeEntry(self.reactor, self._node, spec, names)
        return (yield add_entry(self.expose_entries, spec.port, entry, self._save, busy))

    def exposes(self) -> dict:
        return {"exposes": [entry.describe() for entry in self.expose_entries.values()]}

    def unexpose(self, port) -> defer.Deferred:
        missing = NotFound(f"port {port!r} is not exposed", hint="See them with: pilotctl expose --list")
        return remove_entry(self.expose_entries, port, self._save, missing)

    # -- config.json ------------------------------------------------------------------------

    def _save(self) -> None:
        """Write the current forwards and exposes into config.json, keeping every other setting."""
        config = NodeConfig.load(self._home)
        config = attrs.evolve(
            config,
            forwards=[e.spec.to_dict() for e in self.forward_entries.values()],
            exposes=[e.spec.to_dict() for e in self.expose_entries.values()],
        ).validate()
        config.save(self._home)
