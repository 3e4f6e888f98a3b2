"""
``pilotctl mcp serve/list/remove/connect``: stdio MCP servers on the overlay.

``serve`` runs in the daemon and outlives the CLI (saved in config.json);
``connect`` *is* a stdio MCP server for a local MCP host
(:mod:`pilotproto.cli.mcp_connect` bridges it to the peer).
"""

from __future__ import annotations

import os
import sys

from ..common.names import check_port, check_target
from ..control.client import ControlClient
from ..errors import InvalidArgument, PilotError
from ..identity.address import Address
from ..node.bridge_specs import check_allow_entry
from ..node.mcp_specs import MCP_PORT
from . import mcp_connect
from .forward_commands import _allow_text, entry_lines
from .output import CommandFailed


def parse_peer(text: str) -> tuple[str, int]:
    """``PEER`` or ``PEER:P``, where PEER is a hostname or an address (which has a colon of its own)."""
    if isinstance(text, str) and Address.looks_like(text):
        return check_target(text), MCP_PORT
    peer, sep, port = (text or "").rpartition(":")
    if sep and peer and port.isdigit():
        return check_target(peer), check_port(int(port))
    if sep:
        raise InvalidArgument(f"bad peer {text!r}", hint="Give PEER or PEER:PORT, e.g. agent-b or agent-b:1003.")
    return check_target(text), MCP_PORT


# -- serve / list / remove ---------------------------------------------------------------


def run_serve(args, ctx) -> dict:
    argv = list(args.command or [])
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise InvalidArgument("mcp serve needs the command of a stdio MCP server after --",
                              hint="For example: pilotctl mcp serve --port 1003 -- python server.py")
    cwd = os.path.abspath(args.cwd) if args.cwd else os.getcwd()
    allow = [check_allow_entry(a) for a in args.allow or []]
    client = ControlClient(ctx.home)
    data = client.request("mcp_serve", {"port": check_port(args.port), "argv": argv, "cwd": cwd, "allow": allow},
                          timeout=40.0)
    try:
        return {**data, "hostname": client.call("info", timeout=5.0).get("hostname")}
    except PilotError:
        return data


def render_serve(data: dict) -> str:
    return (f"Serving MCP on port {data['port']}: {' '.join(data['argv'])} (in {data['cwd']}), a process per "
            f"session, for {_allow_text(data)} (in the daemon; saved).\n"
            f"From a trusted peer: pilotctl mcp connect {data.get('hostname') or 'THIS_NODE'}{'' if data['port'] == MCP_PORT else ':' + str(data['port'])}")


def server_lines(servers: list[dict]) -> list[str]:
    return entry_lines(servers, lambda s: f"port {s['port']} -> {' '.join(s['argv'])} for {_allow_text(s)}")


def run_list(args, ctx) -> dict:
    return ControlClient(ctx.home).call("mcp_servers")


def render_list(data: dict) -> str:
    return "\n".join(server_lines(data["servers"])) or "No MCP servers. Publish one with: pilotctl mcp serve -- CMD ARGS"


def run_remove(args, ctx) -> dict:
    return ControlClient(ctx.home).call("mcp_unserve", port=check_port(args.port))


def render_remove(data: dict) -> str:
    return f"Port {data['removed']['port']} no longer serves MCP."


# -- connect -------------------------------------------------------------------------------


def run_connect(args, ctx) -> dict:
    if ctx.out.json_mode:
        raise InvalidArgument("mcp connect speaks JSON-RPC on stdout, which leaves no room for --json")
    peer, port = parse_peer(args.peer)
    stdin_fd, stdout = sys.stdin.fileno(), sys.stdout.buffer
    try:
        stream = ControlClient(ctx.home).open_stream(peer, port, timeout=args.timeout)
    except PilotError as e:
        if not e.hint:  # a reset at once: the server process could not start, or died at once
            e.hint = f"On {peer}, see its last_error with: pilotctl mcp list (and its daemon log)."
        ctx.out.note(f"pilotctl mcp connect: cannot reach {peer} port {port}: [{e.code}] {e.message}")
        answered = mcp_connect.refuse_all(e, stdin_fd, stdout)
        raise CommandFailed(e, {"peer": peer, "port": port, "refused_requests": answered}) from None
    with stream:
        summary = mcp_connect.bridge(stream, stdin_fd, stdout, peer, port)
    problem = summary.pop("error")
    if problem is not None:
        raise CommandFailed(problem, summary)
    return summary


def add_commands(commands, subcommand, global_options) -> None:
    mcp = commands.add_parser("mcp", help="MCP servers on the overlay: publish a stdio server, or use a peer's")
    global_options(mcp, suppress=True)
    actions = mcp.add_subparsers(dest="action", metavar="ACTION", required=True)

    serve = subcommand(actions, "serve", "publish a stdio MCP server: a process per incoming session (runs in the daemon)",
                       run_serve, render_serve)
    serve.add_argument("--port", type=int, default=MCP_PORT, metavar="P", help=f"the virtual port (default {MCP_PORT})")
    serve.add_argument("--allow", nargs="+", metavar="PEER", help="only these trusted peers (names or addresses)")
    serve.add_argument("--cwd", metavar="DIR", help="the processes' working directory (default: where you run this)")
    serve.add_argument("command", nargs="...", metavar="-- CMD [ARGS...]", help="the server's command line (no shell)")

    subcommand(actions, "list", "the published MCP servers and their counts", run_list, render_list)
    remove = subcommand(actions, "remove", "stop publishing an MCP server", run_remove, render_remove)
    remove.add_argument("--port", type=int, default=MCP_PORT, metavar="P", help=f"its virtual port (default {MCP_PORT})")

    connect = subcommand(actions, "connect", "be a stdio MCP server for a local host, bridged to a peer's",
                         run_connect, None)
    connect.add_argument("peer", metavar="PEER[:P]", help=f"the peer (name or address) and port (default {MCP_PORT})")
    connect.add_argument("--timeout", type=float, default=30.0, metavar="S", help="seconds to reach the peer (default 30)")
