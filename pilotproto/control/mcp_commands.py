"""
The control socket's ``mcp_serve``/``mcp_servers``/``mcp_unserve`` commands
(``docs/control.md``), as an adapter over any
:class:`~pilotproto.interfaces.IPilotNode`.

They check what a remote caller may get wrong (types, ranges) and pass the
rest to the node, whose ``McpServers`` worker checks what the values mean.
``pilotctl mcp connect`` needs no command of its own: it is a ``connect``.
"""

from __future__ import annotations

from ..common import timeouts
from ..common.names import check_port
from ..common.wiring import check_provides
from ..errors import InvalidArgument
from ..interfaces import IPilotNode
from ..node.mcp_specs import MCP_PORT, check_argv, check_cwd
from .server import Command


class McpCommands:
    def __init__(self, node):
        self._node = check_provides(node, IPilotNode, "McpCommands.node")

    def table(self) -> dict[str, Command]:
        return {
            "mcp_serve": Command(self.mcp_serve),
            "mcp_servers": Command(self.mcp_servers),
            "mcp_unserve": Command(self.mcp_unserve),
        }

    def mcp_serve(self, argv, cwd, port=MCP_PORT, allow=None):
        """Run ``argv`` (in ``cwd``) for every stream to virtual ``port``."""
        if allow is not None and (not isinstance(allow, list) or not all(isinstance(a, str) for a in allow)):
            raise InvalidArgument("allow must be a list of peer names or addresses")
        return self._node.mcp_serve(check_port(port), list(check_argv(argv)), check_cwd(cwd), allow or [])

    def mcp_servers(self):
        """``{"servers": [...]}``."""
        return self._node.mcp_servers()

    def mcp_unserve(self, port=MCP_PORT):
        return self._node.mcp_unserve(check_port(port))


class DaemonMcp:
    """The MCP methods of :class:`~pilotproto.control.daemon.DaemonNode`: one control call each
    (a serve may wait for the beacon, to resolve ``allow`` names)."""

    def mcp_serve(self, port, argv, cwd, allow=()):
        args = {"port": port, "argv": list(argv), "cwd": cwd, "allow": list(allow or ())}
        return self._call("mcp_serve", args, timeout=timeouts.CONTROL_CONNECT)

    def mcp_servers(self):
        return self._call("mcp_servers")

    def mcp_unserve(self, port):
        return self._call("mcp_unserve", {"port": port})
