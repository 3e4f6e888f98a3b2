"""
A real daemon's control socket against hostile input (issue 9): every
malformed line is answered with invalid_argument on a connection that stays
usable, the daemon log holds no traceback (the ``daemons`` fixture checks),
and a user who may not reach the socket is told permission_denied.
"""

import json
import os
import socket
import subprocess
import sys

from pilotproto.common.home import CONTROL_SOCKET

from .conftest import environment

HOSTILE = [
    b'{"id": ' + b"9" * 5000 + b', "cmd": "info"}',
    b'{"id": 1, "cmd": "info", "args": {"a": ' + b"[" * 30000 + b"]" * 30000 + b"}}",
    b'{"id": 2, "cmd": "ping", "args": {"target": "agent-b", "count": 1e999}}',
    b'{"id": 3, "cmd": "recv", "args": {"timeout": NaN}}',
    b'{"id": "\\ud800", "cmd": "info"}',
    b'{"id": 4, "cmd": "lookup", "args": {"target": "\\udfff"}}',
    b'{"id": 5, "cmd": "info", "args": {"x": "\xc3\x28"}}',
    b'{"id": 6, "cmd": "recv", "args": {"count": ' + b"1" * 400 + b"}}",
]


def exchange(path, lines):
    """Send every line on one connection, then an ``info``; every answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(b"".join(line + b"\n" for line in lines) + b'{"id": "last", "cmd": "info"}\n')
        buffer = b""
        while buffer.count(b"\n") < len(lines) + 1:
            chunk = sock.recv(65536)
            assert chunk, f"the daemon closed the connection after {buffer!r}"
            buffer += chunk
    return [json.loads(line) for line in buffer.splitlines()]


def test_malformed_lines_are_invalid_argument_and_the_connection_stays_usable(daemons):
    home = daemons.start("agent-a")
    answers = exchange(os.path.join(home, CONTROL_SOCKET), HOSTILE)
    assert [a.get("code") for a in answers[:-1]] == ["invalid_argument"] * len(HOSTILE), answers
    assert answers[-1]["id"] == "last" and answers[-1]["status"] == "ok"


_PILOTCTL_AS_NOBODY = """
import os, sys
from pilotproto.cli.main import main
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
sys.exit(main(sys.argv[1:]))
"""


def test_another_user_is_told_permission_denied(daemons):
    home = daemons.start("agent-a")
    if os.geteuid() == 0:
        # pilotctl's own code, imported as root, then run as uid 65534, to whom
        # the daemon's 0700 home is closed.
        argv = [sys.executable, "-c", _PILOTCTL_AS_NOBODY]
    else:
        os.chmod(os.path.join(home, CONTROL_SOCKET), 0)
        argv = [sys.executable, "-m", "pilotproto.cli"]
    run = subprocess.run(argv + ["--home", home, "--json", "info"], env=environment(), capture_output=True,
                         text=True, timeout=60, stdin=subprocess.DEVNULL)
    doc = json.loads(run.stdout)
    assert (run.returncode, doc["code"]) == (1, "permission_denied"), (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    if os.geteuid() != 0:
        os.chmod(os.path.join(home, CONTROL_SOCKET), 0o600)
