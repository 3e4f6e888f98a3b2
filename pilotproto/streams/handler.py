"""
What a stream tells its user (:class:`IStreamHandler`), and the kinds of
item a sent packet carries, for the connection to act on when the packet is
acknowledged or lost (the first element of each item tuple).
"""

from __future__ import annotations

from zope.interface import Interface

#: what a sent packet carried, for the connection to act on when it is acked or lost
K_STREAM, K_MAX_DATA, K_MAX_STREAM_DATA, K_RESET, K_STOP, K_ACK_FREQUENCY = range(6)


class IStreamHandler(Interface):
    """What a stream tells its user (a StreamTransport, or a test)."""

    def data_received(data):
        "bytes arrived in order"

    def eof_received():
        "the peer finished sending; every byte before it was delivered"

    def accepted():
        "the peer accepted a stream this side opened"

    def pause_writing():
        "the send buffer is full: stop writing"

    def resume_writing():
        "the send buffer drained: writing may resume"

    def send_finished():
        "every byte written and the FIN were acknowledged by the peer"

    def stream_closed():
        "both directions finished cleanly (our FIN acknowledged, theirs delivered)"

    def stream_failed(reason):
        "the stream was reset, refused, or its connection closed; reason is a PilotError"
