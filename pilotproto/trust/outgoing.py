"""
Our handshake requests, each one an explicit state machine.

::

                  beacon_ok                    approved
     queued -------------------------> sent ---------------> approved
      |  ^ |                            | |      rejected
      |  | | beacon_silent: report       | '----------------> rejected
      |  '-' "queued"; resent after      |  expired (expires_at + ANSWER_GRACE)
      |      the next registration      '-------------------> expired
      |-- beacon_refused ------------------------------------> failed
      |-- approved / rejected (the answer overtook the Ok) ---> approved / rejected
      '-- expired (expires_at passed before the beacon took it) -> expired

``queued``: the beacon has not taken the request yet (copies are in
flight, or it did not answer and the request waits for the next
registration).  ``sent``: the beacon took it; it delivers it at once if the
target is online and keeps it until ``expires_at`` if not.  ``approved``,
``rejected`` (the target's answer), ``failed`` (the beacon refused it for a
reason a resend cannot cure) and ``expired`` are final: every input is
listed for them, with no output, so a late Ok or a duplicate answer never
raises.  A sent request expires only ``ANSWER_GRACE`` after ``expires_at``:
the target may have fetched it just in time, and its answer then waits at
the beacon for as long as any mail.

The state is the ``state`` field of the stored
:class:`~pilotproto.trust.store.OutgoingRequest`, so it survives restarts;
the table below is the whole lifecycle (``docs/trust.md`` draws it).
"""

from __future__ import annotations

import enum

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ..common.names import check_hostname
from ..errors import InvalidArgument, StateError
from ..identity import Address, fingerprint
from ..wire import beacon as msgs
from .book import address_of
from .store import OutgoingRequest, b64, unb64

#: how long the beacon keeps a request (and any mail), and so our request's lifetime
DEFAULT_EXPIRY = 7 * 24 * 3600
#: how long after ``expires_at`` a sent request may still be answered
ANSWER_GRACE = DEFAULT_EXPIRY


class State(enum.Enum):
    QUEUED = "queued"
    SENT = "sent"
    APPROVED = "approved"
    REJECTED = "rejected"
    FAILED = "failed"
    EXPIRED = "expired"


#: states in which the request still waits for the beacon or the target
LIVE = frozenset({State.QUEUED, State.SENT})


class Input(enum.Enum):
    BEACON_OK = "beacon_ok"  # the beacon took the request
    BEACON_SILENT = "beacon_silent"  # no answer to any copy: wait for the next registration
    BEACON_REFUSED = "beacon_refused"  # a refusal a resend cannot cure
    APPROVED = "approved"  # the target approved (its answer, or its own request crossing ours)
    REJECTED = "rejected"  # the target said no
    EXPIRED = "expired"  # too late for an answer


class Output(enum.Enum):
    REPORT = "report"  # the handshake command's Deferred fires with the new state
    REPORT_FAILED = "report_failed"  # ... or fails with the beacon's refusal
    STOP_SENDING = "stop_sending"  # no more copies to the beacon
    TRUST_PEER = "trust_peer"  # trust the target's key, mutually
    DROP_ADVANCE_TRUST = "drop_advance_trust"  # untrust a key we trusted only because we asked


_FINAL = {State.APPROVED, State.REJECTED, State.FAILED, State.EXPIRED}

#: (state, input) -> (next state, outputs): every pair is listed
TRANSITIONS: dict[tuple[State, Input], tuple[State, tuple[Output, ...]]] = {
    (State.QUEUED, Input.BEACON_OK): (State.SENT, (Output.REPORT,)),
    (State.QUEUED, Input.BEACON_SILENT): (State.QUEUED, (Output.REPORT,)),
    (State.QUEUED, Input.BEACON_REFUSED): (State.FAILED, (Output.REPORT_FAILED,)),
    (State.QUEUED, Input.APPROVED): (State.APPROVED, (Output.STOP_SENDING, Output.TRUST_PEER, Output.REPORT)),
    (State.QUEUED, Input.REJECTED): (State.REJECTED, (Output.STOP_SENDING, Output.DROP_ADVANCE_TRUST, Output.REPORT)),
    (State.QUEUED, Input.EXPIRED): (State.EXPIRED, (Output.STOP_SENDING, Output.REPORT)),
    # A copy sent again after a re-registration may still be answered: nothing new.
    (State.SENT, Input.BEACON_OK): (State.SENT, ()),
    (State.SENT, Input.BEACON_SILENT): (State.SENT, ()),
    (State.SENT, Input.BEACON_REFUSED): (State.SENT, ()),
    (State.SENT, Input.APPROVED): (State.APPROVED, (Output.STOP_SENDING, Output.TRUST_PEER)),
    (State.SENT, Input.REJECTED): (State.REJECTED, (Output.STOP_SENDING, Output.DROP_ADVANCE_TRUST)),
    (State.SENT, Input.EXPIRED): (State.EXPIRED, (Output.STOP_SENDING,)),
    **{(final, any_input): (final, ()) for final in _FINAL for any_input in Input},
}


def step(state: State, event: Input) -> tuple[State, tuple[Output, ...]]:
    """The next state and the outputs for ``event`` in ``state``."""
    return TRANSITIONS[(state, event)]


def dot() -> str:
    """The machine as Graphviz source (``docs/trust-request.dot``); late inputs left out."""
    lines = ["digraph trust_request {", "  rankdir=LR;", '  node [shape=ellipse fontname="Menlo"];', '  edge [fontname="Menlo" fontsize=10];']
    lines.append(f"  {State.QUEUED.value} [style=bold];")
    lines += [f"  {state.value} [peripheries=2];" for state in State if state not in LIVE]
    for (state, event), (target, outputs) in TRANSITIONS.items():
        if state in LIVE and (outputs or target is not state):
            label = event.value + "".join(f"\\n{o.value}" for o in outputs)
            lines.append(f'  {state.value} -> {target.value} [label="{label}"];')
    return "\n".join(lines + ["}"]) + "\n"


def describe(request: OutgoingRequest) -> dict:
    """What the handshake command answers (with the target's key, once we know it)."""
    key = request.public_key
    return {
        "target": request.target,
        "handshake_id": request.handshake_id,
        "state": request.state,
        "sent_at": request.sent_at,
        "expires_at": request.expires_at,
        "public_key": b64(key) if key else None,
        "fingerprint": fingerprint(key) if key else None,
    }


class OutgoingRequests:
    """Drives every outgoing request through :data:`TRANSITIONS`.

    ``book`` is the :class:`~pilotproto.trust.book.TrustBook`, ``requests``
    the signed sender, ``directory`` finds a target's key early.  The owner
    (the trust manager) checked them."""

    log = Logger()

    def __init__(self, clock, identity, store, book, requests, directory, hostname: str, ids):
        self._clock = clock
        self._identity = identity
        self.store = store
        self._book = book
        self._requests = requests
        self._directory = directory
        self.hostname = hostname
        self._ids = ids
        #: handshake_id -> the handshake command's Deferred, until it is told
        self._waiting: dict[int, Deferred] = {}
        self._outputs = {
            Output.REPORT: self._report,
            Output.REPORT_FAILED: self._report_failed,
            Output.STOP_SENDING: self._stop_sending,
            Output.TRUST_PEER: self._trust_peer,
            Output.DROP_ADVANCE_TRUST: self._drop_advance_trust,
        }

    def fire(self, request: OutgoingRequest, event: Input, *, hostname: str = "", error=None) -> None:
        state, outputs = step(State(request.state), event)
        request.state = state.value
        for output in outputs:
            self._outputs[output](request, hostname=hostname, error=error)

    # -- the handshake command -------------------------------------------------------

    def start(self, target: str, reason: str) -> Deferred:
        """Ask ``target`` (hostname or address) to trust us; see TrustManager.handshake."""
        by_address, raw_target, target = self.parse_target(target)
        reason = check_reason(reason)
        now = self._clock.seconds()
        request = OutgoingRequest(self._ids(), target, reason, now, now + DEFAULT_EXPIRY)
        # Asking a name we already trust: the key we know for it is the one we
        # mean, so an answer or a crossing request from another key is not it.
        known = [] if by_address else self._book.keys_named(target)
        if len(known) == 1:
            request.public_key = known[0]
        # One live request per target: a new one replaces an unanswered one.
        for old in [o for o in self.store.outgoing.values() if o.target == target and State(o.state) in LIVE]:
            self._remove(old)
        self.store.outgoing[request.handshake_id] = request
        self.store.save()
        done = self._waiting[request.handshake_id] = Deferred()
        self._send(request, by_address, raw_target)
        self._learn_key_by_lookup(request)
        return done

    def parse_target(self, target):
        if not isinstance(target, str) or not target:
            raise InvalidArgument("handshake needs a hostname or an address", hint="For example: pilotctl handshake agent-b \"why\"")
        if Address.looks_like(target):
            address = Address.parse(target)
            if address == self._identity.address:
                raise InvalidArgument("a node cannot ask itself for trust")
            return True, address.to_bytes(), str(address)
        check_hostname(target)
        if target == self.hostname:
            raise InvalidArgument("a node cannot ask itself for trust")
        return False, target.encode(), target

    def _send(self, request: OutgoingRequest, by_address: bool, raw_target: bytes) -> None:
        message = msgs.HandshakeRequest(
            0, request.handshake_id, by_address, raw_target, self.hostname, request.reason, int(request.expires_at)
        )
        self._requests.send(
            ("handshake", request.handshake_id),
            message,
            lambda: self._beacon_said(request, Input.BEACON_OK),
            lambda error: self._beacon_said(request, Input.BEACON_REFUSED, error),
            lambda: self._beacon_said(request, Input.BEACON_SILENT),
        )

    def _beacon_said(self, request: OutgoingRequest, event: Input, error=None) -> None:
        self.fire(request, event, error=error)
        self._save_quietly()

    def _learn_key_by_lookup(self, request: OutgoingRequest) -> None:
        """If the target is visible (public), trust its key now so it can find us."""

        def found(info):
            key = unb64(info["public_key"])
            if State(request.state) not in LIVE or key == self._identity.public_key:
                return
            if request.public_key is not None and request.public_key != key:
                # The name is held by another key than the one we trust under
                # it: never trust that one in advance (it could then find us).
                self.log.warn(
                    "{target} is now held by a different key ({new}) than the one we know ({old}); not trusting it",
                    target=request.target, new=fingerprint(key), old=fingerprint(request.public_key),
                )
                return
            request.public_key = key
            if not self._book.is_trusted(key):
                self._book.trust(key, info.get("hostname", request.target), request.reason, mutual=False)
            else:
                self.store.save()

        def not_visible(failure):
            # Private or offline: the key comes with the answer instead.
            self.log.debug("handshake target {t} not visible: {f}", t=request.target, f=failure.getErrorMessage())

        self._directory.lookup(request.target).addCallbacks(found, not_visible)

    # -- what the manager reports -------------------------------------------------------------

    def registered(self) -> None:
        """Resend what the beacon has not taken (after our registration)."""
        self.expire_due()
        for request in list(self.store.outgoing.values()):
            if State(request.state) is State.QUEUED and not self._requests.in_flight(("handshake", request.handshake_id)):
                by_address, raw, _ = self.parse_target(request.target)
                self._send(request, by_address, raw)

    def answered(self, answer) -> str | None:
        """The target's HandshakeAnswer; the name of a counter if it is not one we can take."""
        request = self.store.outgoing.get(answer.handshake_id)
        if answer.requester_key != self._identity.public_key or request is None or State(request.state) not in LIVE:
            return "mail_unsolicited_answer"
        key = answer.public_key
        if request.public_key is not None and request.public_key != key:
            # The name changed hands since our lookup: not the node we meant.
            return "mail_answer_from_other_key"
        request.public_key = key
        self.fire(request, Input.APPROVED if answer.approved else Input.REJECTED, hostname=answer.hostname)
        return None

    def crossed(self, public_key: bytes, hostname: str, address: str) -> bool:
        """The target asked us too (requests crossed): ours counts as approved.

        Only for the key we meant: the one recorded when we asked (from a
        lookup, or the key we trust under that name), or, for a request by
        address, the key that address is the hash of.  A name alone proves
        nothing: the beacon hands a free name to whoever registers it next."""
        for request in list(self.store.outgoing.values()):
            if State(request.state) not in LIVE or request.target not in (hostname, address):
                continue
            if request.public_key == public_key or (request.public_key is None and request.target == address):
                request.public_key = public_key
                self.fire(request, Input.APPROVED, hostname=hostname)
                return True
        return False

    def keys_asked(self, hostname: str) -> list[bytes]:
        """The keys recorded by our live requests to ``hostname``."""
        return [
            o.public_key
            for o in self.store.outgoing.values()
            if State(o.state) in LIVE and o.target == hostname and o.public_key is not None
        ]

    def withdraw(self, key: bytes) -> None:
        """Forget every request to ``key`` (trust with it ended)."""
        for request in [o for o in self.store.outgoing.values() if o.public_key == key]:
            self._remove(request)

    def expire_due(self) -> bool:
        """Move requests too old for an answer to ``expired``; True if any moved."""
        now, moved = self._clock.seconds(), False
        for request in list(self.store.outgoing.values()):
            state = State(request.state)
            deadline = request.expires_at + (ANSWER_GRACE if state is State.SENT else 0)
            if state in LIVE and now >= deadline:
                self.fire(request, Input.EXPIRED)
                moved = True
        return moved

    def describe_all(self) -> list[dict]:
        return [
            {
                "target": o.target,
                "reason": o.reason,
                "sent_at": o.sent_at,
                "expires_at": o.expires_at,
                "state": o.state,
                "public_key": b64(o.public_key) if o.public_key else None,
                "fingerprint": fingerprint(o.public_key) if o.public_key else None,
            }
            for o in sorted(self.store.outgoing.values(), key=lambda o: o.sent_at)
        ]

    def stop(self) -> None:
        self._requests.cancel_matching(("handshake",))
        for handshake_id in list(self._waiting):
            request = self.store.outgoing.get(handshake_id)
            if request is not None:
                self._report(request)

    # -- outputs ---------------------------------------------------------------------------

    def _report(self, request: OutgoingRequest, **_) -> None:
        done = self._waiting.pop(request.handshake_id, None)
        if done is not None:
            done.callback(describe(request))

    def _report_failed(self, request: OutgoingRequest, *, error, **_) -> None:
        done = self._waiting.pop(request.handshake_id, None)
        if done is not None:
            done.errback(error)

    def _stop_sending(self, request: OutgoingRequest, **_) -> None:
        self._requests.cancel(("handshake", request.handshake_id))

    def _trust_peer(self, request: OutgoingRequest, *, hostname: str, **_) -> None:
        key = request.public_key
        self.log.info("{name} ({address}) approved our handshake", name=hostname, address=address_of(key))
        self._book.trust(key, hostname, request.reason, mutual=True, save=False)

    def _drop_advance_trust(self, request: OutgoingRequest, *, hostname: str, **_) -> None:
        key = request.public_key
        self.log.info("{name} ({address}) rejected our handshake", name=hostname, address=address_of(key))
        peer = self._book.get(key)
        if peer is not None and not peer.mutual:
            self._book.untrust(key)

    def _remove(self, request: OutgoingRequest) -> None:
        del self.store.outgoing[request.handshake_id]
        self._stop_sending(request)
        self._report(request)

    def _save_quietly(self) -> None:
        try:
            self.store.save()
        except StateError as e:
            self.log.error("{message}", message=e.message)


def check_reason(reason) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidArgument("the reason is empty", hint="Say why, for example: pilotctl handshake agent-b \"share results\"")
    if len(reason.encode("utf-8")) > msgs.MAX_REASON:
        raise InvalidArgument(f"the reason is longer than {msgs.MAX_REASON} bytes", hint="Shorten it.")
    return reason
