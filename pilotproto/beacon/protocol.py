"""The beacon's UDP socket: bytes in, bytes out; all decisions are the server's."""

from __future__ import annotations

from twisted.internet.protocol import DatagramProtocol

from ..wire import Endpoint


class BeaconDatagramProtocol(DatagramProtocol):
    def __init__(self, server, local: Endpoint | None = None):
        self.server = server
        #: the address this socket answers on (STUN RESPONSE-ORIGIN)
        self.local = local

    def datagramReceived(self, data, addr):
        source = Endpoint(addr[0], addr[1])
        for reply, destination in self.server.datagram_received(data, source, self.local):
            self.transport.write(reply, destination.as_tuple())
