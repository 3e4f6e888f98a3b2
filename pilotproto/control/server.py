"""
The daemon side of the local control socket.

A client writes JSON request lines; each is looked up in an explicit table
of commands (:class:`Command`, built by
:class:`~pilotproto.control.commands.ControlCommands`) and answered with a
JSON response line carrying the same ``id``.  Requests run concurrently: a
slow ``lookup`` does not hold up an ``info`` sent after it, so responses may
leave in any order.  The wire format is specified in ``docs/control.md``
and encoded in :mod:`pilotproto.control.codec`.

A command returns a dict (or None, sent as ``{}``) or a Deferred firing
one.  A PilotError, raised or errbacked, is sent as that error; anything
else is a bug, logged, and sent as ``internal``.  An upgrading command
returns an :class:`Upgrade` instead: after its ok line the connection stops
carrying JSON and belongs to the object the upgrade names (a raw byte pipe
to a stream, or a listener's event feed).  The connection's lifecycle is
the machine in :mod:`pilotproto.control.connection`.
"""

from __future__ import annotations

import inspect
import os
import stat
from typing import Callable, Mapping

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IHalfCloseableProtocol, IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from ..errors import PilotError, StateError
from .codec import MAX_RESPONSE_LINE, BadRequest, decode_request, encode_error, encode_ok
from .connection import Answered, BytesReceived, ControlConnection, Lost, ReadClosed, Upgraded, UpgradeFailed
from .socketfile import SOCKET_MODE, check_socket_path, remove_stale_socket

log = Logger()


@attrs.frozen
class Command:
    """One entry of the command table: ``run(**args)``; ``upgrades``: it returns an :class:`Upgrade`."""

    run: Callable
    upgrades: bool = False


@attrs.frozen
class Upgrade:
    """
    An upgrading command's result: it takes the connection over after the ok line.

    ``take_over(transport)`` is called right after ``data`` was written as
    the ok response and returns the connection's new owner: an object with
    ``dataReceived(bytes)``, ``readConnectionLost()`` (the client half-closed)
    and ``connectionLost(reason)``.  ``abandon()`` is called instead when the
    client hung up before the answer could be sent.
    """

    data: dict
    take_over: Callable
    abandon: Callable | None = None


class Dispatcher:
    """Turns one request line into one answer event (see :mod:`.connection`), never a failure."""

    def __init__(self, commands: Mapping[str, Command]):
        for name, command in commands.items():
            if not isinstance(command, Command):
                raise TypeError(f"command {name!r} must be a Command, not {command!r}")
        self._commands = dict(commands)

    def names(self) -> list[str]:
        return sorted(self._commands)

    def dispatch(self, line: bytes) -> tuple[bool, defer.Deferred]:
        """``(upgrading, Deferred)``: the Deferred fires with Answered, Upgraded or UpgradeFailed."""
        try:
            request = decode_request(line)
            command = self._command(request)
        except BadRequest as e:
            # Every malformed line ends here (the codec has one handler for
            # them all): an answer, no traceback, and the connection goes on.
            return False, defer.succeed(Answered(encode_error(e.request_id, e)))
        except Exception:
            # Not the client's mistake but ours: logged, and still answered.
            log.failure("control request could not be read")
            return False, defer.succeed(Answered(encode_error(None, PilotError(
                "the daemon could not read that request", hint="This is a bug; the daemon log has the traceback."))))
        d = defer.maybeDeferred(command.run, **request.args)
        if command.upgrades:
            d.addCallbacks(self._upgraded, self._upgrade_failed, (request,), None, (request,))
        else:
            d.addCallbacks(self._answered, self._failed, (request,), None, (request,))
        return command.upgrades, d

    def _command(self, request) -> Command:
        command = self._commands.get(request.cmd)
        if command is None:
            raise BadRequest(f"unknown command {request.cmd!r}", request.id, hint="Commands: " + ", ".join(self.names()))
        # Check the arguments before calling, so a TypeError raised by a bug
        # inside the command is not mistaken for the caller's mistake.
        try:
            inspect.signature(command.run).bind(**request.args)
        except TypeError as e:
            raise BadRequest(f"bad arguments for {request.cmd!r}: {e}", request.id,
                             hint=_signature_hint(request.cmd, command.run)) from None
        return command

    def _answered(self, data, request) -> Answered:
        return Answered(self._ok_line(data, request)[0])

    def _ok_line(self, data, request) -> tuple[bytes, bool]:
        """The ok line for ``data``; an error line instead (and False) if it cannot be sent."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            log.error("control command {cmd!r} returned {kind}, not a dict", cmd=request.cmd, kind=type(data).__name__)
            return encode_error(request.id, PilotError(f"command {request.cmd!r} returned no result object")), False
        try:
            line = encode_ok(request.id, data)
        except (TypeError, ValueError) as e:
            log.error("control command {cmd!r} returned unencodable data: {e}", cmd=request.cmd, e=e)
            return encode_error(request.id, PilotError(f"command {request.cmd!r} returned a result that is not JSON")), False
        if len(line) > MAX_RESPONSE_LINE:
            return encode_error(request.id, PilotError(f"the result of {request.cmd!r} is too large to send")), False
        return line, True

    def _failed(self, failure, request) -> Answered:
        return Answered(self._error_line(failure, request))

    def _upgraded(self, upgrade, request):
        if not isinstance(upgrade, Upgrade):
            log.error("control command {cmd!r} returned {kind}, not an Upgrade", cmd=request.cmd,
                      kind=type(upgrade).__name__)
            return UpgradeFailed(encode_error(request.id, PilotError(f"command {request.cmd!r} did not upgrade")))
        line, ok = self._ok_line(upgrade.data, request)
        if not ok:
            if upgrade.abandon is not None:
                upgrade.abandon()
            return UpgradeFailed(line)
        return Upgraded(line, upgrade)

    def _upgrade_failed(self, failure, request) -> UpgradeFailed:
        return UpgradeFailed(self._error_line(failure, request))

    def _error_line(self, failure, request) -> bytes:
        if failure.check(PilotError):
            return encode_error(request.id, failure.value)
        log.failure("control command {cmd!r} failed", failure, cmd=request.cmd)
        return encode_error(request.id, PilotError(
            f"{request.cmd!r} failed inside the daemon: {failure.getErrorMessage()}",
            hint="This is a bug; the daemon log has the traceback."))


def _signature_hint(cmd: str, run) -> str:
    params = [
        p.name if p.default is inspect.Parameter.empty else f"{p.name}?"
        for p in inspect.signature(run).parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    return f"{cmd!r} takes args: {{{', '.join(params)}}}" if params else f"{cmd!r} takes no args"


@implementer(IHalfCloseableProtocol)
class ControlProtocol(Protocol):
    """One client connection; thin: Twisted's callbacks become the machine's events."""

    def __init__(self, dispatcher: Dispatcher):
        self._dispatcher = dispatcher
        self.connection: ControlConnection | None = None

    def connectionMade(self):
        self.connection = ControlConnection(self.transport, self._dispatcher)
        self.factory.connections.add(self)

    def dataReceived(self, data: bytes):
        self.connection.feed(BytesReceived(data))

    def readConnectionLost(self):
        self.connection.feed(ReadClosed())

    def writeConnectionLost(self):
        """Our write side closed; the read side decides when we are done."""

    def connectionLost(self, reason=None):
        self.factory.connections.discard(self)
        self.connection.feed(Lost(reason))


class ControlServerFactory(Factory):
    noisy = False  # the daemon log is for the network, not for every pilotctl call

    def __init__(self, commands: Mapping[str, Command]):
        self.dispatcher = Dispatcher(commands)
        #: open connections, so that a stopping daemon can close them
        self.connections: set[ControlProtocol] = set()

    def buildProtocol(self, addr):
        protocol = ControlProtocol(self.dispatcher)
        protocol.factory = self
        return protocol

    def close_connections(self) -> None:
        """Close every connection (requests, pipes, listeners): the daemon is going away."""
        for protocol in list(self.connections):
            protocol.transport.loseConnection()


def listen_control_socket(reactor, path: str, factory: ControlServerFactory) -> IListeningPort:
    """
    Listen for control connections at ``path`` with mode 0600.

    A socket file left by a daemon that died is removed; one that a live
    daemon answers on raises AlreadyRunning.
    """
    check_socket_path(path)
    remove_stale_socket(path)
    port = reactor.listenUNIX(path, factory, mode=SOCKET_MODE, wantPID=False)
    # listenUNIX binds with the umask and chmods afterwards; the home is 0700
    # so nobody else can reach the socket in between, and we verify the end
    # result rather than trust it.
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode != SOCKET_MODE:
        port.stopListening()
        raise StateError(f"control socket {path} has mode {mode:o}, not {SOCKET_MODE:o}")
    return port
