"""
The node's one UDP socket.  It sorts datagrams by their first byte and hands
them on; anything it cannot place is counted and dropped.
"""

from __future__ import annotations

import collections
import socket

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from ..wire import DecodeError, Endpoint, is_stun
from ..wire import beacon as msgs
from ..wire import relay


class NodeDatagramProtocol(DatagramProtocol):
    log = Logger()

    def __init__(self, node):
        self.node = node
        self.counters: collections.Counter = collections.Counter()

    def send(self, data: bytes, destination: Endpoint, ttl: int | None = None) -> None:
        if self.transport is None:
            return
        try:
            if ttl is not None:
                self._write_with_ttl(data, destination, ttl)
            else:
                self.transport.write(data, destination.as_tuple())
        except OSError as e:
            # A full socket buffer or an unreachable network is a lost
            # datagram, which every sender here already retries.
            self.counters["send_errors"] += 1
            self.log.debug("send to {dst} failed: {err}", dst=str(destination), err=e)

    def _write_with_ttl(self, data, destination, ttl):
        # A priming probe: it must leave our NAT but die before the peer's.
        sock = self.transport.socket
        level, option = (socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS) if ":" in destination.host else (socket.IPPROTO_IP, socket.IP_TTL)
        previous = sock.getsockopt(level, option)
        sock.setsockopt(level, option, ttl)
        try:
            self.transport.write(data, destination.as_tuple())
        finally:
            sock.setsockopt(level, option, previous)

    def datagramReceived(self, data, addr):
        self.counters["datagrams"] += 1
        source = Endpoint(addr[0], addr[1])
        try:
            if data[:1] == bytes([msgs.KIND]):
                if not self.node.beacon_message_received(msgs.decode(data), source):
                    self.counters["dropped_unsolicited"] += 1
            elif data[:1] == bytes([relay.KIND_FROM_BEACON]):
                if not self.node.relay_received(relay.decode_from_beacon(data), source):
                    self.counters["dropped_unsolicited"] += 1
            elif is_stun(data):
                if not self.node.stun_received(data, source):
                    self.counters["dropped_unsolicited"] += 1
            elif not self.node.tunnel_datagram_received(data, source):
                self.counters["dropped_unknown_kind"] += 1
        except DecodeError:
            self.counters["dropped_malformed"] += 1
        except Exception:
            self.counters["internal_errors"] += 1
            self.log.failure("node failed to handle a datagram from {src}", src=str(source))
