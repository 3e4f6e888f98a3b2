"""
A tiny UDP/TCP probe that measures NAT behaviour from inside the lab.

    python -m pilotproto.lab.probe server --address A --address B --port P1 --port P2
    python -m pilotproto.lab.probe client --server A:P1 --alternate B:P2 [--tcp]
    python -m pilotproto.lab.probe blast  --server A:P1 --count 1000

The server answers from every (address, port) pair it binds.  The client
learns its mapped endpoint towards each of the four server endpoints from
one socket (mapping behaviour, RFC 4787 section 4.1), then, from a fresh
socket that has talked only to A:P1, asks the server to send unsolicited
datagrams from all four endpoints and records which arrive (filtering
behaviour, section 5).  ``classify`` turns that into the RFC's words.
Results are one JSON object on stdout.  Every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import sys
import time

ECHO_TRIES = 3
ECHO_WAIT = 0.3
POKE_WAIT = 0.5
POKE_TRIES = 3
TALLY_TRIES = 30
TALLY_SETTLE = 0.1


def endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def show(addr: tuple[str, int]) -> str:
    return f"{addr[0]}:{addr[1]}"


def _send(sock: socket.socket, message: dict, to: tuple[str, int]) -> None:
    sock.sendto(json.dumps(message).encode(), to)


def _receive(sock: socket.socket, wait: float, want_op: str) -> tuple[dict, tuple[str, int]] | None:
    deadline = time.monotonic() + wait
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            return None
        data, addr = sock.recvfrom(2048)
        try:
            message = json.loads(data)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("op") == want_op:
            return message, addr


# --- server -------------------------------------------------------------


class _Tally:
    """Which sequence numbers arrived, and how many after a later one."""

    def __init__(self):
        self.seen: set[int] = set()
        self.highest = -1
        self.late = 0

    def add(self, seq: int) -> None:
        if seq in self.seen:
            return
        self.seen.add(seq)
        if seq < self.highest:
            self.late += 1
        self.highest = max(self.highest, seq)


def serve(addresses: list[str], ports: list[int], tcp: bool, out=sys.stdout) -> None:
    udp = {}
    for address in addresses:
        for port in ports:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((address, port))
            udp[s] = (address, port)
    by_endpoint = {v: k for k, v in udp.items()}
    listeners = []
    if tcp:
        for address in addresses:
            t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            t.bind((address, ports[0]))
            t.listen(16)
            listeners.append(t)
    tallies: dict[str, _Tally] = {}
    print("ready", file=out, flush=True)
    while True:
        readable = select.select(list(udp) + listeners, [], [])[0]
        for s in readable:
            if s in listeners:
                conn, peer = s.accept()
                with conn:
                    conn.sendall((json.dumps({"seen": show(peer)}) + "\n").encode())
                continue
            data, peer = s.recvfrom(2048)
            try:
                message = json.loads(data)
                op = message["op"]
            except (ValueError, KeyError, TypeError):
                continue
            if op == "echo":
                _send(s, {"op": "echoed", "seen": show(peer), "at": show(udp[s])}, peer)
            elif op == "poke":
                target = endpoint(message["to"])
                for source in message["from"]:
                    sender = by_endpoint.get(endpoint(source))
                    if sender is not None:
                        _send(sender, {"op": "poked", "from": source}, target)
            elif op == "count":
                tallies.setdefault(str(message["tag"]), _Tally()).add(int(message["seq"]))
            elif op == "tally":
                tag = str(message["tag"])
                tally = tallies.get(tag, _Tally())
                _send(s, {"op": "tallied", "tag": tag, "received": len(tally.seen), "late": tally.late}, peer)


# --- client -------------------------------------------------------------


def _fresh_socket(port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    return s


def _local_address(towards: tuple[str, int]) -> str:
    # A connected UDP socket reveals the source address routing picks.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(towards)
        return s.getsockname()[0]


def echo(sock: socket.socket, server: tuple[str, int]) -> str | None:
    """Our endpoint as ``server`` sees it, or None if it never answered."""
    for _ in range(ECHO_TRIES):
        _send(sock, {"op": "echo"}, server)
        got = _receive(sock, ECHO_WAIT, "echoed")
        if got is not None:
            return got[0]["seen"]
    return None


def measure(primary: tuple[str, int], alternate: tuple[str, int], tcp: bool = False, local_port: int = 0) -> dict:
    """Mapping and filtering measurements against a probe server.

    ``local_port`` fixes the port of the socket that measures mapping (the
    filtering socket always gets a fresh one).
    """
    a, p1 = primary
    b, p2 = alternate
    endpoints = {show(e): e for e in [(a, p1), (a, p2), (b, p1), (b, p2)]}
    result: dict = {"local": None, "mapping": {}, "filtering": None, "tcp": None}
    with _fresh_socket(local_port) as s:
        result["local"] = f"{_local_address(primary)}:{s.getsockname()[1]}"
        for name, e in endpoints.items():
            result["mapping"][name] = echo(s, e)
    with _fresh_socket() as s:
        mapped = echo(s, primary)
        if mapped is not None:
            result["filtering"] = _filtering(s, primary, mapped, list(endpoints))
    if tcp:
        result["tcp"] = _tcp_echo(primary)
    return result


def _filtering(s: socket.socket, primary: tuple[str, int], mapped: str, sources: list[str]) -> dict:
    """Which of ``sources`` get an unsolicited datagram through to ``s``.

    The request is repeated (bounded) until the poke from ``primary``
    itself, which every NAT must let through, shows it was not lost.
    """
    arrived: set[str] = set()
    for _ in range(POKE_TRIES):
        _send(s, {"op": "poke", "to": mapped, "from": sources}, primary)
        deadline = time.monotonic() + POKE_WAIT
        while len(arrived) < len(sources):
            got = _receive(s, deadline - time.monotonic(), "poked")
            if got is None:
                break
            arrived.add(got[0]["from"])
        if show(primary) in arrived:
            break
    return {name: name in arrived for name in sources}


def _tcp_echo(server: tuple[str, int]) -> str | None:
    try:
        with socket.create_connection(server, timeout=1.0) as c:
            c.settimeout(1.0)
            data = c.makefile("rb").readline()
        return json.loads(data)["seen"]
    except (OSError, ValueError, KeyError):
        return None


def blast(server: tuple[str, int], count: int, tag: str) -> dict:
    """Send ``count`` datagrams one way; ask the server how many arrived.

    An echo first resolves ARP all along the path (frames queued behind an
    unresolved neighbour are dropped by the kernel, which would count as
    loss), and the tally is asked for until two answers agree, so frames
    still held by a reorder box are counted too.
    """
    with _fresh_socket() as s:
        echo(s, server)
        for seq in range(count):
            _send(s, {"op": "count", "tag": tag, "seq": seq}, server)
            if seq % 50 == 49:
                time.sleep(0.002)  # stay well under the socket buffers
        previous = None
        for _ in range(TALLY_TRIES):
            _send(s, {"op": "tally", "tag": tag}, server)
            got = _receive(s, 0.2, "tallied")
            if got is None or got[0]["tag"] != tag:
                continue
            answer = {"sent": count, "received": got[0]["received"], "late": got[0]["late"]}
            if answer == previous:
                return answer
            previous = answer
            time.sleep(TALLY_SETTLE)
    return previous or {"sent": count, "received": None, "late": None}


def classify(result: dict, primary: str, alternate: str) -> dict:
    """RFC 4787 names for a :func:`measure` result.

    ``primary`` is "A:P1" and ``alternate`` "B:P2" as the client was given.
    mapping: "no-nat", "endpoint-independent", "address-dependent",
    "address-and-port-dependent" or "blocked"; filtering likewise (with
    "blocked" when nothing came back at all).
    """
    a, p1 = primary.rsplit(":", 1)
    b, p2 = alternate.rsplit(":", 1)
    m = result["mapping"]
    a1, a2, b1, b2 = (m[f"{a}:{p1}"], m[f"{a}:{p2}"], m[f"{b}:{p1}"], m[f"{b}:{p2}"])
    if a1 is None:
        mapping = "blocked"
    elif a1 == result["local"]:
        mapping = "no-nat"
    elif a1 == a2 == b1 == b2:
        mapping = "endpoint-independent"
    elif a1 == a2 and b1 == b2:
        mapping = "address-dependent"
    else:
        mapping = "address-and-port-dependent"
    f = result["filtering"]
    if f is None or not f[f"{a}:{p1}"]:
        filtering = "blocked"
    elif f[f"{b}:{p2}"] and f[f"{b}:{p1}"]:
        filtering = "endpoint-independent"
    elif f[f"{a}:{p2}"] and not f[f"{b}:{p1}"] and not f[f"{b}:{p2}"]:
        filtering = "address-dependent"
    elif not any(f[k] for k in (f"{a}:{p2}", f"{b}:{p1}", f"{b}:{p2}")):
        filtering = "address-and-port-dependent"
    else:
        filtering = "inconsistent"
    return {"mapping": mapping, "filtering": filtering}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pilotproto.lab.probe")
    sub = parser.add_subparsers(dest="mode", required=True)
    srv = sub.add_parser("server", help="answer probes on every address x port")
    srv.add_argument("--address", action="append", required=True)
    srv.add_argument("--port", action="append", type=int, required=True)
    srv.add_argument("--tcp", action="store_true", help="also accept TCP on the first port")
    cli = sub.add_parser("client", help="measure mapping and filtering behaviour")
    cli.add_argument("--server", required=True, help="A:P1")
    cli.add_argument("--alternate", required=True, help="B:P2 (other address, other port)")
    cli.add_argument("--tcp", action="store_true")
    cli.add_argument("--local-port", type=int, default=0, help="bind the mapping socket to this port")
    bl = sub.add_parser("blast", help="count one-way datagram delivery")
    bl.add_argument("--server", required=True)
    bl.add_argument("--count", type=int, default=1000)
    bl.add_argument("--tag", default=None, help="names this run's tally (default: random)")
    args = parser.parse_args(argv)
    if args.mode == "server":
        serve(args.address, args.port, args.tcp)
        return 0
    if args.mode == "client":
        result = measure(endpoint(args.server), endpoint(args.alternate), args.tcp, args.local_port)
        result["behaviour"] = classify(result, args.server, args.alternate)
    else:
        result = blast(endpoint(args.server), args.count, args.tag or os.urandom(6).hex())
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
