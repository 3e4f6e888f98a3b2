"""
The daemon's local control socket: JSON lines over a UNIX stream socket
(``docs/control.md``).

In the daemon: :class:`~.service.ControlService` (a child service of the
node) answers with :class:`~.commands.ControlCommands`, an adapter over any
:class:`~pilotproto.interfaces.IPilotNode`; each connection's lifecycle is
the machine in :mod:`.connection`.  Clients: the blocking
:class:`~.client.ControlClient` (``pilotctl``, scripts) and the Twisted
:class:`~.daemon.DaemonNode` (an IPilotNode in another process), both on
the one codec in :mod:`.codec`.

Importing this package loads no Twisted: the blocking client and the codec
are plain Python.
"""

from .client import ControlClient, RawStream

__all__ = ["ControlClient", "RawStream"]
