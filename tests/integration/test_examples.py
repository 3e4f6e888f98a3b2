"""
Every example in ``examples/`` runs with its one command and does what it says.

Each starts its own beacon and agents on loopback (``examples/_local.py``) and
cleans up after itself; the test only runs the command and checks the output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from .conftest import REPO, environment

pytestmark = pytest.mark.integration

EXAMPLES = os.path.join(REPO, "examples")
TIMEOUT = 120


def run(argv: list[str], tmp_path) -> str:
    done = subprocess.run(argv, cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=TIMEOUT)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Traceback" not in output, output
    return done.stdout


def test_asyncio_echo(tmp_path):
    out = run([sys.executable, os.path.join(EXAMPLES, "asyncio_echo.py")], tmp_path)
    assert "HELLO" in out and "OVER THE OVERLAY" in out and "FROM ASYNCIO" in out


def test_http_by_name(tmp_path):
    pytest.importorskip("httpx")
    out = run([sys.executable, os.path.join(EXAMPLES, "http_by_name.py")], tmp_path)
    assert "GET http://agent-b/hello.txt -> 200: hello from agent-b" in out
    assert "GET http://agent-b/ -> 200" in out


@pytest.mark.skipif(not shutil.which("curl"), reason="forward_curl.sh needs curl")
def test_forward_curl(tmp_path):
    out = run(["bash", os.path.join(EXAMPLES, "forward_curl.sh")], tmp_path)
    assert "(identical)" in out


def test_pipeline(tmp_path):
    out = run([sys.executable, os.path.join(EXAMPLES, "pipeline", "run.py")], tmp_path)
    pages = len([name for name in os.listdir(EXAMPLES) if name.endswith(".py")])
    assert f"report: {pages} pages analysed" in out
    assert out.count("analyzer: ") >= pages


def test_embed_twisted(tmp_path):
    out = run([sys.executable, os.path.join(EXAMPLES, "embed_twisted.py")], tmp_path)
    assert "agent-b's echo port answered: ping from the embedded node" in out
    assert "over the overlay: hello from a Twisted app on the overlay" in out


def test_a2a_pair(tmp_path):
    pytest.importorskip("httpx")
    pytest.importorskip("a2a.client", reason="a2a-sdk is not installed (pip install 'a2a-sdk[http-server]')")
    pytest.importorskip("uvicorn", reason="uvicorn is not installed (the A2A agents' server)")
    out = run([sys.executable, os.path.join(EXAMPLES, "a2a_pair", "run.py")], tmp_path)
    assert "card: agent-b at http://agent-b/" in out and "card: agent-a at http://agent-a/" in out
    assert "reply: HELLO OVER THE OVERLAY" in out and "reply: sTAN owt dniheb stnega" in out
    assert "artifact_update 'OVERLAY'" in out and out.count("status_update TASK_STATE_COMPLETED") == 2


def test_mcp_behind_nat(tmp_path):
    pytest.importorskip("mcp", reason="the mcp SDK is not installed (pip install mcp)")
    out = run([sys.executable, os.path.join(EXAMPLES, "mcp_behind_nat", "run.py")], tmp_path)
    assert "stdio via pilotctl mcp connect: tools add, pid, slow; add(2, 40) = 42" in out
    assert "streamable HTTP to http://agent-b:8080/mcp: tools add, pid, slow; add(2, 40) = 42" in out
    assert out.count("demo://greeting = 'hello from behind the NAT'") == 2 and "1 session(s), 0 failed" in out
