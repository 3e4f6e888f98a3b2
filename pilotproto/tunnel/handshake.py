"""
One peer's tunnel: the handshake and session lifecycle as an Automat machine.

States say two things: whether a usable session exists, and whether an
initiation of ours is outstanding::

    idle         no session, nothing outstanding
    initiating   no session, our initiation outstanding (retrying)
    established  a session, nothing outstanding
    rekeying     a session, and our initiation for its successor outstanding
    stopped      torn down for good

Sessions live in three slots, as in WireGuard.  ``current`` seals what we
send.  ``previous`` still opens packets sealed before a rekey that are still
in flight.  ``next`` is a session we answered as responder and may not send
on yet: the responder only trusts the initiator's keys once a data packet
has arrived under them (key confirmation), and the initiator sends one (a
keepalive, if it has nothing else) as soon as it has the response.  The
initiator may send at once: the response proved the responder has the keys.

Simultaneous open: when both sides initiate at once, the initiation from
the side whose static X25519 public key is larger wins.  The winner ignores
the loser's initiation; the loser gives up its own and answers the
winner's.  Both then converge on the winner's one session, where the rule
"accept whichever initiation arrives while yours is outstanding" would make
two sessions that each side sees as the responder of, with neither able to
send first.  The decision is made before the machine is fed, in
:meth:`PeerTunnel.initiation_received`.

Lost handshake messages are retried with exponential backoff plus jitter
(1 s, 2 s, then every 3 s), each retry a fresh initiation, until an
overall deadline, when waiting callers get :class:`~pilotproto.errors.Timeout`.
"""

from __future__ import annotations

import collections

import attrs
from automat import MethodicalMachine
from twisted.internet.defer import Deferred

from ..common.wiring import check_provides
from ..errors import Timeout
from ..wire.tunnel import TunnelCookieReply, TunnelResponse
from .cookie import CookieJar, stamp_macs
from .errors import KeyExpired, ReplayError, TunnelClosed, TunnelError
from .events import ITunnelOwner
from .ik import ConsumedInitiation, LocalKeys, create_initiation, create_response, consume_response, remote_static_for
from .record import Limits, Session


@attrs.frozen
class HandshakeTimers:
    first_retry: float = 0.5
    # Capped low: on a lossy path (the relay crosses four routers, and at
    # 10 % loss each a try gets through only two times in three) the next
    # try must come soon, so a connect sees about nine tries in its 15 s;
    # a try is two small datagrams.
    max_retry: float = 2.0
    jitter: float = 0.25
    deadline: float = 20.0
    # The responder of a session rekeys only this long after the initiator
    # would have, so the two sides do not both start a handshake at once.
    responder_rekey_grace: float = 30.0
    max_queued: int = 256


class PeerTunnel:
    """
    The tunnel to one peer, keyed by its Ed25519 public key.

    Collaborators: ``owner`` (:class:`~pilotproto.tunnel.events.ITunnelOwner`)
    puts packets on the peer's path and hears when a session comes up or
    goes down; ``indices`` is the endpoint's receiver-index table;
    ``randbytes(n)`` gives ephemeral keys, indices and jitter;
    ``timestamps()`` gives strictly increasing 12-byte timestamps.  Data
    is not reported from here: :meth:`data_packet_received` returns the plaintext
    to the endpoint, which knows the packet's source and reports both.
    """

    _machine = MethodicalMachine()

    def __init__(
        self,
        *,
        local: LocalKeys,
        remote_ed25519: bytes,
        clock,
        owner,
        indices,
        randbytes,
        timestamps,
        timers: HandshakeTimers = HandshakeTimers(),
        limits: Limits = Limits(),
        stats: collections.Counter | None = None,
    ):
        self.local = local
        self.remote_ed25519 = remote_ed25519
        self.remote_x25519 = remote_static_for(remote_ed25519)
        self._clock = clock
        self._owner = check_provides(owner, ITunnelOwner, "PeerTunnel.owner")
        self._indices = indices
        self._randbytes = randbytes
        self._timestamps = timestamps
        self.timers = timers
        self.limits = limits
        self.stats = stats if stats is not None else collections.Counter()
        self._cookies = CookieJar(self.remote_x25519, clock)
        self.previous: Session | None = None
        self.current: Session | None = None
        self.next: Session | None = None
        self._pending = None
        self._attempt = 0
        self._retry_call = None
        self._deadline_call = None
        self._expiry_call = None
        self._waiters: list[Deferred] = []
        self._queue: collections.deque[bytes] = collections.deque()

    # -- the API the node uses -------------------------------------------

    def connect(self) -> Deferred:
        """Fires with this tunnel once a session can carry data, or fails with Timeout."""
        d = Deferred()
        self._waiters.append(d)
        self.start()
        return d

    def send_data(self, plaintext: bytes) -> None:
        """Seal and send ``plaintext``; queue it (bounded) while no session is usable."""
        self.send_data_many((plaintext,))

    def send_data_many(self, plaintexts) -> None:
        """:meth:`send_data` for one burst of the stream layer, in order: limits
        and rekey checked once, the packets handed to the owner together (the
        path and socket work once a burst: one GSO send)."""
        session = self.current
        if session is not None and session.can_seal_many(len(plaintexts)):
            packets = session.seal_many(plaintexts)
            self.stats["data_sent"] += len(packets)
            self._owner.tunnel_send_many(self.remote_ed25519, packets)
            if self._rekey_wanted():
                self.rekey_due()
            return
        if session is not None:
            self.current_expired()
        for plaintext in plaintexts:
            if len(self._queue) >= self.timers.max_queued:
                self._queue.popleft()
                self.stats["queue_overflow"] += 1
            self._queue.append(plaintext)
        self.start()

    def outstanding_index(self) -> int | None:
        """The index of our initiation still waiting for a response, if any."""
        return self._pending.local_index if self._pending is not None else None

    def wins_tie(self) -> bool:
        """True when our initiation beats the peer's if both are outstanding."""
        return self.local.x25519_public > self.remote_x25519

    # -- packets the endpoint routes here --------------------------------

    def initiation_received(self, consumed: ConsumedInitiation) -> None:
        if self._pending is not None and self.wins_tie():
            self.stats["simultaneous_init_ignored"] += 1
            return
        self.rx_init(consumed)

    def response_received(self, packet: TunnelResponse) -> None:
        if self._pending is None or packet.receiver_index != self._pending.local_index:
            self.stats["response_unexpected"] += 1
            return
        try:
            keys = consume_response(self._pending, packet)
        except TunnelError:
            self.stats["response_invalid"] += 1
            return
        self.rx_response(Session(keys, self._clock, self.limits))

    def cookie_received(self, reply: TunnelCookieReply) -> None:
        self.rx_cookie(reply)

    def data_packet_received(self, session: Session, data: bytes, counter: int, now: float) -> bytes | None:
        """Open a data packet for one of our sessions at time ``now``: its
        plaintext (empty for a keepalive), or None when it did not
        authenticate.  The endpoint has read the header (``counter``; the
        receiver index is ``session``'s) and counts what opened
        (``data_received``), once per burst."""
        try:
            plaintext = session.open_data(data, counter, now)
        except ReplayError:
            self.stats["data_replayed"] += 1
            return None
        except KeyExpired:
            self.stats["data_expired_key"] += 1
            return None
        except TunnelError:
            self.stats["data_auth_failed"] += 1
            return None
        if session is self.next:
            self.next_confirmed()
        return plaintext

    # -- inputs ----------------------------------------------------------

    @_machine.state(initial=True)
    def idle(self):
        "no session, nothing outstanding"

    @_machine.state()
    def initiating(self):
        "no session; our initiation is outstanding"

    @_machine.state()
    def established(self):
        "a session can carry data"

    @_machine.state()
    def rekeying(self):
        "a session, and our initiation for its successor is outstanding"

    @_machine.state()
    def stopped(self):
        "torn down"

    @_machine.input()
    def start(self):
        "someone wants a session"

    @_machine.input()
    def rx_init(self, consumed):
        "a valid initiation from the peer that we will answer"

    @_machine.input()
    def rx_response(self, session):
        "the response to our outstanding initiation authenticated"

    @_machine.input()
    def rx_cookie(self, reply):
        "the responder is under load and sent a cookie"

    @_machine.input()
    def next_confirmed(self):
        "the first data packet arrived on the session we answered"

    @_machine.input()
    def retry_due(self):
        "no response came in time"

    @_machine.input()
    def deadline_passed(self):
        "the handshake took too long overall"

    @_machine.input()
    def rekey_due(self):
        "the current session is old or heavily used"

    @_machine.input()
    def current_expired(self):
        "the current session passed its reject-after limits"

    @_machine.input()
    def stop(self):
        "tear the tunnel down"

    # -- outputs ---------------------------------------------------------

    @_machine.output()
    def _send_initiation(self):
        self._release_pending()
        index = self._indices.allocate(self)
        pending, packet = create_initiation(
            self.local,
            self.remote_ed25519,
            sender_index=index,
            timestamp=self._timestamps(),
            ephemeral_private=self._randbytes(32),
        )
        self._pending = pending
        self.stats["init_sent"] += 1
        self._send(self._cookies.stamp(packet.encode()))

    @_machine.output()
    def _arm_retry(self):
        backoff = min(self.timers.first_retry * 2**self._attempt, self.timers.max_retry)
        jitter = self.timers.jitter * int.from_bytes(self._randbytes(2), "big") / 0xFFFF
        self._attempt += 1
        self._cancel(self._retry_call)
        self._retry_call = self._clock.callLater(backoff + jitter, self._retry_fired)

    @_machine.output()
    def _arm_deadline(self):
        self._attempt = 0
        self._cancel(self._deadline_call)
        self._deadline_call = self._clock.callLater(self.timers.deadline, self._deadline_fired)

    @_machine.output()
    def _cancel_timers(self):
        self._cancel(self._retry_call)
        self._cancel(self._deadline_call)
        self._retry_call = self._deadline_call = None
        self._attempt = 0

    @_machine.output()
    def _abandon_initiation(self):
        self._release_pending()

    @_machine.output()
    def _store_cookie(self, reply):
        if self._pending is None or reply.receiver_index != self._pending.local_index:
            self.stats["cookie_unexpected"] += 1
        elif self._cookies.consume_reply(reply):
            self.stats["cookie_received"] += 1
        else:
            self.stats["cookie_invalid"] += 1

    @_machine.output()
    def _respond(self, consumed):
        index = self._indices.allocate(self)
        packet, keys = create_response(consumed, sender_index=index, ephemeral_private=self._randbytes(32))
        session = Session(keys, self._clock, self.limits)
        if self.next is not None:
            self._indices.release(self.next.local_index)
        self.next = session
        self._indices.bind(index, self, session)
        self.stats["response_sent"] += 1
        self._send(stamp_macs(self.remote_x25519, packet.encode(), None))

    @_machine.output()
    def _install_initiated(self, session):
        self._pending = None
        self._indices.bind(session.local_index, self, session)
        if self.next is not None:
            # The peer completed our initiation; the session we answered is moot.
            self._indices.release(self.next.local_index)
            self.next = None
        self._rotate_in(session)

    @_machine.output()
    def _promote_next(self):
        session, self.next = self.next, None
        self._rotate_in(session)

    @_machine.output()
    def _report_up(self):
        self.stats["sessions_up"] += 1
        self._owner.tunnel_up(self.remote_ed25519)

    @_machine.output()
    def _fire_waiters(self):
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(self)

    @_machine.output()
    def _flush_queue(self):
        while self._queue and self.current is not None and self.current.can_seal():
            self._send(self.current.seal(self._queue.popleft()))
            self.stats["data_sent"] += 1

    @_machine.output()
    def _confirm_keys(self):
        # The responder may not send on this session until it sees a packet
        # on it; an empty one will do if the queue had nothing.
        if self.current is not None and self.current.packets_sent == 0:
            self._send(self.current.seal(b""))
            self.stats["keepalive_sent"] += 1

    @_machine.output()
    def _fail_waiters(self):
        dropped = len(self._queue)
        self._queue.clear()
        self.stats["queued_dropped"] += dropped
        self.stats["handshake_timeout"] += 1
        waiters, self._waiters = self._waiters, []
        err = Timeout(
            f"no tunnel to peer {self.remote_ed25519.hex()[:16]}…: "
            f"the handshake got no answer within {self.timers.deadline:g} s",
            hint="Check that the peer is online, trusts this node, and that a path (direct or relay) exists.",
        )
        for d in waiters:
            d.errback(err)

    @_machine.output()
    def _drop_sessions(self):
        for slot in ("previous", "current", "next"):
            session = getattr(self, slot)
            if session is not None:
                self._indices.release(session.local_index)
                setattr(self, slot, None)
        self._cancel(self._expiry_call)
        self._expiry_call = None

    @_machine.output()
    def _report_down(self):
        self._owner.tunnel_down(self.remote_ed25519)

    @_machine.output()
    def _close(self):
        self._cancel(self._retry_call)
        self._cancel(self._deadline_call)
        self._release_pending()
        self._queue.clear()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(TunnelClosed())

    # -- transitions -----------------------------------------------------

    idle.upon(start, enter=initiating, outputs=[_send_initiation, _arm_deadline, _arm_retry])
    idle.upon(rx_init, enter=idle, outputs=[_respond])
    idle.upon(rx_response, enter=idle, outputs=[])
    idle.upon(rx_cookie, enter=idle, outputs=[])
    idle.upon(next_confirmed, enter=established, outputs=[_promote_next, _report_up, _fire_waiters, _flush_queue])
    idle.upon(retry_due, enter=idle, outputs=[])
    idle.upon(deadline_passed, enter=idle, outputs=[])
    idle.upon(rekey_due, enter=idle, outputs=[])
    idle.upon(current_expired, enter=idle, outputs=[])
    idle.upon(stop, enter=stopped, outputs=[_drop_sessions, _close])

    initiating.upon(start, enter=initiating, outputs=[])
    initiating.upon(rx_init, enter=initiating, outputs=[_abandon_initiation, _respond])
    initiating.upon(
        rx_response,
        enter=established,
        outputs=[_cancel_timers, _install_initiated, _report_up, _fire_waiters, _flush_queue, _confirm_keys],
    )
    initiating.upon(rx_cookie, enter=initiating, outputs=[_store_cookie])
    initiating.upon(
        next_confirmed,
        enter=established,
        outputs=[_cancel_timers, _abandon_initiation, _promote_next, _report_up, _fire_waiters, _flush_queue],
    )
    initiating.upon(retry_due, enter=initiating, outputs=[_send_initiation, _arm_retry])
    initiating.upon(deadline_passed, enter=idle, outputs=[_cancel_timers, _abandon_initiation, _fail_waiters])
    initiating.upon(rekey_due, enter=initiating, outputs=[])
    initiating.upon(current_expired, enter=initiating, outputs=[])
    initiating.upon(stop, enter=stopped, outputs=[_drop_sessions, _close])

    established.upon(start, enter=established, outputs=[_fire_waiters])
    established.upon(rx_init, enter=established, outputs=[_respond])
    established.upon(rx_response, enter=established, outputs=[])
    established.upon(rx_cookie, enter=established, outputs=[])
    established.upon(next_confirmed, enter=established, outputs=[_promote_next])
    established.upon(retry_due, enter=established, outputs=[])
    established.upon(deadline_passed, enter=established, outputs=[])
    established.upon(rekey_due, enter=rekeying, outputs=[_send_initiation, _arm_deadline, _arm_retry])
    established.upon(current_expired, enter=idle, outputs=[_drop_sessions, _report_down])
    established.upon(stop, enter=stopped, outputs=[_drop_sessions, _report_down, _close])

    rekeying.upon(start, enter=rekeying, outputs=[_fire_waiters])
    rekeying.upon(rx_init, enter=rekeying, outputs=[_abandon_initiation, _respond])
    rekeying.upon(rx_response, enter=established, outputs=[_cancel_timers, _install_initiated, _flush_queue, _confirm_keys])
    rekeying.upon(rx_cookie, enter=rekeying, outputs=[_store_cookie])
    rekeying.upon(next_confirmed, enter=established, outputs=[_cancel_timers, _abandon_initiation, _promote_next])
    rekeying.upon(retry_due, enter=rekeying, outputs=[_send_initiation, _arm_retry])
    rekeying.upon(deadline_passed, enter=established, outputs=[_cancel_timers, _abandon_initiation])
    rekeying.upon(rekey_due, enter=rekeying, outputs=[])
    rekeying.upon(current_expired, enter=initiating, outputs=[_drop_sessions, _report_down])
    rekeying.upon(stop, enter=stopped, outputs=[_drop_sessions, _report_down, _close])

    stopped.upon(start, enter=stopped, outputs=[_close])
    stopped.upon(rx_init, enter=stopped, outputs=[])
    stopped.upon(rx_response, enter=stopped, outputs=[])
    stopped.upon(rx_cookie, enter=stopped, outputs=[])
    stopped.upon(next_confirmed, enter=stopped, outputs=[])
    stopped.upon(retry_due, enter=stopped, outputs=[])
    stopped.upon(deadline_passed, enter=stopped, outputs=[])
    stopped.upon(rekey_due, enter=stopped, outputs=[])
    stopped.upon(current_expired, enter=stopped, outputs=[])
    stopped.upon(stop, enter=stopped, outputs=[])

    # -- helpers ---------------------------------------------------------

    def _retry_fired(self):
        self._retry_call = None
        self.retry_due()

    def _deadline_fired(self):
        self._deadline_call = None
        self.deadline_passed()

    def _expiry_fired(self, session):
        self._expiry_call = None
        if session is self.current:
            self.current_expired()

    def _send(self, packet: bytes) -> None:
        self._owner.tunnel_send(self.remote_ed25519, packet)

    @staticmethod
    def _cancel(call):
        if call is not None and call.active():
            call.cancel()

    def _release_pending(self):
        if self._pending is not None:
            self._indices.release(self._pending.local_index)
            self._pending = None

    def _rotate_in(self, session: Session) -> None:
        if self.previous is not None:
            self._indices.release(self.previous.local_index)
        self.previous, self.current = self.current, session
        self._cancel(self._expiry_call)
        self._expiry_call = self._clock.callLater(self.limits.reject_after_time, self._expiry_fired, session)

    def _rekey_wanted(self) -> bool:
        session = self.current
        if session is None or not session.needs_rekey():
            return False
        if session.is_initiator or session.packets_sent >= session.limits.rekey_after_messages:
            return True
        return session.age() >= session.limits.rekey_after_time + self.timers.responder_rekey_grace
