"""
The reporter: reads the analyzer's results from its inbox (``node.messages()``,
each message handed to this loop once) and prints the report when the
analyzer says it is done.
"""

from __future__ import annotations

import asyncio
import json

import pilotproto.aio
from common import options


async def main(home: str | None) -> None:
    rows = []
    async with await pilotproto.aio.connect(home) as node:
        print("reporter: waiting for results", flush=True)
        async for message in node.messages():
            result = json.loads(message.data)
            if "done" in result:
                break
            rows.append(result)
    print(f"report: {len(rows)} pages analysed", flush=True)
    for row in sorted(rows, key=lambda r: -r["words"]):
        print(f"  {row['title']:<24} {row['lines']:>5} lines {row['words']:>6} words  top: {', '.join(row['top'])}")


if __name__ == "__main__":
    asyncio.run(main(options(__doc__.splitlines()[1]).home))
