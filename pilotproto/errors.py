"""
One error hierarchy for the whole stack.

Every error carries a stable machine-readable ``code`` (what ``pilotctl
--json`` prints and what the control socket sends), a message a person can
act on, and an optional ``hint`` saying what to do next.  The class
docstring's first line is the default message.

The errors a caller meets when connecting also subclass the builtin that
asyncio and socket code already catches (``NotRunning`` and
``ConnectionRefused`` are ``ConnectionRefusedError``, ``Timeout`` is
``TimeoutError``, ``PermissionDenied`` is ``PermissionError``, ``NotFound``
is ``LookupError``), so ``except OSError:`` in an agent framework sees them
too.  The Twisted flavours (``ConnectError``...) are in
:mod:`pilotproto.node.failures`, above this Twisted-free ground.
"""

from __future__ import annotations

#: code -> the most general class that declares it (filled in as classes are defined)
_BY_CODE: dict[str, type] = {}


class PilotError(Exception):
    """Something went wrong in pilotproto."""

    code = "internal"
    hint: str | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "code" in cls.__dict__:
            _BY_CODE.setdefault(cls.code, cls)

    def __init__(self, message: str | None = None, hint: str | None = None):
        if message is None:
            message = (self.__class__.__doc__ or self.code).strip().splitlines()[0]
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def to_dict(self) -> dict:
        return {
            "status": "error",
            "code": self.code,
            "message": self.message,
            "hint": self.hint,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "PilotError":
        """Rebuild the most specific error class for a wire error object."""
        code = data.get("code") or "internal"
        message = data.get("message") or code
        try:
            err = _BY_CODE.get(code, PilotError)(message, data.get("hint"))
        except TypeError:
            # A class with its own constructor: keep the code, lose the type.
            err = PilotError(message, data.get("hint"))
        err.code = code
        return err


class InvalidArgument(PilotError, ValueError):
    """An argument was not valid."""

    code = "invalid_argument"


class NotFound(PilotError, LookupError):
    """No such node is known to the beacon, or it is not visible to you."""

    code = "not_found"
    hint = "Check the name; a private node is visible only to nodes it trusts."


class NotRunning(PilotError, ConnectionRefusedError):
    """The pilot daemon is not running."""

    code = "not_running"
    hint = "Start it with: pilotctl daemon start --hostname NAME --beacon HOST:PORT"


class AlreadyRunning(PilotError):
    """A pilot daemon is already running with this home."""

    code = "already_running"
    hint = "Stop it with 'pilotctl daemon stop', or use another --home."


class Timeout(PilotError, TimeoutError):
    """The operation timed out."""

    code = "timeout"


class Unavailable(PilotError):
    """The beacon could not be reached."""

    code = "unavailable"
    hint = "Check the --beacon address and that the beacon is running."


class NameTaken(PilotError):
    """That hostname is already held by another node's key."""

    code = "name_taken"
    hint = "Choose another --hostname; a name belongs to the first key that registers it."


class NotRegistered(PilotError):
    """This node is not registered with a beacon yet."""

    code = "not_registered"
    hint = "Wait a moment, and check 'pilotctl info' and the daemon log."


class NotTrusted(PilotError):
    """This node does not trust that peer."""

    code = "not_trusted"
    hint = "Ask for trust with: pilotctl handshake PEER \"reason\", and wait for the peer to approve."


class Refused(PilotError):
    """The request was refused."""

    code = "refused"


class ConnectionRefused(Refused, ConnectionRefusedError):
    """Connection refused: nothing listens on that port of the peer."""

    code = "connection_refused"
    hint = "Check the port number, and that a service listens on it on the peer (pilotctl expose PORT TCPPORT, pilotctl listen PORT, or a pilot:PORT server endpoint)."


class RateLimited(PilotError):
    """Too many requests: the beacon asks you to slow down."""

    code = "rate_limited"
    hint = "Wait and try again; the node does so by itself."

    def __init__(self, message: str | None = None, hint: str | None = None, retry_after: float = 0):
        super().__init__(message, hint)
        #: seconds until trying again may succeed (0: not said)
        self.retry_after = retry_after


class StateError(PilotError):
    """The node's home holds a file that cannot be used."""

    code = "corrupt_state"
    hint = "Move the file aside yourself if you mean to start over; pilot never replaces an identity silently."


class PermissionDenied(PilotError, PermissionError):
    """Permission denied."""

    code = "permission_denied"


class Interrupted(PilotError):
    """Interrupted."""

    code = "interrupted"


class ProtocolError(PilotError):
    """The peer broke the protocol."""

    code = "protocol_error"
