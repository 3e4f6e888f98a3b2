"""
Choosing the beacon transport (UDP, or TLS when UDP is blocked) and keeping
the TLS link up (a ClientService dialling a verifying endpoint), driven by
a Clock and fakes.
"""

import random

import pytest
from cryptography.hazmat.primitives import hashes
from helpers import RecordingChannel
from OpenSSL import crypto
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from pilotproto.common.timeouts import BEACON_TLS_CONNECT
from pilotproto.lab.pki import make_ca, make_leaf
from pilotproto.rendezvous.interfaces import IRegistration, ITLSLink, ITLSLinkListener
from pilotproto.rendezvous.tls import FIRST_RETRY, MAX_RETRY, BeaconTLSLink
from pilotproto.rendezvous.transport import (
    CHECK_INTERVAL,
    UDP_GIVE_UP,
    UDP_PROBE_INTERVAL,
    BeaconTransport,
)
from pilotproto.wire import Endpoint
from pilotproto.wire import beacon as msgs
from pilotproto.wire.framing import FrameDecoder, encode_frame


def challenge(rid):
    return msgs.Challenge(rid, b"\x00" * 32, b"\x01" * 32, Endpoint("127.0.0.1", 1))


@implementer(ITLSLink)
class FakeLink:
    def __init__(self, events):
        self.events = events
        self.last_error = {"code": "beacon_untrusted", "message": "bad cert"}

    def start(self):
        self.events.append("link.start")

    def stop(self):
        self.events.append("link.stop")
        return defer.succeed(None)


@implementer(IRegistration)
class FakeRegistration:
    def __init__(self, events):
        self.events = events
        self.hello_unanswered_since = None
        self.transport = None

    def transport_changed(self):
        self.events.append(f"changed:{self.transport.kind}")


class Fixture:
    def __init__(self):
        self.clock = Clock()
        self.events = []
        self.registration = FakeRegistration(self.events)
        self.channel = RecordingChannel()
        self.transport = BeaconTransport(
            self.clock,
            registration=self.registration,
            channel=self.channel,
            link=FakeLink(self.events),
            rng=random.Random(1),
            ids=iter(range(1, 1000)).__next__,
        )
        self.registration.transport = self.transport

    @property
    def since(self):
        return self.registration.hello_unanswered_since

    @since.setter
    def since(self, value):
        self.registration.hello_unanswered_since = value

    @property
    def sent(self):
        assert {how for how, _ in self.channel.sent} <= {"udp"}
        return [data for _, data in self.channel.sent]

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
    assert stale != current
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
    assert not f.transport.udp_message_received(challenge(probe + 1000))
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


def test_the_transport_checks_its_collaborators():
    events = []
    with pytest.raises(TypeError, match="registration"):
        BeaconTransport(Clock(), registration=object(), channel=RecordingChannel(), link=FakeLink(events))
    with pytest.raises(TypeError, match="link"):
        BeaconTransport(Clock(), registration=FakeRegistration(events), channel=RecordingChannel(), link=object())


# -- the TLS link -------------------------------------------------------------------


@implementer(ITLSLinkListener)
class Listener:
    def __init__(self):
        self.ups = 0
        self.datagrams = []

    def tls_link_up(self):
        self.ups += 1

    def tls_datagram_received(self, data):
        self.datagrams.append(data)


class RefusingEndpoint:
    def __init__(self):
        self.attempts = 0

    def connect(self, factory):
        self.attempts += 1
        return defer.fail(ConnectionRefusedError("connection refused"))


class FakeTLSTransport(StringTransport):
    """A connected TLS transport: it shows a certificate; closing it reaches
    the protocol a moment later, as a reactor would."""

    def __init__(self, clock, cert):
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 443))
        self.clock = clock
        self.cert = cert
        self.aborted = False
        self.closed = False

    def getPeerCertificate(self):
        return self.cert

    def loseConnection(self):
        self._close(ConnectionDone())

    def abortConnection(self):
        self.aborted = True
        self._close(ConnectionDone("aborted"))

    def _close(self, error):
        if not self.closed:
            self.closed = True
            self.clock.callLater(0, self.protocol.connectionLost, Failure(error))


class TLSEndpoint:
    """Connects at once (TCP); the test finishes the TLS handshake by calling ``handshake()``."""

    def __init__(self, clock, cert):
        self.clock = clock
        self.cert = cert
        self.transports = []

    def connect(self, factory):
        protocol = factory.buildProtocol(None)
        transport = FakeTLSTransport(self.clock, self.cert)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        self.transports.append(transport)
        return defer.succeed(protocol)

    @property
    def last(self):
        return self.transports[-1]

    def handshake(self):
        self.last.protocol.handshakeCompleted()


@pytest.fixture(scope="module")
def certificate():
    ca_cert, ca_key = make_ca()
    cert, _ = make_leaf(ca_cert, ca_key, ["127.0.0.1"], [])
    return crypto.X509.from_cryptography(cert), cert.fingerprint(hashes.SHA256())


def tls_link(clock, endpoint, fingerprint=None, listener=None):
    listener = listener or Listener()
    link = BeaconTLSLink(
        clock, "127.0.0.1", 443, listener=listener, fingerprint=fingerprint, endpoint=endpoint, rng=random.Random(2)
    )
    return link, listener


def test_link_retries_with_backoff_and_reports_why():
    clock, endpoint = Clock(), RefusingEndpoint()
    link, _ = tls_link(clock, endpoint)
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
    assert max(delays) >= MAX_RETRY * 0.8
    link.stop()
    assert clock.getDelayedCalls() == []


def test_the_retry_policy_doubles_to_the_cap_with_jitter():
    link, _ = tls_link(Clock(), RefusingEndpoint())
    for failures, base in [(1, 1.0), (2, 2.0), (3, 4.0), (6, MAX_RETRY), (10_000, MAX_RETRY)]:
        assert base * 0.8 <= link.retry_delay(failures) <= base * 1.2


def test_a_verified_connection_carries_frames_both_ways(certificate):
    cert, fingerprint = certificate
    clock = Clock()
    endpoint = TLSEndpoint(clock, cert)
    link, listener = tls_link(clock, endpoint, fingerprint)
    link.start()
    # Connected by TCP, but nothing counts before the certificate has passed.
    assert not link.up and not link.send(b"early") and listener.ups == 0
    endpoint.last.protocol.dataReceived(encode_frame(b"too early"))
    endpoint.handshake()
    assert link.up and listener.ups == 1 and link.last_error is None
    assert link.send(b"\xb0hello")
    assert FrameDecoder().feed(endpoint.last.value()) == [b"\xb0hello"]
    endpoint.last.protocol.dataReceived(encode_frame(b"\xb0one") + encode_frame(b"\xd1two"))
    assert listener.datagrams == [b"\xb0one", b"\xd1two"]
    assert link.counters["tls_datagrams"] == 2


def test_a_lost_connection_is_redialled(certificate):
    cert, fingerprint = certificate
    clock = Clock()
    endpoint = TLSEndpoint(clock, cert)
    link, listener = tls_link(clock, endpoint, fingerprint)
    link.start()
    endpoint.handshake()
    endpoint.last.loseConnection()
    clock.advance(0)
    assert not link.up
    clock.advance(FIRST_RETRY * 1.2)
    assert len(endpoint.transports) == 2
    endpoint.handshake()
    assert link.up and listener.ups == 2


def test_bad_framing_closes_the_connection(certificate):
    cert, fingerprint = certificate
    clock = Clock()
    endpoint = TLSEndpoint(clock, cert)
    link, _ = tls_link(clock, endpoint, fingerprint)
    link.start()
    endpoint.handshake()
    endpoint.last.protocol.dataReceived(b"\x00\x00")
    clock.advance(0)
    assert not link.up and link.counters["tls_bad_framing"] == 1


def test_a_certificate_that_is_not_the_pinned_one_is_refused_and_retried(certificate):
    cert, _ = certificate
    clock = Clock()
    endpoint = TLSEndpoint(clock, cert)
    link, listener = tls_link(clock, endpoint, bytes(32))
    link.start()
    endpoint.handshake()
    assert endpoint.last.aborted
    clock.advance(0)
    assert not link.up and listener.ups == 0
    assert link.last_error["code"] == "beacon_untrusted" and "pinned" in link.last_error["message"]
    assert endpoint.last.value() == b""
    # A refused certificate is a failed attempt: the wait grows.
    clock.advance(FIRST_RETRY * 1.2)
    assert len(endpoint.transports) == 2
    endpoint.handshake()
    clock.advance(0)
    [call] = clock.getDelayedCalls()
    assert call.getTime() - clock.seconds() >= 2 * FIRST_RETRY * 0.8


def test_a_handshake_that_never_finishes_times_out(certificate):
    cert, fingerprint = certificate
    clock = Clock()
    endpoint = TLSEndpoint(clock, cert)
    link, listener = tls_link(clock, endpoint, fingerprint)
    link.start()
    clock.advance(BEACON_TLS_CONNECT - 0.1)
    assert not endpoint.last.aborted
    clock.advance(0.1)
    assert endpoint.last.aborted
    clock.advance(0)
    assert link.last_error["code"] == "unavailable" and "within 10 s" in link.last_error["message"]
    assert listener.ups == 0
    clock.advance(FIRST_RETRY * 1.2)
    assert len(endpoint.transports) == 2


def test_stop_fires_once_the_connection_has_closed(certificate):
    cert, fingerprint = certificate
    clock = Clock()
    endpoint = TLSEndpoint(clock, cert)
    link, listener = tls_link(clock, endpoint, fingerprint)
    link.start()
    endpoint.handshake()
    stopped = []
    link.stop().addCallback(stopped.append)
    assert stopped == [] and endpoint.last.closed
    clock.advance(0)
    assert stopped == [None] and not link.up
    assert clock.getDelayedCalls() == []
    # And it can start again.
    link.start()
    endpoint.handshake()
    assert link.up and listener.ups == 2


def test_stop_during_the_handshake_abandons_it(certificate):
    cert, fingerprint = certificate
    clock = Clock()
    endpoint = TLSEndpoint(clock, cert)
    link, listener = tls_link(clock, endpoint, fingerprint)
    link.start()
    stopped = []
    link.stop().addCallback(stopped.append)
    assert endpoint.last.aborted
    clock.advance(0)
    assert stopped == [None]
    assert link.last_error is None and listener.ups == 0
    assert clock.getDelayedCalls() == []


def test_the_link_checks_its_listener():
    with pytest.raises(TypeError, match="listener"):
        BeaconTLSLink(Clock(), "127.0.0.1", 443, listener=object(), endpoint=RefusingEndpoint())


def test_node_config_reads_fingerprints_and_defaults_the_tls_port():
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
