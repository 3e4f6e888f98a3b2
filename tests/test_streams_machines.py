"""
The two state machines of a stream (RFC 9000 §3): the tables themselves
(complete, reachable, shown in the docs), walks through them that assert the
ordered outputs, and a Stream driven against a recording connection and
handler, so each output is seen doing what it says, in order.
"""

import pathlib
import random
from collections import Counter

import pytest
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from pilotproto.streams import (
    CODE_PROTOCOL,
    ConnectionClosed,
    StreamConnection,
    StreamError,
    frames,
    receiving,
    sending,
)
from pilotproto.streams.machine import Symbol, transition_table
from pilotproto.streams.receiving import RecvEvent, RecvOutput, RecvState
from pilotproto.streams.sending import SendEvent, SendOutput, SendState
from pilotproto.streams.handler import IStreamHandler
from pilotproto.streams.stream import _RECV_OUTPUTS, _SEND_OUTPUTS, Stream

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs" / "streams.md"
MACHINES = [
    pytest.param(sending.TRANSITIONS, SendState, SendEvent, SendOutput, SendState.READY, id="sending"),
    pytest.param(receiving.TRANSITIONS, RecvState, RecvEvent, RecvOutput, RecvState.RECV, id="receiving"),
]


def walk(table, state, *events):
    """Feed ``events`` to ``table`` from ``state``: the final state and every output, in order."""
    outputs = []
    for event in events:
        state, step = table[state, event]
        outputs += step
    return state, outputs


# -- the tables ------------------------------------------------------------------


@pytest.mark.parametrize("table, states, events, outputs, start", MACHINES)
def test_the_table_has_one_entry_for_every_state_and_event(table, states, events, outputs, start):
    assert set(table) == {(state, event) for state in states for event in events}
    assert len(table) == len(states) * len(events)


def test_every_output_has_a_method():
    assert set(_SEND_OUTPUTS) == set(SendOutput)
    assert set(_RECV_OUTPUTS) == set(RecvOutput)


@pytest.mark.parametrize("table, states, events, outputs, start", MACHINES)
def test_every_state_is_reachable_and_every_output_used(table, states, events, outputs, start):
    seen, todo = {start}, [start]
    while todo:
        state = todo.pop()
        for event in events:
            following = table[state, event][0]
            if following not in seen:
                seen.add(following)
                todo.append(following)
    assert seen == set(states)
    assert {output for _, step in table.values() for output in step} == set(outputs)


def test_an_incomplete_or_doubled_table_fails_when_it_is_built():
    class State(Symbol):
        A = "A"
        B = "B"

    class Event(Symbol):
        GO = "go"

    class Output(Symbol):
        SAY = "say"

    rows = [(State.A, Event.GO, State.B, [Output.SAY])]
    with pytest.raises(ValueError, match="no entry for B x GO"):
        transition_table(State, Event, Output, rows)
    with pytest.raises(ValueError, match="A x GO is listed twice"):
        transition_table(State, Event, Output, rows + rows + [(State.B, Event.GO, State.B, [])])
    with pytest.raises(TypeError, match="outputs must be Output"):
        transition_table(State, Event, Output, [(State.A, Event.GO, State.B, ["say"])])
    with pytest.raises(TypeError, match="mixes up its kinds"):
        transition_table(State, Event, Output, [(State.A, State.B, Event.GO, [])])
    table = transition_table(State, Event, Output, rows + [(State.B, Event.GO, State.B, [])])
    assert walk(table, State.A, Event.GO, Event.GO) == (State.B, [Output.SAY])


@pytest.mark.parametrize("describe", [sending.describe, receiving.describe], ids=["sending", "receiving"])
def test_the_docs_show_the_tables_the_code_runs(describe):
    text = DOCS.read_text()
    missing = [row for row in describe() if row not in text]
    assert not missing, "docs/streams.md is out of date; paste the rows of describe():\n" + "\n".join(missing)


# -- walks through the tables ------------------------------------------------------

S, SE, SO = SendState, SendEvent, SendOutput
R, RE, RO = RecvState, RecvEvent, RecvOutput


def test_sending_write_close_and_all_acknowledged():
    assert walk(sending.TRANSITIONS, S.READY, SE.WRITE, SE.SENT, SE.WRITE, SE.SENT, SE.CLOSE, SE.SENT, SE.LOST,
                SE.ALL_ACKED, SE.ALL_ACKED, SE.LOST) == (
        S.DATA_RECVD, [SO.BUFFER, SO.BUFFER, SO.QUEUE_FIN, SO.RETRANSMIT, SO.TELL_SEND_FINISHED, SO.CHECK_CLOSED])


def test_sending_nothing_written_but_the_fin():
    assert walk(sending.TRANSITIONS, S.READY, SE.CLOSE, SE.SENT, SE.ALL_ACKED) == (
        S.DATA_RECVD, [SO.QUEUE_FIN, SO.TELL_SEND_FINISHED, SO.CHECK_CLOSED])


def test_sending_reset_after_fin():
    assert walk(sending.TRANSITIONS, S.READY, SE.WRITE, SE.SENT, SE.CLOSE, SE.ABORT, SE.WRITE, SE.ALL_ACKED, SE.LOST,
                SE.RESET_LOST, SE.RESET_ACKED, SE.RESET_ACKED) == (
        S.RESET_RECVD, [SO.BUFFER, SO.QUEUE_FIN, SO.QUEUE_RESET, SO.REFUSE_WRITE, SO.RESEND_RESET, SO.CHECK_CLOSED])


@pytest.mark.parametrize("state", [S.READY, S.SEND, S.DATA_SENT])
def test_sending_stop_sending_fails_then_resets_both_parts(state):
    assert walk(sending.TRANSITIONS, state, SE.STOP_SENDING, SE.STOP_SENDING, SE.ABORT) == (
        S.RESET_SENT, [SO.TELL_STOPPED, SO.QUEUE_RESET, SO.ABORT_STREAM])


def test_receiving_fin_first_then_the_bytes_then_eof():
    assert walk(receiving.TRANSITIONS, R.RECV, RE.FIN, RE.DATA, RE.ALL_RECEIVED, RE.DATA, RE.ALL_READ, RE.FIN) == (
        R.DATA_READ, [RO.REASSEMBLE, RO.REASSEMBLE, RO.TELL_EOF, RO.CHECK_CLOSED])


def test_receiving_peer_reset_tells_then_resets_our_side():
    assert walk(receiving.TRANSITIONS, R.SIZE_KNOWN, RE.RESET, RE.DATA, RE.RESET_TOLD, RE.RESET) == (
        R.RESET_READ, [RO.DISCARD, RO.TELL_RESET, RO.ABORT_STREAM])


def test_receiving_stopped_until_the_final_size_is_known():
    assert walk(receiving.TRANSITIONS, R.RECV, RE.CREDIT_LOST, RE.ABORT, RE.DATA, RE.STOP_LOST, RE.CREDIT_LOST,
                RE.ABORT, RE.FIN, RE.STOP_LOST) == (
        R.RESET_READ, [RO.RESEND_CREDIT, RO.DISCARD, RO.QUEUE_STOP, RO.DISCARD, RO.RESEND_STOP, RO.DISCARD,
                       RO.CANCEL_STOP, RO.CHECK_CLOSED])


@pytest.mark.parametrize("state", list(RecvState))
def test_receiving_a_violation_is_an_error_in_every_state(state):
    assert walk(receiving.TRANSITIONS, state, RE.VIOLATION) == (state, [RO.PROTOCOL_ERROR])


@pytest.mark.parametrize("state", sorted(sending.FINISHED, key=lambda s: s.name))
def test_late_events_do_nothing_to_a_finished_sending_part(state):
    for event in SendEvent:
        following, outputs = sending.TRANSITIONS[state, event]
        assert following is state
        assert outputs == ((SO.REFUSE_WRITE,) if event is SE.WRITE else ())


@pytest.mark.parametrize("state", sorted(receiving.FINISHED, key=lambda s: s.name))
def test_late_events_do_nothing_to_a_finished_receiving_part(state):
    for event in RecvEvent:
        following, outputs = receiving.TRANSITIONS[state, event]
        assert following is state
        assert outputs == ((RO.PROTOCOL_ERROR,) if event is RE.VIOLATION else ())


# -- a Stream against recording fakes -----------------------------------------------


class FakeConnection:
    """What a stream calls on its connection, recorded in one log with the handler's calls."""

    def __init__(self, log):
        self.log = log
        self.stats = Counter()

    def stream_ready(self, stream):
        self.log.append("ready")

    def stream_control(self, stream):
        self.log.append("control")

    def stream_consumed(self, stream, n):
        self.log.append(("consumed", n))

    def stream_finished(self, stream):
        self.log.append("finished")


@implementer(IStreamHandler)
class Handler:
    def __init__(self, log):
        self.log = log

    def data_received(self, data):
        self.log.append(("data", bytes(data)))

    def eof_received(self):
        self.log.append("eof")

    def accepted(self):
        self.log.append("accepted")

    def pause_writing(self):
        self.log.append("pause")

    def resume_writing(self):
        self.log.append("resume")

    def send_finished(self):
        self.log.append("send_finished")

    def stream_closed(self):
        self.log.append("closed")

    def stream_failed(self, reason):
        self.log.append(("failed", type(reason).__name__, getattr(reason, "reset_code", None)))


def make_stream(local=True, window=1 << 16, send_buffer=1 << 20):
    log = []
    stream = Stream(FakeConnection(log), 0, 80, local, 1 << 20, window, window, send_buffer)
    handler = Handler(log)
    verifyObject(IStreamHandler, handler)
    stream.set_handler(handler)
    return stream, log


def take_frames(stream, room=500, credit=1 << 20):
    """Every STREAM frame the stream sends now within ``credit`` new bytes, as ``(offset, length, fin, item)``."""
    sent = []
    while stream.has_frames():
        result = stream.next_frame(room, credit)
        if result is None:
            break
        frame_bytes, item, new = result
        credit -= new
        (frame,) = frames.decode_packet(frames.encode_header(1, 2, 0) + frame_bytes).frames
        sent.append((frame.offset, len(frame.data), frame.fin, item))
    return sent


def ack(stream, sent):
    for _, _, _, item in sent:
        stream.on_frame_acked(*item[2:])


def test_the_fin_rides_on_the_frame_with_the_last_byte():
    stream, log = make_stream()
    stream.write(b"x" * 1200)
    stream.close_write()
    assert stream.sending is S.DATA_SENT and stream.send_state == "fin"
    with pytest.raises(StreamError, match="sending side is closed"):
        stream.write(b"more")
    sent = take_frames(stream)
    # 17 bytes of header with the port at offset 0, 15 after it
    assert [(offset, length, fin) for offset, length, fin, _ in sent] == [
        (0, 483, False), (483, 485, False), (968, 232, True),
    ]
    assert log == ["ready", "ready"]


def test_the_fin_waits_for_the_bytes_that_flow_control_holds_back():
    stream, _ = make_stream()
    stream.write(b"y" * 300)
    stream.close_write()
    # No connection credit: only the empty frame that opens the stream, no bytes, so no FIN either.
    assert [(o, n, f) for o, n, f, _ in take_frames(stream, credit=0)] == [(0, 0, False)]
    assert take_frames(stream, credit=0) == []
    sent = take_frames(stream, credit=100)
    assert [(o, n, f) for o, n, f, _ in sent] == [(0, 100, False)]
    sent += take_frames(stream)
    assert [(o, n, f) for o, n, f, _ in sent] == [(0, 100, False), (100, 200, True)]


def test_send_finished_needs_every_byte_and_the_fin_acknowledged():
    stream, log = make_stream()
    stream.write(b"z" * 900)
    stream.close_write()
    first, last = take_frames(stream)
    ack(stream, [last])  # the FIN (with the tail) first
    assert stream.sending is S.DATA_SENT and "send_finished" not in log
    stream.on_frame_lost(*first[3][2:])
    assert stream.sending is S.DATA_SENT and log[-1] == "ready"
    (again,) = take_frames(stream)
    assert again[:3] == (0, first[1], False)
    ack(stream, [again])
    assert stream.sending is S.DATA_RECVD
    assert log[-1] == "send_finished"


def test_reset_after_fin_sends_no_more_bytes_and_ignores_late_acks():
    stream, log = make_stream()
    stream.write(b"r" * 700)
    stream.close_write()
    sent = take_frames(stream)
    del log[:]
    stream.reset(7)
    assert stream.sending is S.RESET_SENT and stream.reset_due and stream.reset_code == 7
    assert stream.receiving is R.STOPPED and stream.stop_due and stream.stop_code == 7
    assert not stream.has_frames()
    assert log == ["control"]  # the application reset it: its handler is not called back
    ack(stream, sent)
    stream.on_frame_lost(*sent[0][3][2:])
    assert log == ["control"] and stream.sending is S.RESET_SENT
    stream.reset_due = False  # the connection sent it
    stream.on_reset_lost()
    assert stream.reset_due and log == ["control", "control"]
    stream.on_reset_acked()
    stream.on_reset_acked()
    assert stream.sending is S.RESET_RECVD
    stream.receive_reset(0, 0)  # the peer's answer to STOP_SENDING: both parts are over
    assert stream.receiving is R.RESET_READ and not stream.stop_due
    assert log[-1] == "finished"


def test_stop_sending_fails_the_stream_then_resets_both_parts():
    stream, log = make_stream()
    stream.write(b"s" * 100)
    take_frames(stream)
    del log[:]
    stream.receive_stop_sending(9)
    assert log == [("failed", "StreamReset", 9), "control"]
    assert stream.sending is S.RESET_SENT and stream.reset_code == 9
    assert stream.receiving is R.STOPPED and stream.stop_code == 9
    stream.receive_stop_sending(9)  # a duplicate
    assert log == [("failed", "StreamReset", 9), "control"]


def test_stop_sending_after_everything_was_acknowledged_is_late():
    stream, log = make_stream()
    stream.write(b"done")
    stream.close_write()
    ack(stream, take_frames(stream))
    assert stream.sending is S.DATA_RECVD
    del log[:]
    stream.receive_stop_sending(3)
    assert log == [] and stream.sending is S.DATA_RECVD and stream.receiving is R.RECV


def test_a_fin_that_arrives_first_is_delivered_after_the_bytes_before_it():
    stream, log = make_stream(local=False)
    stream.receive(5, b"world", True)
    assert stream.receiving is R.SIZE_KNOWN and log == []
    stream.pause_reading()
    stream.receive(0, b"hello", False)
    assert stream.receiving is R.DATA_RECVD and log == []
    stream.resume_reading()
    assert log == [("consumed", 5), ("data", b"hello"), ("consumed", 5), ("data", b"world"), "eof"]
    assert stream.receiving is R.DATA_READ


@pytest.mark.parametrize("frames_in", [
    [(0, b"abc", True), (0, b"abcd", True)],  # a second FIN with another size
    [(0, b"abc", True), (3, b"d", False)],  # a byte beyond the final size
    [(0, b"abcdef", False), (0, b"abc", True)],  # a FIN below bytes already received
    [(0, b"a" * (1 << 16) + b"!", False)],  # beyond the flow control window
], ids=["fin-moved", "beyond-fin", "fin-below-data", "flow-control"])
def test_a_final_size_or_flow_control_violation_resets_the_stream_and_never_raises(frames_in):
    stream, log = make_stream(local=False)
    stream.pause_reading()
    for offset, data, fin in frames_in:
        stream.receive(offset, data, fin)
    assert stream._conn.stats["stream_protocol_violations"] == 1
    assert ("failed", "StreamReset", CODE_PROTOCOL) in log
    assert stream.sending is S.RESET_SENT and stream.reset_code == CODE_PROTOCOL
    assert stream.receiving in (R.STOPPED, R.RESET_READ)


def test_a_reset_with_another_final_size_is_a_violation():
    stream, log = make_stream(local=False)
    stream.pause_reading()
    stream.receive(0, b"12345", True)
    stream.receive_reset(4, 9)
    assert stream._conn.stats["stream_protocol_violations"] == 1
    assert log[0] == ("failed", "StreamReset", CODE_PROTOCOL)


def test_the_peers_reset_is_told_then_our_side_resets_too():
    stream, log = make_stream(local=False)
    stream.pause_reading()
    stream.receive(0, b"abc", False)
    assert stream.receive_reset(4, 10) == 7  # the final size counts for connection flow control
    assert log == [("consumed", 10), ("failed", "StreamReset", 4), "control"]
    assert stream.receiving is R.RESET_READ
    assert stream.sending is S.RESET_SENT and stream.reset_code == 4
    stream.receive(3, b"late", False)
    stream.receive_reset(4, 10)
    assert log[-1] == "control" and stream._conn.stats["stream_protocol_violations"] == 0


def test_a_stopped_part_counts_and_drops_bytes_until_the_final_size():
    stream, log = make_stream(local=False)
    stream.receive(0, b"ab", False)
    del log[:]
    stream.reset(5)
    assert stream.receiving is R.STOPPED and stream.stop_due
    stream.receive(2, b"cdef", False)
    stream.on_stop_lost()
    stream.on_reset_acked()  # our reset arrived before the peer's FIN
    stream.receive(6, b"gh", True)
    assert stream.receiving is R.RESET_READ and not stream.stop_due
    assert log == ["control", ("consumed", 4), "control", ("consumed", 2), "finished"]
    assert not any(entry[0] == "data" for entry in log if isinstance(entry, tuple))


def test_a_reset_answering_our_stop_sending_cancels_a_stop_sending_not_sent_yet():
    stream, _ = make_stream(local=False)
    stream.reset(5)
    assert stream.stop_due
    stream.receive_reset(5, 3)
    assert stream.receiving is R.RESET_READ and not stream.stop_due


def test_losing_the_connection_fails_the_stream_and_ends_both_parts():
    stream, log = make_stream()
    stream.write(b"pending")
    stream.connection_lost(ConnectionClosed("gone"))
    assert log[-1] == ("failed", "ConnectionClosed", None)
    assert stream.sending is S.RESET_RECVD and stream.receiving is R.RESET_READ
    with pytest.raises(StreamError):
        stream.write(b"more")


def test_a_stream_that_finishes_both_ways_closes_once():
    stream, log = make_stream()
    stream.write(b"ping")
    stream.close_write()
    ack(stream, take_frames(stream))
    stream.receive(0, b"pong", True)
    assert log[-4:] == [("data", b"pong"), "eof", "closed", "finished"]
    assert (stream.send_state, stream.recv_state) == ("done", "done")
    assert log.count("closed") == 1 and "send_finished" in log


def test_a_stream_the_peer_reset_before_its_port_arrived_is_never_offered():
    clock = Clock()
    opened = []
    b = StreamConnection(clock, lambda p: None, False, lambda s, port: opened.append(s) or True,
                         random=random.Random(1))

    def packet(number, *body):
        return frames.encode_packet(frames.Packet(9, 0, number, tuple(body)))

    b.packet_received(packet(0, frames.StreamFrame(0, 5, b"later")))
    b.packet_received(packet(1, frames.ResetStream(0, 4, 10)))
    b.packet_received(packet(2, frames.StreamFrame(0, 0, b"first", port=80)))
    assert opened == []  # its listener would get a dead stream and never hear of it again
