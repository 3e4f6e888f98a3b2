"""
Twisted's failure conventions for streams, kept in the house hierarchy.

Code written for Twisted expects a client endpoint to fail with a
:class:`twisted.internet.error.ConnectError` (``ConnectionRefusedError``,
``DNSLookupError``, ``TimeoutError``, ...) and a server endpoint to fail
with :class:`~twisted.internet.error.CannotListenError`: ``twistd`` prints
those, ``ClientService`` retries on them, ``HostnameEndpoint`` users trap
them.  ``pilotctl``, the control socket's JSON and ``except NotFound:``
expect a :class:`~pilotproto.errors.PilotError` with a code, a message and
a hint.  Every class here is both, so nobody has to choose.

These live in the node layer, not in :mod:`pilotproto.errors`, because the
ground layer stays free of Twisted (the asyncio SDK imports it).  The node
(:class:`~pilotproto.node.ports.PortTable`) and the daemon's client
(:class:`~pilotproto.control.daemon.DaemonNode`) convert with
:func:`as_connect_error` and :func:`as_listen_error`; both are idempotent.
"""

from __future__ import annotations

from twisted.internet import defer, error

from ..errors import NotFound, NotRunning, PilotError, Timeout
from ..streams.errors import ConnectionRefused


class PilotConnectError(PilotError, error.ConnectError):
    """The stream could not be opened."""

    def __init__(self, message: str | None = None, hint: str | None = None):
        PilotError.__init__(self, message, hint)
        # PilotError.__init__ reached ConnectError.__init__ through the MRO,
        # which took the message for an OS error; say what it really is.
        self.osError = None
        self.args = (self.message,)

    def __str__(self) -> str:
        # PilotError's message, not ConnectError's "An error occurred while connecting: ...".
        return self.message


class StreamRefused(PilotConnectError, ConnectionRefused, error.ConnectionRefusedError):
    """Connection refused: nothing listens on that port of the peer."""


class NoDaemon(PilotConnectError, NotRunning, error.ConnectionRefusedError):
    """No pilot daemon answers on the control socket."""


class UnknownPeer(PilotConnectError, NotFound, error.DNSLookupError, error.UnknownHostError):
    """No such node is known to the beacon, or it is not visible to you."""


class ConnectTimeout(PilotConnectError, Timeout, error.TimeoutError):
    """The stream was not accepted in time."""


class PilotCannotListen(PilotError, error.CannotListenError):
    """Cannot listen on that virtual port."""

    def __init__(self, port: int, message: str | None = None, hint: str | None = None, code: str | None = None):
        if message is None:
            message = self.__class__.__doc__.strip().splitlines()[0]
        # CannotListenError's fields (interface, port, socketError), as twistd
        # and log readers expect them; PilotError's after.  (PilotError.__init__
        # would reach CannotListenError.__init__ with the wrong arguments.)
        error.CannotListenError.__init__(self, "pilot", port, message)
        self.message = message
        if hint is not None:
            self.hint = hint
        if code is not None:
            self.code = code
        self.args = (port, message)

    def __str__(self) -> str:
        # What twistd prints when it cannot start: the reason, and what to do.
        return f"{self.message} ({self.hint})" if self.hint else self.message


#: error code -> the class it becomes on a client endpoint (everything else: PilotConnectError)
_CONNECT_CLASSES = {
    ConnectionRefused.code: StreamRefused,
    NotRunning.code: NoDaemon,
    NotFound.code: UnknownPeer,
    Timeout.code: ConnectTimeout,
}


def as_connect_error(exc: BaseException) -> BaseException:
    """
    ``exc`` as a client endpoint should fail with it.

    A PilotError becomes the ConnectError subclass for its code, with the
    same code, message and hint; Twisted's own timeout becomes
    :class:`ConnectTimeout`.  A ConnectError already, a cancellation
    (``CancelledError`` is what a cancelled connect fails with) and anything
    else (a bug) are returned unchanged.
    """
    if isinstance(exc, error.ConnectError) and isinstance(exc, PilotError):
        return exc
    if isinstance(exc, defer.TimeoutError):
        return ConnectTimeout()
    if not isinstance(exc, PilotError):
        return exc
    converted = _CONNECT_CLASSES.get(exc.code, PilotConnectError)(exc.message, exc.hint)
    converted.code = exc.code
    return converted


def as_listen_error(port: int, exc: BaseException) -> BaseException:
    """``exc`` as a server endpoint for ``port`` should fail with it (bugs stay as they are)."""
    if isinstance(exc, error.CannotListenError) and isinstance(exc, PilotError):
        return exc
    if not isinstance(exc, PilotError):
        return exc
    return PilotCannotListen(port, exc.message, exc.hint, code=exc.code)
