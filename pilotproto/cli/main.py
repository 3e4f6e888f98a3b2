"""
``pilotctl``: the command line over the daemon's control socket.

Every command is a ``run_*`` function returning a result dict and a
``render_*`` function turning that dict into a few lines for a person.
``--json`` prints the dict instead, as ``{"status": "ok", "data": ...}``;
any PilotError becomes ``{"status": "error", "code", "message", "hint"}``.
A command that ran but did not do what it was asked (a failed lab pair, a
node that is not registered) raises :class:`~.output.CommandFailed`: the
error plus what it found (``"data"``).  Exit codes (docs/cli.md): 0
success, 1 failure, 2 invalid argument or usage, 3 no daemon running, 130
interrupted.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import sys
import time
import traceback

import attrs

from .. import __version__, identity
from ..control.client import ControlClient
from ..errors import InvalidArgument, NotRegistered, PilotError
from ..identity.keys import KEY_FILE
from ..common.names import check_hostname, check_target
from ..node.config import NodeConfig, resolve_home
from ..trust.store import TRUST_FILE
from . import daemon as daemon_control
from . import card_commands
from . import forward_commands
from . import message_commands
from . import mcp_commands
from . import lab_commands, names, session_commands, status_commands, stream_commands
from .output import CommandFailed, Output, duration, interrupted, render_lookup, usage_error
from .trust import add_trust_commands


@attrs.define
class Context:
    home: str
    out: Output


class _UsageError(Exception):
    def __init__(self, message: str, usage: str):
        super().__init__(message)
        self.message = message
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises on bad usage instead of printing and exiting."""

    def error(self, message):
        raise _UsageError(message, self.format_usage())


# -- init ------------------------------------------------------------------------


def run_init(args, ctx: Context) -> dict:
    check_hostname(args.hostname)
    config = NodeConfig.load(ctx.home).merged(
        hostname=args.hostname, beacon=args.beacon, public=args.public, auto_approve=args.auto_approve
    )
    created = not os.path.lexists(os.path.join(ctx.home, KEY_FILE))
    # State left by a node whose key is gone: without --force this raises
    # identity_missing (restore the key instead); with it we start over.
    orphaned = identity.orphaned_state(ctx.home)
    os.makedirs(ctx.home, mode=0o700, exist_ok=True)
    me = identity.load_or_create(ctx.home, start_over=args.force)
    moved = _move_old_trust_aside(ctx.home) if orphaned else None
    config.save(ctx.home)
    return {
        "home": ctx.home,
        "address": str(me.address),
        "public_key": _b64(me.public_key),
        "fingerprint": identity.fingerprint(me.public_key),
        "hostname": config.hostname,
        "beacon": config.beacon,
        "public": config.public,
        "auto_approve": config.auto_approve,
        "created": created,
        "started_over": bool(orphaned),
        "old_trust_moved_to": moved,
    }


def _move_old_trust_aside(home: str) -> str | None:
    """The old key's trust store is not the new key's: who trusted whom, the
    requests and answers in flight, all name the old address.  Kept, renamed,
    for the operator to read; the new identity starts with none."""
    path = os.path.join(home, TRUST_FILE)
    if not os.path.lexists(path):
        return None
    aside = f"{path}.replaced-{time.strftime('%Y%m%dT%H%M%S')}"
    os.replace(path, aside)
    return aside


def render_init(data: dict) -> str:
    verb = "Created" if data["created"] else "Updated"
    lines = []
    if data.get("started_over"):
        lines += [
            f"Started over as a NEW address {data['address']}: the old identity was missing.",
            "Peers that trusted the old address must approve this one (pilotctl handshake PEER \"reason\").",
        ]
        if data.get("old_trust_moved_to"):
            lines.append(f"The old trust list was moved to {data['old_trust_moved_to']}.")
    lines += [
        f"{verb} {data['home']}",
        f"Address:  {data['address']}",
        f"Key:      {data.get('fingerprint', '')}",
        f"Hostname: {data['hostname']}",
        f"Beacon:   {data['beacon'] or '(none yet: pass --beacon HOST:PORT to daemon start)'}",
        f"Visible:  {'public (anyone can look it up)' if data['public'] else 'private (only trusted nodes can look it up)'}",
    ]
    return "\n".join(lines)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# -- daemon ----------------------------------------------------------------------


def run_daemon_start(args, ctx: Context) -> dict:
    if args.timeout <= 0:
        raise InvalidArgument("--timeout must be a positive number of seconds")
    return daemon_control.start_daemon(
        ctx.home,
        hostname=args.hostname,
        beacon=args.beacon,
        public=args.public,
        port=args.port,
        timeout=args.timeout,
        auto_approve=args.auto_approve,
        beacon_tls=args.beacon_tls,
        beacon_ca=os.path.abspath(args.beacon_ca) if args.beacon_ca else None,
        beacon_fingerprint=args.beacon_fingerprint,
    )


def render_daemon_start(data: dict) -> str:
    endpoint = data.get("reflexive_endpoint")
    lines = [
        f"STUN: public endpoint {endpoint}" if endpoint else "STUN: no public endpoint discovered (yet)",
        f"NAT type: {data.get('nat_type') or 'unknown'}",
        f"Registered as {data.get('hostname')} ({data.get('address')})",
    ]
    return "\n".join(lines)


def run_daemon_stop(args, ctx: Context) -> dict:
    if args.timeout <= 0:
        raise InvalidArgument("--timeout must be a positive number of seconds")
    return daemon_control.stop_daemon(ctx.home, timeout=args.timeout)


def render_daemon_stop(data: dict) -> str:
    how = {"shutdown": "", "sigterm": " with SIGTERM", "sigkill": " with SIGKILL"}.get(data["stopped_by"], "")
    pid = f" (pid {data['pid']})" if data.get("pid") else ""
    return f"Daemon stopped{how}{pid}."


def run_daemon_status(args, ctx: Context) -> dict:
    data = daemon_control.daemon_status(ctx.home)
    if not data.get("registered"):
        # Running is not enough: a node the beacon does not know reaches nobody.
        raise CommandFailed(_not_registered(data), data)
    return data


def _not_registered(data: dict) -> PilotError:
    error = data.get("beacon_error") if isinstance(data.get("beacon_error"), dict) else {}
    why = f": {error['message']}" if error.get("message") else ""
    return NotRegistered(
        f"the daemon runs but is not registered with the beacon {data.get('beacon')}{why}",
        hint=error.get("hint") or f"It keeps trying. See the log {data.get('log')}; check the beacon with: pilotctl netcheck",
    )


def render_daemon_status(data: dict) -> str:
    head = f"Daemon running (pid {data.get('pid')}), up {duration(data.get('uptime_s'))}"
    if data.get("registered"):
        body = f"Registered as {data.get('hostname')} ({data.get('address')}) with beacon {data.get('beacon')}"
    else:
        body = f"Not registered yet with beacon {data.get('beacon')}; see {data.get('log')}"
    return f"{head}\n{body}"


# -- info and lookup ---------------------------------------------------------------


def run_info(args, ctx: Context) -> dict:
    return ControlClient(ctx.home).call("info")


_INFO_FIELDS = [
    ("hostname", "Hostname"),
    ("address", "Address"),
    ("public", "Public"),
    ("registered", "Registered"),
    ("beacon", "Beacon"),
    ("beacon_transport", "Beacon over"),
    ("reflexive_endpoint", "Public endpoint"),
    ("local_endpoint", "Local endpoint"),
    ("nat_type", "NAT type"),
    ("uptime_s", "Uptime"),
    ("pid", "PID"),
    ("home", "Home"),
    ("version", "Version"),
    ("public_key", "Public key"),
]


def render_info(data: dict) -> str:
    width = max(len(label) for _, label in _INFO_FIELDS) + 2
    lines = []
    for key, label in _INFO_FIELDS:
        if key not in data:
            continue
        value = data[key]
        if key == "uptime_s":
            value = duration(value)
        elif isinstance(value, bool):
            value = "yes" if value else "no"
        elif value is None:
            value = "-"
        lines.append(f"{label + ':':<{width}} {value}")
    if len(data.get("beacons") or []) > 1:
        lines += ["Beacons:"] + ["  " + line for line in status_commands.beacon_lines(data)]
    return "\n".join(lines)


def run_lookup(args, ctx: Context) -> dict:
    return ControlClient(ctx.home).call("lookup", target=check_target(args.target))


# -- demo --------------------------------------------------------------------------


def run_demo(args, ctx: Context) -> dict:
    from .demo import run_demo as tour

    return tour(ctx.out, keep=args.keep)


# -- parser ------------------------------------------------------------------------


def _global_options(parser, suppress: bool) -> None:
    # On subcommands the defaults are suppressed, so "--json" before the
    # subcommand is not overwritten by the subparser's default after it.
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--home", metavar="DIR", default=default, help="node home (default $PILOT_HOME or ~/.pilot)")
    parser.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS if suppress else False, help="print one JSON object"
    )


def _subcommand(subparsers, name: str, help: str, run, render):
    parser = subparsers.add_parser(name, help=help, description=help)
    _global_options(parser, suppress=True)
    parser.set_defaults(run=run, render=render)
    return parser


def _node_settings(parser) -> None:
    parser.add_argument("--beacon", action="append", metavar="HOST:PORT", help="a beacon to register with (repeatable: the node registers with every one)")
    parser.add_argument(
        "--public",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="let anyone look this node up (default: private, or as saved)",
    )
    parser.add_argument(
        "--auto-approve",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="approve every incoming handshake request at once (default: no, or as saved)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pilotctl", description="Control a pilot node: permanent addresses, NAT traversal, trust.")
    parser.add_argument("--version", action="version", version=f"pilotctl {__version__}")
    _global_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    init = _subcommand(commands, "init", "create the identity and save settings", run_init, render_init)
    init.add_argument("--hostname", required=True, metavar="NAME", help="this node's name")
    init.add_argument(
        "--force",
        action="store_true",
        help="start over as a NEW address when this home's identity.json is missing (it never replaces one that exists)",
    )
    _node_settings(init)

    daemon = commands.add_parser("daemon", help="start, stop or check the background daemon")
    _global_options(daemon, suppress=True)
    actions = daemon.add_subparsers(dest="action", metavar="ACTION", required=True)
    start = _subcommand(actions, "start", "start the daemon and wait until it registers", run_daemon_start, render_daemon_start)
    start.add_argument("--hostname", metavar="NAME", help="this node's name (default: as saved)")
    _node_settings(start)
    start.add_argument("--port", type=int, metavar="UDPPORT", help="local UDP port (default: as saved, 0 = any)")
    start.add_argument("--beacon-tls", action="append", metavar="HOST:PORT", help="the TLS relay of the --beacon at the same position, used when UDP is blocked (default: that beacon's host, port 443)")
    start.add_argument("--beacon-ca", metavar="FILE", help="PEM CA certificates to trust for the beacon, besides the system's")
    start.add_argument("--beacon-fingerprint", action="append", metavar="SHA256", help="trust exactly this certificate (SHA-256) for the --beacon at the same position")
    start.add_argument("--timeout", type=float, default=daemon_control.DEFAULT_START_TIMEOUT, metavar="S")
    stop = _subcommand(actions, "stop", "stop the daemon", run_daemon_stop, render_daemon_stop)
    stop.add_argument("--timeout", type=float, default=daemon_control.DEFAULT_STOP_TIMEOUT, metavar="S")
    _subcommand(actions, "status", "is the daemon running, and registered?", run_daemon_status, render_daemon_status)

    _subcommand(commands, "info", "this node's address, name, endpoints", run_info, render_info)
    lookup = _subcommand(commands, "lookup", "ask the beacon about a node", run_lookup, render_lookup)
    lookup.add_argument("target", metavar="NAME_OR_ADDRESS")
    status_commands.add_commands(commands, _subcommand)
    add_trust_commands(commands, _subcommand)
    session_commands.add_commands(commands, _subcommand)
    stream_commands.add_commands(commands, _subcommand)
    forward_commands.add_commands(commands, _subcommand)
    card_commands.add_commands(commands, _subcommand)
    message_commands.add_commands(commands, _subcommand)
    mcp_commands.add_commands(commands, _subcommand, _global_options)
    names.add_commands(commands, _subcommand)
    lab_commands.add_commands(commands, _subcommand, _global_options)
    demo = _subcommand(commands, "demo", "a two-agent tour on this machine, cleaned up afterwards", run_demo, None)
    demo.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) afterwards")
    return parser


def _wants_json(argv: list[str]) -> bool:
    return "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv


def main(argv: list[str] | None = None, stdout=None, stderr=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    out = Output(_wants_json(argv), stdout or sys.stdout, stderr or sys.stderr)
    try:
        try:
            # argparse prints --help and --version to sys.stdout itself.
            with contextlib.redirect_stdout(stdout or sys.stdout):
                args = build_parser().parse_args(argv)
        except _UsageError as e:
            return out.failure(usage_error(e.message, e.usage))
        except SystemExit as e:  # --help and --version
            return e.code if isinstance(e.code, int) else 0
        ctx = Context(home=resolve_home(args.home), out=out)
        try:
            data = args.run(args, ctx)
        except CommandFailed as e:
            return out.failure(e.error, e.data, args.render(e.data) if args.render else None)
        return out.success(data, args.render(data) if args.render else None)
    except PilotError as e:
        return out.failure(e)
    except KeyboardInterrupt:
        return out.failure(interrupted())
    except Exception as e:
        out.note(traceback.format_exc().rstrip())
        return out.failure(PilotError(f"internal error: {e}", hint="This is a bug in pilotctl; please report it with the traceback above."))


if __name__ == "__main__":
    sys.exit(main())
