"""
Errors of the stream layer, and the application error codes carried by
RESET_STREAM and STOP_SENDING frames.
"""

from __future__ import annotations

from ..errors import ConnectionRefused, PilotError  # noqa: F401  (re-exported: the stream layer raises it)

#: the application closed or aborted the stream without giving a reason
CODE_CANCELLED = 0
#: nobody listens on the destination port
CODE_REFUSED = 1
#: the peer broke flow control or sent a frame that does not fit the stream
CODE_PROTOCOL = 2
#: the receiver already holds as many streams as it accepts
CODE_TOO_MANY_STREAMS = 3


class StreamError(PilotError):
    """The stream failed."""

    code = "stream_error"


class StreamReset(StreamError):
    """The stream was reset."""

    code = "stream_reset"

    def __init__(self, message: str | None = None, hint: str | None = None, reset_code: int = CODE_CANCELLED):
        super().__init__(message, hint)
        self.reset_code = reset_code


class ConnectionClosed(StreamError):
    """The session carrying this stream was closed."""

    code = "connection_closed"


class DatagramTooLarge(StreamError, ValueError):
    """The datagram does not fit in one packet."""

    code = "datagram_too_large"
    hint = "Keep datagrams within StreamConnection.max_datagram bytes, or use a stream."


def error_for_code(code: int, who: str) -> PilotError:
    """The exception a stream fails with when ``who`` resets it with ``code``."""
    if code == CODE_REFUSED:
        return ConnectionRefused()
    if code == CODE_TOO_MANY_STREAMS:
        return StreamReset(f"{who} holds too many streams and refused this one", reset_code=code)
    if code == CODE_PROTOCOL:
        return StreamReset(f"{who} reset the stream: it broke the stream protocol", reset_code=code)
    return StreamReset(f"{who} reset the stream (code {code})", reset_code=code)
