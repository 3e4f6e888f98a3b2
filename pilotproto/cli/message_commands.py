"""
``pilotctl send-message/inbox/publish/subscribe``: messages (port 1001) and
events (port 1002) through the daemon's durable inbox and outbox
(``send_message``, ``inbox``, ``inbox_delete``, ``outbox``, ``publish``, ``subscribe``
in ``docs/control.md``).  ``--follow`` and ``subscribe`` print as things
arrive: lines for a person, or one JSON object per line with ``--json``.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time

from ..common.names import check_target
from ..control.client import ControlClient
from ..control.message_commands import MAX_DATA, MAX_WAIT
from ..errors import InvalidArgument, NotFound, PilotError, Timeout

#: each long poll of ``inbox --follow`` (the daemon allows 60)
FOLLOW_POLL = 30.0


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _when(seconds) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if isinstance(seconds, (int, float)) else "?"


def _emit_line(doc: dict) -> None:
    sys.stdout.write(json.dumps(doc, ensure_ascii=False) + "\n")
    sys.stdout.flush()


# -- send-message --------------------------------------------------------------------------


def run_send_message(args, ctx) -> dict:
    peer = check_target(args.peer)
    if (args.text is None) == (args.file is None):
        raise InvalidArgument("give the message as TEXT or with --file F (one of them)",
                              hint='pilotctl send-message agent-b "hello", or pilotctl send-message agent-b --file note.json')
    if args.file is not None:
        if not os.path.isfile(args.file):
            raise NotFound(f"no file at {args.file}", hint="Give the path of a regular file.")
        if os.path.getsize(args.file) > MAX_DATA:
            raise InvalidArgument(f"a message is at most {MAX_DATA} bytes", hint="Send larger files with send-file.")
        with open(args.file, "rb") as f:
            data = f.read()
    else:
        data = args.text.encode("utf-8")
    if len(data) > MAX_DATA:
        raise InvalidArgument(f"a message is at most {MAX_DATA} bytes", hint="Send larger data with send-file.")
    if not 0 <= args.wait <= MAX_WAIT:
        raise InvalidArgument(f"--wait must be from 0 to {MAX_WAIT} seconds")
    return ControlClient(ctx.home).request("send_message", {"target": peer, "data": _b64(data), "wait": args.wait},
                                           timeout=args.wait + 45)


def render_send_message(data: dict) -> str:
    if data["state"] == "delivered":
        via = " through the beacon" if data.get("via") == "beacon" else ""
        return f"Delivered message {data['id']} to {data['peer']}{via} ({data['size']} bytes, stored on arrival)."
    return (f"Queued message {data['id']} for {data['peer']} ({data['size']} bytes): it is not acked yet; "
            "the daemon keeps retrying until it is (for up to 7 days), and leaves it sealed at the beacon "
            f"if the peer is offline. See: pilotctl outbox {data['id']}")


# -- outbox ----------------------------------------------------------------------------------------


def run_outbox(args, ctx) -> dict:
    if args.count is not None and not 1 <= args.count <= 1000:
        raise InvalidArgument("--count must be from 1 to 1000")
    if not 0 <= args.wait <= MAX_WAIT:
        raise InvalidArgument(f"--wait must be from 0 to {MAX_WAIT} seconds")
    if args.wait and args.id is None:
        raise InvalidArgument("--wait needs a message ID", hint="pilotctl outbox ID --wait 30")
    request = {"id": args.id, "wait": args.wait, "count": args.count or 100}
    return ControlClient(ctx.home).request("outbox", request, timeout=args.wait + 45)


def _state_line(row: dict) -> str:
    if row["state"] == "delivered":
        how = f"delivered via {row.get('via') or 'stream'} at {_when(row.get('updated'))}"
    elif row["state"] == "failed":
        how = f"failed: {row.get('error') or 'refused'}"
    else:
        how = "queued" + (f", sealed at the beacon since {_when(row['sealed_at'])}" if row.get("sealed") else "")
    return f"{row['id']} to {row.get('peer') or row['address']} ({row['size']} bytes, sent {_when(row['created'])}): {how}"


def render_outbox(data: dict) -> str:
    if not data["messages"]:
        return "No message sent in the last 7 days."
    return "\n".join(_state_line(row) for row in data["messages"])


# -- inbox ---------------------------------------------------------------------------------------


def _item_line(item: dict) -> str:
    head = f"#{item['seq']} {_when(item.get('received_at'))} from {item.get('from')}"
    if item.get("kind") == "file":
        return f"{head}: file {item.get('path')} ({item.get('size')} bytes)"
    if item.get("text") is not None:
        return f"{head}: {item['text']}"
    return f"{head}: {item.get('size')} bytes of binary data (see --json)"


def run_inbox(args, ctx) -> dict:
    client = ControlClient(ctx.home)
    if args.count is not None and not 1 <= args.count <= 1000:
        raise InvalidArgument("--count must be from 1 to 1000")
    if args.delete:  # explicit seqs
        return client.request("inbox_delete", {"seqs": args.delete})
    kind = args.kind
    if not args.follow:
        data = client.request("inbox", {"after": args.after, "count": args.count or 1000, "kind": kind})
        if args.delete_shown and data["messages"]:
            data["deleted"] = client.request("inbox_delete", {"seqs": [m["seq"] for m in data["messages"]]})["deleted"]
        return data
    after, shown = args.after, 0
    while args.count is None or shown < args.count:
        try:
            data = client.request("inbox", {"after": after, "count": 1000, "timeout": FOLLOW_POLL, "kind": kind},
                                  timeout=FOLLOW_POLL + 10)
        except Timeout:
            continue
        for item in data["messages"]:
            if args.count is not None and shown >= args.count:
                break
            _emit_line(item) if ctx.out.json_mode else ctx.out.say(_item_line(item))
            if args.delete_shown:
                client.request("inbox_delete", {"seqs": [item["seq"]]})
            after, shown = item["seq"], shown + 1
    return {"followed": shown, "last": after}


def render_inbox(data: dict) -> str | None:
    if "followed" in data:
        return None
    if "messages" not in data:
        return f"Deleted {data['deleted']} item(s)."
    if not data["messages"]:
        return "The inbox is empty."
    lines = [_item_line(item) for item in data["messages"]]
    if data.get("deleted"):
        lines.append(f"(deleted {data['deleted']} item(s) from the inbox)")
    return "\n".join(lines)


# -- publish and subscribe ------------------------------------------------------------------------


def run_publish(args, ctx) -> dict:
    data = args.data.encode("utf-8")
    if len(data) > MAX_DATA:
        raise InvalidArgument(f"an event is at most {MAX_DATA} bytes")
    return ControlClient(ctx.home).request("publish", {"topic": args.topic, "data": _b64(data)})


def render_publish(data: dict) -> str:
    who = ", ".join(data["subscribers"]) if data["subscribers"] else "no subscriber yet"
    return f"Published {data['id']} on {data['topic']} ({data['size']} bytes) to: {who}."


def run_subscribe(args, ctx) -> dict:
    if args.count is not None and not 1 <= args.count <= 1_000_000:
        raise InvalidArgument("--count must be from 1 to 1000000")
    if args.timeout is not None and not args.timeout > 0:
        raise InvalidArgument("--timeout must be a positive number of seconds")
    client = ControlClient(ctx.home)
    seen, last = 0, None
    deadline = time.monotonic() + args.timeout if args.timeout else None
    with client.upgrade("subscribe", {"pattern": args.pattern, "after": args.after}, timeout=10) as feed:
        if not ctx.out.json_mode:
            ctx.out.note(f"Subscribed to {args.pattern} (Ctrl-C to stop).")
        while args.count is None or seen < args.count:
            wait = 3600.0 if deadline is None else deadline - time.monotonic()
            if wait <= 0:
                break
            try:
                line = feed.read_line(wait)
            except Timeout:
                break
            if not line:
                raise PilotError("the daemon closed the subscription", hint="Is the daemon still running?")
            event = json.loads(line)
            if event.get("event") != "event":
                continue
            if ctx.out.json_mode:
                _emit_line(event)
            else:
                body = event["text"] if event.get("text") is not None else f"<{len(base64.b64decode(event['data']))} bytes>"
                ctx.out.say(f"#{event['seq']} {event['topic']} from {event['from']}: {body}")
            seen, last = seen + 1, event["seq"]
    return {"pattern": args.pattern, "received": seen, "last": last}


def render_subscribe(data: dict) -> None:
    return None


def add_commands(commands, subcommand) -> None:
    send = subcommand(commands, "send-message", "send a message to a peer's inbox (kept and retried until acked)",
                      run_send_message, render_send_message)
    send.add_argument("peer", metavar="PEER")
    send.add_argument("text", nargs="?", metavar="TEXT")
    send.add_argument("--file", metavar="F", help=f"send the bytes of file F (at most {MAX_DATA})")
    send.add_argument("--wait", type=float, default=10.0, metavar="S",
                      help="seconds to wait for the peer's ack before answering 'queued' (default 10)")

    outbox = subcommand(commands, "outbox", "what became of the messages this node sent (queued, delivered, failed)",
                        run_outbox, render_outbox)
    outbox.add_argument("id", nargs="?", metavar="ID", help="only this message")
    outbox.add_argument("--wait", type=float, default=0.0, metavar="S", help="wait up to S seconds for ID to be delivered")
    outbox.add_argument("--count", type=int, metavar="N", help="at most N messages, newest first (default 100)")

    inbox = subcommand(commands, "inbox", "messages and files peers sent (kept until deleted)", run_inbox, render_inbox)
    inbox.add_argument("--follow", "-f", action="store_true", help="keep printing new items as they arrive")
    inbox.add_argument("--delete", nargs="+", type=int, metavar="SEQ", help="delete these items")
    inbox.add_argument("--delete-shown", action="store_true", help="delete each item once printed")
    inbox.add_argument("--count", type=int, metavar="N", help="at most N items (--follow: stop after N)")
    inbox.add_argument("--after", type=int, default=0, metavar="SEQ", help="only items after this seq")
    inbox.add_argument("--kind", choices=["message", "file"], help="only messages, or only files")

    publish = subcommand(commands, "publish", "publish an event on a topic to every trusted subscriber", run_publish, render_publish)
    publish.add_argument("topic", metavar="TOPIC")
    publish.add_argument("data", metavar="DATA")

    subscribe = subcommand(commands, "subscribe", "print events whose topic matches PATTERN ('*' wildcards)",
                           run_subscribe, render_subscribe)
    subscribe.add_argument("pattern", metavar="PATTERN")
    subscribe.add_argument("--count", type=int, metavar="N", help="stop after N events")
    subscribe.add_argument("--after", type=int, metavar="SEQ", help="first replay the stored events after this seq (0: all)")
    subscribe.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds")
