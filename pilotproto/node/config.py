"""
The node's home directory and its settings file.

The home (default ``~/.pilot``, or ``$PILOT_HOME``, or ``--home``) holds:

=================  ===================================================
``identity.json``  the Ed25519 key (0600); see :mod:`pilotproto.identity`
``config.json``    settings written by ``pilotctl init`` / daemon start
``control.sock``   the daemon's control socket (0600) while it runs
``daemon.pid``     pid of the background daemon
``daemon.log``     its log
=================  ===================================================
"""

from __future__ import annotations

import ipaddress
import json
import os

import attrs

from ..common.home import CONFIG_FILE, CONTROL_SOCKET, LOG_FILE, PID_FILE, resolve_home  # noqa: F401  (re-exported)
from ..common.names import check_hostname  # noqa: F401  (re-exported)
from ..errors import InvalidArgument, StateError
from .bridge_specs import load_exposes, load_forwards
from .mcp_specs import load_mcp_servers

DEFAULT_BEACON_PORT = 9000
DEFAULT_BEACON_TLS_PORT = 443


def parse_hostport(text: str, default_port: int = DEFAULT_BEACON_PORT) -> tuple[str, int]:
    """Parse ``HOST[:PORT]`` or ``[V6]:PORT``; raise InvalidArgument if malformed."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidArgument("empty address", hint="Give HOST:PORT, for example 127.0.0.1:9000")
    text = text.strip()
    host, port = text, str(default_port)
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise InvalidArgument(f"bad address {text!r}", hint="Write IPv6 addresses as [::1]:9000")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise InvalidArgument(f"bad address {text!r}", hint="Write IPv6 addresses as [::1]:9000")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif text.count(":") > 1:
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            raise InvalidArgument(f"bad address {text!r}", hint="Write IPv6 addresses as [::1]:9000") from None
    if not host:
        raise InvalidArgument(f"missing host in {text!r}", hint="Give HOST:PORT, for example 127.0.0.1:9000")
    if not port.isdigit() or not (1 <= int(port) <= 65535):
        raise InvalidArgument(f"bad port in {text!r}", hint="A port is a number from 1 to 65535.")
    return host, int(port)


def parse_fingerprint(text: str) -> bytes:
    """A SHA-256 certificate fingerprint from hex, with or without colons."""
    digits = text.replace(":", "").strip().lower() if isinstance(text, str) else ""
    try:
        raw = bytes.fromhex(digits)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise InvalidArgument(
            f"bad certificate fingerprint {text!r}",
            hint="Give the SHA-256 of the beacon's DER certificate as 64 hex digits, e.g. from: "
            "openssl x509 -in beacon.pem -noout -fingerprint -sha256",
        )
    return raw


#: settings written to config.json only when set
_UNSET_NOT_SAVED = {"beacon_tls", "beacon_ca", "beacon_fingerprint"}


#: lists written to config.json only when not empty
_EMPTY_NOT_SAVED = {"forwards", "exposes", "mcp_servers"}


def _worth_saving(attribute, value) -> bool:
    if attribute.name in _EMPTY_NOT_SAVED:
        return bool(value)
    return value is not None or attribute.name not in _UNSET_NOT_SAVED


@attrs.define
class NodeConfig:
    hostname: str | None = None
    beacon: str | None = None
    public: bool = False
    port: int = 0
    #: approve every incoming handshake request at once
    auto_approve: bool = False
    #: the beacon's TCP/TLS relay HOST:PORT (None: the beacon's host, port 443)
    beacon_tls: str | None = None
    #: a PEM file of extra CA certificates to trust for the beacon (absolute path)
    beacon_ca: str | None = None
    #: SHA-256 of the beacon's certificate, hex: trust exactly that certificate
    beacon_fingerprint: str | None = None
    #: ``pilotctl forward``s restored at start: ``[{"bind", "local_port", "target", "port"}]`` (bridge_specs)
    forwards: list = attrs.field(factory=list)
    #: ``pilotctl expose``s restored at start: ``[{"port", "host", "tcp_port", "allow"}]`` (bridge_specs)
    exposes: list = attrs.field(factory=list)
    #: ``pilotctl mcp serve``s restored at start: ``[{"port", "argv", "cwd", "allow"}]`` (mcp_specs)
    mcp_servers: list = attrs.field(factory=list)

    def validate(self) -> "NodeConfig":
        if self.hostname is not None:
            check_hostname(self.hostname)
        if self.beacon is not None:
            parse_hostport(self.beacon)
        if not isinstance(self.port, int) or not (0 <= self.port <= 65535):
            raise InvalidArgument(f"bad UDP port {self.port!r}")
        if self.beacon_tls is not None:
            parse_hostport(self.beacon_tls, DEFAULT_BEACON_TLS_PORT)
        if self.beacon_fingerprint is not None:
            parse_fingerprint(self.beacon_fingerprint)
        self.forwards = load_forwards(self.forwards)
        self.exposes = load_exposes(self.exposes)
        self.mcp_servers = load_mcp_servers(self.mcp_servers)
        return self

    def beacon_tls_hostport(self) -> tuple[str, int] | None:
        """Where the beacon's TLS relay is: ``--beacon-tls``, else the beacon's host on 443."""
        if self.beacon_tls is not None:
            return parse_hostport(self.beacon_tls, DEFAULT_BEACON_TLS_PORT)
        if self.beacon is None:
            return None
        return parse_hostport(self.beacon)[0], DEFAULT_BEACON_TLS_PORT

    def merged(self, **overrides) -> "NodeConfig":
        """A copy with every non-None override applied."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        return attrs.evolve(self, **changes).validate()

    @classmethod
    def load(cls, home: str) -> "NodeConfig":
        path = os.path.join(home, CONFIG_FILE)
        if not os.path.exists(path):
            return cls()
        try:
            with open(path) as f:
                doc = json.load(f)
            fields = {a.name for a in attrs.fields(cls)}
            return cls(**{k: v for k, v in doc.items() if k in fields}).validate()
        except (OSError, ValueError, TypeError) as e:
            raise StateError(f"config file {path} cannot be used ({e})") from None

    def save(self, home: str) -> None:
        os.makedirs(home, mode=0o700, exist_ok=True)
        path = os.path.join(home, CONFIG_FILE)
        tmp = path + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(attrs.asdict(self, filter=_worth_saving), f, indent=2)
                f.write("\n")
            os.replace(tmp, path)
        except OSError as e:
            raise StateError(f"cannot write {path}: {e.strerror}", hint="Check free disk space and permissions.") from None
