"""
Birthday punching: a direct path between a symmetric NAT and a
port-restricted cone, where a plain punch cannot work.  One Automat machine
per peer; the why and the odds are in :mod:`.birthday_schedule`.

::

    idle --open--> opened --won here--> kept --lost--> idle
      |              | expire / won elsewhere           ^
      |              '----------------------------------'
      '--start--> probing --won / expire---------------> idle

Both sides know both NAT types once the candidates are exchanged
(``CallMeMaybe``), so they agree on the roles without a message: the side
behind the symmetric NAT *opens* (:meth:`Birthday.consider`): it opens
``sockets`` extra sockets (:class:`IPunchSockets`), sends one priming probe
with a low TTL from each towards the peer's public endpoints (a mapping per
socket in its own NAT, dying before the peer's NAT), and then sends a
``Birthday`` message through the session.  The other side *probes* when that
message arrives: it answers, and sends PathProbes to ports of the given
host — only if that host is one the peer gave in its ``CallMeMaybe``, so no
one can aim our probes anywhere else — at ``probe_rate``, predicted ports
first, at most ``max_probes``.

A probe that lands on one of the mappings reaches the socket that made it;
the path (:mod:`.paths`) acks it from that socket and probes back, and the
first PathAck that arrives directly moves the path.  The owner then tells
this machine where the path went (:meth:`Birthday.path_changed`): the
probing stops, the opening side keeps the winning socket (it is the path
now) and closes the others at once, and closes the winner too when the path
leaves it.  Everything is bounded: an attempt runs only while the pair is on
the relay, ends after ``max_probes`` (probing) or the schedule plus
``linger`` (opening), and a session makes at most ``max_attempts``.
"""

from __future__ import annotations

import random

from automat import MethodicalMachine
from twisted.logger import Logger
from zope.interface import Interface

from ..common.wiring import check_provides
from ..wire import Endpoint
from ..wire import session as smsg
from .birthday_schedule import OPENS, PROBES, BirthdayOptions, IPunchSockets, probe_ports, role


class IBirthdayOwner(Interface):
    """What a :class:`Birthday` needs from the peer it punches to."""

    def send_message(msg):
        """Send one session message to the peer through the session."""

    def send_probe(endpoint, ttl=None, via=None):
        """Seal one PathProbe and send it to ``endpoint`` (from socket ``via`` if given)."""

    def on_relay():
        """True while the peer's traffic goes through the relay."""

    def label():
        """How logs name the peer."""


class Birthday:
    """The birthday punch with one peer.  ``punch`` (IPunchSockets, or None:
    this node cannot open sockets, so it only ever probes)."""

    _machine = MethodicalMachine()
    log = Logger()

    def __init__(self, clock, owner, punch=None, options: BirthdayOptions = BirthdayOptions(), rng: random.Random | None = None):
        self._clock = clock
        self._owner = check_provides(owner, IBirthdayOwner, "Birthday.owner")
        self._punch = check_provides(punch, IPunchSockets, "Birthday.punch") if punch is not None else None
        self.options = options
        self._rng = rng or random.Random()
        self._sockets: list = []
        self._kept = None
        self._peer_public: tuple[Endpoint, ...] = ()
        self._our_nat = self._peer_nat = "unknown"
        self._attempt = 0
        self._ports: list[int] = []
        self._host = ""
        self._timer = None
        self._expiry = None
        self._tries_left = 0
        self.attempts = 0
        #: what the last attempts did, for ``peers`` and the benchmarks
        self.stats = {"attempts": 0, "probes": 0, "sockets": 0, "won": 0}

    # -- what the peer record tells it -----------------------------------------------

    def consider(self, our_nat: str, peer_nat: str, peer_public, our_public) -> None:
        """Candidates were exchanged: open sockets now if we are the symmetric side."""
        self._our_nat, self._peer_nat = our_nat, peer_nat
        self._peer_public = tuple(peer_public)
        hosts = sorted({ep.host for ep in our_public if ":" not in ep.host})
        if (
            role(our_nat, peer_nat) == OPENS
            and self._punch is not None
            and self._peer_public
            and hosts
            and self._owner.on_relay()
            and self.attempts < self.options.max_attempts
        ):
            self.open(hosts[0])

    def message_received(self, msg: smsg.Birthday) -> None:
        if msg.reply:
            if msg.attempt == self._attempt:
                self.answered()
            return
        allowed = {ep.host for ep in self._peer_public}
        if role(self._our_nat, self._peer_nat) != PROBES or msg.host not in allowed:
            # Only the host the peer itself named in the session, and only
            # when the NATs call for it: never an address of anyone's choosing.
            self.log.info("{peer}: ignoring a birthday punch towards {host}", peer=self._owner.label(), host=msg.host)
            return
        if not self._owner.on_relay():
            return
        if msg.attempt == self._attempt and self.attempts:
            self._reply(msg.attempt)  # a repeated start: our answer was lost
            return
        if self.attempts >= self.options.max_attempts:
            return
        self.start(msg.attempt, msg.host, msg.sockets, msg.observed)

    def path_changed(self, direct: bool, via=None) -> None:
        """The path moved: to a direct path (from socket ``via``, or the node's own), or back to the relay."""
        if not direct:
            self.lost()
        elif via is not None and (via is self._kept or via in self._sockets):
            self.won_here(via)
        else:
            self.won_elsewhere()

    # -- states -------------------------------------------------------------------

    @_machine.state(initial=True)
    def idle(self):
        "no attempt running"

    @_machine.state()
    def opened(self):
        "our sockets are open and primed; the peer probes"

    @_machine.state()
    def probing(self):
        "we probe ports of the peer's symmetric NAT"

    @_machine.state()
    def kept(self):
        "one of our sockets is the direct path"

    @_machine.state()
    def stopped(self):
        "the session is over"

    # -- inputs -------------------------------------------------------------------

    @_machine.input()
    def open(self, host):
        "we are the symmetric side: open sockets and tell the peer to probe ``host``"

    @_machine.input()
    def start(self, attempt, host, sockets, observed):
        "the peer opened sockets: probe ports of ``host``"

    @_machine.input()
    def answered(self):
        "the peer answered our start: it is probing"

    @_machine.input()
    def tick(self):
        "time for the next batch of probes, or to repeat the start"

    @_machine.input()
    def expire(self):
        "the attempt ran its course"

    @_machine.input()
    def won_here(self, via):
        "the path went direct from one of our sockets"

    @_machine.input()
    def won_elsewhere(self):
        "the path went direct another way"

    @_machine.input()
    def lost(self):
        "the path is back on the relay"

    @_machine.input()
    def stop(self):
        "the session is over"

    # -- outputs ------------------------------------------------------------------

    def _arm(self, delay, timer_input):
        self._cancel_timer()
        self._timer = self._clock.callLater(delay, timer_input)

    def _cancel_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _arm_expiry(self, delay):
        self._cancel_expiry()
        self._expiry = self._clock.callLater(delay, self.expire)

    def _cancel_expiry(self):
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None

    def _reply(self, attempt):
        self._owner.send_message(smsg.Birthday(True, attempt))

    @_machine.output()
    def _open_and_prime(self, host):
        o = self.options
        self.attempts += 1
        self._attempt = self._rng.getrandbits(32)
        self._host = host
        self._sockets = list(self._punch.open(o.sockets))
        self.stats["attempts"] += 1
        self.stats["sockets"] += len(self._sockets)
        for sock in self._sockets:
            for endpoint in self._peer_public:
                self._owner.send_probe(endpoint, ttl=o.prime_ttl, via=sock)
        self.log.info(
            "{peer}: birthday punch {n}: {count} sockets primed towards {eps}",
            peer=self._owner.label(), n=self.attempts, count=len(self._sockets),
            eps=", ".join(map(str, self._peer_public)),
        )  # fmt: skip
        self._tries_left = o.start_tries
        self._arm_expiry(o.start_retry * o.start_tries + o.duration + o.linger)

    @_machine.output()
    def _send_start(self):
        if self._tries_left <= 0 or not self._sockets:
            return
        self._tries_left -= 1
        observed = tuple(self._punch.observed_ports())[-smsg.MAX_OBSERVED :]
        self._owner.send_message(smsg.Birthday(False, self._attempt, len(self._sockets), self._host, observed))
        self._arm(self.options.start_retry, self.tick)

    @_machine.output()
    def _stop_resending(self):
        self._tries_left = 0
        self._cancel_timer()

    @_machine.output()
    def _begin_probing(self, attempt, host, sockets, observed):
        self.attempts += 1
        self._attempt = attempt
        self._host = host
        self._ports = probe_ports(self._rng, self.options, sockets, observed)
        self.stats["attempts"] += 1
        self._reply(attempt)
        self.log.info(
            "{peer}: birthday punch: probing {n} ports of {host}", peer=self._owner.label(), n=len(self._ports), host=host
        )
        self._arm(0, self.tick)
        # The schedule ends on its own; this bounds it whatever the clock does.
        self._arm_expiry(self.options.duration + self.options.linger)

    @_machine.output()
    def _probe_batch(self):
        batch, self._ports = self._ports[: self.options.batch], self._ports[self.options.batch :]
        for port in batch:
            self._owner.send_probe(Endpoint(self._host, port))
        self.stats["probes"] += len(batch)
        if self._ports:
            self._arm(self.options.tick, self.tick)
        else:
            self._cancel_timer()

    @_machine.output()
    def _keep(self, via):
        self._kept = via
        self.stats["won"] += 1
        others = [s for s in self._sockets if s is not via]
        self._sockets = []
        for sock in others:
            sock.close()
        self.log.info("{peer}: birthday punch won on local port {port}", peer=self._owner.label(), port=via.local_port)

    @_machine.output()
    def _count_win(self):
        self.stats["won"] += 1

    @_machine.output()
    def _close_all(self):
        sockets, self._sockets = self._sockets, []
        kept, self._kept = self._kept, None
        if kept is not None:
            sockets.append(kept)
        for sock in sockets:
            sock.close()

    @_machine.output()
    def _end(self):
        self._cancel_timer()
        self._cancel_expiry()
        self._ports = []
        self._tries_left = 0

    # -- transitions ------------------------------------------------------------------

    idle.upon(open, enter=opened, outputs=[_open_and_prime, _send_start])
    idle.upon(start, enter=probing, outputs=[_begin_probing])
    for _late in (answered, tick, expire, won_here, won_elsewhere, lost):
        idle.upon(_late, enter=idle, outputs=[])
    idle.upon(stop, enter=stopped, outputs=[_end])

    opened.upon(tick, enter=opened, outputs=[_send_start])
    opened.upon(answered, enter=opened, outputs=[_stop_resending])
    opened.upon(won_here, enter=kept, outputs=[_end, _keep])
    opened.upon(won_elsewhere, enter=idle, outputs=[_end, _close_all])
    opened.upon(expire, enter=idle, outputs=[_end, _close_all])
    opened.upon(stop, enter=stopped, outputs=[_end, _close_all])
    for _late in (open, start, lost):
        opened.upon(_late, enter=opened, outputs=[])

    probing.upon(tick, enter=probing, outputs=[_probe_batch])
    probing.upon(won_here, enter=idle, outputs=[_end, _count_win])
    probing.upon(won_elsewhere, enter=idle, outputs=[_end, _count_win])
    probing.upon(expire, enter=idle, outputs=[_end])
    probing.upon(stop, enter=stopped, outputs=[_end])
    for _late in (open, start, answered, lost):
        probing.upon(_late, enter=probing, outputs=[])

    kept.upon(lost, enter=idle, outputs=[_close_all])
    kept.upon(won_elsewhere, enter=idle, outputs=[_close_all])
    kept.upon(stop, enter=stopped, outputs=[_close_all])
    for _late in (open, start, answered, tick, expire, won_here):
        kept.upon(_late, enter=kept, outputs=[])

    for _late in (open, start, answered, tick, expire, won_here, won_elsewhere, lost, stop):
        stopped.upon(_late, enter=stopped, outputs=[])
    del _late
