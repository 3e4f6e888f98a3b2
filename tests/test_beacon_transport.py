"""
Choosing the beacon transport (UDP, or TLS when UDP is blocked) and keeping
the TLS link up, driven by a Clock and fakes.
"""

import random

from twisted.internet import defer
from twisted.internet.task import Clock

from pilotproto.rendezvous.tls import FIRST_RETRY, MAX_RETRY, BeaconTLSLink
from pilotproto.rendezvous.transport import CHECK_INTERVAL, UDP_GIVE_UP, UDP_PROBE_INTERVAL, BeaconTransport
from pilotproto.wire import Endpoint
from pilotproto.wire import beacon as msgs


def challenge(rid):
    return msgs.Challenge(rid, b"\x00" * 32, b"\x01" * 32, Endpoint("127.0.0.1", 1))


class FakeLink:
    def __init__(self, events):
        self.events = events
        self.last_error = {"code": "beacon_untrusted", "message": "bad cert"}

    def start(self):
        self.events.append("link.start")

    def stop(self):
        self.events.append("link.stop")


class Fixture:
    def __init__(self):
        self.clock = Clock()
        self.events = []
        self.since = None
        self.sent = []
        self.transport = BeaconTransport(
            self.clock,
            hello_unanswered_since=lambda: self.since,
            send_udp=self.sent.append,
            link=FakeLink(self.events),
            on_change=lambda kind: self.events.append(f"changed:{kind}"),
            rng=random.Random(1),
        )

    def probe_ids(self):
        return [msgs.decode(d).request_id for d in self.sent]


def test_stays_on_udp_while_hellos_are_answered():
    f = Fixture()
    f.transport.start()
    f.clock.advance(30)
    assert f.transport.kind == "udp" and f.events == [] and f.sent == []


def test_moves_to_tls_after_a_hello_goes_unanswered_for_three_seconds():
    f = Fixture()
    f.transport.start()
    f.since = f.clock.seconds()
    f.clock.advance(UDP_GIVE_UP - CHECK_INTERVAL)
    assert f.transport.kind == "udp"
    f.clock.advance(CHECK_INTERVAL)
    assert f.transport.kind == "tls"
    assert f.events == ["link.start", "changed:tls"]
    assert f.transport.last_error == {"code": "beacon_untrusted", "message": "bad cert"}
    # And it asks by UDP, with a padded Hello, whether UDP works after all.
    [probe] = f.sent
    assert isinstance(msgs.decode(probe), msgs.Hello) and len(probe) >= 128


def test_keeps_probing_udp_on_tls_and_moves_back_when_a_challenge_answers():
    f = Fixture()
    f.transport.start()
    f.since = f.clock.seconds()
    f.clock.advance(UDP_GIVE_UP)
    f.clock.advance(UDP_PROBE_INTERVAL * 1.2)
    assert len(f.sent) == 2
    stale, current = f.probe_ids()
    f.since = None  # the node's registration machine restarts its greeting
    assert f.transport.udp_message_received(challenge(current))
    assert f.transport.kind == "udp"
    assert f.events == ["link.start", "changed:tls", "link.stop", "changed:udp"]
    assert f.transport.last_error is None
    # A repeated answer is not ours any more.
    assert not f.transport.udp_message_received(challenge(current))
    f.clock.advance(60)
    assert f.transport.kind == "udp" and len(f.sent) == 2


def test_any_answer_by_udp_while_on_tls_moves_back_but_only_the_probe_is_consumed():
    f = Fixture()
    f.transport.start()
    f.since = 0.0
    f.clock.advance(UDP_GIVE_UP)
    [probe] = f.probe_ids()
    # An answer to the registration machine's own Hello, sent by UDP while the link was down.
    assert not f.transport.udp_message_received(challenge(probe + 1))
    assert f.transport.kind == "udp"
    # On UDP nothing is ours, not even a late answer to the old probe.
    assert not f.transport.udp_message_received(challenge(probe))
    assert f.events == ["link.start", "changed:tls", "link.stop", "changed:udp"]


def test_stop_cancels_every_timer_and_the_link():
    f = Fixture()
    f.transport.start()
    f.since = 0.0
    f.clock.advance(UDP_GIVE_UP)
    f.transport.stop()
    assert f.events[-1] == "link.stop"
    assert f.clock.getDelayedCalls() == []
    f.transport.udp_silent()
    f.transport.start()
    assert f.clock.getDelayedCalls() == []


class RefusingEndpoint:
    def __init__(self):
        self.attempts = 0

    def connect(self, factory):
        self.attempts += 1
        return defer.fail(ConnectionRefusedError("connection refused"))


def test_link_retries_with_backoff_and_reports_why():
    clock, endpoint = Clock(), RefusingEndpoint()
    link = BeaconTLSLink(clock, "127.0.0.1", 443, on_datagram=lambda d: None, endpoint=endpoint, rng=random.Random(2))
    link.start()
    assert endpoint.attempts == 1
    assert link.last_error["code"] == "unavailable" and "127.0.0.1:443" in link.last_error["message"]
    assert not link.send(b"x")
    delays = []
    for _ in range(8):
        [call] = clock.getDelayedCalls()
        delays.append(call.getTime() - clock.seconds())
        clock.advance(delays[-1])
    assert endpoint.attempts == 9
    assert FIRST_RETRY * 0.8 <= delays[0] <= FIRST_RETRY * 1.2
    assert delays[1] > delays[0] and max(delays) <= MAX_RETRY * 1.2
    link.stop()
    assert clock.getDelayedCalls() == []


def test_node_config_reads_fingerprints_and_defaults_the_tls_port():
    import pytest

    from pilotproto.errors import InvalidArgument
    from pilotproto.node.config import NodeConfig, parse_fingerprint

    digest = bytes(range(32))
    assert parse_fingerprint(digest.hex()) == digest
    assert parse_fingerprint(":".join(f"{b:02X}" for b in digest)) == digest
    for bad in ("", "ab" * 31, "zz" * 32):
        with pytest.raises(InvalidArgument):
            parse_fingerprint(bad)
    assert NodeConfig(beacon="beacon.example:9000").beacon_tls_hostport() == ("beacon.example", 443)
    assert NodeConfig(beacon="b:9000", beacon_tls="relay.example:8443").beacon_tls_hostport() == ("relay.example", 8443)
    with pytest.raises(InvalidArgument):
        NodeConfig().merged(beacon_fingerprint="nope")
