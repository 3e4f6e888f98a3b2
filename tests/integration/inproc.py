"""Helpers for tests that run a beacon and nodes in this process, on loopback."""

from twisted.internet import defer, reactor, task

from pilotproto.beacon.service import BeaconService
from pilotproto.node.service import PilotNode


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


def start_beacon():
    service = BeaconService(reactor, interface="127.0.0.1", port=0)
    service.startService()
    seen = []
    original = service.protocol.datagramReceived

    def capture(data, addr):
        seen.append(data)
        original(data, addr)

    service.protocol.datagramReceived = capture
    service.seen = seen
    return service


def make_node(tmp_path, beacon, name, **kw):
    node = PilotNode(
        home=str(tmp_path / name),
        hostname=name,
        beacon=f"127.0.0.1:{beacon.port}",
        reactor=reactor,
        **kw,
    )
    node.startService()
    return node


@defer.inlineCallbacks
def trust_each_other(a, b):
    """The real flow: a asks, b approves, both trust each other."""
    yield defer.gatherResults([a.when_registered(), b.when_registered()])
    yield a.trust.handshake(b.hostname, "integration test")
    # Up to 10 s: through a beacon fleet the request crosses Redis, slow on a loaded machine.
    for _ in range(200):
        if b.trust.pending():
            break
        yield sleep(0.05)
    b.trust.approve(a.hostname)
    for _ in range(50):
        if a.trust.is_trusted(b.identity.public_key) and b.trust.is_trusted(a.identity.public_key):
            break
        yield sleep(0.05)
    for _ in range(50):
        try:
            yield a.lookup(b.hostname)
            break
        except Exception:
            yield sleep(0.05)


def stop_all(*services):
    return defer.gatherResults([defer.maybeDeferred(s.stopService) for s in services])
