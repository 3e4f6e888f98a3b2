"""
``twistd pilot``: run a pilot node or a beacon.

    twistd -n pilot beacon --port 9000 [--alt-port 9001] [--interface IP]
                          [--tls-port 443 --tls-cert FILE --tls-key FILE]
                          [--state-dir DIR | --store redis://HOST:PORT/DB]
    twistd -n pilot node --hostname NAME --beacon HOST:PORT [--beacon HOST:PORT ...] [--public|--private] [--home DIR]
                         [--beacon-tls HOST:PORT ...] [--beacon-ca FILE] [--beacon-fingerprint SHA256 ...]
"""

from __future__ import annotations

import errno
import re
import sys

from twisted.application import service
from twisted.internet.error import CannotListenError
from twisted.python import usage

from .common.names import check_udp_port
from .errors import InvalidArgument, PermissionDenied, PilotError
from .node.udp import PortInUse


def _port(value: str) -> int:
    try:
        return check_udp_port(value)
    except PilotError as e:
        raise usage.UsageError(e.message) from None


def _beacon_limit_options() -> list:
    from .beacon.limits import OPTIONS

    return [list(option) for option in OPTIONS]


class BeaconOptions(usage.Options):
    synopsis = "[--port 9000] [--alt-port 9001] [--interface IP] [--alt-address IP]"
    longdesc = "Run a beacon: registry, STUN and rendezvous for pilot nodes."
    optParameters = [
        ["port", "p", 9000, "UDP port for registration, lookups and STUN.", _port],
        ["alt-port", None, None, "A second UDP port answering STUN (NAT behaviour discovery).", _port],
        ["interface", "i", "0.0.0.0", "Address to listen on."],
        ["interface6", None, None, "Also listen on this IPv6 address, same port (:: for all), for nodes with IPv6."],
        ["alt-address", None, None, "A second address of this host, for NAT behaviour discovery."],
        ["tls-port", None, None, "Also listen on this TCP port with TLS, for nodes whose UDP is blocked.", _port],
        ["tls-cert", None, None, "PEM certificate (chain) for --tls-port."],
        ["tls-key", None, None, "PEM private key for --tls-port."],
        ["state-dir", None, None, "Keep names, visibility lists and mail here (SQLite), so that a restart loses none (default: memory only)."],
        ["store", None, None, "Keep them in Redis instead, shared by every beacon given the same redis://HOST:PORT/DB (a fleet; docs/deploy.md)."],
    ] + _beacon_limit_options()

    def postOptions(self):
        if self["tls-port"] is not None and not (self["tls-cert"] and self["tls-key"]):
            raise usage.UsageError("--tls-port needs --tls-cert FILE and --tls-key FILE")
        if self["store"] is not None:
            if self["state-dir"] is not None:
                raise usage.UsageError("give --store or --state-dir, not both (a fleet keeps its state in Redis only)")
            from .beacon.redis_store import RedisAddress

            try:
                RedisAddress.parse(self["store"])
            except PilotError as e:
                raise usage.UsageError(_message(e)) from None
        # The same checks BeaconService makes, here so that twistd reports
        # them as usage (from makeService they would be a traceback).
        from .beacon.service import _check_alternates

        try:
            _check_alternates(self["interface"], self["port"], self["alt-port"], self["alt-address"])
        except PilotError as e:
            raise usage.UsageError(_message(e)) from None


class NodeOptions(usage.Options):
    synopsis = "--hostname NAME --beacon HOST:PORT [--beacon HOST:PORT ...] [--public] [--auto-approve] [--home DIR] [--port UDPPORT]"
    longdesc = "Run a pilot node (the daemon behind pilotctl)."
    optFlags = [
        ["public", None, "Let any node look this one up (connecting still needs trust)."],
        ["private", None, "Only trusted nodes can look this one up (overrides a saved --public)."],
        ["auto-approve", None, "Approve every incoming handshake request at once."],
        ["no-auto-approve", None, "Wait for 'pilotctl approve' (overrides a saved --auto-approve)."],
    ]
    optParameters = [
        ["home", None, None, "The node's home directory (default $PILOT_HOME or ~/.pilot)."],
        ["hostname", None, None, "The name to register under."],
        ["port", "p", None, "Local UDP port (default: from config, else any).", _port],
        ["beacon-ca", None, None, "A PEM file of CA certificates to trust for the beacons, besides the system's."],
    ]

    def __init__(self):
        super().__init__()
        # Repeatable: one per beacon (issue 14).  The Nth --beacon-tls and
        # --beacon-fingerprint go with the Nth --beacon.
        self["beacon"], self["beacon-tls"], self["beacon-fingerprint"] = [], [], []

    def opt_beacon(self, value):
        """A beacon's HOST:PORT (repeatable: the node registers with every one)."""
        self["beacon"].append(value)

    opt_b = opt_beacon

    def opt_beacon_tls(self, value):
        """The TLS relay HOST:PORT of the --beacon at the same position, used when UDP fails (default: that beacon's host, port 443)."""
        self["beacon-tls"].append(value)

    def opt_beacon_fingerprint(self, value):
        """Trust exactly this certificate (SHA-256, hex) for the --beacon at the same position."""
        self["beacon-fingerprint"].append(value)

    def postOptions(self):
        # Checked here, not in makeService: twistd reports a UsageError from
        # option parsing as usage, and one from makeService as a traceback.
        from .identity import check_not_orphaned
        from .node.config import NodeConfig, resolve_home

        home = resolve_home(self["home"])
        try:
            # A home whose key is gone stops here, before anything makes a new one.
            check_not_orphaned(home)
            saved = NodeConfig.load(home)
        except PilotError as e:
            raise usage.UsageError(f"{_message(e)} [{e.code}]") from None
        if not (self["hostname"] or saved.hostname):
            raise usage.UsageError("the node needs a hostname: pass --hostname NAME (or run: pilotctl init --hostname NAME)")
        if not (self["beacon"] or saved.beacon):
            raise usage.UsageError("the node needs a beacon: pass --beacon HOST:PORT")


class Options(usage.Options):
    synopsis = "beacon|node [options]"
    subCommands = [
        ["beacon", None, BeaconOptions, "Run a beacon."],
        ["node", None, NodeOptions, "Run a pilot node."],
    ]

    def postOptions(self):
        if self.subCommand is None:
            raise usage.UsageError("say which: 'twistd pilot beacon' or 'twistd pilot node'")


def _message(e: PilotError) -> str:
    return f"{e.message} ({e.hint})" if e.hint else e.message


def _either(sub, yes: str, no: str) -> bool | None:
    """True, False, or None (as saved) from a pair of opposite flags."""
    if sub[yes] and sub[no]:
        raise usage.UsageError(f"--{yes} and --{no} contradict each other; give one")
    return True if sub[yes] else False if sub[no] else None


# -- a failed start is one line, not a traceback ------------------------------------
#
# twistd starts the services after it has parsed the options, so a port in
# use (or a second daemon on one home) surfaces as an exception out of
# twistd's run(), which Python prints as a traceback.  For the errors a
# user causes, the hook below prints one line instead, in a form pilotctl
# reads back from the daemon log (parse_start_error).  Bugs keep their
# tracebacks.

_START_ERROR = re.compile(r"twistd pilot (?:node|beacon): error \[(?P<code>[a-z_]+)\]: (?P<message>.*?)(?: \(hint: (?P<hint>.*)\))?$")


def format_start_error(program: str, error: PilotError) -> str:
    line = f"twistd pilot {program}: error [{error.code}]: {error.message}"
    line = line + (f" (hint: {error.hint})" if error.hint else "")
    return " ".join(line.split())  # one line, whatever the message held


def parse_start_error(line: str) -> PilotError | None:
    """The error a :func:`format_start_error` line carries (anywhere in ``line``), or None."""
    found = _START_ERROR.search(line)
    if found is None:
        return None
    return PilotError.from_dict(found.groupdict())


def as_start_error(exception: BaseException) -> PilotError | None:
    """The user-facing error behind a failed start, or None for a bug."""
    if isinstance(exception, PilotError):
        return exception
    if isinstance(exception, usage.UsageError):
        # makeService turns a PilotError into a UsageError ("raise ... from
        # None" keeps it as the context): report the original, with its code and hint.
        if isinstance(exception.__context__, PilotError):
            return exception.__context__
        return InvalidArgument(str(exception))
    if isinstance(exception, CannotListenError):
        where = f"{exception.interface or '0.0.0.0'}:{exception.port}"
        cause = exception.socketError
        if getattr(cause, "errno", None) == errno.EADDRINUSE:
            return PortInUse(
                f"cannot listen on {where}: another program uses that port",
                hint="Stop the other program (another beacon or node?), or choose another port.",
            )
        if getattr(cause, "errno", None) == errno.EACCES:
            return PermissionDenied(f"cannot listen on {where}: permission denied", hint="Ports below 1024 need root.")
        return PilotError(f"cannot listen on {where}: {getattr(cause, 'strerror', None) or cause}")
    return None


def _report_start_errors_in_one_line(program: str) -> None:
    previous = sys.excepthook
    if getattr(previous, "pilot_program", None) is not None:
        return

    def hook(kind, value, traceback):
        error = as_start_error(value)
        if error is None:
            return previous(kind, value, traceback)
        sys.stderr.write(format_start_error(program, error) + "\n")
        sys.stderr.flush()

    hook.pilot_program = program
    sys.excepthook = hook


def makeService(options, reactor=None) -> service.IService:
    if reactor is None:
        # Called by twistd (tests pass a reactor): errors a user causes from
        # here on end the process with one line.
        _report_start_errors_in_one_line(options.subCommand or "node")
        from twisted.internet import reactor
    sub = options.subOptions
    if options.subCommand == "beacon":
        from .beacon.limits import limits_from_options
        from .beacon.service import BeaconService

        try:
            return BeaconService(
                reactor,
                interface=sub["interface"],
                port=sub["port"],
                alt_port=sub["alt-port"],
                alt_address=sub["alt-address"],
                tls_port=sub["tls-port"],
                tls_cert=sub["tls-cert"],
                tls_key=sub["tls-key"],
                state_dir=sub["state-dir"],
                limits=limits_from_options(sub),
                store=sub["store"],
                interface6=sub["interface6"],
            )
        except PilotError as e:
            raise usage.UsageError(_message(e)) from None
    from .control.service import ControlService
    from .node.service import PilotNode

    try:
        node = PilotNode(
            home=sub["home"],
            hostname=sub["hostname"],
            beacon=sub["beacon"] or None,
            public=_either(sub, "public", "private"),
            auto_approve=_either(sub, "auto-approve", "no-auto-approve"),
            port=sub["port"],
            beacon_tls=sub["beacon-tls"] or None,
            beacon_ca=sub["beacon-ca"],
            beacon_fingerprint=sub["beacon-fingerprint"] or None,
            reactor=reactor,
            on_shutdown=reactor.stop,
        )
    except PilotError as e:
        raise usage.UsageError(_message(e)) from None
    # The control socket (pilotctl, SDKs) is the daemon's: a layer above the node.
    ControlService(node).setServiceParent(node)
    return node
