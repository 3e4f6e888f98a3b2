"""
What the fuzzers run: one :class:`Target` per decoder, shared by the bounded
slice in the suite (``tests/test_fuzz.py``, hypothesis) and the long run
(``benchmarks/fuzz.py``, a coverage-guided mutator, >= 1 M inputs each).

A target's ``run(data)`` may raise only its ``expected`` errors (the codec's
own: DecodeError, StunDecodeError, BadRequest, ...); anything else is a
crash.  ``seeds(rng)`` gives valid encodings to mutate from, so inputs get
past the first length check and reach the deep parts of each decoder.

Two targets reach past the signatures and the AEAD: ``session_plaintext``
and ``stream_plaintext`` seal each input with a real tunnel session's keys
and hand the ciphertext to the other node's :class:`Sessions`, which
decrypts it and gives it to the session-message handlers or the peer's
:class:`StreamConnection`, exactly as a packet from a trusted but hostile
peer arrives.
"""

from __future__ import annotations

import random
import struct
from typing import Callable

import attrs
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from zope.interface import implementer

from pilotproto.common.ids import RandomIds
from pilotproto.control import codec as control
from pilotproto.control.server import Command, ControlServerFactory
from pilotproto.errors import ProtocolError
from pilotproto.identity import Identity
from pilotproto.interfaces import IDatagramSender, ILocalCandidates, IPeerDirectory, IRelay, IStreamAcceptor, ITrustPolicy
from pilotproto.session.sessions import Sessions
from pilotproto.streams import frames
from pilotproto.wire import DecodeError, Endpoint, datagrams, framing, relay, stun
from pilotproto.wire import beacon as msgs
from pilotproto.wire import session as smsg
from pilotproto.wire.sources import Direct, Relayed
from pilotproto.wire.tunnel import decode_tunnel_packet


@attrs.frozen
class Target:
    name: str
    #: ``run(data)``: decode (or feed) ``data``; may raise only ``expected``
    run: Callable[[bytes], object]
    expected: tuple
    #: ``seeds(rng)`` -> valid inputs to start mutating from
    seeds: Callable[[random.Random], list]
    #: a random input is at most this long (mutations may grow it further, up to twice)
    max_size: int = 1500


# -- seeds --------------------------------------------------------------------------


def _field_value(name: str, kind, rng: random.Random, size: int):
    """A plausible value for a message field, from its name and annotation."""
    kind = str(kind)
    if "bool" in kind:
        return rng.random() < 0.5
    if "Endpoint" in kind and "tuple" not in kind:
        return Endpoint(rng.choice(["127.0.0.1", "198.51.100.7", "2001:db8::1"]), rng.randrange(65536))
    if "tuple" in kind:
        if "key" in name:
            return tuple(rng.randbytes(32) for _ in range(rng.randrange(3)))
        return tuple(Endpoint("10.0.0.%d" % rng.randrange(1, 255), rng.randrange(65536)) for _ in range(rng.randrange(3)))
    if "str" in kind:
        return rng.choice(["agent-a", "b", "x" * 60, "name-\u00e9"])
    if "bytes" in kind:
        if name == "datagram":
            return bytes([0xB0, 1, 3]) + rng.randbytes(8 + 32 + 8 + 64)
        return rng.randbytes(size)
    return rng.choice([0, 1, 7, 255, 65535, 2**32 - 1, rng.randrange(2**32)])


def beacon_seeds(rng: random.Random) -> list:
    """Every registered beacon message type, with random field values, encoded.

    Built from the records' attrs fields, so a type another change adds is
    seeded too; byte fields are tried at the sizes the codec uses."""
    seeds = []
    for cls in msgs.TYPES.values():
        for _ in range(3):
            for size in (32, 8, 16, 64, 12, 0):
                values = {
                    f.name: _field_value(f.name, f.type, rng, size)
                    for f in attrs.fields(cls)
                    if f.default is attrs.NOTHING and f.name != "request_id"
                }
                try:
                    message = cls(request_id=rng.randrange(2**64), **values)
                    if cls.SIGNED:
                        message = msgs.sign(message, Identity.from_seed(rng.randbytes(32)), rng.randrange(1, 2**63))
                    data = msgs.encode(message)
                    msgs.decode(data)
                except Exception:
                    continue
                seeds.append(data)
                break
    return seeds


def stun_seeds(rng: random.Random) -> list:
    seeds = []
    for _ in range(8):
        tid = rng.randbytes(12)
        request = stun.binding_request(tid, change_ip=rng.random() < 0.5, change_port=rng.random() < 0.5)
        seeds.append(request)
        message = stun.decode(request)
        observed = Endpoint(rng.choice(["127.0.0.1", "2001:db8::2"]), rng.randrange(65536))
        seeds.append(stun.binding_response(message, observed, observed, observed, software="pilot fuzz"))
        seeds.append(stun.binding_error(message, 420, "unknown", unknown_attributes=(0x0003, 0x8022)))
    return seeds


def relay_seeds(rng: random.Random) -> list:
    seeds = []
    for _ in range(8):
        payload = rng.randbytes(rng.randrange(200))
        seeds.append(relay.seal_to_beacon(rng.randbytes(32), rng.randbytes(8), rng.randbytes(8), rng.randrange(2**64), payload))
        seeds.append(relay.encode_from_beacon(relay.RelayFromBeacon(rng.randbytes(8), payload)))
    return seeds


def session_seeds(rng: random.Random) -> list:
    return [
        smsg.encode(m)
        for m in (
            smsg.Ping(rng.randrange(2**64), rng.randbytes(20)),
            smsg.Pong(rng.randrange(2**64), b""),
            smsg.PathProbe(rng.randrange(2**64)),
            smsg.PathAck(rng.randrange(2**64)),
            smsg.Close(smsg.CLOSE_SHUTDOWN, "bye"),
            smsg.CallMeMaybe(False, "full-cone", (Endpoint("198.51.100.9", 4000),), (Endpoint("10.0.0.2", 4000),)),
            smsg.CallMeMaybe(True, "symmetric", (), ()),
        )
    ]


#: the src_tag every fuzzed stream packet claims (a fixed one, so most
#: packets are taken as the peer's and reach the frames)
FUZZ_TAG = 0x5EED


def random_frame(rng: random.Random):
    kind = rng.randrange(9)
    sid = rng.choice([0, 1, 2, 3, 4, 5, 8, 2**32 - 1, rng.randrange(2**32)])
    big = rng.choice([0, 1, 1000, 2**20, 2**62, 2**64 - 1, rng.randrange(2**40)])
    if kind == 0:
        return frames.Ping()
    if kind == 1:
        largest = rng.randrange(50)
        return frames.Ack(rng.randrange(2**32), ((max(0, largest - 3), largest),))
    if kind == 2:
        return frames.ResetStream(sid, rng.randrange(65536), big)
    if kind == 3:
        return frames.StopSending(sid, rng.randrange(65536))
    if kind == 4:
        return frames.MaxData(big)
    if kind == 5:
        return frames.MaxStreamData(sid, big)
    if kind == 6:
        return frames.Datagram(rng.choice([7, 1001, 65535]), rng.randbytes(rng.randrange(40)))
    offset = rng.choice([0, 0, 5, 2**20, 2**63])
    port = rng.choice([7, 1001, None]) if offset == 0 else None
    return frames.StreamFrame(sid, offset, rng.randbytes(rng.randrange(60)), fin=rng.random() < 0.3, port=port)


def stream_seeds(rng: random.Random) -> list:
    seeds = []
    for number in range(24):
        packet = frames.Packet(FUZZ_TAG, 0, number, tuple(random_frame(rng) for _ in range(rng.randrange(1, 4))))
        try:
            seeds.append(frames.encode_packet(packet))
        except (ValueError, TypeError, struct.error):
            continue
    return seeds


def control_seeds(rng: random.Random) -> list:
    lines = [
        control.encode_request(1, "info"),
        control.encode_request("x", "echo", {"text": "hi", "repeat": 2}),
        control.encode_request(2**53, "lookup", {"target": "agent-b", "nested": [[{"a": [1.5, None, True]}]]}),
        control.encode_ok(3, {"hostname": "agent-a", "endpoints": ["127.0.0.1:9"], "rtt": 1.25}),
        control.encode_error(4, ProtocolError("broken", hint="a hint")),
        control.encode_event({"event": "incoming", "stream_id": 9, "peer": {"hostname": "b"}}),
    ]
    return [line[:-1] for line in lines] + [b"".join(lines)]


# -- decoders run directly -------------------------------------------------------------


def _both_relay(data: bytes):
    for decode in (relay.decode_to_beacon, relay.decode_from_beacon):
        try:
            decode(data)
        except DecodeError:
            pass


def _stun(data: bytes):
    for rfc3489 in (False, True):
        try:
            stun.decode(data, rfc3489=rfc3489)
        except DecodeError:
            pass
    stun.parse_binding_response(data)


def _framing(data: bytes):
    """The TLS link's framing, fed in chunks cut where the input's last byte says."""
    decoder = framing.FrameDecoder()
    step = 1 + (data[-1] % 7 if data else 0) * 37
    for i in range(0, len(data), step):
        decoder.feed(data[i : i + step])


def _control_request(data: bytes):
    request = control.decode_request(data)
    # Whatever decodes must be answerable: the daemon echoes id and args.
    control.encode_ok(request.id, request.args)


def _control_response(data: bytes):
    try:
        control.decode_event(data)
    except control.BadResponse:
        pass
    control.decode_response(data)


class _EchoCommands:
    def info(self):
        return {"hostname": "agent-a"}

    def echo(self, text=None, repeat=1, **extra):
        return {"text": text, "extra": extra}

    def slow(self):
        return defer.Deferred()

    def table(self):
        return {"info": Command(self.info), "echo": Command(self.echo), "slow": Command(self.slow)}


def _control_connection(data: bytes):
    """Bytes on a daemon's control connection, as a client may send them: every
    answer must be one valid JSON line, and the connection must stay open."""
    protocol = ControlServerFactory(_EchoCommands().table()).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    step = 1 + (data[0] % 97 if data else 0)
    for i in range(0, len(data), step):
        protocol.dataReceived(data[i : i + step])
    protocol.dataReceived(b'\n{"id": "probe", "cmd": "info"}\n')
    answers = [control.decode_response(line) for line in transport.value().splitlines()]
    if not answers or answers[-1].id != "probe" or transport.disconnecting:
        raise AssertionError(f"the connection stopped answering: {transport.value()[-300:]!r}")
    protocol.connectionLost(None)


# -- past the AEAD: a real tunnel pair ----------------------------------------------------

A_EP = Endpoint("198.51.100.1", 4000)
B_EP = Endpoint("203.0.113.1", 5000)


@implementer(IDatagramSender)
class _Wire:
    def __init__(self, pair, me):
        self.pair, self.me = pair, me

    def send(self, data, destination, ttl=None):
        self.pair.deliver(self.me, data, destination)

    def send_many(self, packets, destination):
        for data in packets:
            self.pair.deliver(self.me, data, destination)


@implementer(IRelay)
class _Relay:
    """The beacon's relay: a frame for an address reaches that node, from ours."""

    def __init__(self, pair, me: Identity):
        self.pair, self.me = pair, me

    def send_relay(self, destination, payload):
        self.pair.relay(self.me, destination, payload)

    def send_relay_many(self, destination, payloads):
        for payload in payloads:
            self.pair.relay(self.me, destination, payload)

    def relay_kind(self):
        return "relay"


@implementer(ITrustPolicy)
class _TrustAll:
    def is_trusted(self, public_key):
        return True

    def hostname_of(self, public_key):
        return None


@implementer(IPeerDirectory)
class _Directory:
    def __init__(self, entries):
        self.entries = entries

    def lookup(self, target):
        import base64

        identity, endpoint = self.entries[target]
        return defer.succeed({"hostname": target, "address": str(identity.address),
                              "public_key": base64.b64encode(identity.public_key).decode(), "endpoints": [str(endpoint)]})


@implementer(ILocalCandidates)
class _Candidates:
    def __init__(self, endpoint):
        self.endpoint = endpoint

    def local_candidates(self):
        return "none", (self.endpoint,), ()


@implementer(IStreamAcceptor)
class _Acceptor:
    """Takes streams to port 7 (and reads nothing back), refuses the rest."""

    def stream_opened(self, peer, stream, port):
        return port == 7

    def datagram_received(self, peer, port, data):
        pass


class SessionPair:
    """Two nodes' :class:`Sessions`, a tunnel up between them, on one Clock.

    :meth:`inject` seals a plaintext with A's current session keys and hands
    the ciphertext to B as a datagram from A: B authenticates and decrypts
    it, then routes it as any packet from a trusted peer.  Every datagram
    either side sends is kept in :attr:`wire_log` (seeds for the tunnel
    codec).  Errors logged by either side are collected in :attr:`errors`.
    """

    def __init__(self, seed: int = 1):
        rng = random.Random(seed)
        self.clock = Clock()
        self.wire_log: list[bytes] = []
        self.errors: list = []
        self.a_id, self.b_id = Identity.from_seed(rng.randbytes(32)), Identity.from_seed(rng.randbytes(32))
        directory = _Directory({"agent-a": (self.a_id, A_EP), "agent-b": (self.b_id, B_EP)})
        self.nodes = {}
        for name, identity, endpoint in (("agent-a", self.a_id, A_EP), ("agent-b", self.b_id, B_EP)):
            self.nodes[endpoint] = Sessions(
                self.clock, identity, trust=_TrustAll(), udp=_Wire(self, endpoint), relay=_Relay(self, identity),
                directory=directory, candidates=_Candidates(endpoint), acceptor=_Acceptor(),
                ids=RandomIds(random.Random(rng.random()).randbytes),
            )
        self.a, self.b = self.nodes[A_EP], self.nodes[B_EP]
        globalLogPublisher.addObserver(self._observe)
        done = []
        self.a.ping("agent-b", count=1, interval=0.1, timeout=2.0).addBoth(done.append)
        for _ in range(100):
            if done:
                break
            self.clock.advance(0.05)
        if not done or not isinstance(done[0], dict) or done[0].get("received") != 1:
            raise RuntimeError(f"the fuzz harness's tunnel did not come up: {done!r}")

    def _observe(self, event):
        if event.get("log_failure") is not None or event.get("isError"):
            self.errors.append(event)

    def close(self):
        globalLogPublisher.removeObserver(self._observe)
        for sessions in self.nodes.values():
            sessions.stop()
        self.clock.advance(10)

    def deliver(self, sender, data, destination):
        self.wire_log.append(bytes(data))
        target = self.nodes.get(destination)
        if target is not None:
            self.clock.callLater(0.001, target.tunnel_packet_received, data, Direct(sender))

    def relay(self, sender: Identity, destination: bytes, payload: bytes):
        self.wire_log.append(bytes(payload))
        for endpoint, identity in ((A_EP, self.a_id), (B_EP, self.b_id)):
            if identity.address.to_bytes() == destination:
                source = Relayed(sender.address.to_bytes())
                self.clock.callLater(0.002, self.nodes[endpoint].tunnel_packet_received, payload, source)

    def usable(self) -> bool:
        peer = self.b.peers.get(self.a_id.public_key)
        tunnel = self.a.endpoint.peers.get(self.b_id.public_key)
        session = tunnel.current if tunnel is not None else None
        streams = peer.streams if peer is not None else None
        return (
            peer is not None and not peer.ended and session is not None and session.can_seal()
            and (streams is None or not streams.closed)
        )

    def inject(self, plaintext: bytes) -> None:
        session = self.a.endpoint.peers[self.b_id.public_key].current
        self.b.tunnel_packet_received(session.seal(plaintext), Direct(A_EP))
        self.clock.advance(0.002)  # B's answers reach A, A's reactions reach B


class _PairRunner:
    """Runs inputs through one :class:`SessionPair`, making a new one when an
    input ended the session (a Close, or a stream error that closed it)."""

    def __init__(self, prefix: bytes = b""):
        self.prefix = prefix
        self.pair = None

    def ready(self) -> None:
        """Make sure a usable pair is up (fuzzers call this before they time an input)."""
        if self.pair is None or not self.pair.usable():
            if self.pair is not None:
                self.pair.close()
            self.pair = SessionPair(seed=random.randrange(2**16))

    def __call__(self, data: bytes) -> None:
        self.ready()
        self.pair.inject(self.prefix + data)
        if self.pair.errors:
            errors, self.pair.errors = self.pair.errors, []
            from twisted.logger import formatEvent

            raise AssertionError("logged: " + "; ".join(formatEvent(e) + str(e.get("log_failure", "")) for e in errors))

    def close(self):
        if self.pair is not None:
            self.pair.close()
            self.pair = None


def tunnel_seeds(rng: random.Random) -> list:
    pair = SessionPair(seed=rng.randrange(1000))
    pair.inject(smsg.encode(smsg.Ping(1, b"seed")))
    pair.clock.advance(1)
    seeds = list(dict.fromkeys(pair.wire_log))
    pair.close()
    return seeds


def session_plaintext_seeds(rng: random.Random) -> list:
    return session_seeds(rng) + stream_seeds(rng)


def stream_plaintext_seeds(rng: random.Random) -> list:
    # The stream runner adds the 0x10 type byte itself: seeds without it.
    return [packet[1:] for packet in stream_seeds(rng)]


def targets() -> list[Target]:
    """Every decoder, and the two targets past the AEAD (each a fresh runner)."""
    return [
        Target("beacon", msgs.decode, (DecodeError,), beacon_seeds),
        Target("stun", _stun, (DecodeError, stun.StunErrorResponse), stun_seeds),
        Target("relay", _both_relay, (DecodeError,), relay_seeds),
        Target("tunnel", decode_tunnel_packet, (DecodeError,), tunnel_seeds),
        Target("session", smsg.decode, (DecodeError,), session_seeds),
        Target("datagram", datagrams.classify, (DecodeError,), lambda rng: beacon_seeds(rng) + stun_seeds(rng) + relay_seeds(rng)),
        Target("framing", _framing, (DecodeError,), lambda rng: [framing.encode_frame(s) * 2 for s in relay_seeds(rng)]),
        Target("stream_frames", frames.decode_packet, (DecodeError,), stream_seeds),
        Target("control_request", _control_request, (control.BadRequest,), control_seeds),
        Target("control_response", _control_response, (control.BadResponse,), control_seeds),
        Target("control_connection", _control_connection, (), control_seeds, max_size=2048),
        Target("session_plaintext", _PairRunner(), (), session_plaintext_seeds),
        Target("stream_plaintext", _PairRunner(bytes([frames.PACKET_TYPE])), (), stream_plaintext_seeds),
    ]
