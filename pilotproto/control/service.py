"""
``ControlService``: the daemon's control socket, as a child service of its node.

The node cannot import the control layer (it sits below it), so whoever
builds a daemon attaches the control socket to it::

    node = PilotNode(...)
    ControlService(node).setServiceParent(node)

It listens on ``<home>/control.sock`` (mode 0600; a stale socket from a
daemon that died is replaced, a live one is ``already_running``) while the
node runs, and answers with :class:`~pilotproto.control.commands.ControlCommands`
over the node.  Stopping it closes every control connection: listeners and
piped streams end, so clients notice the daemon went (and ``pilot:``
servers served through it wait for it to come back).
"""

from __future__ import annotations

import os

from twisted.application import service
from twisted.internet import defer

from ..common.home import CONTROL_SOCKET
from ..common.wiring import check_provides
from ..interfaces import IPilotNode
from .commands import ControlCommands
from .server import ControlServerFactory, listen_control_socket


class ControlService(service.Service):
    """The control socket of ``node`` (an IPilotNode) at ``path`` (default ``<home>/control.sock``)."""

    def __init__(self, node, path: str | None = None, reactor=None):
        self.node = check_provides(node, IPilotNode, "ControlService.node")
        self.path = path if path is not None else os.path.join(node.home, CONTROL_SOCKET)
        self._reactor = reactor if reactor is not None else node.reactor
        self.commands = ControlCommands(node, self._reactor)
        self.factory = ControlServerFactory(self.commands.table())
        self._port = None

    def startService(self):
        # Raises (AlreadyRunning, StateError, InvalidArgument) before counting as
        # running: a second daemon on one home must not start at all.
        self._port = listen_control_socket(self._reactor, self.path, self.factory)
        super().startService()

    def stopService(self):
        super().stopService()
        port, self._port = self._port, None
        if port is None:
            return defer.succeed(None)
        d = defer.maybeDeferred(port.stopListening)
        self.factory.close_connections()
        return d
