"""
``pilotctl netcheck`` (the network, no daemon needed) and ``pilotctl status``
(the running node on one screen: node, beacon, peers, pending requests).
"""

from __future__ import annotations

import os

from ..control.client import ControlClient
from ..errors import InvalidArgument, NotRegistered, PilotError, Unavailable
from ..node.config import NodeConfig
from .forward_commands import expose_lines, forward_lines
from .mcp_commands import server_lines
from .output import CommandFailed, duration
from .session_commands import peers_table


# -- netcheck ---------------------------------------------------------------------------


def run_netcheck(args, ctx) -> dict:
    from .netcheck import beacon_targets, netcheck, run_on_reactor

    config = NodeConfig.load(ctx.home)
    targets = beacon_targets(config, args.beacon or [], args.beacon_tls)
    if not targets:
        raise InvalidArgument(
            "no beacon given and none saved in the config",
            hint="Pass --beacon HOST:PORT (or save one with: pilotctl init --beacon HOST:PORT).",
        )
    if args.no_tls:
        targets = [dict(t, tls=None) for t in targets]
    ca_file = os.path.abspath(args.beacon_ca) if args.beacon_ca else config.beacon_ca
    # One pin for the check: a saved one is the first beacon's.
    fingerprint = args.beacon_fingerprint or config.beacon_fingerprint_of(0)
    terminal = ctx.out.progress_stream()
    if terminal is not None:
        names = ", ".join("%s:%d" % t["beacon"] for t in targets)
        terminal.write(f"Checking {names} (a few seconds)...\n")
    data = run_on_reactor(lambda reactor: netcheck(reactor, targets, ca_file, fingerprint))
    if not (data["udp"] or data["tls"]):
        # Nothing reaches a beacon: no node here can register.
        first = data["beacons"][0]
        error = first.get("error") or first["udp"].get("error") or {}
        raise CommandFailed(
            Unavailable(
                f"no beacon answers, over UDP or TLS: {error.get('message', 'no answer')}",
                hint=error.get("hint") or "Check the --beacon address, that the beacon runs, and this host's firewall.",
            ),
            data,
        )
    return data


def _yes_no(value) -> str:
    return "-" if value is None else ("yes" if value else "no")


def render_netcheck(data: dict) -> str:
    lines = []
    for b in data["beacons"]:
        head = f"Beacon {b['beacon']}" + (f" ({b['address']})" if b.get("address") and b["address"] != b["beacon"] else "")
        lines.append(head)
        if b.get("error"):
            lines.append(f"  error:        {b['error']['message']}")
        udp = b["udp"]
        if udp["reachable"]:
            lines.append(f"  UDP:          yes, {udp['rtt_ms']:.1f} ms ({udp['answered']} answered)")
            lines.append(f"  public addr:  {udp['reflexive_endpoint']}")
        elif not b.get("error"):
            lines.append(f"  UDP:          no ({udp['error']['message']})")
        tls = b.get("tls")
        if tls is None:
            lines.append("  TCP/TLS:      not checked")
        elif tls["reachable"]:
            lines.append(f"  TCP/TLS:      yes, {tls['endpoint']} in {tls['connect_ms']:.1f} ms (certificate verified)")
        else:
            lines.append(f"  TCP/TLS:      no ({tls['error']['message']})")
            if tls["error"].get("hint"):
                lines.append(f"                {tls['error']['hint']}")
        nat = b.get("nat")
        if nat:
            lines.append(f"  NAT type:     {nat['type']}")
            lines.append(f"  mapping:      {nat['mapping']}")
            lines.append(f"  filtering:    {nat['filtering']}")
            lines.append(f"  stable:       {_yes_no(nat['mapping_stable'])}    port preserved: {_yes_no(nat['port_preserved'])}"
                         f"    hairpinning: {_yes_no(nat['hairpinning'])}")
            if nat.get("why_unknown"):
                lines.append(f"  note:         {nat['why_unknown']}")
    mapping = data.get("port_mapping")
    if mapping is not None:
        if mapping.get("protocol"):
            lines.append(f"Port mapping: {mapping['protocol']} at the gateway {mapping['gateway']} (mapped {mapping['external']})")
        else:
            lines.append(f"Port mapping: none ({mapping['error'] or 'nothing answered'})")
    lines.append(f"Peers: {data['peers']['summary']}")
    return "\n".join(lines)


# -- status -------------------------------------------------------------------------------


def run_status(args, ctx) -> dict:
    client = ControlClient(ctx.home)
    info = client.call("info", timeout=5.0)
    peers = client.call("peers", timeout=5.0).get("peers", [])
    try:
        trust = client.call("pending", timeout=5.0)
    except PilotError:
        trust = {"pending": [], "outgoing": []}
    data = {
        "node": info,
        "peers": peers,
        "pending": trust.get("pending") or [],
        "outgoing": [o for o in trust.get("outgoing") or [] if o.get("state") in ("queued", "sent")],
        **_forwards_and_exposes(client),
        "mcp_servers": _mcp_servers(client),
    }
    if not info.get("registered"):
        error = info.get("beacon_error") if isinstance(info.get("beacon_error"), dict) else {}
        why = f": {error['message']}" if error.get("message") else ""
        raise CommandFailed(
            NotRegistered(
                f"the node is not registered with the beacon {info.get('beacon')}{why}",
                hint=error.get("hint") or "It keeps trying; check the network with: pilotctl netcheck",
            ),
            data,
        )
    return data


def _forwards_and_exposes(client) -> dict:
    """``pilotctl forward``s and ``expose``s with their counts (none from a daemon that has no such commands)."""
    try:
        return {"forwards": client.call("forwards", timeout=5.0).get("forwards", []),
                "exposes": client.call("exposes", timeout=5.0).get("exposes", [])}
    except PilotError:
        return {"forwards": [], "exposes": []}


def _mcp_servers(client) -> list:
    """``pilotctl mcp serve``s with their counts (none from a daemon that has no such command)."""
    try:
        return client.call("mcp_servers", timeout=5.0).get("servers", [])
    except PilotError:
        return []


def render_status(data: dict) -> str:
    node = data["node"]
    visibility = "public" if node.get("public") else "private"
    up = duration(node.get("uptime_s"))
    lines = [f"{node.get('hostname')}  {node.get('address')}  ({visibility})  up {up}  pid {node.get('pid')}"]
    lines += beacon_lines(node)
    lines.append("")
    if data["peers"]:
        lines.append(peers_table(data["peers"]))
    else:
        lines.append("No sessions. Start one with: pilotctl ping PEER")
    pending, outgoing = data["pending"], data["outgoing"]
    if pending or outgoing:
        lines.append("")
    for r in pending:
        lines.append(f"request from {r['hostname']} ({r['address']}): {r['reason']!r}  -> pilotctl approve {r['hostname']}")
    for o in outgoing:
        lines.append(f"waiting for {o['target']} to approve ({o['state']})")
    if data.get("forwards") or data.get("exposes") or data.get("mcp_servers"):
        lines.append("")
    lines += [f"forward {line}" if not line.startswith(" ") else line for line in forward_lines(data.get("forwards") or [])]
    lines += [f"expose {line}" if not line.startswith(" ") else line for line in expose_lines(data.get("exposes") or [])]
    lines += [f"mcp {line}" if not line.startswith(" ") else line for line in server_lines(data.get("mcp_servers") or [])]
    return "\n".join(lines)


def beacon_lines(node: dict) -> list[str]:
    """One line per beacon (``info``'s ``beacons``; a daemon from before several
    beacons gives only the single-beacon fields), with its last error."""
    beacons = node.get("beacons") or [{
        "beacon": node.get("beacon"),
        "registered": node.get("registered"),
        "transport": node.get("beacon_transport"),
        "error": node.get("beacon_error"),
    }]
    endpoint = node.get("reflexive_endpoint") or "-"
    lines = []
    for i, beacon in enumerate(beacons):
        state = "registered" if beacon.get("registered") else "NOT registered"
        line = f"beacon {beacon.get('beacon')} over {beacon.get('transport') or 'udp'}: {state}"
        if i == 0:
            line += f"; public endpoint {endpoint}; NAT {node.get('nat_type') or 'unknown'}"
        lines.append(line)
        error = beacon.get("error")
        if isinstance(error, dict) and error.get("message"):
            lines.append(f"  last beacon error: {error['message']}")
    return lines


def add_commands(commands, subcommand) -> None:
    netcheck = subcommand(
        commands, "netcheck", "check UDP, TLS and the NAT between here and the beacon (no daemon needed)", run_netcheck, render_netcheck
    )
    netcheck.add_argument("--beacon", action="append", metavar="HOST:PORT", help="a beacon to check (repeatable; default: the saved one)")
    netcheck.add_argument("--beacon-tls", metavar="HOST:PORT", help="the beacon's TLS relay (default: as saved, else the beacon host, port 443)")
    netcheck.add_argument("--beacon-ca", metavar="FILE", help="PEM CA certificates to trust for the beacon, besides the system's")
    netcheck.add_argument("--beacon-fingerprint", metavar="SHA256", help="trust exactly the beacon certificate with this SHA-256")
    netcheck.add_argument("--no-tls", action="store_true", help="skip the TCP/TLS check")
    subcommand(commands, "status", "this node on one screen: beacon, peers, pending requests", run_status, render_status)

