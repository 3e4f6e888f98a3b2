"""
Twisted endpoints over the overlay, so any Protocol/Factory runs on pilot:

    clientFromString(reactor, "pilot:agent-b:1001")
    serverFromString(reactor, "pilot:80")
    twistd -n web --listen pilot:80 --path DIR

An endpoint string names a node by its home (``home=DIR``, else
``$PILOT_HOME``, else ``~/.pilot``) and reaches it through the daemon's
control socket (:class:`~pilotproto.control.daemon.DaemonNode`).  Code that
holds a node (a :class:`~pilotproto.node.service.PilotNode` in this process,
or any other :class:`~pilotproto.interfaces.IPilotNode`) passes it:
``PilotClientEndpoint(node, peer, port)``, ``PilotServerEndpoint(node, port)``.

Failures follow Twisted's conventions (:mod:`pilotproto.node.failures`):
``connect`` fails with ``ConnectError`` subclasses (``ConnectionRefusedError``
when nothing listens or no daemon runs, ``DNSLookupError`` for an unknown
peer, ``TimeoutError``), ``listen`` with ``CannotListenError``; each is a
PilotError too, with its code, message and hint.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.interfaces import IStreamClientEndpoint, IStreamServerEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

from .common.home import resolve_home
from .common.names import check_port, check_target, parse_port
from .common.wiring import check_provides
from .control.daemon import DaemonNode
from .errors import InvalidArgument
from .interfaces import IPilotNode
from .node.failures import as_connect_error, as_listen_error


def _converted(failure, convert):
    value = convert(failure.value)
    return failure if value is failure.value else Failure(value)


@implementer(IStreamClientEndpoint)
class PilotClientEndpoint:
    """Connect to ``port`` on the node named ``peer`` (a hostname or an address), through ``node``."""

    def __init__(self, node, peer: str, port: int):
        self._node = check_provides(node, IPilotNode, "PilotClientEndpoint.node")
        if not isinstance(peer, str) or not peer:
            raise InvalidArgument("a pilot client endpoint needs a peer name or address")
        self._peer = check_target(peer)
        self._port = check_port(port)

    def __repr__(self):
        return f"<PilotClientEndpoint {self._peer}:{self._port} via {self._node!r}>"

    def connect(self, protocol_factory):
        d = defer.maybeDeferred(self._node.dial, self._peer, self._port, protocol_factory)
        # The node already fails this way; any IPilotNode is held to it here.
        return d.addErrback(_converted, as_connect_error)


@implementer(IStreamServerEndpoint)
class PilotServerEndpoint:
    """Listen on virtual ``port`` of ``node``."""

    def __init__(self, node, port: int):
        self._node = check_provides(node, IPilotNode, "PilotServerEndpoint.node")
        self._port = check_port(port)

    def __repr__(self):
        return f"<PilotServerEndpoint {self._port} on {self._node!r}>"

    def listen(self, protocol_factory):
        # maybeDeferred: a listen that fails at once gives an already-failed
        # Deferred, which is what makes twistd exit instead of serving nothing.
        d = defer.maybeDeferred(self._node.listen, self._port, protocol_factory)
        return d.addErrback(_converted, lambda e: as_listen_error(self._port, e))


def _only(kwargs: dict, allowed: set) -> None:
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise InvalidArgument(
            f"unknown pilot endpoint option(s): {', '.join(unknown)}",
            hint=f"Known options: {', '.join(sorted(allowed))}",
        )


def daemon_node(reactor, home: str | None = None) -> DaemonNode:
    """The node whose daemon runs for ``home`` (default ``$PILOT_HOME`` or ``~/.pilot``)."""
    return DaemonNode(reactor, resolve_home(home))


def client_from_string(reactor, *args, **kwargs) -> PilotClientEndpoint:
    """``pilot:PEER:PORT[:home=DIR]`` or ``pilot:peer=PEER:port=PORT``."""
    _only(kwargs, {"peer", "port", "home"})
    args = list(args)
    peer = kwargs.get("peer") or (args.pop(0) if args else None)
    port = kwargs.get("port") or (args.pop(0) if args else None)
    if args:
        raise InvalidArgument(f"unexpected pilot endpoint arguments: {args}", hint="Write pilot:PEER:PORT")
    if not peer or port is None:
        raise InvalidArgument("a pilot client endpoint needs a peer and a port", hint="Write pilot:PEER:PORT, e.g. pilot:agent-b:1001")
    return PilotClientEndpoint(daemon_node(reactor, kwargs.get("home")), peer, parse_port(port))


def server_from_string(reactor, *args, **kwargs) -> PilotServerEndpoint:
    """``pilot:PORT[:home=DIR]`` or ``pilot:port=PORT``."""
    _only(kwargs, {"port", "home"})
    args = list(args)
    port = kwargs.get("port") or (args.pop(0) if args else None)
    if args or port is None:
        raise InvalidArgument("a pilot server endpoint needs exactly one port", hint="Write pilot:PORT, e.g. pilot:80")
    return PilotServerEndpoint(daemon_node(reactor, kwargs.get("home")), parse_port(port))
