"""
Pilot inside the lab: a beacon on the lab's public beacon host and nodes on
site hosts, each a real ``twistd pilot`` process in its namespace.

The control sockets live on the shared filesystem, so the test (or
``pilotctl lab``) drives every node from the root namespace with an ordinary
:class:`~pilotproto.control.client.ControlClient`; only UDP/TCP traffic is
confined to the namespaces.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from ..control.client import ControlClient
from ..errors import PilotError, Timeout
from .lab import Host, Lab
from .pki import make_beacon_pki

TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]
BEACON_PORT = 9000
BEACON_ALT_PORT = 9001
#: the beacon's TCP/TLS relay port: the node's default (--beacon host, port 443)
BEACON_TLS_PORT = 443


class LabBeacon:
    def __init__(self, lab: Lab, workdir: str, extra=()):
        self.lab = lab
        self.workdir = workdir
        self.extra = list(extra)
        self.process: subprocess.Popen | None = None
        self.log = os.path.join(workdir, "beacon.log")
        #: the throwaway CA and certificate of this beacon's TLS relay
        self.pki = make_beacon_pki(
            os.path.join(workdir, "beacon-pki"), [lab.beacon.address, lab.beacon.alternate_address]
        )

    @property
    def address(self) -> str:
        return f"{self.lab.beacon.address}:{BEACON_PORT}"

    def start(self, timeout: float = 10.0) -> "LabBeacon":
        argv = TWISTD + [
            "-n", "--pidfile=", "--logfile", self.log,
            "pilot", "beacon",
            "--interface", self.lab.beacon.address,
            "--port", str(BEACON_PORT),
            "--alt-port", str(BEACON_ALT_PORT),
            "--alt-address", self.lab.beacon.alternate_address,
            "--tls-port", str(BEACON_TLS_PORT),
            "--tls-cert", self.pki.cert_file,
            "--tls-key", self.pki.key_file,
            *self.extra,
        ]  # fmt: skip
        self.process = self.lab.popen(self.lab.beacon, argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.exists(self.log) and "BeaconDatagramProtocol starting" in _read(self.log):
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise Timeout(f"the lab beacon did not start; log:\n{_read(self.log)[-2000:]}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


class LabNode:
    def __init__(self, lab: Lab, host: Host, workdir: str, hostname: str, beacon: LabBeacon, extra=()):
        self.lab = lab
        self.host = host
        self.hostname = hostname
        self.beacon = beacon
        self.home = os.path.join(workdir, hostname)
        self.extra = list(extra)
        self.process: subprocess.Popen | None = None
        self.log = os.path.join(self.home, "daemon.log")

    def start(self, timeout: float = 15.0, wait_registered: bool = True) -> "LabNode":
        os.makedirs(self.home, mode=0o700, exist_ok=True)
        argv = TWISTD + [
            "-n", "--pidfile=", "--logfile", self.log,
            "pilot", "node", "--home", self.home,
            "--hostname", self.hostname, "--beacon", self.beacon.address,
            "--beacon-ca", self.beacon.pki.ca_file,
            *self.extra,
        ]  # fmt: skip
        self.process = self.lab.popen(self.host, argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PilotError(f"node {self.hostname} exited; log:\n{_read(self.log)[-2000:]}")
            try:
                info = self.ctl("info", timeout=2)
                if info["registered"] or not wait_registered:
                    return self
            except PilotError:
                info = None  # not answering yet: ask again
            time.sleep(0.1)
        raise Timeout(f"node {self.hostname} did not register; log:\n{_read(self.log)[-2000:]}")

    def ctl(self, cmd: str, timeout: float = 10.0, **args):
        return ControlClient(self.home).call(cmd, timeout=timeout, **args)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.ctl("shutdown", timeout=2)
            self.process.wait(5)
        except (PilotError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait(5)

    def log_text(self) -> str:
        return _read(self.log)


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""
