"""
Reliable streams and unreliable datagrams over one encrypted session,
modelled on QUIC (RFC 9000 / RFC 9002).  Pure and clock-driven: no sockets.

See docs/streams.md for the wire format and the algorithms.
"""

from .connection import MAX_PACKET, StreamConnection
from .errors import (
    CODE_CANCELLED,
    CODE_PROTOCOL,
    CODE_REFUSED,
    CODE_TOO_MANY_STREAMS,
    ConnectionClosed,
    ConnectionRefused,
    DatagramTooLarge,
    StreamError,
    StreamReset,
)
from .handler import IStreamHandler
from .receiving import RecvState
from .recovery import NewReno
from .sending import SendState
from .stream import Stream

__all__ = [
    "CODE_CANCELLED",
    "CODE_PROTOCOL",
    "CODE_REFUSED",
    "CODE_TOO_MANY_STREAMS",
    "ConnectionClosed",
    "ConnectionRefused",
    "DatagramTooLarge",
    "IStreamHandler",
    "MAX_PACKET",
    "NewReno",
    "RecvState",
    "SendState",
    "Stream",
    "StreamConnection",
    "StreamError",
    "StreamReset",
]
