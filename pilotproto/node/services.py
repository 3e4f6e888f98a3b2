"""
The services every node runs on well-known ports.

Port 7 is echo (RFC 862, over a stream): whatever arrives goes back, and the
write side closes when the read side does, so ``pilotctl bench`` can measure
goodput both ways through a real stream.  Port 1001 is the inbox (messages
and files), port 1002 events (:mod:`pilotproto.node.events`): one item per
stream, each through :class:`~pilotproto.node.inbox.ItemProtocol`.
"""

from __future__ import annotations

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from .events import EVENTS_PORT
from .inbox import INBOX_PORT, ItemFactory

ECHO_PORT = 7


@implementer(IHalfCloseableProtocol)
class Echo(Protocol):
    def connectionMade(self):
        # Back-pressure: while our send buffer is full, stop reading.
        self.transport.registerProducer(self.transport, True)

    def dataReceived(self, data):
        self.transport.write(data)

    def readConnectionLost(self):
        self.transport.unregisterProducer()
        self.transport.loseWriteConnection()

    def writeConnectionLost(self):
        """Our FIN went out after the peer's: nothing left to do."""


class EchoFactory(Factory):
    protocol = Echo
    noisy = False


def start_standard_services(ports, inbox, events=None) -> None:
    """Echo on 7, the inbox (messages and files) on 1001, events on 1002."""
    ports.listen(ECHO_PORT, EchoFactory())
    ports.listen(INBOX_PORT, ItemFactory(inbox))
    if events is not None:
        ports.listen(EVENTS_PORT, ItemFactory(events))
