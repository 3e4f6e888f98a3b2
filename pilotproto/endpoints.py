"""
Twisted endpoints over the overlay, so any Protocol/Factory runs on pilot:

    clientFromString(reactor, "pilot:agent-b:1001")
    serverFromString(reactor, "pilot:80")
    twistd -n web --listen pilot:80 --path DIR

An endpoint works with a ``PilotNode`` running in this process, or, when
there is none (``twistd web`` in its own process), with the local daemon
through its control socket (:mod:`pilotproto.control.streams`).
"""

from __future__ import annotations

import weakref

from twisted.internet import defer
from twisted.internet.interfaces import IStreamClientEndpoint, IStreamServerEndpoint
from zope.interface import implementer

from .errors import InvalidArgument
from .common.names import check_port, parse_port

#: PilotNodes running in this process (filled in by PilotNode.startService)
running_nodes: "weakref.WeakSet" = weakref.WeakSet()


def node_for(reactor, home: str | None = None):
    """The node an endpoint should use: one in this process, else the daemon at ``home``."""
    from .common.home import resolve_home

    if home is not None:
        home = resolve_home(home)
    live = [n for n in running_nodes if n.running and (home is None or n.home == home)]
    if len(live) == 1:
        return live[0]
    if len(live) > 1:
        raise InvalidArgument(
            "several pilot nodes run in this process; say which",
            hint="Add home=DIR to the endpoint string, or build PilotClientEndpoint(node, ...) yourself.",
        )
    from .control.streams import DaemonNode

    return DaemonNode(reactor, resolve_home(home))


@implementer(IStreamClientEndpoint)
class PilotClientEndpoint:
    """Connect to ``port`` on the node named ``peer`` (a hostname or an address)."""

    def __init__(self, node, peer: str, port: int):
        if not isinstance(peer, str) or not peer:
            raise InvalidArgument("a pilot client endpoint needs a peer name or address")
        self._node = node
        self._peer = peer
        self._port = check_port(port)

    def connect(self, protocol_factory):
        return defer.maybeDeferred(self._node.dial, self._peer, self._port, protocol_factory)


@implementer(IStreamServerEndpoint)
class PilotServerEndpoint:
    """Listen on virtual ``port`` of ``node``."""

    def __init__(self, node, port: int):
        self._node = node
        self._port = check_port(port)

    def listen(self, protocol_factory):
        return defer.maybeDeferred(self._node.listen, self._port, protocol_factory)


def _only(kwargs: dict, allowed: set) -> None:
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise InvalidArgument(
            f"unknown pilot endpoint option(s): {', '.join(unknown)}",
            hint=f"Known options: {', '.join(sorted(allowed))}",
        )


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
    return PilotClientEndpoint(node_for(reactor, kwargs.get("home")), peer, parse_port(port))


def server_from_string(reactor, *args, **kwargs) -> PilotServerEndpoint:
    """``pilot:PORT[:home=DIR]`` or ``pilot:port=PORT``."""
    _only(kwargs, {"port", "home"})
    args = list(args)
    port = kwargs.get("port") or (args.pop(0) if args else None)
    if args or port is None:
        raise InvalidArgument("a pilot server endpoint needs exactly one port", hint="Write pilot:PORT, e.g. pilot:80")
    return PilotServerEndpoint(node_for(reactor, kwargs.get("home")), parse_port(port))


