"""
A blocking client for the daemon's control socket.

Plain ``socket``, no reactor: ``pilotctl`` and scripts call one command at a
time and wait for its answer.  Each call uses its own connection, so a late
answer to a call that timed out can never be mistaken for the next one's.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import socket
import time

from ..errors import NotRunning, PermissionDenied, PilotError, ProtocolError, Timeout
from ..common.home import CONTROL_SOCKET, resolve_home
from .server import MAX_RESPONSE_LINE, check_socket_path

DEFAULT_TIMEOUT = 10.0


class ControlClient:
    def __init__(self, home: str | None = None, socket_path: str | None = None):
        self.home = resolve_home(home)
        self.socket_path = socket_path or os.path.join(self.home, CONTROL_SOCKET)
        self._ids = itertools.count(1)

    def call(self, cmd: str, timeout: float = DEFAULT_TIMEOUT, **args) -> dict:
        """Run ``cmd`` in the daemon and return its result data."""
        return self.request(cmd, args, timeout)

    def request(self, cmd: str, args: dict, timeout: float = DEFAULT_TIMEOUT) -> dict:
        """Like :meth:`call`, for args whose names clash with ``cmd``/``timeout``."""
        request_id = next(self._ids)
        line = json.dumps({"id": request_id, "cmd": cmd, "args": args}, separators=(",", ":")).encode("utf-8")
        deadline = time.monotonic() + timeout
        sock = self._connect(timeout)
        try:
            try:
                sock.sendall(line + b"\n")
                response = self._read_response(sock, request_id, deadline, cmd, timeout)
            except socket.timeout:
                raise self._timeout(cmd, timeout) from None
            except (BrokenPipeError, ConnectionResetError):
                raise NotRunning(
                    f"the daemon closed the control connection before answering {cmd!r}",
                    hint="It may be shutting down; check 'pilotctl daemon status' and the daemon log.",
                ) from None
        finally:
            sock.close()
        if response.get("status") == "ok":
            data = response.get("data")
            return data if isinstance(data, dict) else {}
        if response.get("status") == "error":
            raise PilotError.from_dict(response)
        raise ProtocolError(f"the daemon sent a response with unknown status {response.get('status')!r}")

    def _connect(self, timeout: float) -> socket.socket:
        check_socket_path(self.socket_path)
        if not os.path.lexists(self.socket_path):
            raise NotRunning(f"no pilot daemon is running for {self.home}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self.socket_path)
        except socket.timeout:
            sock.close()
            raise Timeout(f"the daemon did not accept a control connection within {timeout:g} s") from None
        except OSError as e:
            sock.close()
            if e.errno in (errno.ECONNREFUSED, errno.ENOENT):
                raise NotRunning(f"no pilot daemon is running for {self.home} (stale control socket)") from None
            if e.errno in (errno.EACCES, errno.EPERM):
                raise PermissionDenied(
                    f"cannot open the control socket {self.socket_path}: {e.strerror}",
                    hint="Run pilotctl as the user that started the daemon.",
                ) from None
            raise
        return sock

    def _read_response(self, sock, request_id, deadline: float, cmd: str, timeout: float) -> dict:
        buffer = b""
        while True:
            newline = buffer.find(b"\n")
            if newline >= 0:
                line, buffer = buffer[:newline], buffer[newline + 1 :]
                response = _decode(line)
                if response.get("id") == request_id:
                    return response
                if response.get("id") is None and response.get("status") == "error":
                    # The daemon could not even read our request.
                    return response
                continue
            if len(buffer) > MAX_RESPONSE_LINE:
                raise ProtocolError(f"the daemon's answer to {cmd!r} is longer than {MAX_RESPONSE_LINE} bytes")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timeout(cmd, timeout)
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                raise NotRunning(
                    f"the daemon closed the control connection before answering {cmd!r}",
                    hint="It may be shutting down; check 'pilotctl daemon status' and the daemon log.",
                )
            buffer += chunk

    @staticmethod
    def _timeout(cmd: str, timeout: float) -> Timeout:
        return Timeout(
            f"the daemon did not answer {cmd!r} within {timeout:g} s",
            hint="Check 'pilotctl daemon status' and the daemon log.",
        )


def _decode(line: bytes) -> dict:
    try:
        doc = json.loads(line.decode("utf-8"))
    except ValueError:
        raise ProtocolError("the daemon sent a line that is not JSON") from None
    if not isinstance(doc, dict):
        raise ProtocolError("the daemon sent a JSON value that is not an object")
    return doc
