"""
HTTP over the overlay: a twisted.web ``Agent`` (and a ``treq`` client) whose
connections are pilot streams, so ``http://agent-b/…`` reaches port 80 of the
node named agent-b, wherever it is behind whatever NAT.

    from pilotproto.http import pilot_treq
    client = pilot_treq(reactor)           # through the daemon ($PILOT_HOME or ~/.pilot)
    client = pilot_treq(reactor, node=n)   # through a node you hold (any IPilotNode)
    response = yield client.get("http://agent-b/status")

Plain ``http`` is enough: every stream already runs inside the end-to-end
encrypted, mutually authenticated session.  One connection pool per node
keeps connections to a peer alive across requests.
"""

from __future__ import annotations

import contextlib
import weakref

from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from .endpoints import PilotClientEndpoint, daemon_node

_pools: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@implementer(IAgentEndpointFactory)
class PilotEndpointFactory:
    def __init__(self, node):
        self._node = node

    def endpointForURI(self, uri):
        if uri.scheme != b"http":
            raise SchemeNotSupported(
                f"pilot carries http:// (already encrypted end to end), not {uri.scheme.decode(errors='replace')}://"
            )
        return PilotClientEndpoint(self._node, uri.host.decode("ascii"), uri.port or 80)


def pool_for(reactor, node) -> HTTPConnectionPool:
    try:
        return _pools[node]
    except (KeyError, TypeError):
        pool = HTTPConnectionPool(reactor, persistent=True)
        with contextlib.suppress(TypeError):  # a node that cannot be weakly keyed gets a pool per call
            _pools[node] = pool
        return pool


def pilot_agent(reactor, node=None, home: str | None = None) -> Agent:
    """An Agent that speaks HTTP over pilot streams, through ``node`` or else the daemon at ``home``."""
    node = node if node is not None else daemon_node(reactor, home)
    return Agent.usingEndpointFactory(reactor, PilotEndpointFactory(node), pool=pool_for(reactor, node))


def pilot_treq(reactor, node=None, home: str | None = None):
    """A ``treq`` HTTPClient over pilot."""
    from treq.client import HTTPClient

    return HTTPClient(pilot_agent(reactor, node, home))
