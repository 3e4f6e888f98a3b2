"""
The scraper: reads a few pages (here, local files: the examples never touch
the internet) and publishes each as an event on ``pipeline.scraped.<n>``, then
``pipeline.done``.  It does not know who listens: every trusted agent that
subscribed to a matching pattern gets each event, at least once, in order.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os

import pilotproto.aio
from common import DONE, SCRAPED, options

PAGES = sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "*.py")))


async def main(home: str | None) -> None:
    async with await pilotproto.aio.connect(home) as node:
        # Wait until some agent has told us it subscribes (subscriptions travel as announcements).
        for _ in range(100):
            answer = await node.publish(f"{SCRAPED}.hello", b"{}")
            if answer["subscribers"]:
                break
            await asyncio.sleep(0.1)
        for number, path in enumerate(PAGES):
            with open(path, encoding="utf-8") as f:
                page = {"title": os.path.basename(path), "text": f.read()}
            answer = await node.publish(f"{SCRAPED}.{number}", json.dumps(page).encode())
            print(f"scraper: published {page['title']} to {', '.join(answer['subscribers'])}", flush=True)
        await node.publish(DONE, json.dumps({"pages": len(PAGES)}).encode())


if __name__ == "__main__":
    asyncio.run(main(options(__doc__.splitlines()[1]).home))
