"""
NAT-PMP (RFC 6886) and PCP (RFC 6887) messages: asking the home router for a
port mapping.

Both protocols talk to the default gateway's UDP port 5351 and share the
version byte at offset 0, which is how a client that speaks PCP (version 2)
learns that the router only speaks NAT-PMP (version 0): the router answers a
PCP request with a NAT-PMP "unsupported version" result.  Only what a node
needs is here: the external address, and mapping one UDP port.

Pure: no I/O.  Anything malformed raises :class:`DecodeError`.
"""

from __future__ import annotations

import ipaddress
import struct

import attrs

from .codec import DecodeError

PORT = 5351

NATPMP_VERSION = 0
PCP_VERSION = 2

#: NAT-PMP opcodes (requests; a response is the opcode + 128)
NATPMP_OP_EXTERNAL_ADDRESS = 0
NATPMP_OP_MAP_UDP = 1
NATPMP_RESPONSE = 128

#: PCP opcode for MAP; the response sets the top bit (R)
PCP_OP_MAP = 1
PCP_RESPONSE_BIT = 0x80
PCP_PROTOCOL_UDP = 17

#: result codes (RFC 6886 §3.5; RFC 6887 §7.4), named for the messages people read
NATPMP_RESULTS = {
    0: "success",
    1: "unsupported version",
    2: "not authorized or refused",
    3: "network failure",
    4: "out of resources",
    5: "unsupported opcode",
}
PCP_RESULTS = {
    0: "success",
    1: "unsupported version",
    2: "not authorized",
    3: "malformed request",
    4: "unsupported opcode",
    5: "unsupported option",
    6: "malformed option",
    7: "network failure",
    8: "no resources",
    9: "unsupported protocol",
    10: "user exceeded quota",
    11: "cannot provide external address",
    12: "address mismatch",
    13: "excessive remote peers",
}
UNSUPPORTED_VERSION = 1

_NATPMP_MAP = struct.Struct("!BBHHHI")
_NATPMP_HEADER = struct.Struct("!BBHI")
_NATPMP_MAP_BODY = struct.Struct("!HHI")
_PCP_HEADER = struct.Struct("!BBHI16s")
_PCP_MAP = struct.Struct("!12sB3xHH16s")
_PCP_RESPONSE_HEADER = struct.Struct("!BBxBII12x")


def _ip16(address: str) -> bytes:
    """An address as PCP writes it: IPv6, or IPv4 mapped into IPv6."""
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        ip = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
    return ip.packed


def _from_ip16(raw: bytes) -> str:
    ip = ipaddress.IPv6Address(raw)
    return str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else str(ip)


@attrs.frozen
class Mapping:
    """What a router granted: ``external_port`` on ``external_host`` (if it said) for ``lifetime`` seconds."""

    protocol: str  # "pcp" or "nat-pmp" (or "upnp", made elsewhere)
    internal_port: int
    external_port: int
    lifetime: int
    external_host: str | None = None
    epoch: int = 0


@attrs.frozen
class Failure:
    """A router's refusal: the protocol's result code and its meaning."""

    protocol: str
    code: int
    reason: str

    @property
    def unsupported_version(self) -> bool:
        return self.code == UNSUPPORTED_VERSION


@attrs.frozen
class ExternalAddress:
    """NAT-PMP's answer to "what is your public address?"."""

    host: str
    epoch: int


# -- NAT-PMP -------------------------------------------------------------------------


def natpmp_external_address_request() -> bytes:
    return bytes((NATPMP_VERSION, NATPMP_OP_EXTERNAL_ADDRESS))


def natpmp_map_request(internal_port: int, suggested_port: int, lifetime: int) -> bytes:
    """Ask for (lifetime > 0) or delete (lifetime 0, suggested 0) a UDP mapping."""
    return _NATPMP_MAP.pack(NATPMP_VERSION, NATPMP_OP_MAP_UDP, 0, internal_port, suggested_port, lifetime)


def decode_natpmp(data: bytes) -> Mapping | ExternalAddress | Failure:
    """A NAT-PMP response (either opcode); DecodeError if it is not one."""
    if len(data) < _NATPMP_HEADER.size:
        raise DecodeError(f"NAT-PMP response too short ({len(data)} bytes)")
    version, op, result, epoch = _NATPMP_HEADER.unpack_from(data)
    if version != NATPMP_VERSION:
        raise DecodeError(f"not a NAT-PMP response (version {version})")
    if op < NATPMP_RESPONSE:
        raise DecodeError(f"NAT-PMP request, not a response (opcode {op})")
    if result != 0:
        return Failure("nat-pmp", result, NATPMP_RESULTS.get(result, f"result {result}"))
    body = data[_NATPMP_HEADER.size:]
    if op == NATPMP_RESPONSE + NATPMP_OP_EXTERNAL_ADDRESS:
        if len(body) != 4:
            raise DecodeError("NAT-PMP external address response is not 12 bytes")
        return ExternalAddress(str(ipaddress.IPv4Address(body)), epoch)
    if op == NATPMP_RESPONSE + NATPMP_OP_MAP_UDP:
        if len(body) != _NATPMP_MAP_BODY.size:
            raise DecodeError("NAT-PMP mapping response is not 16 bytes")
        internal, external, lifetime = _NATPMP_MAP_BODY.unpack(body)
        return Mapping("nat-pmp", internal, external, lifetime, epoch=epoch)
    raise DecodeError(f"unexpected NAT-PMP response opcode {op}")


# -- PCP --------------------------------------------------------------------------------


def pcp_map_request(
    client_host: str,
    internal_port: int,
    suggested_port: int,
    lifetime: int,
    nonce: bytes,
    suggested_host: str = "0.0.0.0",
) -> bytes:
    """A PCP MAP request for one UDP port; lifetime 0 deletes the mapping."""
    if len(nonce) != 12:
        raise ValueError("a PCP mapping nonce is 12 bytes")
    header = _PCP_HEADER.pack(PCP_VERSION, PCP_OP_MAP, 0, lifetime, _ip16(client_host))
    body = _PCP_MAP.pack(nonce, PCP_PROTOCOL_UDP, internal_port, suggested_port, _ip16(suggested_host))
    return header + body


def decode_pcp(data: bytes, nonce: bytes) -> Mapping | Failure:
    """A PCP MAP response to the request with ``nonce``.

    A NAT-PMP router answers a PCP request in NAT-PMP, saying it does not
    speak version 2: that comes back as a :class:`Failure` whose
    ``unsupported_version`` is true, so the caller falls back."""
    if len(data) < 4:
        raise DecodeError(f"PCP response too short ({len(data)} bytes)")
    if data[0] == NATPMP_VERSION:
        decoded = decode_natpmp(data) if len(data) >= _NATPMP_HEADER.size else None
        if isinstance(decoded, Failure):
            return Failure("pcp", decoded.code, decoded.reason)
        raise DecodeError("a NAT-PMP answer to a PCP request")
    if data[0] != PCP_VERSION:
        raise DecodeError(f"not a PCP response (version {data[0]})")
    if len(data) < _PCP_RESPONSE_HEADER.size:
        raise DecodeError(f"PCP response too short ({len(data)} bytes)")
    _version, op, result, lifetime, epoch = _PCP_RESPONSE_HEADER.unpack_from(data)
    if not op & PCP_RESPONSE_BIT:
        raise DecodeError("a PCP request, not a response")
    if op & ~PCP_RESPONSE_BIT != PCP_OP_MAP:
        raise DecodeError(f"unexpected PCP opcode {op & ~PCP_RESPONSE_BIT}")
    body = data[_PCP_RESPONSE_HEADER.size:]
    if len(body) < _PCP_MAP.size:
        if result != 0:
            return Failure("pcp", result, PCP_RESULTS.get(result, f"result {result}"))
        raise DecodeError("PCP MAP response without its opcode data")
    got_nonce, protocol, internal, external, external_ip = _PCP_MAP.unpack_from(body)
    if got_nonce != nonce:
        raise DecodeError("PCP response for another request (nonce mismatch)")
    if result != 0:
        return Failure("pcp", result, PCP_RESULTS.get(result, f"result {result}"))
    if protocol != PCP_PROTOCOL_UDP:
        raise DecodeError(f"PCP mapping for protocol {protocol}, not UDP")
    return Mapping("pcp", internal, external, lifetime, _from_ip16(external_ip), epoch)
