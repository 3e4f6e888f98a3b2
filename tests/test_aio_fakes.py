"""
Not tests: an in-test control socket for the asyncio SDK's unit tests: plain
asyncio.start_unix_server speaking docs/control.md, with handlers per
command.  Plain commands run concurrently (so answers can overtake each
other, as the daemon's do); an upgrading command's handler owns the
connection after its request line.
"""

from __future__ import annotations

import asyncio
import json
import os

from pilotproto.errors import PilotError


def line(doc: dict) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def ok(writer, request_id, data: dict) -> None:
    writer.write(line({"id": request_id, "status": "ok", "data": data}))


def error(writer, request_id, e: PilotError) -> None:
    writer.write(line({"id": request_id, "status": "error", "code": e.code, "message": e.message, "hint": e.hint}))


class FakeDaemon:
    def __init__(self, home: str):
        self.home = home
        self.path = os.path.join(home, "control.sock")
        #: cmd -> async fn(args) -> data dict (raise a PilotError for an error answer)
        self.commands = {}
        #: cmd -> async fn(request_id, args, reader, writer): writes its own answer, then owns the connection
        self.upgrades = {}
        self.requests: list[dict] = []
        self.connections: list[asyncio.StreamWriter] = []
        self.server = None
        self._tasks: set = set()

    async def start(self) -> "FakeDaemon":
        self.server = await asyncio.start_unix_server(self._serve, self.path)
        return self

    async def stop(self) -> None:
        """As a daemon that exits: close the listener and every connection, remove the socket."""
        self.server.close()
        for writer in self.connections:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.connections.clear()
        if os.path.exists(self.path):
            os.unlink(self.path)

    async def _serve(self, reader, writer):
        self.connections.append(writer)
        try:
            while True:
                raw = await reader.readline()
                if not raw:
                    writer.close()
                    return
                request = json.loads(raw)
                self.requests.append(request)
                cmd, args = request["cmd"], request.get("args") or {}
                if cmd in self.upgrades:
                    await self.upgrades[cmd](request["id"], args, reader, writer)
                    return
                task = asyncio.create_task(self._answer(request["id"], cmd, args, writer))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except (ConnectionError, asyncio.CancelledError):
            writer.close()

    async def _answer(self, request_id, cmd, args, writer):
        try:
            data = await self.commands[cmd](args)
        except PilotError as e:
            error(writer, request_id, e)
        else:
            ok(writer, request_id, data)
