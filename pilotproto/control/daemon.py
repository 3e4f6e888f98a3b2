"""
``DaemonNode``: a pilot node in another process, behind its control socket.

It provides :class:`~pilotproto.interfaces.IPilotNode`, as
:class:`~pilotproto.node.service.PilotNode` does, so the ``pilot:``
endpoints, ``pilotctl`` and the SDKs are written once against the interface.
Each call is one control connection (:mod:`pilotproto.control.link`); a
stream is a control connection upgraded to a raw pipe (``connect``, or
``listen`` + ``accept``; ``docs/control.md``).

Failures follow Twisted's conventions (:mod:`pilotproto.node.failures`):
``dial`` fails with ConnectError subclasses (no daemon is a
``ConnectionRefusedError`` with a hint), ``listen`` with
``CannotListenError``.  ``twistd web --listen pilot:80`` only stops when the
endpoint's Deferred has *already* failed when ``listen`` returns, so
``listen`` asks the daemon synchronously (a blocking exchange, bounded in
time) unless the daemon runs in this very process, where blocking the
reactor thread would deadlock.

A ``pilot:`` server survives a daemon restart: when its listen connection
drops without ``stopListening``, it listens again once the daemon is back,
retrying with backoff through a ``ClientService``, and says so in the log.
"""

from __future__ import annotations

import base64
import enum
import os
import socket

import attrs

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from ..common import timeouts
from ..common.home import CONTROL_SOCKET
from ..common.names import check_port
from ..errors import InvalidArgument, PilotError
from ..interfaces import IPilotNode
from ..node.failures import as_connect_error, as_listen_error
from ..streams.transport import PilotAddress
from .card_commands import DaemonCards
from .mcp_commands import DaemonMcp
from .client import ControlClient
from .codec import MAX_RESPONSE_LINE, BadResponse, decode_event
from .link import ControlEndpoint, PipedProtocol, call
from .message_commands import subscribe_through
from .socketfile import peer_pid

#: how soon a pilot: server tries to listen again after its daemon went, and how much later at most
RELISTEN_FIRST_DELAY = 0.5
RELISTEN_MAX_DELAY = 15.0

log = Logger()


def _address(hostname, address) -> tuple:
    """A peer named in the daemon's answer: ``peer`` is its hostname, or its address when it has none."""
    address = address if isinstance(address, str) else ""
    hostname = hostname if isinstance(hostname, str) and hostname != address else None
    return hostname, address


@implementer(IPilotNode)
class DaemonNode(DaemonCards, DaemonMcp):
    """The node whose daemon listens at ``<home>/control.sock``."""

    def __init__(self, reactor, home: str, socket_path: str | None = None):
        self.reactor = reactor
        self.home = home
        self.socket_path = socket_path or os.path.join(home, CONTROL_SOCKET)

    def __repr__(self):
        return f"<DaemonNode {self.socket_path}>"

    def _call(self, cmd: str, args: dict | None = None, timeout: float = timeouts.CONTROL_COMMAND):
        return call(self.reactor, self.socket_path, self.home, cmd, args or {}, timeout)

    def _endpoint(self, cmd: str, args: dict, timeout: float, addresses) -> ControlEndpoint:
        return ControlEndpoint(self.reactor, self.socket_path, self.home, cmd, args, timeout, addresses)

    # -- commands ----------------------------------------------------------------------

    def info(self):
        return self._call("info")

    def lookup(self, target):
        return self._call("lookup", {"target": target})

    def ping(self, target, count=4, interval=1.0, timeout=2.0, payload=b""):
        try:
            text = payload.decode("utf-8")
        except (AttributeError, UnicodeDecodeError):
            return defer.fail(InvalidArgument("through the daemon, a ping payload is UTF-8 text (as bytes)"))
        args = {"target": target, "count": count, "interval": interval, "reply_timeout": timeout, "payload": text}
        # The pings take their time, plus a tunnel handshake if there is no session yet.
        wait = count * interval + timeout + timeouts.TUNNEL_HANDSHAKE
        return self._call("ping", args, timeout=wait)

    def peers(self):
        return self._call("peers")

    def handshake(self, target, reason):
        return self._call("handshake", {"target": target, "reason": reason}, timeout=timeouts.CONTROL_CONNECT)

    def pending(self):
        return self._call("pending")

    def approve(self, peer):
        return self._call("approve", {"peer": peer})

    def reject(self, peer):
        return self._call("reject", {"peer": peer})

    def trusted(self):
        return self._call("trust")

    def revoke(self, peer):
        return self._call("revoke", {"peer": peer})

    def recv(self, count=None, timeout=0):
        wait = (timeout if isinstance(timeout, (int, float)) else 0) + timeouts.CONTROL_COMMAND
        return self._call("recv", {"count": count, "timeout": timeout}, timeout=wait)

    # -- messages and events: one control call each (subscribe: an upgraded feed)

    def send_message(self, target, data, wait=10):
        timeout = _number(wait) + timeouts.CONTROL_CONNECT
        return defer.maybeDeferred(lambda: self._call("send_message", {"target": target, "data": _b64(data), "wait": wait}, timeout))

    def inbox(self, after=0, count=1000, timeout=0, kind=None):
        args = {"after": after, "count": count, "timeout": timeout, "kind": kind}
        return self._call("inbox", args, timeout=_number(timeout) + timeouts.CONTROL_COMMAND)

    def inbox_delete(self, seqs):
        return self._call("inbox_delete", {"seqs": list(seqs)})

    def outbox(self, id=None, wait=0, count=100):
        args = {"id": id, "wait": wait, "count": count}
        return self._call("outbox", args, timeout=_number(wait) + timeouts.CONTROL_COMMAND)

    def publish(self, topic, data):
        return defer.maybeDeferred(lambda: self._call("publish", {"topic": topic, "data": _b64(data)}))

    def subscribe(self, pattern, after, on_event):
        def endpoint_for(cmd, args, addresses):
            return self._endpoint(cmd, args, timeouts.CONTROL_COMMAND, addresses)

        return subscribe_through(endpoint_for, pattern, after, on_event)

    # -- forwards and exposes: one control call each

    def forward(self, bind, local_port, target, port):
        return self._call("forward", {"bind": bind, "local_port": local_port, "target": target, "port": port})

    def forwards(self):
        return self._call("forwards")

    def unforward(self, bind, local_port):
        return self._call("unforward", {"bind": bind, "local_port": local_port})

    def expose(self, port, host, tcp_port, allow=()):
        args = {"port": port, "host": host, "tcp_port": tcp_port, "allow": list(allow or ())}
        # Names in allow may need the beacon (a lookup): as long as a stream's connect may take.
        return self._call("expose", args, timeout=timeouts.CONTROL_CONNECT)

    def exposes(self):
        return self._call("exposes")

    def unexpose(self, port):
        return self._call("unexpose", {"port": port})

    def shutdown(self):
        return self._call("shutdown")

    # -- streams -----------------------------------------------------------------------

    def dial(self, target, port, factory):
        """A stream to ``port`` on ``target``; fires with the connected protocol."""
        check_port(port)

        def addresses(data):
            host = PilotAddress(*_address(data.get("local_hostname"), data.get("local_address")), 0)
            return host, PilotAddress(*_address(data.get("peer"), data.get("address")), port)

        endpoint = self._endpoint("connect", {"target": target, "port": port}, timeouts.CONTROL_CONNECT, addresses)
        return endpoint.connect(factory).addErrback(_connect_failed)

    def listen(self, port, factory):
        """Serve ``factory`` on ``port`` through the daemon; fires with an IListeningPort.

        Already failed (CannotListenError) when this returns if the daemon is
        in another process and refuses or is missing."""
        check_port(port)
        listening = DaemonListeningPort(self, port, factory)
        return listening.start().addErrback(_listen_failed, port)

    def accept(self, stream_id, host: PilotAddress, factory) -> defer.Deferred:
        """Claim an incoming stream announced by a listen connection and run ``factory``'s protocol on it."""

        def addresses(data):
            return host, PilotAddress(*_address(data.get("peer"), data.get("address")), 0)

        return self._endpoint("accept", {"stream_id": stream_id}, timeouts.CONTROL_COMMAND, addresses).connect(factory)

    def listen_endpoint(self, port: int) -> ControlEndpoint:
        """The endpoint of a ``listen`` connection for ``port`` (its protocol reads the event feed)."""

        def addresses(data):
            host = PilotAddress(*_address(data.get("hostname"), data.get("address")), port)
            return host, host

        return self._endpoint("listen", {"port": port}, timeouts.CONTROL_COMMAND, addresses)

    def listen_now(self, port: int, feed_factory) -> bool:
        """
        Listen synchronously, blocking for at most ``CONTROL_COMMAND``
        seconds, if the daemon is another process: True once ``feed_factory``'s
        protocol runs on the listen connection.  False if the daemon may be
        this very process (whose reactor we would block): listen
        asynchronously instead.  Raises the PilotError that stopped it.
        """
        client = ControlClient(self.home, self.socket_path)
        sock = client.connect(timeouts.CONTROL_COMMAND)
        if peer_pid(sock) in (None, os.getpid()):
            sock.close()  # the daemon sees a connection that asked nothing
            return False
        stream = client.upgrade("listen", {"port": port}, timeouts.CONTROL_COMMAND, sock=sock)
        host = PilotAddress(*_address(stream.info.get("hostname"), stream.info.get("address")), port)
        piped = PipedProtocol(feed_factory.buildProtocol(host), host, host)
        try:
            stream.sock.setblocking(False)
            self.reactor.adoptStreamConnection(stream.sock.fileno(), socket.AF_UNIX, Factory.forProtocol(lambda: piped))
        finally:
            stream.close()  # the reactor holds its own copy of the descriptor
        if stream.early:
            piped.dataReceived(stream.early)
        return True


def _b64(data) -> str:
    if not isinstance(data, bytes):
        raise InvalidArgument("data must be bytes")
    return base64.b64encode(data).decode("ascii")


def _number(value) -> float:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _connect_failed(failure):
    converted = as_connect_error(failure.value)
    return failure if converted is failure.value else Failure(converted)


def _listen_failed(failure, port):
    converted = as_listen_error(port, failure.value)
    return failure if converted is failure.value else Failure(converted)


class _Feed(LineOnlyReceiver):
    """The protocol of a ``listen`` connection: one event line per incoming stream."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_RESPONSE_LINE

    def __init__(self, listening: "DaemonListeningPort"):
        self._listening = listening

    def connectionMade(self):
        self._listening.feed(FeedUp(self))

    def lineReceived(self, line):
        try:
            event = decode_event(line)
        except BadResponse as e:
            log.error("{e}: {line!r}", e=e.message, line=line[:200])
            return
        self._listening.incoming(event)

    def lineLengthExceeded(self, line):
        log.error("the daemon sent a listener event longer than {n} bytes", n=self.MAX_LENGTH)
        self.transport.loseConnection()

    def connectionLost(self, reason=None):
        self._listening.feed(FeedLost(self))


@implementer(IStreamClientEndpoint)
class _Relisten:
    """The listen endpoint as the ClientService sees it: says why an attempt failed."""

    def __init__(self, endpoint: ControlEndpoint, port: int):
        self._endpoint = endpoint
        self._port = port

    def connect(self, factory):
        def failed(failure):
            log.info("pilot port {port}: cannot listen through the daemon yet: {why}", port=self._port,
                     why=failure.getErrorMessage())
            return failure

        return self._endpoint.connect(factory).addErrback(failed)


# -- the listening port's lifecycle ------------------------------------------------------


class Listening(enum.Enum):
    STARTING = "asking the daemon to listen"
    LISTENING = "listening (the first listen connection)"
    WAITING = "the daemon went: trying to listen again"
    RELISTENED = "listening again (a ClientService connection)"
    CLOSING = "stopping: the listen connection closes"
    STOPPING = "stopping: the ClientService stops"
    STOPPED = "stopped"


@attrs.frozen
class FeedUp:
    """A listen connection is up (the daemon said ok)."""

    feed: object


@attrs.frozen
class FeedLost:
    feed: object


@attrs.frozen
class Stop:
    """``stopListening`` was called."""


@attrs.frozen
class Stopped:
    """The ClientService finished stopping."""


@implementer(IListeningPort)
class DaemonListeningPort:
    """
    ``port`` served through the daemon: a ``listen`` connection whose events
    become ``accept`` connections running ``factory``'s protocols.  Lost
    without :meth:`stopListening` (the daemon went), it listens again
    through a ClientService, with backoff, until it is stopped.  Its
    lifecycle is :data:`LISTENING_TRANSITIONS`.
    """

    def __init__(self, daemon: DaemonNode, port: int, factory):
        self._daemon = daemon
        self.port = port
        self.factory = factory
        self.state = Listening.STARTING
        self._host = PilotAddress(None, "", port)
        #: the live listen connection's protocol, if any
        self._feed = None
        self._relisten: ClientService | None = None
        self._stop_waiters: list[defer.Deferred] = []

    def __repr__(self):
        return f"<DaemonListeningPort pilot:{self.port} through {self._daemon.socket_path}>"

    def feed(self, event) -> None:
        """The one entry point: look the transition up, move, run its outputs."""
        self.state, outputs = LISTENING_TRANSITIONS[(self.state, type(event))]
        for output in outputs:
            output(self, event)

    def _feed_factory(self) -> Factory:
        return Factory.forProtocol(lambda: _Feed(self))

    def start(self) -> defer.Deferred:
        """Listen; the Deferred has already fired when the daemon is another process."""
        self.factory.doStart()
        try:
            listening = self._daemon.listen_now(self.port, self._feed_factory())
        except PilotError as e:
            self.factory.doStop()
            return defer.fail(e)
        if listening:
            return defer.succeed(self)

        def failed(failure):
            self.factory.doStop()
            return failure

        d = self._daemon.listen_endpoint(self.port).connect(self._feed_factory())
        return d.addCallbacks(lambda _: self, failed)

    def incoming(self, event: dict) -> None:
        """An event line from the listen connection: accept the stream it announces."""
        if event.get("event") != "incoming":
            return  # clients ignore events they do not know
        d = self._daemon.accept(event.get("stream_id"), self._host, self.factory)

        def failed(failure):
            failure.trap(PilotError)
            log.warn("could not accept an incoming stream on pilot port {port}: {e}", port=self.port,
                     e=failure.getErrorMessage())

        d.addErrback(failed)

    # -- IListeningPort ----------------------------------------------------------------

    def startListening(self):
        """Listening began when this object was made."""

    def stopListening(self) -> defer.Deferred:
        d = defer.Deferred()
        self._stop_waiters.append(d)
        self.feed(Stop())
        return d

    def getHost(self) -> PilotAddress:
        return self._host

    # -- outputs ------------------------------------------------------------------------

    def _remember(self, event: FeedUp) -> None:
        self._feed = event.feed
        self._host = event.feed.transport.getHost()

    def _forget(self, event: FeedLost) -> None:
        if event.feed is self._feed:
            self._feed = None

    def _say_listening_again(self, event) -> None:
        log.info("listening again on pilot port {port}", port=self.port)

    def _say_lost(self, event) -> None:
        log.warn("lost the pilot daemon at {path}: not listening on pilot port {port} until it is back",
                 path=self._daemon.socket_path, port=self.port)

    def _start_relisten(self, event) -> None:
        # From now on the ClientService keeps a listen connection up,
        # reconnecting (with backoff) whenever it drops.
        self._relisten = ClientService(
            _Relisten(self._daemon.listen_endpoint(self.port), self.port), self._feed_factory(),
            retryPolicy=backoffPolicy(RELISTEN_FIRST_DELAY, RELISTEN_MAX_DELAY), clock=self._daemon.reactor,
        )
        self._relisten.startService()

    def _close_feed(self, event) -> None:
        self._feed.transport.loseConnection()

    def _stop_relisten(self, event) -> None:
        self._relisten.stopService().addCallback(lambda _: self.feed(Stopped()))

    def _finish(self, event) -> None:
        self.factory.doStop()
        self._release_waiters(event)

    def _release_waiters(self, event) -> None:
        waiters, self._stop_waiters = self._stop_waiters, []
        for waiter in waiters:
            waiter.callback(None)


_L = DaemonListeningPort
STARTING, LISTENING, WAITING, RELISTENED, CLOSING, STOPPING, STOPPED = Listening

#: (state, event type) -> (next state, outputs); every pair is listed.
LISTENING_TRANSITIONS = {
    (STARTING, FeedUp): (LISTENING, [_L._remember]),
    (STARTING, FeedLost): (STARTING, []),  # cannot happen: up comes first
    (STARTING, Stop): (STARTING, []),  # cannot happen: nobody holds the port yet
    (STARTING, Stopped): (STARTING, []),

    (LISTENING, FeedUp): (LISTENING, [_L._remember]),  # cannot happen: one connection
    (LISTENING, FeedLost): (WAITING, [_L._forget, _L._say_lost, _L._start_relisten]),
    (LISTENING, Stop): (CLOSING, [_L._close_feed]),
    (LISTENING, Stopped): (LISTENING, []),

    (WAITING, FeedUp): (RELISTENED, [_L._remember, _L._say_listening_again]),
    (WAITING, FeedLost): (WAITING, [_L._forget]),
    (WAITING, Stop): (STOPPING, [_L._stop_relisten]),
    (WAITING, Stopped): (WAITING, []),

    (RELISTENED, FeedUp): (RELISTENED, [_L._remember]),
    (RELISTENED, FeedLost): (WAITING, [_L._forget, _L._say_lost]),  # the ClientService retries
    (RELISTENED, Stop): (STOPPING, [_L._stop_relisten]),
    (RELISTENED, Stopped): (RELISTENED, []),

    (CLOSING, FeedUp): (CLOSING, []),
    (CLOSING, FeedLost): (STOPPED, [_L._forget, _L._finish]),
    (CLOSING, Stop): (CLOSING, []),  # its waiter is released with the first one's
    (CLOSING, Stopped): (CLOSING, []),

    (STOPPING, FeedUp): (STOPPING, []),  # the stopping ClientService closes it
    (STOPPING, FeedLost): (STOPPING, [_L._forget]),
    (STOPPING, Stop): (STOPPING, []),
    (STOPPING, Stopped): (STOPPED, [_L._finish]),

    (STOPPED, FeedUp): (STOPPED, []),
    (STOPPED, FeedLost): (STOPPED, []),
    (STOPPED, Stop): (STOPPED, [_L._release_waiters]),
    (STOPPED, Stopped): (STOPPED, []),
}

del _L
