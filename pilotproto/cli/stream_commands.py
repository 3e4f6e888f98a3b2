"""
``pilotctl connect/send/recv/send-file/bench``: data over overlay streams,
through the daemon's control socket upgraded to raw pipes
(:meth:`pilotproto.control.client.ControlClient.open_stream` and friends).
"""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import socket
import sys
import time

from ..common.names import check_target
from ..control.client import CHUNK, ControlClient
from ..errors import InvalidArgument, NotFound, ProtocolError, Timeout
from ..node.inbox import INBOX_PORT, MAX_MESSAGE, encode_header, parse_reply
from ..common.names import check_port
from ..node.services import ECHO_PORT
from .output import Progress

MIB = 1024 * 1024
#: the most a command collects from a stream to print
MAX_COLLECT = 16 * MIB


def _target(text: str) -> str:
    return check_target(text)


def _port(value: int) -> int:
    return check_port(value)


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


# -- connect -------------------------------------------------------------------------


def run_connect(args, ctx) -> dict:
    peer, port = _target(args.peer), _port(args.port)
    if args.message is None and ctx.out.json_mode:
        raise InvalidArgument(
            "connect without --message pipes stdin and stdout, which leaves no room for --json",
            hint="Pass --message TEXT to get a JSON result.",
        )
    with ControlClient(ctx.home).open_stream(peer, port, timeout=args.timeout + 30) as stream:
        if args.message is None:
            sent, received = _netcat(stream, sys.stdin.buffer, sys.stdout.buffer)
            return {"peer": stream.info.get("peer"), "port": port, "bytes_sent": sent, "bytes_received": received, "piped": True}
        message = args.message.encode("utf-8")
        stream.sendall(message)
        stream.finish_sending()
        reply = stream.read_to_end(args.timeout, limit=MAX_COLLECT)
    return {
        "peer": stream.info.get("peer"),
        "address": stream.info.get("address"),
        "port": port,
        "bytes_sent": len(message),
        "bytes_received": len(reply),
        "received": _text(reply),
    }


def render_connect(data: dict):
    return None if data.get("piped") else data["received"]


def _netcat(stream, stdin, stdout) -> tuple[int, int]:
    """stdin → stream, stream → stdout, until the peer ends the stream."""
    sent = received = 0
    if stream.early:
        stdout.write(stream.early)
        stdout.flush()
        received += len(stream.early)
        stream.early = b""
    sock = stream.sock
    sock.setblocking(True)
    selector = selectors.DefaultSelector()
    stdin_fd = stdin.fileno()
    selector.register(sock, selectors.EVENT_READ, "stream")
    selector.register(stdin_fd, selectors.EVENT_READ, "stdin")
    try:
        while True:
            for key, _ in selector.select():
                if key.data == "stdin":
                    data = os.read(stdin_fd, CHUNK)
                    if data:
                        sock.sendall(data)
                        sent += len(data)
                    else:
                        selector.unregister(stdin_fd)
                        sock.shutdown(socket.SHUT_WR)
                else:
                    try:
                        data = sock.recv(CHUNK)
                    except ConnectionResetError:
                        data = b""
                    if not data:
                        return sent, received
                    stdout.write(data)
                    stdout.flush()
                    received += len(data)
    finally:
        selector.close()


# -- send ------------------------------------------------------------------------------


def run_send(args, ctx) -> dict:
    peer, port = _target(args.peer), _port(args.port)
    data = args.data.encode("utf-8")
    if port == INBOX_PORT:
        if len(data) > MAX_MESSAGE:
            raise InvalidArgument(f"a message is at most {MAX_MESSAGE} bytes", hint="Send larger data with send-file.")
        digest = hashlib.sha256(data).hexdigest()
        with ControlClient(ctx.home).open_stream(peer, port, timeout=args.timeout + 30) as stream:
            stream.sendall(encode_header("message", len(data), digest) + data)
            stream.finish_sending()
            reply = parse_reply(stream.read_line(args.timeout))
        return {"peer": stream.info.get("peer"), "port": port, "kind": "message", "size": len(data), "sha256": digest,
                "delivered": True}
    with ControlClient(ctx.home).open_stream(peer, port, timeout=args.timeout + 30) as stream:
        stream.sendall(data)
        stream.finish_sending()
        reply = stream.read_to_end(args.timeout, limit=MAX_COLLECT)
    return {"peer": stream.info.get("peer"), "port": port, "size": len(data), "reply": _text(reply)}


def render_send(data: dict) -> str:
    if data.get("kind") == "message":
        return f"Sent {data['size']} bytes to {data['peer']} port {data['port']} (delivered, SHA-256 verified)."
    text = f"Sent {data['size']} bytes to {data['peer']} port {data['port']}."
    return text + (f"\n{data['reply']}" if data.get("reply") else "")


# -- recv ------------------------------------------------------------------------------


def run_recv(args, ctx) -> dict:
    port = _port(args.port)
    if args.count is not None and not 1 <= args.count <= 1000:
        raise InvalidArgument("--count must be from 1 to 1000")
    if args.port == INBOX_PORT:
        timeout = args.timeout if args.timeout is not None else 0.0
        # The daemon waits up to --timeout for --count messages (at most), and
        # fails with a timeout only when none came.
        return {"port": port, **ControlClient(ctx.home).request(
            "recv", {"count": args.count, "timeout": timeout}, timeout=timeout + 10)}
    count = args.count or 1
    timeout = args.timeout if args.timeout is not None else 30.0
    deadline = time.monotonic() + timeout
    streams = []
    client = ControlClient(ctx.home)
    with client.listen(port) as listener:
        while len(streams) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                event = json.loads(listener.read_line(remaining))
            except Timeout:
                break
            if event.get("event") != "incoming":
                continue
            with client.accept(event["stream_id"]) as stream:
                data = stream.read_to_end(max(deadline - time.monotonic(), 1.0), limit=MAX_COLLECT)
            streams.append({"peer": event.get("peer"), "address": event.get("address"), "size": len(data), "text": _text(data)})
    if not streams:
        raise Timeout(f"no stream arrived on port {port} within {timeout:g} s")
    return {"port": port, "streams": streams}


def render_recv(data: dict) -> str:
    if "messages" in data:
        if not data["messages"]:
            return "No messages."
        return "\n".join(f"[{m['from']}] {m['text']}" for m in data["messages"])
    return "\n".join(f"[{s['peer']}] {s['text']}" for s in data["streams"])


# -- send-file ---------------------------------------------------------------------------


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def run_send_file(args, ctx) -> dict:
    peer = _target(args.peer)
    path = args.path
    if not os.path.isfile(path):
        raise NotFound(f"no file at {path}", hint="Give the path of a regular file to send.")
    size = os.path.getsize(path)
    name = args.name if args.name else os.path.basename(path)  # the receiver checks it
    digest = _file_digest(path)
    progress = Progress(ctx.out.progress_stream(), size, label=f"to {peer}")
    started = time.monotonic()
    with ControlClient(ctx.home).open_stream(peer, INBOX_PORT, timeout=args.timeout + 30) as stream:
        stream.sock.settimeout(args.timeout)
        try:
            stream.sendall(encode_header("file", size, digest, name))
            sent = 0
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    stream.sendall(chunk)
                    sent += len(chunk)
                    progress.update(sent)
            stream.finish_sending()
        except socket.timeout:
            raise Timeout(f"{peer} took no data for {args.timeout:g} s") from None
        except (BrokenPipeError, ConnectionResetError):
            pass  # the receiver stopped us early; its answer says why
        finally:
            progress.done()
        reply = parse_reply(stream.read_line(args.timeout))
    seconds = time.monotonic() - started
    if reply.get("sha256") != digest or reply.get("size") != size:
        raise ProtocolError("the receiver acknowledged a different file")
    return {
        "peer": stream.info.get("peer"),
        "path": os.path.abspath(path),
        "name": reply.get("name"),
        "stored_path": reply.get("path"),
        "id": reply.get("id"),
        "size": size,
        "sha256": digest,
        "seconds": round(seconds, 3),
        "mb_per_s": round(size / MIB / max(seconds, 1e-6), 2),
    }


def render_send_file(data: dict) -> str:
    return (
        f"Sent {data['size']} bytes to {data['peer']} as {data['name']!r} in {data['seconds']:.2f} s "
        f"({data['mb_per_s']:.1f} MiB/s); SHA-256 verified on arrival."
        + (f"\nOn {data['peer']} it is {data['stored_path']} (in its 'pilotctl inbox')." if data.get("stored_path") else "")
    )


# -- bench ---------------------------------------------------------------------------------


def run_bench(args, ctx) -> dict:
    peer = _target(args.peer)
    if not 0 < args.size_mb <= 4096:
        raise InvalidArgument("--size-mb must be from 1 to 4096")
    total = int(args.size_mb * MIB)
    block = os.urandom(MIB)
    progress = Progress(ctx.out.progress_stream(), total, bits=True, label=f"echo {peer}")
    with ControlClient(ctx.home).open_stream(peer, ECHO_PORT) as stream:
        try:
            timings = _echo(stream, block, total, args.timeout, progress)
        finally:
            progress.done()
    t0, t_sent, t_first, t_done = timings["times"]
    bits = total * 8
    return {
        "peer": stream.info.get("peer"),
        "bytes": total,
        "seconds": round(t_done - t0, 3),
        "send_mbps": round(bits / max(t_sent - t0, 1e-6) / 1e6, 2),
        "receive_mbps": round(bits / max(t_done - t_first, 1e-6) / 1e6, 2),
        "echo_mbps": round(bits / max(t_done - t0, 1e-6) / 1e6, 2),
        "verified": True,
    }


def _echo(stream, block: bytes, total: int, idle_timeout: float, progress) -> dict:
    """Send ``total`` bytes (``block`` repeated) to an echo service, read them back, compare.

    ``progress`` hears how many bytes came back so far (a :class:`Progress`)."""
    sock = stream.sock
    sock.setblocking(False)
    sent_hash, back_hash = hashlib.sha256(), hashlib.sha256()
    sent = received = 0
    view = memoryview(block)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    t0 = time.monotonic()
    t_sent = t_first = None
    if stream.early:
        back_hash.update(stream.early)
        received += len(stream.early)
        t_first = t0
    try:
        while True:
            events = selector.select(idle_timeout)
            if not events:
                raise Timeout(f"the echo service sent nothing for {idle_timeout:g} s ({received} of {total} bytes back)")
            _, mask = events[0]
            if mask & selectors.EVENT_WRITE and sent < total:
                offset = sent % len(block)
                piece = view[offset : offset + min(len(block) - offset, total - sent)]
                try:
                    n = sock.send(piece)
                except BlockingIOError:
                    n = 0
                sent_hash.update(piece[:n])
                sent += n
                if sent == total:
                    t_sent = time.monotonic()
                    sock.shutdown(socket.SHUT_WR)
                    selector.modify(sock, selectors.EVENT_READ)
            if mask & selectors.EVENT_READ:
                try:
                    data = sock.recv(CHUNK)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    data = b""
                if not data:
                    break
                if t_first is None:
                    t_first = time.monotonic()
                back_hash.update(data)
                received += len(data)
                progress.update(received)
    finally:
        selector.close()
    t_done = time.monotonic()
    if received != total or sent != total or back_hash.digest() != sent_hash.digest():
        raise ProtocolError(f"the echo came back different: {received} of {total} bytes, checksum "
                            f"{'matches' if back_hash.digest() == sent_hash.digest() else 'differs'}")
    return {"times": (t0, t_sent, t_first or t_done, t_done)}


def render_bench(data: dict) -> str:
    return (
        f"{data['bytes'] / MIB:.0f} MiB to {data['peer']} and back through echo in {data['seconds']:.2f} s\n"
        f"  send:    {data['send_mbps']:9.1f} Mbit/s\n"
        f"  receive: {data['receive_mbps']:9.1f} Mbit/s\n"
        f"  echo:    {data['echo_mbps']:9.1f} Mbit/s (round trip, both ways at once)"
    )


def add_commands(commands, subcommand) -> None:
    connect = subcommand(commands, "connect", "open a stream to a peer's port (like netcat without --message)", run_connect, render_connect)
    connect.add_argument("peer", metavar="PEER")
    connect.add_argument("--port", type=int, required=True, metavar="P")
    connect.add_argument("--message", metavar="TEXT", help="send TEXT, end the stream, print the reply")
    connect.add_argument("--timeout", type=float, default=30.0, metavar="S", help="seconds of silence allowed (default 30)")

    send = subcommand(commands, "send", "send text to a peer's port (1001: a message for its inbox)", run_send, render_send)
    send.add_argument("peer", metavar="PEER")
    send.add_argument("port", type=int, metavar="PORT")
    send.add_argument("--data", required=True, metavar="TEXT")
    send.add_argument("--timeout", type=float, default=30.0, metavar="S")

    recv = subcommand(commands, "recv", "receive: queued messages (port 1001) or streams to a port", run_recv, render_recv)
    recv.add_argument("port", type=int, metavar="PORT")
    recv.add_argument("--count", type=int, metavar="N", help="how many (1001: default all queued; other ports: 1)")
    recv.add_argument("--timeout", type=float, metavar="S", help="seconds to wait (1001: default 0; other ports: 30)")

    send_file = subcommand(commands, "send-file", "send a file to a peer's inbox, checksum verified", run_send_file, render_send_file)
    send_file.add_argument("peer", metavar="PEER")
    send_file.add_argument("path", metavar="PATH")
    send_file.add_argument("--name", metavar="NAME", help="the name to offer the receiver (default: the file's)")
    send_file.add_argument("--timeout", type=float, default=60.0, metavar="S", help="seconds of stall allowed (default 60)")

    bench = subcommand(commands, "bench", "goodput to a peer and back through its echo port", run_bench, render_bench)
    bench.add_argument("peer", metavar="PEER")
    bench.add_argument("--size-mb", type=float, default=16.0, metavar="N", help="MiB to send (default 16)")
    bench.add_argument("--timeout", type=float, default=30.0, metavar="S", help="seconds of stall allowed (default 30)")
