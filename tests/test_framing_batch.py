"""Issue 13 item 5: the TCP/TLS relay writes many frames per TLS write and
parses many per read, on both ends, however the stream is cut."""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from pilotproto.beacon.server import BeaconServer
from pilotproto.beacon.tls import BeaconStreamFactory
from pilotproto.rendezvous.tls import _Frames
from pilotproto.wire.framing import FLUSH_AT, FrameDecoder, FrameWriter, encode_frame

datagrams = st.binary(min_size=1, max_size=2000)


class Writes:
    def __init__(self):
        self.writes = []

    def __call__(self, data):
        self.writes.append(bytes(data))


class CountingTransport(StringTransport):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.write_calls = 0

    def write(self, data):
        self.write_calls += 1
        super().write(data)


def soon(clock):
    return lambda f: clock.callLater(0, f)


def test_the_first_frame_goes_at_once_and_the_rest_of_the_turn_in_one_write():
    clock, out = Clock(), Writes()
    writer = FrameWriter(out, soon(clock))
    for i in range(20):
        writer.send(b"frame %d" % i)
    assert out.writes == [encode_frame(b"frame 0")]
    clock.advance(0)
    assert len(out.writes) == 2
    assert FrameDecoder().feed(b"".join(out.writes)) == [b"frame %d" % i for i in range(20)]
    assert (writer.writes, writer.frames, writer.pending) == (2, 20, 0)
    # A quiet turn later, the next one goes at once again.
    writer.send(b"later")
    assert out.writes[-1] == encode_frame(b"later") and clock.getDelayedCalls() != []
    clock.advance(0)
    assert clock.getDelayedCalls() == [] and len(out.writes) == 3


def test_a_batch_is_written_when_it_reaches_a_tls_record():
    clock, out = Clock(), Writes()
    writer = FrameWriter(out, soon(clock))
    for _ in range(40):
        writer.send(b"x" * 1400)
    assert len(out.writes) >= 3 and all(len(w) <= FLUSH_AT + 1402 for w in out.writes)
    clock.advance(0)
    assert FrameDecoder().feed(b"".join(out.writes)) == [b"x" * 1400] * 40


def test_close_drops_the_batch_and_cancels_its_flush():
    clock, out = Clock(), Writes()
    writer = FrameWriter(out, soon(clock))
    writer.send(b"a")
    writer.send(b"b")
    writer.close()
    assert clock.getDelayedCalls() == []
    assert out.writes == [encode_frame(b"a")]


def test_without_a_clock_every_frame_is_written_at_once():
    out = Writes()
    writer = FrameWriter(out)
    writer.send(b"a")
    writer.send(b"b")
    assert out.writes == [encode_frame(b"a"), encode_frame(b"b")]


@settings(max_examples=200)
@given(st.lists(datagrams, max_size=30), st.lists(st.booleans(), max_size=30), st.data())
def test_batched_output_parses_back_however_it_is_cut(frames, turn_ends, data):
    """Whatever the batching and wherever TCP cuts the stream, the same datagrams in order."""
    clock, out = Clock(), Writes()
    writer = FrameWriter(out, soon(clock), flush_at=4096)
    for frame, end_turn in zip(frames, turn_ends + [False] * len(frames)):
        writer.send(frame)
        if end_turn:
            clock.advance(0)
    clock.advance(0)
    stream = b"".join(out.writes)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    decoder, parsed, start = FrameDecoder(), [], 0
    for cut in cuts + [len(stream)]:
        chunk = stream[start:cut]
        # Twisted hands bytes; other callers may hand a bytearray or memoryview.
        parsed += decoder.feed(data.draw(st.sampled_from([bytes, bytearray, memoryview]))(chunk))
        start = cut
    assert parsed == frames and all(type(f) is bytes for f in parsed)
    assert decoder.pending == 0


def test_one_byte_at_a_time_and_many_frames_in_one_read():
    frames = [bytes([i % 251]) * (1 + i * 37 % 1500) for i in range(200)]
    stream = b"".join(encode_frame(f) for f in frames)
    decoder = FrameDecoder()
    assert [f for i in range(len(stream)) for f in decoder.feed(stream[i : i + 1])] == frames
    assert FrameDecoder().feed(stream) == frames


def test_the_beacon_batches_frames_for_one_tls_node_per_turn():
    clock = Clock()
    server = BeaconServer(clock)
    stream = BeaconStreamFactory(server, clock=clock).buildProtocol(None)
    tcp = CountingTransport(peerAddress=IPv4Address("TCP", "198.51.100.7", 40001))
    stream.makeConnection(tcp)
    for i in range(50):
        stream.deliver(b"\xd1\x01" + bytes(8) + b"packet %d" % i)
    clock.advance(0)
    assert tcp.write_calls == 2
    assert FrameDecoder().feed(tcp.value()) == [b"\xd1\x01" + bytes(8) + b"packet %d" % i for i in range(50)]
    stream.connectionLost(None)
    assert clock.getDelayedCalls() == []


def test_the_node_batches_frames_to_the_beacon_per_turn():
    class Link:
        def __init__(self):
            self.received = []

        def verified(self, protocol):
            pass

        def datagram_received(self, data):
            self.received.append(data)

        def lost(self, protocol, reason):
            pass

    clock, link = Clock(), Link()
    frames = _Frames(link, clock)
    tcp = CountingTransport()
    frames.makeConnection(tcp)
    for i in range(30):
        frames.send(b"\xd0relay %d" % i)
    clock.advance(0)
    assert tcp.write_calls == 2
    assert FrameDecoder().feed(tcp.value()) == [b"\xd0relay %d" % i for i in range(30)]
    # And many frames in one read all reach the link.
    frames.dataReceived(b"".join(encode_frame(b"\xd1back %d" % i) for i in range(30)))
    assert link.received == [b"\xd1back %d" % i for i in range(30)]
