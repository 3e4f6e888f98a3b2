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
_UNSET_NOT_SAVED = {"beacon_ca"}
#: lists with one entry per beacon: saved as one string when there is one
_PER_BEACON = {"beacons", "beacon_tls", "beacon_fingerprint"}


#: lists written to config.json only when not empty
_EMPTY_NOT_SAVED = {"forwards", "exposes", "mcp_servers"}


def _worth_saving(attribute, value) -> bool:
    if attribute.name in _EMPTY_NOT_SAVED:
        return bool(value)
    return value is not None or attribute.name not in _UNSET_NOT_SAVED


def _texts(value) -> list:
    """A list of settings from one string (as configs before several beacons
    saved them), a list of strings, or None (none)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise InvalidArgument(f"expected HOST:PORT text or a list of them, not {value!r}")


def _one_or_list(values: list):
    """How a per-beacon list is saved: one string for one (as before several beacons), else a list."""
    return values[0] if len(values) == 1 else list(values)


@attrs.define
class NodeConfig:
    """The node's settings.

    Several beacons (issue 14): ``beacons`` lists them in order (the first is
    the one NAT discovery runs against and the one the old single-beacon
    fields of ``info`` describe).  ``beacon_tls`` and ``beacon_fingerprint``
    pair with ``beacons`` by position: the Nth applies to the Nth beacon, a
    beacon without one uses the default (TLS: its host on port 443; no pin:
    the CA check).  ``beacon_ca`` applies to every beacon.  ``config.json``
    keeps one string where there is one value, as before, and a list where
    there are several; ``NodeConfig(beacon=...)`` takes either.
    """

    hostname: str | None = None
    beacons: list = attrs.field(factory=list, converter=_texts, alias="beacon")
    public: bool = False
    port: int = 0
    #: approve every incoming handshake request at once
    auto_approve: bool = False
    #: each beacon's TCP/TLS relay HOST:PORT, by position (missing: that beacon's host, port 443)
    beacon_tls: list = attrs.field(factory=list, converter=_texts)
    #: a PEM file of extra CA certificates to trust for the beacons (absolute path)
    beacon_ca: str | None = None
    #: SHA-256 of each beacon's certificate, hex, by position: trust exactly that certificate
    beacon_fingerprint: list = attrs.field(factory=list, converter=_texts)
    #: ``pilotctl forward``s restored at start: ``[{"bind", "local_port", "target", "port"}]`` (bridge_specs)
    forwards: list = attrs.field(factory=list)
    #: ``pilotctl expose``s restored at start: ``[{"port", "host", "tcp_port", "allow"}]`` (bridge_specs)
    exposes: list = attrs.field(factory=list)
    #: ``pilotctl mcp serve``s restored at start: ``[{"port", "argv", "cwd", "allow"}]`` (mcp_specs)
    mcp_servers: list = attrs.field(factory=list)

    @property
    def beacon(self) -> str | None:
        """The first beacon (what single-beacon callers mean), or None."""
        return self.beacons[0] if self.beacons else None

    def validate(self) -> "NodeConfig":
        if self.hostname is not None:
            check_hostname(self.hostname)
        seen = set()
        for beacon in self.beacons:
            where = parse_hostport(beacon)
            if where in seen:
                raise InvalidArgument(f"the beacon {beacon} is given twice", hint="Give each --beacon once.")
            seen.add(where)
        if not isinstance(self.port, int) or not (0 <= self.port <= 65535):
            raise InvalidArgument(f"bad UDP port {self.port!r}")
        for name, values in (("--beacon-tls", self.beacon_tls), ("--beacon-fingerprint", self.beacon_fingerprint)):
            if len(values) > max(len(self.beacons), 1):
                raise InvalidArgument(
                    f"{len(values)} {name} for {len(self.beacons)} --beacon",
                    hint=f"The Nth {name} applies to the Nth --beacon: give at most one per beacon.",
                )
        for tls in self.beacon_tls:
            parse_hostport(tls, DEFAULT_BEACON_TLS_PORT)
        for fingerprint in self.beacon_fingerprint:
            parse_fingerprint(fingerprint)
        self.forwards = load_forwards(self.forwards)
        self.exposes = load_exposes(self.exposes)
        self.mcp_servers = load_mcp_servers(self.mcp_servers)
        return self

    def beacon_tls_hostport(self, index: int = 0) -> tuple[str, int] | None:
        """Where beacon ``index``'s TLS relay is: its ``--beacon-tls``, else its host on 443."""
        if index < len(self.beacon_tls):
            return parse_hostport(self.beacon_tls[index], DEFAULT_BEACON_TLS_PORT)
        if index >= len(self.beacons):
            return None
        return parse_hostport(self.beacons[index])[0], DEFAULT_BEACON_TLS_PORT

    def beacon_fingerprint_of(self, index: int) -> str | None:
        """The certificate fingerprint pinned for beacon ``index``, or None."""
        return self.beacon_fingerprint[index] if index < len(self.beacon_fingerprint) else None

    def merged(self, **overrides) -> "NodeConfig":
        """A copy with every non-None override applied (``beacon``: one HOST:PORT or a list).

        New beacons replace the saved ones with their TLS settings: a saved
        ``--beacon-tls`` or pin belongs to the beacon it was given with."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        if "beacon" in changes and _texts(changes["beacon"]) != self.beacons:
            changes.setdefault("beacon_tls", [])
            changes.setdefault("beacon_fingerprint", [])
        return attrs.evolve(self, **changes).validate()

    @classmethod
    def load(cls, home: str) -> "NodeConfig":
        path = os.path.join(home, CONFIG_FILE)
        if not os.path.exists(path):
            return cls()
        try:
            with open(path) as f:
                doc = json.load(f)
            fields = {a.alias for a in attrs.fields(cls)}
            if "beacons" in doc and "beacon" not in doc:
                doc["beacon"] = doc.pop("beacons")
            return cls(**{k: v for k, v in doc.items() if k in fields}).validate()
        except InvalidArgument as e:
            raise StateError(f"config file {path} cannot be used ({e.message})") from None
        except (OSError, ValueError, TypeError) as e:
            raise StateError(f"config file {path} cannot be used ({e})") from None

    def _as_saved(self) -> dict:
        plain = attrs.asdict(self)
        doc = {}
        for attribute in attrs.fields(type(self)):
            value = plain[attribute.name]
            if attribute.name == "beacons":
                doc["beacon"] = _one_or_list(value) if value else None
            elif attribute.name in _PER_BEACON:
                if value:
                    doc[attribute.name] = _one_or_list(value)
            elif _worth_saving(attribute, value):
                doc[attribute.name] = value
        return doc

    def save(self, home: str) -> None:
        os.makedirs(home, mode=0o700, exist_ok=True)
        path = os.path.join(home, CONFIG_FILE)
        tmp = path + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(self._as_saved(), f, indent=2)
                f.write("\n")
            os.replace(tmp, path)
        except OSError as e:
            raise StateError(f"cannot write {path}: {e.strerror}", hint="Check free disk space and permissions.") from None
