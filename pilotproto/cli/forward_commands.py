"""
``pilotctl forward``, ``pilotctl expose`` (both run inside the daemon and
outlive the CLI; ``--list``, ``--remove``) and ``pilotctl listen`` (prints
what arrives on a virtual port, like ``nc -l``).
"""

from __future__ import annotations

import base64
import json
import selectors
import sys
import time

from ..common.names import check_port, check_udp_port
from ..control.client import ControlClient
from ..errors import InvalidArgument, PilotError
from ..node.bridge_specs import (
    DEFAULT_BIND,
    DEFAULT_HOST,
    check_allow_entry,
    split_host_port,
)

MIB = 1024 * 1024
#: bytes read from a stream at a time
CHUNK = 64 * 1024


# -- forward ---------------------------------------------------------------------------


def parse_target(text: str) -> tuple[str, int]:
    """``PEER:PORT``, where PEER is a hostname or an address (which has a colon of its own)."""
    peer, sep, port = (text or "").rpartition(":")
    if not sep or not peer or not port.isdigit():
        raise InvalidArgument(f"bad target {text!r}", hint="Give PEER:PORT, e.g. agent-b:80 or 0:A91F.0000.7C2E:80.")
    return peer, check_port(int(port))


def _local(text: str) -> tuple[str, int]:
    bind, port = split_host_port(text, DEFAULT_BIND, "local address")
    return bind, check_udp_port(port)


def run_forward(args, ctx) -> dict:
    client = ControlClient(ctx.home)
    if args.list:
        return client.call("forwards")
    if args.remove is not None:
        bind, port = _local(args.remove)
        return client.call("unforward", bind=bind, local_port=port)
    if args.local is None or args.target is None:
        raise InvalidArgument("forward needs [BIND:]LOCALPORT and PEER:PORT",
                              hint="For example: pilotctl forward 8080 agent-b:80 (or --list, --remove 8080).")
    bind, local_port = _local(args.local)
    peer, port = parse_target(args.target)
    return client.call("forward", bind=bind, local_port=local_port, target=peer, port=port)


def _counts(entry: dict) -> str:
    text = f"{entry['active']} active, {entry['total']} total"
    if entry.get("failed"):
        text += f", {entry['failed']} failed"
    if entry.get("refused"):
        text += f", {entry['refused']} refused"
    return text + f"; {_size(entry['bytes_sent'])} sent, {_size(entry['bytes_received'])} received"


def _size(n: int) -> str:
    return f"{n / MIB:.1f} MiB" if n >= MIB else f"{n} B"


def _problems(entry: dict) -> list[str]:
    lines = []
    if entry.get("error"):
        lines.append(f"    not listening: {entry['error']['message']}")
    if entry.get("last_error"):
        error = entry["last_error"]
        when = time.strftime("%H:%M:%S", time.localtime(error["at"])) if error.get("at") else "?"
        lines.append(f"    last error ({when}): [{error['code']}] {error['message']}")
    return lines


def _listen_text(entry: dict) -> str:
    bind = entry["bind"]
    return f"[{bind}]:{entry['local_port']}" if ":" in bind else f"{bind}:{entry['local_port']}"


def entry_lines(entries: list[dict], describe) -> list[str]:
    """One line per forward/expose/MCP server (``describe(entry)`` says what it is), then its problems."""
    lines = []
    for entry in entries:
        state = "" if entry.get("listening") else "  NOT LISTENING"
        lines.append(f"{describe(entry)}{state}  ({_counts(entry)})")
        lines += _problems(entry)
    return lines


def forward_lines(forwards: list[dict]) -> list[str]:
    return entry_lines(forwards, lambda f: f"{_listen_text(f)} -> {f['target']}:{f['port']}")


def render_forward(data: dict) -> str:
    if "forwards" in data:
        return "\n".join(forward_lines(data["forwards"])) or "No forwards. Add one with: pilotctl forward 8080 PEER:80"
    if "removed" in data:
        f = data["removed"]
        return f"Removed the forward {_listen_text(f)} -> {f['target']}:{f['port']}."
    return (f"Forwarding {_listen_text(data)} -> {data['target']}:{data['port']} (in the daemon; saved).\n"
            f"Try: curl http://{_listen_text(data)}/")


# -- expose ------------------------------------------------------------------------------


def run_expose(args, ctx) -> dict:
    client = ControlClient(ctx.home)
    if args.list:
        return client.call("exposes")
    if args.remove is not None:
        return client.call("unexpose", port=check_port(args.remove))
    if args.port is None or args.service is None:
        raise InvalidArgument("expose needs PORT and [HOST:]TCPPORT",
                              hint="For example: pilotctl expose 80 127.0.0.1:8000 (or --list, --remove 80).")
    host, tcp_port = split_host_port(args.service, DEFAULT_HOST, "local service")
    allow = [check_allow_entry(a) for a in args.allow or []]
    return ControlClient(ctx.home).request(
        "expose", {"port": check_port(args.port), "host": host, "tcp_port": check_udp_port(tcp_port, allow_any=False),
                   "allow": allow}, timeout=40.0)


def _service_text(entry: dict) -> str:
    host = entry["host"]
    return f"[{host}]:{entry['tcp_port']}" if ":" in host else f"{host}:{entry['tcp_port']}"


def _allow_text(entry: dict) -> str:
    if not entry.get("allow"):
        return "every trusted peer"
    return ", ".join(a["name"] or a["address"] for a in entry["allow"])


def expose_lines(exposes: list[dict]) -> list[str]:
    return entry_lines(exposes, lambda e: f"port {e['port']} -> {_service_text(e)} for {_allow_text(e)}")


def render_expose(data: dict) -> str:
    if "exposes" in data:
        return "\n".join(expose_lines(data["exposes"])) or "Nothing exposed. Expose a service with: pilotctl expose 80 8000"
    if "removed" in data:
        return f"Port {data['removed']['port']} is no longer exposed."
    return (f"Exposing port {data['port']} -> {_service_text(data)} to {_allow_text(data)} (in the daemon; saved).")


# -- listen -------------------------------------------------------------------------------


def run_listen(args, ctx) -> dict:
    """Listen on a virtual port through the daemon and print what arrives, until Ctrl-C or --count streams."""
    port = check_port(args.port)
    if args.count is not None and not 1 <= args.count <= 100_000:
        raise InvalidArgument("--count must be from 1 to 100000")
    emit = _JsonLines(sys.stdout) if ctx.out.json_mode else _RawBytes(sys.stdout)
    client = ControlClient(ctx.home)
    summary = {"port": port, "streams": 0, "bytes": 0}
    with client.listen(port) as listener:
        if not ctx.out.json_mode:
            ctx.out.note(f"Listening on port {port} (Ctrl-C to stop).")
        _serve(client, listener, args.count, emit, summary)
    return summary


def _serve(client, listener, count, emit, summary) -> None:
    selector = selectors.DefaultSelector()
    selector.register(listener.sock, selectors.EVENT_READ, None)
    pending, streams, ended = listener.early, {}, 0
    listener.early = b""
    try:
        while count is None or ended < count:
            for key, _ in selector.select(1.0):
                if key.data is None:
                    data = listener.sock.recv(CHUNK)
                    if not data:
                        raise PilotError("the daemon closed the listener", hint="Is the daemon still running?")
                    pending += data
                    while b"\n" in pending:
                        line, _, pending = pending.partition(b"\n")
                        event = json.loads(line)
                        if event.get("event") == "incoming" and (count is None or summary["streams"] < count):
                            stream = client.accept(event["stream_id"])
                            summary["streams"] += 1
                            streams[stream.sock] = (stream, event)
                            selector.register(stream.sock, selectors.EVENT_READ, stream)
                            emit.stream(event)
                            if stream.early:
                                summary["bytes"] += len(stream.early)
                                emit.data(event, stream.early)
                    continue
                stream, event = streams[key.fileobj]
                try:
                    data = stream.sock.recv(CHUNK)
                except ConnectionResetError:
                    data = b""
                if data:
                    summary["bytes"] += len(data)
                    emit.data(event, data)
                    continue
                selector.unregister(stream.sock)
                del streams[stream.sock]
                stream.close()
                ended += 1
                emit.end(event)
    finally:
        for stream, _ in streams.values():
            stream.close()
        selector.close()


class _RawBytes:
    def __init__(self, stdout):
        self._out = getattr(stdout, "buffer", stdout)

    def stream(self, event):
        """Raw mode prints only the bytes (the note on stderr says who)."""
        sys.stderr.write(f"[stream from {event.get('peer')}]\n")

    def data(self, event, data: bytes):
        self._out.write(data)
        self._out.flush()

    def end(self, event):
        sys.stderr.write(f"[end of stream from {event.get('peer')}]\n")


class _JsonLines:
    def __init__(self, stdout):
        self._out = stdout

    def _line(self, doc):
        self._out.write(json.dumps(doc, ensure_ascii=False) + "\n")
        self._out.flush()

    def stream(self, event):
        self._line({"event": "stream", "stream_id": event["stream_id"], "peer": event.get("peer"),
                    "address": event.get("address"), "port": event.get("port")})

    def data(self, event, data: bytes):
        self._line({"event": "data", "stream_id": event["stream_id"], "peer": event.get("peer"),
                    "size": len(data), "text": data.decode("utf-8", errors="replace"),
                    "base64": base64.b64encode(data).decode()})

    def end(self, event):
        self._line({"event": "end", "stream_id": event["stream_id"], "peer": event.get("peer")})


def render_listen(data: dict) -> None:
    return None  # the bytes were the output


# -- the parser --------------------------------------------------------------------------


def add_commands(commands, subcommand) -> None:
    forward = subcommand(commands, "forward", "a local TCP port that leads to a peer's port (runs in the daemon)",
                         run_forward, render_forward)
    forward.add_argument("local", nargs="?", metavar="[BIND:]LOCALPORT", help="where to listen (default bind 127.0.0.1; 0 = any port)")
    forward.add_argument("target", nargs="?", metavar="PEER:PORT", help="the peer and virtual port each connection goes to")
    forward.add_argument("--list", action="store_true", help="list the forwards and their counts")
    forward.add_argument("--remove", metavar="[BIND:]LOCALPORT", help="stop and forget a forward")

    expose = subcommand(commands, "expose", "serve a virtual port with a local TCP service (runs in the daemon)",
                        run_expose, render_expose)
    expose.add_argument("port", nargs="?", type=int, metavar="PORT", help="the virtual port peers connect to")
    expose.add_argument("service", nargs="?", metavar="[HOST:]TCPPORT", help="the local service (default host 127.0.0.1)")
    expose.add_argument("--allow", nargs="+", metavar="PEER", help="only these trusted peers (names or addresses)")
    expose.add_argument("--list", action="store_true", help="list the exposed ports and their counts")
    expose.add_argument("--remove", type=int, metavar="PORT", help="stop exposing a port")

    listen = subcommand(commands, "listen", "print what arrives on a virtual port (like nc -l); --json: JSON lines",
                        run_listen, render_listen)
    listen.add_argument("port", type=int, metavar="PORT")
    listen.add_argument("--count", type=int, metavar="N", help="stop after N streams ended (default: until Ctrl-C)")
