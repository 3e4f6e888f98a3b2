"""
The daemon's local control socket: JSON lines over a UNIX stream socket.

``server`` runs inside the daemon and dispatches each request to the
handler's ``ctl_<cmd>`` method; ``client`` is the blocking client that
``pilotctl`` uses.  The protocol is specified in ``docs/control.md``.
"""

from .client import ControlClient
from .server import ControlProtocol, ControlServerFactory, listen_control_socket

__all__ = ["ControlClient", "ControlProtocol", "ControlServerFactory", "listen_control_socket"]
