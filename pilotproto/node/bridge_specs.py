"""
What a forward and an expose are, as saved in ``config.json`` and asked for
on the control socket: checked values, one place for every check.

No Twisted here: ``pilotctl`` and :mod:`pilotproto.node.config` use these too.

- A **forward** ``{"bind", "local_port", "target", "port"}``: a local TCP
  listener on ``bind:local_port`` whose every connection becomes a stream
  to virtual port ``port`` of the peer ``target`` (hostname or address).
- An **expose** ``{"port", "host", "tcp_port", "allow"}``: virtual port
  ``port`` whose every incoming stream becomes a TCP connection to
  ``host:tcp_port``; ``allow`` is a list of peer addresses (empty: every
  trusted peer).  Addresses, not names: a name is a label that another key
  can carry, an address is derived from the key.
"""

from __future__ import annotations

import contextlib
import ipaddress

import attrs

from ..common.names import check_hostname, check_port, check_target, check_udp_port
from ..errors import InvalidArgument
from ..identity.address import Address

DEFAULT_BIND = "127.0.0.1"
DEFAULT_HOST = "127.0.0.1"
#: the most peers one --allow list may name
MAX_ALLOW = 64


def check_bind(bind) -> str:
    """An IP address literal to listen on (``localhost`` is 127.0.0.1)."""
    if bind == "localhost":
        return DEFAULT_BIND
    try:
        return str(ipaddress.ip_address(bind))
    except (TypeError, ValueError):
        raise InvalidArgument(
            f"cannot listen on {bind!r}: not an IP address",
            hint="Give an address of this host, e.g. 127.0.0.1 (the default), 0.0.0.0 or [::1].",
        ) from None


def check_tcp_host(host) -> str:
    """Where an expose connects: an IP address literal or a DNS name."""
    if not isinstance(host, str) or not host or len(host) > 253:
        raise InvalidArgument(f"bad host {host!r}", hint="Give an IP address or a host name, e.g. 127.0.0.1 (the default).")
    with contextlib.suppress(ValueError):  # not an IP literal: a DNS name, checked below
        return str(ipaddress.ip_address(host))
    for label in host.rstrip(".").split("."):
        if not label or len(label) > 63 or not all(c.isalnum() or c in "-_" for c in label):
            raise InvalidArgument(f"bad host {host!r}", hint="Give an IP address or a host name, e.g. 127.0.0.1 (the default).")
    return host


def check_address(text) -> str:
    """A peer's pilot address, in its canonical spelling."""
    if not isinstance(text, str) or not Address.looks_like(text):
        raise InvalidArgument(f"not a pilot address: {text!r}", hint="An address looks like 0:A91F.0000.7C2E.")
    return str(Address.parse(text))


def split_host_port(text: str, default_host: str, what: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[V6]:PORT`` (the port may be 0 only where the caller allows)."""
    if not isinstance(text, str) or not text:
        raise InvalidArgument(f"empty {what}", hint=f"Give [HOST:]PORT, e.g. 8080 or {default_host}:8080.")
    host, port = default_host, text
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not text[end + 1 :].startswith(":"):
            raise InvalidArgument(f"bad {what} {text!r}", hint="Write IPv6 addresses as [::1]:8080.")
        host, port = text[1:end], text[end + 2 :]
    elif ":" in text:
        host, _, port = text.rpartition(":")
    if not port.isdigit():
        raise InvalidArgument(f"bad port in {what} {text!r}", hint="A port is a whole number from 1 to 65535.")
    return host, int(port)


@attrs.frozen
class ForwardSpec:
    bind: str
    local_port: int
    target: str
    port: int

    @classmethod
    def checked(cls, bind, local_port, target, port) -> ForwardSpec:
        return cls(check_bind(bind), check_udp_port(local_port), check_target(target), check_port(port))

    @classmethod
    def from_dict(cls, doc) -> ForwardSpec:
        if not isinstance(doc, dict) or set(doc) != {"bind", "local_port", "target", "port"}:
            raise InvalidArgument(f"a saved forward must have exactly bind, local_port, target, port: {doc!r}")
        return cls.checked(doc["bind"], doc["local_port"], doc["target"], doc["port"])

    def to_dict(self) -> dict:
        return attrs.asdict(self)

    @property
    def listen_text(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"{host}:{self.local_port}"


@attrs.frozen
class ExposeSpec:
    port: int
    host: str
    tcp_port: int
    allow: tuple = ()

    @classmethod
    def checked(cls, port, host, tcp_port, allow=()) -> ExposeSpec:
        if allow is None:
            allow = ()
        if not isinstance(allow, (list, tuple)) or len(allow) > MAX_ALLOW:
            raise InvalidArgument(f"allow must be a list of at most {MAX_ALLOW} peer addresses")
        addresses = tuple(sorted({check_address(a) for a in allow}))
        return cls(check_port(port), check_tcp_host(host), check_udp_port(tcp_port, allow_any=False), addresses)

    @classmethod
    def from_dict(cls, doc) -> ExposeSpec:
        if not isinstance(doc, dict) or not {"port", "host", "tcp_port"} <= set(doc) <= {"port", "host", "tcp_port", "allow"}:
            raise InvalidArgument(f"a saved expose must have port, host, tcp_port (and allow): {doc!r}")
        return cls.checked(doc["port"], doc["host"], doc["tcp_port"], doc.get("allow") or ())

    def to_dict(self) -> dict:
        return {"port": self.port, "host": self.host, "tcp_port": self.tcp_port, "allow": list(self.allow)}

    @property
    def service_text(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.tcp_port}"


def check_allow_entry(text) -> str:
    """An ``--allow`` entry as typed: an address or a hostname (resolved to an address by the node)."""
    if isinstance(text, str) and Address.looks_like(text):
        return check_address(text)
    return check_hostname(text)


def load_forwards(docs) -> list[dict]:
    """Saved forwards, checked and in canonical form (config.json's ``forwards``)."""
    if not isinstance(docs, (list, tuple)):
        raise InvalidArgument("forwards must be a list")
    specs = [ForwardSpec.from_dict(d) for d in docs]
    if len({(s.bind, s.local_port) for s in specs if s.local_port}) != len([s for s in specs if s.local_port]):
        raise InvalidArgument("two saved forwards listen on the same address and port")
    return [s.to_dict() for s in specs]


def load_exposes(docs) -> list[dict]:
    """Saved exposes, checked and in canonical form (config.json's ``exposes``)."""
    if not isinstance(docs, (list, tuple)):
        raise InvalidArgument("exposes must be a list")
    specs = [ExposeSpec.from_dict(d) for d in docs]
    if len({s.port for s in specs}) != len(specs):
        raise InvalidArgument("two saved exposes use the same virtual port")
    return [s.to_dict() for s in specs]
