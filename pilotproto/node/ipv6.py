"""
IPv6 candidates: the host's own global addresses, and the beacon's view over IPv6.

Most IPv6 hosts have no NAT at all: their global address *is* the endpoint
peers reach, behind at most a stateful firewall (a home router lets a flow
in once it went out, which the punch does, exactly as for a filtering NAT).
So the first IPv6 candidates are this host's own global addresses, read from
the kernel (``/proc/net/if_inet6``: scope global, not deprecated, tentative
or failed duplicate detection), each with the port of the node's IPv6
socket.  Unique local addresses (``fc00::/7``) are global in the kernel's
sense but reach only the site: they are LAN candidates.

Where the network translates IPv6 too (NPTv6, NAT66), the host's address is
not what peers see: :class:`ReflexiveV6` asks the beacon over IPv6 (one STUN
binding request, repeated) and its answer becomes a candidate as well.
"""

from __future__ import annotations

import ipaddress
import os
import socket

from twisted.internet import defer, threads
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ..wire import Endpoint
from ..wire import stun

IF_INET6 = "/proc/net/if_inet6"
#: ``/proc/net/if_inet6`` scope of a global address (``IPV6_ADDR_SCOPE_GLOBAL``)
SCOPE_GLOBAL = 0x00
#: address flags that make an address unusable as a source (``<linux/if_addr.h>``)
IFA_F_DADFAILED = 0x08
IFA_F_DEPRECATED = 0x20
IFA_F_TENTATIVE = 0x40
_UNUSABLE = IFA_F_DADFAILED | IFA_F_DEPRECATED | IFA_F_TENTATIVE
#: global addresses advertised at most (a host with many privacy addresses lists a few)
MAX_ADDRESSES = 4
_ULA = ipaddress.ip_network("fc00::/7")
#: how often the beacon is asked for our IPv6 reflexive endpoint
REFLEXIVE_INTERVAL = 60.0


def parse_if_inet6(text: str) -> tuple[list[str], list[str]]:
    """``(global, unique_local)`` usable addresses in ``/proc/net/if_inet6`` text.

    Each line is ``ADDRESS IFINDEX PREFIXLEN SCOPE FLAGS DEVICE`` in hex;
    malformed lines are skipped (the file is the kernel's, but a test or a
    future kernel may hand us something else)."""
    public: list[str] = []
    local: list[str] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6 or len(fields[0]) != 32:
            continue
        try:
            address = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
            scope, flags = int(fields[3], 16), int(fields[4], 16)
        except ValueError:
            continue
        if scope != SCOPE_GLOBAL or flags & _UNUSABLE:
            continue
        if address.is_loopback or address.is_link_local or address.is_multicast or address.ipv4_mapped is not None:
            continue
        target = local if address in _ULA else public
        if str(address) not in target:
            target.append(str(address))
    return public[:MAX_ADDRESSES], local[:MAX_ADDRESSES]


def read_if_inet6(path: str = IF_INET6) -> str:
    """The kernel's IPv6 address table, or "" where there is none (no IPv6, not Linux)."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


class HostAddresses:
    """This host's IPv6 addresses as candidates for the node's IPv6 port.

    ``read`` returns the ``/proc/net/if_inet6`` text (injected: tests hand
    in their own); it is read again at each call, since addresses come and
    go (privacy addresses rotate, a laptop changes networks)."""

    def __init__(self, read=read_if_inet6):
        self._read = read

    def candidates(self, port: int | None) -> tuple[list[Endpoint], list[Endpoint]]:
        """``(public, lan)`` endpoints at ``port``; none without an IPv6 port."""
        if not port:
            return [], []
        public, local = parse_if_inet6(self._read())
        return [Endpoint(a, port) for a in public], [Endpoint(a, port) for a in local]


class ReflexiveV6:
    """Our IPv6 endpoint as the beacon sees it: a STUN binding request to the
    beacon's IPv6 address every ``interval`` seconds, from the node's IPv6
    socket (``send(data, endpoint)`` picks it by the destination's family).

    Only an answer from that address carrying the request's transaction id
    counts, so nobody else can plant a candidate."""

    log = Logger()

    def __init__(self, clock, send, interval: float = REFLEXIVE_INTERVAL, random_bytes=os.urandom):
        self._send = send
        self._random = random_bytes
        self._loop = LoopingCall(self._ask)
        self._loop.clock = clock
        self._interval = interval
        self._transaction: bytes | None = None
        self.beacon: Endpoint | None = None
        #: the beacon's last answer, or None
        self.endpoint: Endpoint | None = None

    def start(self, beacon: Endpoint) -> None:
        if ":" not in beacon.host:
            raise ValueError(f"{beacon} is not an IPv6 endpoint")
        self.beacon = beacon
        if not self._loop.running:
            self._loop.start(self._interval, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _ask(self) -> None:
        self._transaction = self._random(12)
        self._send(stun.binding_request(self._transaction), self.beacon)

    def datagram_received(self, data: bytes, source: Endpoint) -> bool:
        """True if this was the beacon's answer to our request (consumed)."""
        if self._transaction is None or source != self.beacon:
            return False
        try:
            result = stun.parse_binding_response(data)
        except (stun.StunDecodeError, stun.StunErrorResponse) as e:
            self.log.debug("ignoring a STUN answer from {src}: {err}", src=str(source), err=e)
            return False
        if result.transaction_id != self._transaction:
            return False
        self.endpoint = result.xor_mapped
        return True


def resolve_ipv6(reactor, host: str, port: int):
    """The first IPv6 address of the beacon's name (a Deferred Endpoint, or None).

    A beacon given by name may have an IPv6 address besides the IPv4 one we
    register with; asking it over IPv6 tells us how the internet sees us
    there.  A literal address, or a name with no AAAA record, gives None."""
    if _is_literal(host):
        return defer.succeed(None)

    def lookup():
        try:
            found = socket.getaddrinfo(host, port, socket.AF_INET6, socket.SOCK_DGRAM)
        except OSError:
            return None
        for _family, _type, _proto, _name, sockaddr in found:
            address = ipaddress.IPv6Address(sockaddr[0].split("%", 1)[0])
            if address.is_global or address.is_private and not address.is_link_local:
                return Endpoint(str(address), port)
        return None

    return threads.deferToThreadPool(reactor, reactor.getThreadPool(), lookup)


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
