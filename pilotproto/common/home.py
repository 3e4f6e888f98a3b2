"""
The node's home directory and the files in it.

The home (default ``~/.pilot``, or ``$PILOT_HOME``, or ``--home``) holds:

=================  ===================================================
``identity.json``  the Ed25519 key (0600); see :mod:`pilotproto.identity`
``config.json``    settings written by ``pilotctl init`` / daemon start
``trust.json``     the trust store; see :mod:`pilotproto.trust`
``control.sock``   the daemon's control socket (0600) while it runs
``daemon.pid``     pid of the background daemon
``daemon.log``     its log
=================  ===================================================

Kept free of Twisted, so that clients of the daemon (``pilotctl``, the
asyncio SDK) find the control socket without loading the stack.
"""

from __future__ import annotations

import os

CONFIG_FILE = "config.json"
CONTROL_SOCKET = "control.sock"
PID_FILE = "daemon.pid"
LOG_FILE = "daemon.log"


def resolve_home(home: str | None = None) -> str:
    """The home directory to use: the argument, else $PILOT_HOME, else ~/.pilot."""
    home = home or os.environ.get("PILOT_HOME") or os.path.join(os.path.expanduser("~"), ".pilot")
    return os.path.abspath(home)


def control_socket_path(home: str | None = None) -> str:
    return os.path.join(resolve_home(home), CONTROL_SOCKET)
