"""Checks for the names and numbers users type: hostnames and virtual ports."""

from __future__ import annotations

import re

from ..errors import InvalidArgument
from ..identity.address import Address

MAX_PORT = 0xFFFF
_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def check_hostname(name: str) -> str:
    """Return ``name`` if it is a valid pilot hostname, else raise InvalidArgument."""
    if not isinstance(name, str) or not _HOSTNAME.match(name):
        raise InvalidArgument(
            f"invalid hostname {name!r}",
            hint="Use 1-63 lower-case letters, digits and '-', not starting or ending with '-'.",
        )
    return name


def check_port(port) -> int:
    """Return ``port`` if it is a virtual port (1-65535), else raise InvalidArgument."""
    if not isinstance(port, int) or isinstance(port, bool) or not (1 <= port <= MAX_PORT):
        raise InvalidArgument(f"not a virtual port: {port!r}", hint="A port is a whole number from 1 to 65535.")
    return port


def parse_port(text) -> int:
    """A virtual port from text (an endpoint string, a command line)."""
    try:
        return check_port(int(text))
    except (TypeError, ValueError):
        raise InvalidArgument(f"not a virtual port: {text!r}", hint="A port is a whole number from 1 to 65535.") from None


def check_udp_port(port, allow_any: bool = True) -> int:
    """A real UDP/TCP port number (0 means "any free port" where ``allow_any``)."""
    low = 0 if allow_any else 1
    if isinstance(port, str):
        if not port.isdigit():
            raise InvalidArgument(f"not a port number: {port!r}", hint=f"A port is a whole number from {low} to 65535.")
        port = int(port)
    if not isinstance(port, int) or isinstance(port, bool) or not (low <= port <= MAX_PORT):
        raise InvalidArgument(f"not a port number: {port!r}", hint=f"A port is a whole number from {low} to 65535.")
    return port


def check_target(target: str) -> str:
    """A peer named by hostname or by address; say which is wrong early."""
    if isinstance(target, str) and Address.looks_like(target):
        return str(Address.parse(target))
    try:
        return check_hostname(target)
    except InvalidArgument:
        raise InvalidArgument(
            f"{target!r} is neither a hostname nor an address",
            hint="Give a hostname like agent-b or an address like 0:A91F.0000.7C2E",
        ) from None
