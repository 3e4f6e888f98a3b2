"""Issue 9: quotas: over a limit the answer is rate_limited with a retry-after, and nothing else degrades."""

import pytest
from helpers import SignedNode
from twisted.internet.task import Clock

from pilotproto import tap
from pilotproto.beacon import nonces
from pilotproto.beacon.limits import BucketTable, Limits, Rate
from pilotproto.beacon.server import BeaconServer
from pilotproto.errors import InvalidArgument
from pilotproto.wire import Endpoint
from pilotproto.wire import beacon as msgs


def beacon(**limits):
    clock = Clock()
    return clock, BeaconServer(clock, limits=Limits(**limits), send=lambda d, ep: None)


def test_new_names_per_address_are_limited_but_returning_owners_are_not():
    clock, server = beacon(register_per_address=Rate(3, 60))
    source = Endpoint("198.51.100.7", 40000)
    nodes = [SignedNode(server, Endpoint(source.host, 40000 + i), f"name-{i}") for i in range(4)]
    for node in nodes[:3]:
        assert isinstance(node.register(), msgs.Registered)
    limited = nodes[3].register()
    assert limited.code == "rate_limited" and 0 < limited.retry_after <= 20
    assert server.registry.holder_of("name-3") is None
    # The three that hold their names register again as often as they like.
    for _ in range(5):
        for node in nodes[:3]:
            assert isinstance(node.register(), msgs.Registered)
    # Another address is not affected; and the limited one gets in after the wait.
    assert isinstance(SignedNode(server, Endpoint("203.0.113.1", 1), "elsewhere").register(), msgs.Registered)
    clock.advance(limited.retry_after)
    assert isinstance(nodes[3].register(), msgs.Registered)


@pytest.mark.parametrize(
    "first,second,shared",
    [
        ("198.51.100.7", "198.51.100.200", True),  # one /24
        ("198.51.100.7", "198.51.101.7", False),
        ("2001:db8:1:2::1", "2001:db8:1:ffff::9", True),  # one /48
        ("2001:db8:1:2::1", "2001:db8:2:2::1", False),
    ],
)
def test_new_names_per_prefix_are_limited(first, second, shared):
    clock, server = beacon(register_per_address=Rate(100, 60), register_per_prefix=Rate(2, 60))
    for i in range(2):
        assert isinstance(SignedNode(server, Endpoint(first, 1000 + i), f"a-{i}").register(), msgs.Registered)
    reply = SignedNode(server, Endpoint(second, 1000), "b").register()
    assert (getattr(reply, "code", None) == "rate_limited") is shared


def test_an_ipv6_host_is_one_address_for_the_limit():
    clock, server = beacon(register_per_address=Rate(2, 60))
    for i in range(2):
        SignedNode(server, Endpoint(f"2001:db8::{i + 1}", 1000), f"a-{i}").register()
    assert SignedNode(server, Endpoint("2001:db8::ffff:1", 1000), "b").register().code == "rate_limited"


def test_a_spoofer_cannot_spend_a_victims_registration_tokens():
    clock, server = beacon(register_per_address=Rate(1, 600))
    victim = Endpoint("192.0.2.10", 5000)
    for i in range(20):
        attacker = SignedNode(server, Endpoint("203.0.113.66", 6000), f"squat-{i}")
        nonce = attacker.challenge().nonce  # issued to the attacker's own address
        [reply] = attacker.ask(attacker.signed(msgs.Register(2, nonce, attacker.hostname)), source=victim)
        assert reply.code == "stale_nonce"
    assert isinstance(SignedNode(server, victim, "honest").register(), msgs.Registered)


def test_requests_per_key_are_limited():
    clock, server = beacon(requests_per_key=Rate(5, 10))
    node = SignedNode(server, Endpoint("198.51.100.7", 1), "agent-a", public=True)
    node.register()
    answers = [node.lookup("agent-a") for _ in range(6)]
    assert all(isinstance(a, msgs.LookupResult) for a in answers[:5])
    assert answers[5].code == "rate_limited" and answers[5].retry_after == 2
    clock.advance(2)
    assert isinstance(node.lookup("agent-a"), msgs.LookupResult)


def test_a_limited_keepalive_still_keeps_the_registration_alive():
    clock, server = beacon(requests_per_key=Rate(1, 1000))
    node = SignedNode(server, Endpoint("198.51.100.7", 1), "agent-a")
    node.register()
    node.lookup("agent-a")
    for _ in range(10):
        clock.advance(20)
        assert node.keepalive()[0].code == "rate_limited"
    assert server.registry.get(node.key) is not None


def test_relay_bytes_are_limited_per_node_and_per_pair():
    clock, server = beacon(relay_per_node=Rate(3000, 1), relay_per_pair=Rate(2000, 1))
    a, b, c = (SignedNode(server, Endpoint("198.51.100.7", p), n, public=True) for p, n in ((1, "a"), (2, "b"), (3, "c")))
    for node in (a, b, c):
        node.register()

    def relayed(sender, to, size=1000):
        return len(sender.send(sender.relay_frame(to, b"x" * size)))

    assert [relayed(a, b) for _ in range(3)] == [1, 1, 0]  # the pair's 2000 bytes
    assert relayed(a, c) == 1  # the node's 3000
    assert relayed(a, c) == 0
    assert relayed(b, c) == 1  # others are not affected
    assert server.counters["relay_dropped_rate_limited"] == 2
    clock.advance(1)
    assert relayed(a, b) == 1


def test_mail_per_sender_and_per_recipient_are_limited():
    clock, server = beacon(mail_per_sender=3, mail_per_recipient=2)
    sender = SignedNode(server, Endpoint("198.51.100.7", 1), "sender")
    sender.register()
    codes = [getattr(sender.handshake(f"nobody-{i}", handshake_id=i)[0], "code", "ok") for i in range(4)]
    assert codes == ["ok", "ok", "ok", "rate_limited"]
    others = [SignedNode(server, Endpoint("203.0.113.7", 1 + i), f"other-{i}") for i in range(3)]
    for other in others:
        other.register()
    codes = [getattr(o.handshake("popular")[0], "code", "ok") for o in others]
    assert codes == ["ok", "ok", "rate_limited"]


def test_the_beacon_holds_at_most_max_names():
    clock, server = beacon(max_names=2)
    for i in range(2):
        SignedNode(server, Endpoint("198.51.100.7", 1 + i), f"n-{i}").register()
    assert SignedNode(server, Endpoint("203.0.113.7", 1), "n-2").register().code == "rate_limited"


def test_unauthenticated_requests_leave_no_state():
    clock, server = beacon()
    for i in range(5000):
        SignedNode(server, Endpoint(f"10.{i // 250}.{i % 250}.1", 1000), "x").challenge()
    assert len(server.registry) == 0 and server.registry.names == 0
    assert len(server.quotas._by_address) == 0 and len(server.nonces._redeemed) == 0


def test_tables_keyed_by_strangers_are_bounded():
    table = BucketTable(Rate(1, 60), max_entries=100)
    for i in range(1000):
        table.take(f"10.0.{i // 256}.{i % 256}", 0)
    assert len(table) == 100
    assert nonces.MAX_REDEEMED <= 65536


def test_every_limit_is_a_twistd_option_with_its_default():
    options = tap.Options()
    options.parseOptions(["beacon"])
    sub = options.subOptions
    assert sub["state-dir"] is None
    assert sub["name-hold"] == 30 and sub["register-per-address"] == Rate(32, 600)
    options = tap.Options()
    options.parseOptions(["beacon", "--relay-per-node", "1M/1", "--mail-per-sender", "9", "--name-hold", "0.5"])
    from pilotproto.beacon.limits import limits_from_options

    limits = limits_from_options(options.subOptions)
    assert limits.relay_per_node == Rate(1 << 20, 1) and limits.mail_per_sender == 9 and limits.name_hold == 12 * 3600
    with pytest.raises(InvalidArgument):
        Rate.parse("fast")


# -- the node honours retry-after ---------------------------------------------------------


def test_a_rate_limited_node_waits_as_asked_and_does_not_say_it_is_registered():
    from test_beacon_client import make, settle

    clock = Clock()
    link, client = make(clock, "late")
    link.server = BeaconServer(clock, limits=Limits(register_per_address=Rate(1, 60)))
    SignedNode(link.server, Endpoint("198.51.100.20", 1), "first").register()  # the address's one token
    client.start()
    settle(clock)
    assert not client.registered
    assert client.last_error["code"] == "rate_limited" and client.last_error["retry_after"] == 60
    sent = len(link.sent)
    clock.advance(59)
    assert len(link.sent) == sent  # waited, no hammering
    clock.advance(20)
    settle(clock)
    assert client.registered


def test_a_node_whose_keepalive_is_limited_stays_registered():
    from test_beacon_client import make, settle

    clock = Clock()
    link, client = make(clock)
    link.server = BeaconServer(clock, limits=Limits(requests_per_key=Rate(1, 30)))
    client.start()
    settle(clock)
    for _ in range(20):
        clock.advance(client.keepalive_interval)
        settle(clock)
        assert client.registered
    assert link.sent.count("Register") == 1


def test_tls_connections_are_bounded_per_address_and_in_all():
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    from pilotproto.beacon.tls import BeaconStreamFactory

    clock, server = beacon()
    factory = BeaconStreamFactory(server, max_connections=3, per_address=2)
    here, there = IPv4Address("TCP", "192.0.2.1", 1), IPv4Address("TCP", "192.0.2.2", 1)
    first, second = factory.buildProtocol(here), factory.buildProtocol(here)
    assert factory.buildProtocol(here) is None
    for protocol, peer in ((first, here), (second, here)):
        protocol.makeConnection(StringTransport(peerAddress=peer))
    assert factory.buildProtocol(there) is not None
    assert factory.buildProtocol(IPv4Address("TCP", "192.0.2.3", 1)) is None  # 3 in all
    first.connectionLost(None)
    assert factory.buildProtocol(here) is not None
    assert server.counters["tls_refused_too_many"] == 2
