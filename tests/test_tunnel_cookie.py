"""MACs, cookies and the responder's behaviour under a handshake flood."""

import random

from twisted.internet.task import Clock

from helpers import RecordingTunnelOwner, StaticTrust
from pilotproto.identity import Identity
from pilotproto.tunnel import TunnelEndpoint
from pilotproto.tunnel.cookie import CookieChecker, CookieJar, TokenBucket, Verdict, check_mac1, stamp_macs
from pilotproto.tunnel.ik import LocalKeys, create_initiation, tai64n
from pilotproto.wire import KIND_TUNNEL_COOKIE, KIND_TUNNEL_RESPONSE, Endpoint
from pilotproto.wire.sources import Direct, Relayed
from pilotproto.wire.tunnel import TunnelCookieReply

RESPONDER = Identity.from_seed(b"r" * 32)
INITIATOR = Identity.from_seed(b"i" * 32)
ATTACKER = Identity.from_seed(b"x" * 32)


def initiation(sender=INITIATOR, responder=RESPONDER, index=1, when=1.0):
    _, packet = create_initiation(
        LocalKeys.from_identity(sender),
        responder.public_key,
        sender_index=index,
        timestamp=tai64n(when),
        ephemeral_private=bytes([index % 256]) * 32,
    )
    return packet.encode()


def test_mac1_is_keyed_by_the_responders_static_key():
    raw = initiation()
    stamped = stamp_macs(RESPONDER.x25519_public(), raw, None)
    assert check_mac1(RESPONDER.x25519_public(), stamped)
    assert not check_mac1(ATTACKER.x25519_public(), stamped)
    assert not check_mac1(RESPONDER.x25519_public(), raw)


def test_token_bucket():
    clock = Clock()
    bucket = TokenBucket(clock, rate=2.0, burst=3.0)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.advance(0.5)
    assert bucket.take() and not bucket.take()


def test_cookie_round_trip_and_rotation():
    clock = Clock()
    checker = CookieChecker(RESPONDER.x25519_public(), clock, initiations_per_second=1, initiation_burst=1)
    jar = CookieJar(RESPONDER.x25519_public(), clock)
    first = jar.stamp(initiation())
    assert checker.admit_initiation(first, b"src") is Verdict.PROCESS
    second = jar.stamp(initiation(index=2))
    assert checker.admit_initiation(second, b"src") is Verdict.SEND_COOKIE
    reply = TunnelCookieReply.decode(checker.make_reply(2, second, b"src"))
    assert jar.consume_reply(reply)
    third = jar.stamp(initiation(index=3))
    assert checker.admit_initiation(third, b"src") is Verdict.PROCESS
    # The same cookie does not work from another address ...
    assert checker.admit_initiation(third, b"elsewhere") is Verdict.SEND_COOKIE
    # ... nor after the responder's secret rotated.
    clock.advance(121)
    checker.admit_initiation(first, b"drain the bucket")
    assert checker.admit_initiation(jar.stamp(initiation(index=4)), b"src") is Verdict.SEND_COOKIE


def test_cookie_reply_only_fits_the_initiation_it_answers():
    clock = Clock()
    checker = CookieChecker(RESPONDER.x25519_public(), clock)
    jar = CookieJar(RESPONDER.x25519_public(), clock)
    jar.stamp(initiation(index=1))
    other = stamp_macs(RESPONDER.x25519_public(), initiation(index=9), None)
    assert not jar.consume_reply(TunnelCookieReply.decode(checker.make_reply(9, other, b"src")))
    assert jar.cookie() is None


def test_garbage_with_bad_mac1_costs_no_dh():
    clock = Clock()
    ep = TunnelEndpoint(RESPONDER, clock, trust=StaticTrust(), owner=RecordingTunnelOwner())
    sent = []
    source = Direct(Endpoint("192.0.2.7", 7))
    ep.datagram_received(initiation(), source, sent.append)
    ep.datagram_received(bytes([0xC1, 1]) + bytes(244), source, sent.append)
    assert ep.stats["init_bad_mac1"] == 2 and ep.stats["init_dh"] == 0 and sent == []


def spoofed(n):
    """A different forged source address for every ``n``."""
    return Direct(Endpoint(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", 1024 + n % 60000))


def test_cookies_bind_to_the_typed_source():
    # A direct endpoint and a relayed sender are different sources, even
    # when their bytes happen to look alike.
    clock = Clock()
    checker = CookieChecker(RESPONDER.x25519_public(), clock)
    direct, relayed = Direct(Endpoint("192.0.2.1", 1)), Relayed(b"\x00\x01\x02\x03\x04\x05")
    assert checker.cookie_for(direct.key()) != checker.cookie_for(relayed.key())
    assert direct.key() != Direct(Endpoint("192.0.2.1", 2)).key()


def test_flood_is_capped_while_a_real_initiator_gets_through():
    clock = Clock()
    clock.advance(1_767_225_600)
    rng = random.Random(7)
    rate = 5
    nodes = {}
    # The flooder knows the responder's public key, so its mac1 is valid;
    # it spoofs a new source address for each packet and never sees replies.
    flood = stamp_macs(RESPONDER.x25519_public(), initiation(sender=ATTACKER), None)
    replies = []

    def deliver(dst, src):
        def send(packet):
            clock.callLater(0.01, arrive, dst, src, packet)

        return send

    def arrive(dst, src, packet):
        if dst == "r":
            # The worst-case flooder: one of its packets always lands just
            # before the real one and takes any token the bucket had.
            nodes["r"].datagram_received(flood, spoofed(0), replies.append)
        nodes[dst].datagram_received(packet, Relayed(src.encode() * 6), deliver(src, dst))

    nodes["r"] = TunnelEndpoint(
        RESPONDER,
        clock,
        trust=StaticTrust([INITIATOR.public_key]),
        owner=RecordingTunnelOwner(route=lambda key, packet: deliver("i", "r")(packet)),
        randbytes=rng.randbytes,
        cookie_options={"initiations_per_second": rate, "initiation_burst": rate},
    )
    nodes["i"] = TunnelEndpoint(
        INITIATOR,
        clock,
        trust=StaticTrust(),
        owner=RecordingTunnelOwner(route=lambda key, packet: deliver("r", "i")(packet)),
        randbytes=rng.randbytes,
    )
    dh_per_second = []
    done = []
    for second in range(6):
        before = nodes["r"].stats["init_dh"]
        for tick in range(100):
            if (second, tick) == (1, 0):  # the bucket is empty by now
                nodes["i"].peer(RESPONDER.public_key).connect().addBoth(done.append)
            for n in range(3):  # 300 initiations a second
                nodes["r"].datagram_received(flood, spoofed(1 + 300 * second + 3 * tick + n), replies.append)
            clock.advance(0.01)
        dh_per_second.append(nodes["r"].stats["init_dh"] - before)
    stats = nodes["r"].stats
    # The first second also spends the bucket's initial burst; after that the
    # bucket's rate, plus the real initiator's cookie-backed retry.
    assert dh_per_second[0] <= 2 * rate + 1
    assert max(dh_per_second[1:]) <= rate + 1
    assert sum(dh_per_second) <= rate * 7 + 1
    assert stats["cookie_sent"] > 1000
    assert all(r[0] == KIND_TUNNEL_COOKIE for r in replies)
    assert done == [nodes["i"].peer(RESPONDER.public_key)]
    assert nodes["i"].stats["cookie_received"] >= 1
    assert stats["response_sent"] == 1
    assert KIND_TUNNEL_RESPONSE not in [r[0] for r in replies]
