"""
A pilot node inside an existing Twisted application.

The application is a ``MultiService`` that already serves a web page on
``tcp:8080`` of loopback.  Adding a ``PilotNode`` as one more child gives it a
permanent address and serves the same page on the overlay (``pilot`` port 80),
reachable by name from agents behind any NAT; the application can also dial
other agents with ordinary Twisted endpoints.

    python examples/embed_twisted.py

(starts its own beacon and a second agent, ``agent-b``, on this machine; see
``_local.py``).  In your own application you pass your beacon and home instead.
"""

from __future__ import annotations

import json
import os
import sys

from twisted.application import service, strports
from twisted.internet import defer, task
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.utils import getProcessOutput
from twisted.web import resource, server

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _local import PILOTCTL, LocalNet  # noqa: E402

from pilotproto.endpoints import PilotClientEndpoint, PilotServerEndpoint  # noqa: E402
from pilotproto.node.service import PilotNode  # noqa: E402


class Hello(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain")
        return b"hello from a Twisted app on the overlay\n"


class EchoClient(Protocol):
    """Send one line to an echo port; fire ``done`` with what comes back."""

    def __init__(self, done: defer.Deferred):
        self.done = done
        self.received = b""

    def connectionMade(self):
        self.transport.write(b"ping from the embedded node\n")

    def dataReceived(self, data):
        self.received += data
        if self.received.endswith(b"\n"):
            self.transport.loseConnection()

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.callback(self.received)


def build_application(reactor, home: str, beacon: str) -> tuple[service.MultiService, PilotNode]:
    """The application as it was (a web site on loopback), plus a pilot node serving the same site."""
    site = server.Site(Hello())
    app = service.MultiService()
    strports.service("tcp:0:interface=127.0.0.1", site).setServiceParent(app)  # what the app already had
    node = PilotNode(home=home, hostname="embedded-app", beacon=beacon, reactor=reactor)
    node.setServiceParent(app)
    # The same site, on the overlay: any Twisted server endpoint works here.
    PilotServerEndpoint(node, 80).listen(site)
    return app, node


async def main(reactor, net: LocalNet, peer) -> None:
    app, node = build_application(reactor, os.path.join(net.workdir, "embedded-app"), net.beacon)
    app.startService()
    try:
        await node.when_registered()
        print(f"embedded-app registered as {node.address}")
        # Trust: we ask agent-b, agent-b approves (here through its pilotctl).
        await node.handshake(peer.name, "an embedded Twisted app")
        for _ in range(100):
            out = await getProcessOutput(
                PILOTCTL[0], [*PILOTCTL[1:], "--home", peer.home, "--json", "approve", "embedded-app"], env=os.environ
            )
            if json.loads(out)["status"] == "ok":
                break
            await task.deferLater(reactor, 0.1)
        for _ in range(100):
            trusted = (await node.trusted())["trusted"]
            if any(entry["hostname"] == peer.name and entry.get("mutual") for entry in trusted):
                break
            await task.deferLater(reactor, 0.1)
        # Dial agent-b's echo port with a plain Twisted endpoint.
        done = defer.Deferred()
        await PilotClientEndpoint(node, peer.name, 7).connect(Factory.forProtocol(lambda: EchoClient(done)))
        echoed = await done
        print(f"agent-b's echo port answered: {echoed.decode().strip()}")
        # And agent-b fetches our page over the overlay.
        page = await getProcessOutput(
            PILOTCTL[0],
            [*PILOTCTL[1:], "--home", peer.home, "connect", "embedded-app", "--port", "80",
             "--message", "GET / HTTP/1.0\r\nHost: embedded-app\r\n\r\n"],  # fmt: skip
            env=os.environ,
        )
        body = page.decode(errors="replace").split("\r\n\r\n", 1)[-1].strip()
        print(f"agent-b fetched http://embedded-app/ over the overlay: {body}")
    finally:
        await app.stopService()


if __name__ == "__main__":
    with LocalNet() as net:
        peer = net.agent("agent-b")
        task.react(lambda reactor: defer.ensureDeferred(main(reactor, net, peer)))
