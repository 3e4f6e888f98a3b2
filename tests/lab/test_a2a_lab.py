"""
Issue 12's A2A acceptance across two lab NATs: an a2a-sdk client behind a
port-restricted cone NAT sends a message to an a2a-sdk agent behind a
symmetric NAT and gets its reply, and a streamed reply (SSE) a word at a
time.  The agent (examples/a2a_pair/agent.py, under uvicorn on its host's
loopback) is put on the overlay with ``expose 80``; the client
(examples/a2a_pair/client.py: A2ACardResolver + ClientFactory over
``httpx.AsyncClient(transport=HTTPTransport(node))``) runs inside the other
site's host, as a user's programs would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.lab

needs_lab = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip"),
    reason="the lab needs root, ip and nft",
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(REPO, "examples", "a2a_pair")
AGENT_PORT = 8001
TEXT = "hello across two nats"

#: run inside the agent's host: until uvicorn listens on its loopback (bounded: 100 tries, 0.1 s apart)
WAIT_FOR_AGENT = f"""
import socket, sys, time
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", {AGENT_PORT}), timeout=0.5).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit("the A2A agent never listened on 127.0.0.1:{AGENT_PORT}")
"""


@needs_lab
def test_a2a_sdk_client_and_agent_across_two_nats(tmp_path):
    pytest.importorskip("httpx")
    pytest.importorskip("a2a.client", reason="a2a-sdk is not installed (pip install 'a2a-sdk[http-server]')")
    pytest.importorskip("uvicorn", reason="uvicorn is not installed (the A2A agent's server)")
    from pilotproto.lab import Lab
    from pilotproto.lab.matrix import establish_trust
    from pilotproto.lab.pilot import LabBeacon, LabNode

    with Lab() as lab:
        beacon = LabBeacon(lab, str(tmp_path)).start()
        client_site = lab.add_site("port-restricted-cone")
        agent_site = lab.add_site("symmetric")
        a = LabNode(lab, client_site.hosts[0], str(tmp_path), "agent-a", beacon).start()
        b = LabNode(lab, agent_site.hosts[0], str(tmp_path), "agent-b", beacon).start()
        agent_log = open(tmp_path / "a2a-agent.log", "w")
        server = lab.popen(agent_site.hosts[0], [sys.executable, os.path.join(EXAMPLE, "agent.py"), "--name",
                                                 "agent-b", "--port", str(AGENT_PORT), "--delay", "0.1"],
                           stdout=agent_log, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            establish_trust(a, b)
            waited = lab.run(agent_site.hosts[0], [sys.executable, "-c", WAIT_FOR_AGENT], capture_output=True,
                             text=True, timeout=30)  # fmt: skip
            assert waited.returncode == 0, waited.stderr + (tmp_path / "a2a-agent.log").read_text()
            b.ctl("expose", port=80, host="127.0.0.1", tcp_port=AGENT_PORT, allow=[])
            done = lab.run(client_site.hosts[0], [sys.executable, os.path.join(EXAMPLE, "client.py"), "--home",
                                                  a.home, "http://agent-b/", TEXT],
                           capture_output=True, text=True, timeout=90)  # fmt: skip
            output = done.stdout + done.stderr
            assert done.returncode == 0, output
            assert "card: agent-b at http://agent-b/" in output, output
            assert f"reply: {TEXT.upper()}" in output, output
            # the streamed reply: one SSE event per word, then the task completed
            for word in TEXT.upper().split():
                assert f"artifact_update '{word}" in output, output
            assert "status_update TASK_STATE_COMPLETED" in output, output
        finally:
            server.terminate()
            try:
                server.wait(5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)
            agent_log.close()
            for node in (a, b):
                node.stop()
            beacon.kill()
        assert "Traceback" not in (tmp_path / "a2a-agent.log").read_text()
