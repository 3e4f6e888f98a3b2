"""
``pilotctl release``: free this node's name at the beacon now.

A beacon keeps a name bound to its key for days after that key was last
seen (``docs/security.md``), so that nobody can take it while its owner is
away or the beacon restarts.  Only the owner can free it earlier: this
command signs a ``ReleaseName`` with the node's own key and sends it
straight to the beacon by UDP (``Hello`` -> ``Challenge`` -> ``ReleaseName``
-> ``Ok``, the nonce making a recorded release worthless), without the
daemon.  The daemon must be stopped first: it would register the name again
at once.

Blocking and small on purpose: one socket, a few resends, a deadline.
"""

from __future__ import annotations

import os
import socket
import time

from .. import errors
from ..common.names import check_hostname
from ..identity.keys import KEY_FILE
from ..identity.keys import load as load_identity
from ..node.config import NodeConfig, parse_hostport
from ..wire import DecodeError
from ..wire import beacon as msgs
from . import daemon as daemon_control

#: seconds to wait for each answer before sending again; the sum is the deadline
RESEND_DELAYS = (0.5, 1.0, 1.5, 2.0, 3.0)


def release_name(home: str, hostname: str | None = None, beacon: str | None = None, clock=time) -> dict:
    """Ask the beacon to free the name this home's key holds; the result for the CLI."""
    config = NodeConfig.load(home)
    hostname = check_hostname(hostname or config.hostname or "")
    where = beacon or config.beacon
    if not where:
        raise errors.InvalidArgument("which beacon? this home has none saved", hint="Pass --beacon HOST:PORT.")
    host, port = parse_hostport(where)
    key_file = os.path.join(home, KEY_FILE)
    if not os.path.lexists(key_file):
        raise errors.NotFound(
            f"{home} holds no identity, so it holds no name",
            hint="Only the key that registered a name can release it; run this with that node's --home.",
        )
    me = load_identity(key_file)
    daemon_control.ensure_not_running(home)
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        challenge = _ask(sock, address, msgs.Hello(_request_id()), msgs.Challenge, clock)
        release = msgs.sign(msgs.ReleaseName(_request_id(), challenge.nonce, hostname), me, int(clock.time() * 1e9))
        _ask(sock, address, release, msgs.Ok, clock)
    return {"hostname": hostname, "address": str(me.address), "beacon": f"{host}:{port}", "released": True}


def _request_id() -> int:
    return int.from_bytes(os.urandom(8), "big")


def _ask(sock, beacon, request, wanted, clock):
    data = msgs.encode(request)
    for delay in RESEND_DELAYS:
        sock.sendto(data, beacon)
        deadline = clock.monotonic() + delay
        while (left := deadline - clock.monotonic()) > 0:
            sock.settimeout(left)
            try:
                reply, source = sock.recvfrom(2048)
            except socket.timeout:
                break
            if source[:2] != beacon[:2]:
                continue
            try:
                msg = msgs.decode(reply)
            except DecodeError:
                continue
            if msg.request_id != request.request_id:
                continue
            if isinstance(msg, wanted):
                return msg
            if isinstance(msg, msgs.Error):
                raise _refusal(msg, request)
    raise errors.Unavailable(f"the beacon at {beacon[0]}:{beacon[1]} did not answer", hint="Check --beacon and that UDP reaches it.")


def _refusal(msg: msgs.Error, request) -> errors.PilotError:
    if msg.code == errors.NotFound.code:
        return errors.NotFound(
            f"the beacon says this key holds no name {request.hostname!r}",
            hint="It is free already, or held by another key (which only that key can release).",
        )
    error = errors.PilotError.from_dict({"code": msg.code, "message": f"the beacon refused: {msg.message}"})
    if msg.retry_after:
        error.retry_after = msg.retry_after
    return error


def run_release(args, ctx) -> dict:
    return release_name(ctx.home, hostname=args.hostname, beacon=args.beacon)


def render_release(data: dict) -> str:
    return (
        f"Released {data['hostname']} at the beacon {data['beacon']}: any key may register it now.\n"
        f"This node ({data['address']}) registers it again when its daemon next starts, if it is still free."
    )


def add_commands(commands, subcommand) -> None:
    release = subcommand(
        commands,
        "release",
        "free this node's name at the beacon now (stop the daemon first)",
        run_release,
        render_release,
    )
    release.add_argument("--hostname", metavar="NAME", help="the name to free (default: as saved)")
    release.add_argument("--beacon", metavar="HOST:PORT", help="the beacon (default: as saved)")
