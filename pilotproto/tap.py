"""
``twistd pilot``: run a pilot node or a beacon.

    twistd -n pilot beacon --port 9000 [--alt-port 9001] [--interface IP]
                          [--tls-port 443 --tls-cert FILE --tls-key FILE]
    twistd -n pilot node --hostname NAME --beacon HOST:PORT [--public] [--home DIR]
                         [--beacon-tls HOST:PORT] [--beacon-ca FILE] [--beacon-fingerprint SHA256]
"""

from __future__ import annotations

from twisted.application import service
from twisted.python import usage

from .common.names import check_udp_port
from .errors import PilotError


def _port(value: str) -> int:
    try:
        return check_udp_port(value)
    except PilotError as e:
        raise usage.UsageError(e.message) from None


class BeaconOptions(usage.Options):
    synopsis = "[--port 9000] [--alt-port 9001] [--interface IP] [--alt-address IP]"
    longdesc = "Run a beacon: registry, STUN and rendezvous for pilot nodes."
    optParameters = [
        ["port", "p", 9000, "UDP port for registration, lookups and STUN.", _port],
        ["alt-port", None, None, "A second UDP port answering STUN (NAT behaviour discovery).", _port],
        ["interface", "i", "0.0.0.0", "Address to listen on."],
        ["alt-address", None, None, "A second address of this host, for NAT behaviour discovery."],
        ["tls-port", None, None, "Also listen on this TCP port with TLS, for nodes whose UDP is blocked.", _port],
        ["tls-cert", None, None, "PEM certificate (chain) for --tls-port."],
        ["tls-key", None, None, "PEM private key for --tls-port."],
    ]

    def postOptions(self):
        if self["tls-port"] is not None and not (self["tls-cert"] and self["tls-key"]):
            raise usage.UsageError("--tls-port needs --tls-cert FILE and --tls-key FILE")


class NodeOptions(usage.Options):
    synopsis = "--hostname NAME --beacon HOST:PORT [--public] [--auto-approve] [--home DIR] [--port UDPPORT]"
    longdesc = "Run a pilot node (the daemon behind pilotctl)."
    optFlags = [
        ["public", None, "Let any node look this one up (connecting still needs trust)."],
        ["auto-approve", None, "Approve every incoming handshake request at once."],
    ]
    optParameters = [
        ["home", None, None, "The node's home directory (default $PILOT_HOME or ~/.pilot)."],
        ["hostname", None, None, "The name to register under."],
        ["beacon", "b", None, "The beacon's HOST:PORT."],
        ["port", "p", None, "Local UDP port (default: from config, else any).", _port],
        ["beacon-tls", None, None, "The beacon's TLS relay HOST:PORT, used when UDP fails (default: the --beacon host, port 443)."],
        ["beacon-ca", None, None, "A PEM file of CA certificates to trust for the beacon, besides the system's."],
        ["beacon-fingerprint", None, None, "Trust exactly the beacon certificate with this SHA-256 (hex, colons optional)."],
    ]

    def postOptions(self):
        # Checked here, not in makeService: twistd reports a UsageError from
        # option parsing as usage, and one from makeService as a traceback.
        from .node.config import NodeConfig, resolve_home

        try:
            saved = NodeConfig.load(resolve_home(self["home"]))
        except PilotError as e:
            raise usage.UsageError(_message(e)) from None
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


def makeService(options, reactor=None) -> service.IService:
    if reactor is None:
        from twisted.internet import reactor
    sub = options.subOptions
    if options.subCommand == "beacon":
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
            )
        except PilotError as e:
            raise usage.UsageError(_message(e)) from None
    from .control.service import ControlService
    from .node.service import PilotNode

    try:
        node = PilotNode(
            home=sub["home"],
            hostname=sub["hostname"],
            beacon=sub["beacon"],
            public=True if sub["public"] else None,
            auto_approve=True if sub["auto-approve"] else None,
            port=sub["port"],
            beacon_tls=sub["beacon-tls"],
            beacon_ca=sub["beacon-ca"],
            beacon_fingerprint=sub["beacon-fingerprint"],
            reactor=reactor,
            on_shutdown=reactor.stop,
        )
    except PilotError as e:
        raise usage.UsageError(_message(e)) from None
    # The control socket (pilotctl, SDKs) is the daemon's: a layer above the node.
    ControlService(node).setServiceParent(node)
    return node
