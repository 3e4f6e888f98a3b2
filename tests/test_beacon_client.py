"""The registration machine, against a real BeaconServer, with a Clock and a lossy link."""

import pytest
from twisted.internet.task import Clock
from zope.interface import implementer

from pilotproto.beacon.server import BeaconServer
from pilotproto.identity import Identity
from pilotproto.rendezvous.interfaces import IBeaconChannel, IRegistrationWatcher
from pilotproto.rendezvous.registration import BeaconClient
from pilotproto.wire import Endpoint
from pilotproto.wire import beacon as msgs

NODE_EP = Endpoint("198.51.100.20", 5555)


@implementer(IBeaconChannel, IRegistrationWatcher)
class Link:
    """Carries the client's datagrams to a beacon and back, dropping on request;
    records each registration the client reports."""

    def __init__(self, clock):
        self.clock = clock
        self.server = BeaconServer(clock)
        self.sent = []
        self.raw = []
        self.drop_next = 0
        self.down = False
        self.client = None
        self.registrations = []

    def beacon_registered(self, observed):
        self.registrations.append(observed)

    def send_by_udp(self, data):
        raise AssertionError("the registration machine sends by the transport in use")

    def send_to_beacon(self, data):
        self.raw.append(data)
        self.sent.append(type(msgs.decode(data)).__name__)
        if self.down:
            return
        if self.drop_next:
            self.drop_next -= 1
            return
        for reply, _ in self.server.datagram_received(data, NODE_EP):
            # A network never answers synchronously; neither does this link.
            self.clock.callLater(0.001, self.client.message_received, msgs.decode(reply))


@pytest.fixture
def clock():
    return Clock()


def settle(clock):
    """Let every in-flight datagram arrive (each hop takes 1 ms)."""
    for _ in range(10):
        clock.advance(0.001)


def make(clock, hostname="agent-a", identity=None):
    link = Link(clock)
    link.client = BeaconClient(clock, identity or Identity.generate(), link, hostname, watcher=link)
    return link, link.client


def test_registers_and_keeps_alive(clock):
    link, client = make(clock)
    client.start()
    settle(clock)
    assert link.sent == ["Hello", "Register"]
    assert client.registered and client.observed == NODE_EP
    assert link.registrations == [NODE_EP]
    clock.advance(client.keepalive_interval)
    settle(clock)
    assert link.sent[-1] == "Keepalive"
    assert client.registered
    for _ in range(20):
        clock.advance(client.keepalive_interval)
        settle(clock)
    assert link.sent.count("Keepalive") >= 20
    assert client.keepalive_interval < 25


def test_lost_hello_is_retried_with_backoff(clock):
    link, client = make(clock)
    link.drop_next = 3
    client.start()
    assert not client.registered
    clock.advance(0.6)
    clock.advance(1.2)
    clock.advance(2.4)
    clock.advance(4.8)
    settle(clock)
    assert link.sent[:4] == ["Hello"] * 4
    assert client.registered


def test_reregisters_after_beacon_restart(clock):
    link, client = make(clock)
    client.start()
    settle(clock)
    link.server = BeaconServer(clock)  # the beacon forgot everything
    clock.advance(client.keepalive_interval)
    settle(clock)
    assert link.sent[-3:] == ["Keepalive", "Hello", "Register"]
    assert link.server.registry.find_by_name("agent-a") is not None


def test_reregisters_after_beacon_outage(clock):
    link, client = make(clock)
    client.start()
    link.down = True
    link.server = BeaconServer(clock)
    for _ in range(30):
        clock.advance(1)
    link.down = False
    for _ in range(5):
        clock.advance(1)
        settle(clock)
    assert link.server.registry.find_by_name("agent-a") is not None
    assert client.registered


def test_name_taken_is_reported_and_retried_slowly(clock):
    owner, owner_client = make(clock)
    owner_client.start()
    settle(clock)
    link, client = make(clock)
    link.server = owner.server
    client.start()
    settle(clock)
    assert not client.registered
    assert client.last_error["code"] == "name_taken"
    sent = len(link.sent)
    clock.advance(1)
    assert len(link.sent) - sent <= 2


def test_stop_unregisters_and_ignores_late_replies(clock):
    link, client = make(clock)
    client.start()
    settle(clock)
    client.stop()
    assert link.sent[-1] == "Unregister"
    assert link.server.registry.find_by_name("agent-a") is None
    clock.advance(100)
    client.message_received(msgs.Challenge(1, b"\0" * 32, b"\0" * 32, NODE_EP))
    assert link.sent[-1] == "Unregister"
    assert not clock.getDelayedCalls()


def test_unsolicited_replies_are_ignored(clock):
    link, client = make(clock)
    assert client.message_received(msgs.Registered(12345, b"\0" * 8, NODE_EP, 5, 30)) is False
    assert not client.registered


def test_collaborators_are_checked(clock):
    link = Link(clock)
    with pytest.raises(TypeError, match="channel"):
        BeaconClient(clock, Identity.generate(), link.send_to_beacon, "agent-a", watcher=link)
    with pytest.raises(TypeError, match="watcher"):
        BeaconClient(clock, Identity.generate(), link, "agent-a", watcher=object())


def test_request_ids_come_from_the_injected_source(clock):
    link = Link(clock)
    ids = iter(range(100, 200))
    link.client = BeaconClient(clock, Identity.generate(), link, "agent-a", watcher=link, ids=lambda: next(ids))
    link.client.start()
    settle(clock)
    assert link.client.registered
    assert [msgs.decode(d).request_id for d in link.raw] == [100, 101]
