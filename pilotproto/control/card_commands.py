"""
The control socket's agent card commands (``docs/control.md``,
``docs/discovery.md``): ``card_set``, ``card_show``, ``card_delete`` and
``find``, as an adapter over any :class:`~pilotproto.interfaces.IPilotNode`.

They check what a remote caller may get wrong (types); the node checks the
card against its format and limits (:mod:`pilotproto.wire.cards`).
"""

from __future__ import annotations

from ..common import timeouts
from ..common.wiring import check_provides
from ..errors import InvalidArgument
from ..interfaces import IPilotNode
from .server import Command


class CardCommands:
    def __init__(self, node):
        self._node = check_provides(node, IPilotNode, "CardCommands.node")

    def table(self) -> dict[str, Command]:
        return {
            "card_set": Command(self.card_set),
            "card_show": Command(self.card_show),
            "card_delete": Command(self.card_delete),
            "find": Command(self.find),
        }

    def card_set(self, card):
        """Sign, keep and publish ``card`` (an object)."""
        if not isinstance(card, dict):
            raise InvalidArgument("card must be a JSON object", hint="See docs/discovery.md for the card format.")
        return self._node.card_set(card)

    def card_show(self, peer=None):
        """Our card, or ``peer``'s (a hostname or address), verified."""
        return self._node.card_show(_optional("peer", peer))

    def card_delete(self):
        return self._node.card_delete()

    def find(self, tag=None, capability=None, text=None):
        """``{"cards": [...], "total", "rejected"}``."""
        return self._node.find(_optional("tag", tag), _optional("capability", capability), _optional("text", text))


def _optional(name: str, value):
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{name} must be a non-empty string")
    return value


class DaemonCards:
    """The card methods of :class:`~pilotproto.control.daemon.DaemonNode`: one control
    call each; they may wait for the beacon (a find, a peer's card, a publish)."""

    def card_set(self, card):
        return self._call("card_set", {"card": card}, timeout=timeouts.CONTROL_CONNECT)

    def card_show(self, peer=None):
        return self._call("card_show", {"peer": peer}, timeout=timeouts.CONTROL_CONNECT)

    def card_delete(self):
        return self._call("card_delete", timeout=timeouts.CONTROL_CONNECT)

    def find(self, tag=None, capability=None, text=None):
        return self._call("find", {"tag": tag, "capability": capability, "text": text}, timeout=timeouts.CONTROL_CONNECT)
