"""
Several beacons per node (issue 14, item 1), with real processes: two
beacons, daemons given both; trust, a lookup and a stream through them; one
beacon killed (an open stream keeps working, a new session forms within
10 s through the other), then restarted (the nodes register there again).
"""

import socket
import threading
import time

import pytest

from .conftest import pilotctl, wait_for

pytestmark = pytest.mark.integration


def trust(a, name_b):
    """Ask ``name_b`` (which approves at once) for trust, through the beacons' mail."""
    assert pilotctl(a, "handshake", name_b, "two beacons")[0] == 0
    assert wait_for(lambda: pilotctl(a, "lookup", name_b)[0] == 0, 10)


def beacon_states(home):
    return {b["beacon"]: b["registered"] for b in pilotctl(home, "info")[1]["data"]["beacons"]}


class Echo:
    """A TCP echo server on loopback (behind an expose)."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn):
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self):
        self.server.close()


def round_trip(sock, data: bytes) -> bytes:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_two_beacons_one_dies_and_comes_back(beacon, second_beacon, daemons):
    first, second = beacon.address, second_beacon.address
    a = daemons.start("agent-a", "--beacon", second)
    b = daemons.start("agent-b", "--beacon", second, "--auto-approve")
    c = daemons.start("agent-c", "--beacon", second, "--auto-approve")
    for home in (a, b, c):
        assert wait_for(lambda home=home: all(beacon_states(home).values()), 10), pilotctl(home, "info")
    info = pilotctl(a, "info")[1]["data"]
    assert [x["beacon"] for x in info["beacons"]] == [first, second]
    assert info["beacon"] == first and info["registered"]

    trust(a, "agent-b")
    found = pilotctl(a, "lookup", "agent-b")[1]["data"]
    assert found["beacons"] == [first, second]
    trust(a, "agent-c")

    echo = Echo()
    try:
        code, doc = pilotctl(b, "expose", "80", f"127.0.0.1:{echo.port}")
        assert code == 0, doc
        code, doc = pilotctl(a, "forward", "0", "agent-b:80")
        assert code == 0, doc
        stream = socket.create_connection(("127.0.0.1", doc["data"]["local_port"]), timeout=10)
        stream.settimeout(10)
        assert round_trip(stream, b"before" * 1000) == b"before" * 1000

        beacon.kill()
        killed = time.monotonic()
        # A new session (a and c have none yet) forms within 10 s, through the second beacon.
        code, doc = pilotctl(a, "ping", "agent-c", "--count", "1", "--timeout", "10", timeout=30)
        assert code == 0 and doc["data"]["received"] == 1, doc
        assert time.monotonic() - killed < 10
        # The open stream never noticed.
        assert round_trip(stream, b"after" * 1000) == b"after" * 1000
        # The dead beacon shows as such within a keepalive interval; the node stays registered.
        assert wait_for(lambda: beacon_states(a) == {first: False, second: True}, 15)
        assert pilotctl(a, "info")[1]["data"]["registered"]

        beacon.start()
        for home in (a, b, c):
            assert wait_for(lambda home=home: all(beacon_states(home).values()), 15), pilotctl(home, "info")
        assert pilotctl(c, "lookup", "agent-a")[1]["data"]["beacons"] == [first, second]
        assert round_trip(stream, b"again" * 1000) == b"again" * 1000
        stream.close()
    finally:
        echo.close()
