"""
``pilotctl card set --file card.json | show [PEER] | delete`` and
``pilotctl find [--tag T] [--capability C] [TEXT]``: this node's agent
card, and other nodes' cards as the beacon shows them (``docs/discovery.md``).
The daemon verifies every card's signature before it answers.
"""

from __future__ import annotations

import json

from ..common import timeouts
from ..control.client import ControlClient
from ..errors import InvalidArgument

_FORMAT_HINT = "See docs/discovery.md for the card format; e.g. {\"name\": \"summarizer\", \"tags\": [\"nlp\"]}."


def read_card_file(path: str) -> dict:
    """The JSON object in ``path`` (``-`` is stdin); InvalidArgument if it is not one."""
    try:
        if path == "-":
            import sys

            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except OSError as e:
        raise InvalidArgument(f"cannot read the card file {path}: {e.strerror}", hint="Give --file PATH to a JSON card.") from None
    except UnicodeDecodeError:
        raise InvalidArgument(f"the card file {path} is not UTF-8", hint=_FORMAT_HINT) from None
    try:
        card = json.loads(text)
    except ValueError as e:
        raise InvalidArgument(f"the card file {path} is not JSON: {e}", hint=_FORMAT_HINT) from None
    if not isinstance(card, dict):
        raise InvalidArgument(f"the card file {path} holds no JSON object", hint=_FORMAT_HINT)
    return card


def run_card(args, ctx) -> dict:
    client = ControlClient(ctx.home)
    wait = timeouts.CONTROL_CONNECT
    if args.action == "set":
        if not args.file or args.peer:
            raise InvalidArgument("card set takes --file PATH and no peer", hint="For example: pilotctl card set --file card.json")
        return client.call("card_set", timeout=wait, card=read_card_file(args.file))
    if args.file:
        raise InvalidArgument(f"card {args.action} takes no --file")
    if args.action == "delete":
        if args.peer:
            raise InvalidArgument("card delete deletes this node's card; it takes no peer")
        return client.call("card_delete", timeout=wait)
    return client.call("card_show", timeout=wait, peer=args.peer)


def card_lines(entry: dict) -> list[str]:
    card = entry["card"]
    who = entry.get("hostname") or "this node"
    lines = [f"{card['name']}  ({who}, {entry['address']})"]
    if card.get("description"):
        lines.append(f"  {card['description']}")
    for key in ("tags", "capabilities", "tools"):
        if card.get(key):
            lines.append(f"  {key}: {', '.join(card[key])}")
    for service in card.get("services", []):
        lines.append(f"  service: {service['kind']} on port {service['port']}{service.get('path', '')}")
    return lines


def render_card(data: dict) -> str:
    if "deleted" in data:
        text = "Deleted this node's card" if data["deleted"] else "This node had no card"
        return text + ("." if data["published"] else "; the beacon did not answer yet (the node tells it once registered).")
    if data.get("card") is None:
        return "This node has no card. Publish one with: pilotctl card set --file card.json"
    lines = card_lines(data)
    if "published" in data:
        lines.append(f"  version {data['version']}, " + ("published at the beacon" if data["published"]
                     else "not published yet (the node publishes it once registered)"))
    else:
        lines.append(f"  version {data['version']}, signature verified")
    return "\n".join(lines)


def run_find(args, ctx) -> dict:
    # No filter at all is allowed: every card visible to this node (at most 50).
    client = ControlClient(ctx.home)
    return client.call("find", timeout=timeouts.CONTROL_CONNECT, tag=args.tag, capability=args.capability, text=args.text)


def render_find(data: dict) -> str:
    lines = []
    for entry in data["cards"]:
        lines.extend(card_lines(entry))
    if not lines:
        lines.append("No card matches among the nodes visible to this node.")
    if data.get("rejected"):
        lines.append(f"Dropped {data['rejected']} card(s) whose signature did not verify.")
    return "\n".join(lines)


def add_commands(commands, subcommand) -> None:
    card = subcommand(commands, "card", "this node's agent card (set, show, delete), or a peer's (show PEER)", run_card, render_card)
    card.add_argument("action", choices=("set", "show", "delete"))
    card.add_argument("peer", nargs="?", metavar="PEER", help="show: the peer whose card to show (hostname or address)")
    card.add_argument("--file", metavar="PATH", help="set: the card, a JSON object (- for stdin)")

    find = subcommand(commands, "find", "find agents by what their cards say (only nodes visible to this node)", run_find, render_find)
    find.add_argument("text", nargs="?", metavar="TEXT", help="text in the name, description, tags, capabilities or tools (any case)")
    find.add_argument("--tag", metavar="T", help="cards with this tag (any case)")
    find.add_argument("--capability", metavar="C", help="cards with this capability (any case)")
