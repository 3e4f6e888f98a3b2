"""
The control socket's ``forward``/``forwards``/``unforward`` and
``expose``/``exposes``/``unexpose`` commands (``docs/control.md``), as an
adapter over any :class:`~pilotproto.interfaces.IPilotNode`.

They check what a remote caller may get wrong (types, ranges) and pass the
rest to the node, whose ``Forwards`` worker checks what the values mean.
"""

from __future__ import annotations

from ..common.names import check_port, check_udp_port
from ..common.wiring import check_provides
from ..errors import InvalidArgument
from ..interfaces import IPilotNode
from .server import Command


class ForwardCommands:
    def __init__(self, node):
        self._node = check_provides(node, IPilotNode, "ForwardCommands.node")

    def table(self) -> dict[str, Command]:
        return {
            "forward": Command(self.forward),
            "forwards": Command(self.forwards),
            "unforward": Command(self.unforward),
            "expose": Command(self.expose),
            "exposes": Command(self.exposes),
            "unexpose": Command(self.unexpose),
        }

    def forward(self, local_port, target, port, bind=None):
        """Listen on TCP ``bind:local_port`` and bridge each connection to ``target:port``."""
        args = _bind(bind), check_udp_port(_int("local_port", local_port)), _text("target", target), check_port(port)
        return self._node.forward(*args)

    def forwards(self):
        """``{"forwards": [...]}``."""
        return self._node.forwards()

    def unforward(self, local_port, bind=None):
        args = _bind(bind), check_udp_port(_int("local_port", local_port))
        return self._node.unforward(*args)

    def expose(self, port, tcp_port, host=None, allow=None):
        """Bridge streams to virtual ``port`` to TCP ``host:tcp_port``."""
        if host is not None:
            _text("host", host)
        if allow is not None and (not isinstance(allow, list) or not all(isinstance(a, str) for a in allow)):
            raise InvalidArgument("allow must be a list of peer names or addresses")
        args = check_port(port), host, check_udp_port(_int("tcp_port", tcp_port), allow_any=False), allow or []
        return self._node.expose(*args)

    def exposes(self):
        """``{"exposes": [...]}``."""
        return self._node.exposes()

    def unexpose(self, port):
        port = check_port(port)
        return self._node.unexpose(port)


def _int(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(f"{name} must be a whole number")
    return value


def _text(name: str, value) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{name} must be a non-empty string")
    return value


def _bind(value):
    return None if value is None else _text("bind", value)
