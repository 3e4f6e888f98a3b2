"""
The control socket's commands, as an adapter over any :class:`IPilotNode`.

The node knows nothing of JSON: :class:`ControlCommands` takes each
command's arguments by name (exactly as ``docs/control.md`` lists them),
checks what a remote caller may get wrong, calls the node, and shapes the
result as the protocol promises.  :meth:`ControlCommands.table` is the
explicit command table the server dispatches through; the stream commands
(``connect``, ``listen``, ``accept``) are :mod:`pilotproto.control.upgrade`'s.
"""

from __future__ import annotations

from ..common.wiring import check_provides
from ..errors import InvalidArgument
from ..interfaces import IPilotNode
from .card_commands import CardCommands
from .forward_commands import ForwardCommands
from .mcp_commands import McpCommands
from .message_commands import MessageCommands
from .server import Command
from .upgrade import StreamCommands

#: a ping payload's limit in bytes (it must fit in one packet with the ping header)
MAX_PING_PAYLOAD = 1000


class ControlCommands:
    """The commands of the daemon running ``node``; ``clock`` (default ``node.reactor``) times streams."""

    def __init__(self, node, clock=None):
        self._node = check_provides(node, IPilotNode, "ControlCommands.node")
        self.streams = StreamCommands(node, clock if clock is not None else node.reactor)

    def table(self) -> dict[str, Command]:
        """Command name -> :class:`Command`: what the control socket answers."""
        return {
            "info": Command(self.info),
            "lookup": Command(self.lookup),
            "ping": Command(self.ping),
            "peers": Command(self.peers),
            "handshake": Command(self.handshake),
            "pending": Command(self.pending),
            "approve": Command(self.approve),
            "reject": Command(self.reject),
            "trust": Command(self.trust),
            "revoke": Command(self.revoke),
            "recv": Command(self.recv),
            "shutdown": Command(self.shutdown),
            "connect": Command(self.streams.connect, upgrades=True),
            "listen": Command(self.streams.listen, upgrades=True),
            "accept": Command(self.streams.accept, upgrades=True),
            **ForwardCommands(self._node).table(),
            **CardCommands(self._node).table(),
            **MessageCommands(self._node).table(),
            **McpCommands(self._node).table(),
        }

    # -- the node ------------------------------------------------------------------------

    def info(self):
        """hostname, address, public_key, public, beacon, registered, endpoints, nat_type, pid, ..."""
        return self._node.info()

    def lookup(self, target):
        """hostname, address, public_key, endpoints, public of the node ``target`` names."""
        return self._node.lookup(_text("target", target))

    def shutdown(self):
        """``{"stopping": true, "pid": N}``; the node stops right after answering."""
        return self._node.shutdown()

    # -- sessions ------------------------------------------------------------------------

    def ping(self, target, count=4, interval=1.0, reply_timeout=2.0, payload=""):
        """Ping ``target`` over its encrypted session; a summary (sent, received, RTTs, path)."""
        if not isinstance(count, int) or not (1 <= count <= 10_000):
            raise InvalidArgument("count must be a whole number from 1 to 10000")
        for name, value in (("interval", interval), ("reply_timeout", reply_timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value <= 60):
                raise InvalidArgument(f"{name} must be a number of seconds from 0 to 60")
        if not isinstance(payload, str):
            raise InvalidArgument("payload must be text")
        data = payload.encode("utf-8")
        if len(data) > MAX_PING_PAYLOAD:
            raise InvalidArgument(f"a ping payload is at most {MAX_PING_PAYLOAD} bytes")
        return self._node.ping(_text("target", target), count, float(interval), float(reply_timeout), data)

    def peers(self):
        """``{"peers": [...]}``: one entry per session (path, endpoint, RTT, bytes)."""
        return self._node.peers()

    # -- trust ---------------------------------------------------------------------------

    def handshake(self, target, reason):
        """Ask ``target`` for trust, saying why."""
        return self._node.handshake(_text("target", target), _text("reason", reason, empty=True))

    def pending(self):
        """``{"pending": [...], "outgoing": [...]}``."""
        return self._node.pending()

    def approve(self, peer):
        return self._node.approve(_text("peer", peer))

    def reject(self, peer):
        return self._node.reject(_text("peer", peer))

    def trust(self):
        """``{"trusted": [...]}``."""
        return self._node.trusted()

    def revoke(self, peer):
        return self._node.revoke(_text("peer", peer))

    # -- the inbox (port 1001) ------------------------------------------------------------

    def recv(self, count=None, timeout=0):
        """``{"messages": [...]}``: up to ``count`` queued messages, waiting up to ``timeout`` s."""
        return self._node.recv(count, timeout)


def _text(name: str, value, empty: bool = False) -> str:
    """A string argument; the node checks what it means."""
    if not isinstance(value, str) or (not value and not empty):
        raise InvalidArgument(f"{name} must be a non-empty string" if not empty else f"{name} must be a string")
    return value
