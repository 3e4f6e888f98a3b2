"""
The analyzer: subscribes to ``pipeline.*``, analyses each scraped page (line
and word counts, the most common words) and sends each result to the reporter
as a message (port 1001: stored by the reporter's daemon until read, delivered
exactly once even if the reporter restarts).
"""

from __future__ import annotations

import asyncio
import collections
import json
import re

import pilotproto.aio
from common import DONE, SCRAPED, options


def analyse(text: str) -> dict:
    words = re.findall(r"[a-z_]{4,}", text.lower())
    return {
        "lines": text.count("\n"),
        "words": len(words),
        "top": [word for word, _ in collections.Counter(words).most_common(3)],
    }


async def main(home: str | None, reporter: str) -> None:
    async with await pilotproto.aio.connect(home) as node:
        print("analyzer: subscribed to pipeline.*", flush=True)
        async for event in node.subscribe("pipeline.*"):
            if event.topic == DONE:
                await node.send_message(reporter, json.dumps({"done": json.loads(event.data)}).encode())
                return
            if not event.topic.startswith(SCRAPED + ".") or event.topic.endswith(".hello"):
                continue
            page = json.loads(event.data)
            result = {"title": page["title"], **analyse(page["text"])}
            answer = await node.send_message(reporter, json.dumps(result).encode())
            print(f"analyzer: {page['title']} -> reporter ({answer['state']})", flush=True)


if __name__ == "__main__":
    args = options(__doc__.splitlines()[1])
    asyncio.run(main(args.home, args.reporter))
