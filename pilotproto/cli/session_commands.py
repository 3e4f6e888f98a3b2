"""``pilotctl ping`` and ``pilotctl peers``: what runs over encrypted sessions."""

from __future__ import annotations

from ..common.names import check_target
from ..control.client import ControlClient
from ..errors import InvalidArgument, Timeout
from .output import CommandFailed

#: the control call may take as long as the pings, plus a tunnel handshake
HANDSHAKE_ALLOWANCE = 12.0


def run_ping(args, ctx) -> dict:
    if not (1 <= args.count <= 10_000):
        raise InvalidArgument("--count must be from 1 to 10000")
    if not (0 <= args.interval <= 60) or not (0 < args.timeout <= 60):
        raise InvalidArgument("--interval and --timeout are seconds, from 0 to 60")
    wait = args.count * args.interval + args.timeout + HANDSHAKE_ALLOWANCE
    data = ControlClient(ctx.home).call(
        "ping",
        timeout=wait,
        target=check_target(args.target),
        count=args.count,
        interval=args.interval,
        reply_timeout=args.timeout,
        payload=args.payload or "",
    )
    if data["received"] == 0:
        error = Timeout(
            f"no replies from {data['target']} ({data['sent']} sent)",
            hint="The session is up but pings are lost; check the peer's daemon log.",
        )
        raise CommandFailed(error, data)
    return data


def _tiers(data: dict) -> list[str]:
    """How the session got here, in the seeds' words (relay first, then direct)."""
    relay = "relay-tcp" if data.get("path") == "relay-tcp" else "relay"
    lines = [f"Trying {relay}...      connected (end-to-end encrypted; the beacon sees no plaintext)"]
    path, peer_nat, our_nat = data.get("path"), data.get("peer_nat"), data.get("our_nat")
    if path in ("direct", "punched", "lan"):
        lines.append(f"Trying hole-punch... {path} path to {data.get('endpoint')}")
    elif "udp_blocked" in (peer_nat, our_nat) or path == "relay-tcp":
        lines.append("Trying hole-punch... not possible (UDP is blocked on one side)")
    elif peer_nat == "symmetric" and our_nat in ("symmetric", "port_restricted_cone"):
        lines.append("Trying hole-punch... not possible (symmetric NAT on the remote side); staying on the relay")
    elif our_nat == "symmetric" and peer_nat in ("symmetric", "port_restricted_cone"):
        lines.append("Trying hole-punch... not possible (symmetric NAT here); staying on the relay")
    else:
        lines.append("Trying hole-punch... no direct path yet (still trying in the background)")
    return lines


def render_ping(data: dict) -> str:
    lines = _tiers(data) + [f"PING {data['target']} ({data['address']}):"]
    for i, reply in enumerate(data["replies"], 1):
        if reply is None:
            lines.append(f"  Request {i}: timed out")
        else:
            lines.append(f"  Reply {reply['seq']}: {reply['rtt_ms']:.2f}ms ({reply['path']}, encrypted)")
    avg = f", avg {data['avg_ms']:.2f}ms" if data.get("avg_ms") is not None else ""
    lines.append(f"{data['sent']} packets, {data['loss_pct']:g}% loss{avg}")
    return "\n".join(lines)


def run_peers(args, ctx) -> dict:
    return ControlClient(ctx.home).call("peers")


def render_peers(data: dict) -> str:
    peers = data["peers"]
    if not peers:
        return "No sessions. Start one with: pilotctl ping PEER"
    return peers_table(peers)


def peers_table(peers: list[dict]) -> str:
    """One row per session: name, address, state, path tier, endpoint, RTT, path MTU, traffic."""
    rows = [("PEER", "ADDRESS", "STATE", "PATH", "ENDPOINT", "RTT", "PMTU", "SENT", "RECEIVED")]
    for p in peers:
        rtt = f"{p['rtt_ms']:.1f}ms" if p.get("rtt_ms") is not None else "-"
        rows.append(
            (p.get("hostname") or "?", p["address"], p["state"], p["path"], p["endpoint"], rtt, p.get("pmtu") or "-",
             _bytes(p["bytes_sent"]), _bytes(p["bytes_received"]))
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def add_commands(commands, subcommand) -> None:
    ping = subcommand(commands, "ping", "ping a trusted peer over the encrypted session", run_ping, render_ping)
    ping.add_argument("target", metavar="PEER")
    ping.add_argument("--count", "-c", type=int, default=4, metavar="N", help="how many pings (default 4)")
    ping.add_argument("--interval", "-i", type=float, default=1.0, metavar="S", help="seconds between pings (default 1)")
    ping.add_argument("--timeout", "-W", type=float, default=2.0, metavar="S", help="seconds to wait for each reply (default 2)")
    ping.add_argument("--payload", metavar="TEXT", help="text to send in each ping (echoed back)")
    subcommand(commands, "peers", "sessions with peers: path, endpoint, RTT, bytes", run_peers, render_peers)
