"""
``pilotctl handshake / pending / approve / reject / trust / revoke``.

Same shape as every other command: ``run_*`` returns the daemon's result
dict (printed as ``{"status": "ok", "data": ...}`` with ``--json``),
``render_*`` turns it into a few lines for a person.
"""

from __future__ import annotations

import base64
import contextlib
import time

from ..common.names import check_target
from ..control.client import ControlClient
from ..errors import InvalidArgument
from ..identity.address import Address
from ..common.names import check_hostname
from ..wire.beacon import MAX_REASON

#: A handshake waits for the beacon's acknowledgement (up to ~7.5 s of resends).
HANDSHAKE_TIMEOUT = 15.0


def check_peer(peer: str) -> str:
    """A peer is a hostname, an address, or a base64 public key."""
    if Address.looks_like(peer):
        return str(Address.parse(peer))
    with contextlib.suppress(ValueError):  # not base64: a name or an address, below
        if len(base64.b64decode(peer, validate=True)) == 32:
            return peer
    try:
        return check_hostname(peer)
    except InvalidArgument:
        raise InvalidArgument(
            f"{peer!r} is not a hostname, an address or a public key",
            hint="Give a hostname like agent-b, an address like 0:A91F.0000.7C2E, or a base64 key from 'pilotctl pending'.",
        ) from None


def _when(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def run_handshake(args, ctx) -> dict:
    target = check_target(args.peer)
    reason = args.reason
    if not reason.strip():
        raise InvalidArgument("the reason is empty", hint='Say why, for example: pilotctl handshake agent-b "share results"')
    if len(reason.encode("utf-8")) > MAX_REASON:
        raise InvalidArgument(f"the reason is longer than {MAX_REASON} bytes of UTF-8", hint="Shorten it.")
    return ControlClient(ctx.home).call("handshake", timeout=HANDSHAKE_TIMEOUT, target=target, reason=reason)


def render_handshake(data: dict) -> str:
    target = data.get("target")
    key = [f"{target}'s key: {data['fingerprint']} (check it with {target} out of band)"] if data.get("fingerprint") else []
    if data.get("state") == "sent":
        return "\n".join(
            [
                f"Handshake sent to {target}.",
                f"The beacon delivers it now if {target} is online, or when it next comes online (until {_when(data.get('expires_at'))}).",
                # A private node is invisible, so the beacon must not say whether the name exists.
                f"The beacon cannot say whether a private node named {target} exists: if none comes online "
                "by then, the request expires unanswered.",
                *key,
                f"Once {target} approves, each of you can find the other: pilotctl lookup {target}",
            ]
        )
    return "\n".join(
        [
            f"Handshake to {target} queued: the beacon did not answer yet.",
            *key,
            "It is sent as soon as this node is registered again; see 'pilotctl pending'.",
        ]
    )


def run_pending(args, ctx) -> dict:
    return ControlClient(ctx.home).call("pending")


def render_pending(data: dict) -> str:
    lines = []
    pending = data.get("pending") or []
    if pending:
        lines.append(f"{len(pending)} request(s) waiting for your answer:")
        for r in pending:
            lines.append(f"  {r['hostname']}  {r['address']}  received {_when(r.get('received_at'))}")
            lines.append(f"    reason: {r['reason']}")
            lines.append(f"    key:    {r.get('fingerprint') or r['public_key']}")
            lines += _conflict_lines(r)
        lines.append("Answer with: pilotctl approve NAME  or  pilotctl reject NAME (or the address, when a name is flagged)")
    else:
        lines.append("No handshake requests waiting for you.")
    outgoing = [o for o in data.get("outgoing") or [] if o.get("state") in ("queued", "sent")]
    if outgoing:
        lines.append("Your requests waiting for an answer:")
        for o in outgoing:
            key = f"  key: {o['fingerprint']}" if o.get("fingerprint") else ""
            lines.append(f"  {o['target']}  ({o['state']} {_when(o.get('sent_at'))})  reason: {o['reason']}{key}")
    return "\n".join(lines)


def _conflict_lines(request: dict) -> list[str]:
    """The warning for a request under a name we know by another key."""
    conflict = request.get("name_conflict")
    if not conflict:
        return []
    name = request["hostname"]
    return [
        f"    WARNING: {conflict.get('message', 'name now held by a different key')}.",
        f"      You know {name} as {conflict.get('known_fingerprint')} ({conflict.get('known_address')});",
        f"      this request comes from {request.get('fingerprint')} ({request['address']}).",
        f"      Someone else may hold the name now. Approve only if {name} really has a new key,",
        f"      and by its address: pilotctl approve {request['address']}",
    ]


def run_approve(args, ctx) -> dict:
    return ControlClient(ctx.home).call("approve", peer=check_peer(args.peer))


def _who(peer: dict) -> str:
    key = f", key {peer['fingerprint']}" if peer.get("fingerprint") else ""
    return f"{peer['hostname']} ({peer['address']}{key})"


def render_approve(data: dict) -> str:
    return f"Trust established with {_who(data['peer'])}: each of you can now find and reach the other."


def run_reject(args, ctx) -> dict:
    return ControlClient(ctx.home).call("reject", peer=check_peer(args.peer))


def render_reject(data: dict) -> str:
    return f"Rejected the handshake from {_who(data['peer'])}."


def run_trust(args, ctx) -> dict:
    return ControlClient(ctx.home).call("trust")


def render_trust(data: dict) -> str:
    peers = data.get("trusted") or []
    if not peers:
        return "No trusted peers yet. Ask one with: pilotctl handshake NAME \"reason\""
    lines = [f"{len(peers)} trusted peer(s):"]
    for p in peers:
        mutual = "mutual" if p.get("mutual") else "waiting for their approval"
        lines.append(f"  {p['hostname']}  {p['address']}  since {_when(p.get('since'))}  ({mutual})")
        if p.get("fingerprint"):
            lines.append(f"    key: {p['fingerprint']}")
    return "\n".join(lines)


def run_revoke(args, ctx) -> dict:
    return ControlClient(ctx.home).call("revoke", peer=check_peer(args.peer))


def render_revoke(data: dict) -> str:
    return f"Revoked trust in {_who(data['peer'])}; the beacon no longer shows this node to it."


def add_trust_commands(commands, subcommand) -> None:
    """Add the trust commands to pilotctl's subparsers."""
    handshake = subcommand(commands, "handshake", "ask a peer to trust this node (and trust it)", run_handshake, render_handshake)
    handshake.add_argument("peer", metavar="NAME_OR_ADDRESS")
    handshake.add_argument("reason", metavar="REASON", help=f"why (shown to the peer; at most {MAX_REASON} bytes)")
    subcommand(commands, "pending", "handshake requests waiting for an answer", run_pending, render_pending)
    for name, help, run, render in (
        ("approve", "approve a pending handshake request: trust that peer", run_approve, render_approve),
        ("reject", "reject a pending handshake request", run_reject, render_reject),
        ("revoke", "stop trusting a peer", run_revoke, render_revoke),
    ):
        parser = subcommand(commands, name, help, run, render)
        parser.add_argument("peer", metavar="PEER", help="hostname, address or base64 public key")
    subcommand(commands, "trust", "list trusted peers", run_trust, render_trust)
