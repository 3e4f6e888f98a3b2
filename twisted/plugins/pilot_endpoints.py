"""``pilot:`` endpoint strings for clientFromString and serverFromString."""

from twisted.internet.interfaces import IStreamClientEndpointStringParserWithReactor, IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class _PilotClientParser:
    prefix = "pilot"

    def parseStreamClient(self, reactor, *args, **kwargs):
        from pilotproto.endpoints import client_from_string

        return client_from_string(reactor, *args, **kwargs)


@implementer(IPlugin, IStreamServerEndpointStringParser)
class _PilotServerParser:
    prefix = "pilot"

    def parseStreamServer(self, reactor, *args, **kwargs):
        from pilotproto.endpoints import server_from_string

        return server_from_string(reactor, *args, **kwargs)


pilotClient = _PilotClientParser()
pilotServer = _PilotServerParser()
