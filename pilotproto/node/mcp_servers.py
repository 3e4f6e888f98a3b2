"""
``McpServers``: the node's worker for ``pilotctl mcp serve`` (stdio MCP
servers published on virtual ports).

Each served port is an :class:`McpServerEntry`: every stream a peer opens
there (trusted, and in ``allow`` when that is set) gets its own process,
spliced by a :class:`~pilotproto.node.mcp_bridge.ProcessBridge`.  The process
runs the saved ``argv`` without a shell, in the saved ``cwd`` (where
``pilotctl mcp serve`` ran, or its ``--cwd``), with the daemon's environment
plus ``PILOT_PEER``, ``PILOT_PEER_ADDRESS`` and ``PILOT_PORT`` (who called).
A command that cannot be started resets that stream, is logged and counted
(``failed``, ``last_error``), and the port goes on serving.

Saved in ``config.json`` (``mcp_servers``, checked by
:mod:`pilotproto.node.mcp_specs`) and restored at start, like the exposes of
:mod:`pilotproto.node.forwards`; it reaches the overlay only through the
node's :class:`~pilotproto.interfaces.IPilotNode` (``listen``, and
``trusted``/``lookup`` for ``--allow`` names), checked when wired.
"""

from __future__ import annotations

import os
import shutil

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from ..common.wiring import check_provides
from ..errors import AlreadyRunning, InvalidArgument, NotFound, PilotError
from ..interfaces import IPilotNode
from .bridge_entries import BridgeCounts, add_entry, error_doc, remove_entry, resolve_allow
from .bridge_specs import check_allow_entry
from .config import NodeConfig
from .mcp_bridge import IProcessOwner, ProcessBridge
from .mcp_specs import McpServerSpec

#: processes one served port runs at once; streams past that are refused
MAX_PROCESSES = 32

log = Logger()


class CommandNotFound(PilotError):
    """The command of an MCP server cannot be run."""

    code = "command_not_found"
    hint = "Give the full path of the program, or one on the daemon's PATH."


@implementer(IProcessOwner)
class McpServerEntry:
    """Virtual port ``spec.port`` -> a new ``spec.argv`` process per stream."""

    def __init__(self, reactor, node, spec: McpServerSpec, allow_names: dict | None = None, environ=None):
        self.reactor = reactor
        self._node = node
        self.spec = spec
        self.allow_names = dict(allow_names or {})
        self._environ = dict(os.environ if environ is None else environ)
        self.counts = BridgeCounts()
        self.listening = None
        self.listen_error: dict | None = None
        self.bridges: set[ProcessBridge] = set()

    @property
    def name(self) -> str:
        return f"mcp port {self.spec.port} ({self.spec.command_text})"

    def listen(self) -> defer.Deferred:
        def listening(port):
            self.listening = port
            self.listen_error = None
            return self

        return defer.maybeDeferred(self._node.listen, self.spec.port, _StreamFactory(self)).addCallback(listening)

    def stop(self) -> defer.Deferred:
        """Stop listening; processes already running end with their streams."""
        listening, self.listening = self.listening, None
        return defer.maybeDeferred(listening.stopListening) if listening is not None else defer.succeed(None)

    def stream(self, peer):
        """A peer opened a stream: a new bridge's protocol, or None (refused)."""
        who = peer.hostname or peer.address
        if self.spec.allow and peer.address not in self.spec.allow:
            self.counts.refused += 1
            log.info("{what}: refused a stream from {peer} ({address}): not in its --allow list",
                     what=self.name, peer=who, address=peer.address)
            return None
        if len(self.bridges) >= MAX_PROCESSES:
            self.counts.refused += 1
            log.warn("{what}: refused a stream from {peer}: {n} processes already run", what=self.name, peer=who,
                     n=len(self.bridges))
            return None
        bridge = ProcessBridge(self, self.reactor, peer)
        self.bridges.add(bridge)
        self.counts.active += 1
        self.counts.total += 1
        return bridge.stream_protocol()

    # -- IProcessOwner ----------------------------------------------------------------------

    def spawn(self, bridge, protocol):
        executable = self._executable()
        env = {**self._environ, "PILOT_PORT": str(self.spec.port)}
        if bridge.peer is not None:
            env.update(PILOT_PEER=bridge.peer.hostname or bridge.peer.address, PILOT_PEER_ADDRESS=bridge.peer.address)
        try:
            process = self.reactor.spawnProcess(protocol, executable, list(self.spec.argv), env=env, path=self.spec.cwd)
        except OSError as e:
            raise CommandNotFound(f"cannot start {self.spec.argv[0]!r}: {e.strerror or e}") from None
        log.info("{what}: started pid {pid} for {peer}", what=self.name, pid=process.pid, peer=_who(bridge))
        return process

    def _executable(self) -> str:
        program, cwd = self.spec.argv[0], self.spec.cwd
        if not os.path.isdir(cwd):
            raise CommandNotFound(f"the working directory {cwd} of {self.name} does not exist",
                                  hint="Create it, or serve again from another directory (or with --cwd).")
        if os.sep in program:
            path = os.path.join(cwd, program)
            found = path if os.path.isfile(path) and os.access(path, os.X_OK) else None
        else:
            found = shutil.which(program, path=self._environ.get("PATH", os.defpath))
        if found is None:
            raise CommandNotFound(f"no program {program!r} to run for {self.name} (looked in "
                                  f"{'the daemon PATH' if os.sep not in program else cwd})")
        return found

    def bridge_failed(self, bridge, problem) -> None:
        self._forget(bridge)
        self.counts.failed += 1
        self.counts.last_error = error_doc(problem, self.reactor.seconds())
        log.error("{what}: a stream from {peer} failed: [{code}] {message} ({hint})", what=self.name,
                  peer=_who(bridge), code=problem.code, message=problem.message, hint=problem.hint or "")

    def bridge_closed(self, bridge) -> None:
        self._forget(bridge)
        log.info("{what}: the session of {peer} ended", what=self.name, peer=_who(bridge))

    def _forget(self, bridge) -> None:
        if bridge in self.bridges:
            self.bridges.discard(bridge)
            self.counts.active -= 1

    def stderr_line(self, bridge, line) -> None:
        log.info("mcp port {port} [{peer}] stderr: {line}", port=self.spec.port, peer=_who(bridge), line=line)

    def bytes_moved(self, bridge, to_overlay, count) -> None:
        if to_overlay:
            self.counts.bytes_sent += count
        else:
            self.counts.bytes_received += count

    def describe(self) -> dict:
        allow = [{"address": a, "name": self.allow_names.get(a)} for a in self.spec.allow]
        return {**self.spec.to_dict(), "allow": allow, "listening": self.listening is not None,
                "error": self.listen_error, **self.counts.describe()}


def _who(bridge) -> str:
    peer = bridge.peer
    return "?" if peer is None else (peer.hostname or peer.address)


class _StreamFactory(Factory):
    noisy = False

    def __init__(self, entry: McpServerEntry):
        self._entry = entry

    def buildProtocol(self, addr):
        return self._entry.stream(addr)


class McpServers(service.Service):
    """The MCP servers of ``node`` (an IPilotNode), saved in ``home``'s config.json."""

    name = "mcp_servers"

    def __init__(self, reactor, node, home: str, servers=(), environ=None):
        self.reactor = reactor
        self._node = check_provides(node, IPilotNode, "McpServers.node")
        self._home = home
        self._environ = environ
        self._saved = [McpServerSpec.from_dict(d) for d in servers]
        #: virtual port -> entry
        self.entries: dict[int, McpServerEntry] = {}

    def startService(self):
        super().startService()
        for spec in self._saved:
            entry = self._entry(spec)
            self.entries[spec.port] = entry
            entry.listen().addCallbacks(lambda e: log.info("{what}: listening", what=e.name),
                                        self._restore_failed, errbackArgs=(entry,))

    def _restore_failed(self, failure, entry) -> None:
        failure.trap(PilotError)
        e = failure.value
        entry.listen_error = error_doc(e, self.reactor.seconds())
        log.error("{what}: cannot listen: [{code}] {message} ({hint})", what=entry.name, code=e.code,
                  message=e.message, hint=e.hint or "")

    def stopService(self):
        super().stopService()
        return defer.gatherResults([entry.stop() for entry in self.entries.values()], consumeErrors=True)

    def _entry(self, spec, names=None) -> McpServerEntry:
        return McpServerEntry(self.reactor, self._node, spec, names, environ=self._environ)

    @defer.inlineCallbacks
    def serve(self, port, argv, cwd, allow=()):
        """Serve virtual ``port`` with a new ``argv`` process (in ``cwd``) per stream, to ``allow`` (default: every trusted peer)."""
        McpServerSpec.checked(port, argv, cwd)  # fail before any lookup
        if allow is not None and not isinstance(allow, (list, tuple)):
            raise InvalidArgument("allow must be a list of peer names or addresses")
        names = yield resolve_allow(self._node, [check_allow_entry(a) for a in allow or ()])
        spec = McpServerSpec.checked(port, argv, cwd, sorted(names))
        existing = self.entries.get(spec.port)
        busy = AlreadyRunning(f"port {spec.port} already serves MCP ({existing.spec.command_text if existing else ''})",
                              hint=f"Remove it first: pilotctl mcp remove --port {spec.port}")
        return (yield add_entry(self.entries, spec.port, self._entry(spec, names), self._save, busy))

    def servers(self) -> dict:
        return {"servers": [entry.describe() for entry in self.entries.values()]}

    def unserve(self, port) -> defer.Deferred:
        missing = NotFound(f"port {port!r} serves no MCP server", hint="See them with: pilotctl mcp list")
        return remove_entry(self.entries, port, self._save, missing)

    def _save(self) -> None:
        """Write the current servers into config.json, keeping every other setting."""
        config = NodeConfig.load(self._home)
        config = attrs.evolve(config, mcp_servers=[e.spec.to_dict() for e in self.entries.values()]).validate()
        config.save(self._home)
