"""
Driving :mod:`pilotproto.lab.probe` from Python: a probe server on the
beacon, and NAT measurements from any lab host.  The tests use this, and so
can ``pilotctl lab`` to show each site's measured behaviour.
"""

from __future__ import annotations

import json
import subprocess
import sys

from pilotproto.lab.errors import LabError
from pilotproto.lab.lab import Host, Lab

PROBE_PORTS = (3478, 3479)
CLIENT_TIMEOUT = 30.0


def start_probe_server(lab: Lab) -> subprocess.Popen:
    """Run the probe server on both beacon addresses x both probe ports.

    Returns once it is listening; the lab stops it on close.
    """
    beacon = lab.beacon
    argv = [sys.executable, "-m", "pilotproto.lab.probe", "server", "--tcp"]
    for address in beacon.addresses:
        argv += ["--address", address]
    for port in PROBE_PORTS:
        argv += ["--port", str(port)]
    proc = lab.popen(beacon, argv, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if line.strip() != "ready":
        raise LabError(f"the probe server did not start on the beacon (it said {line!r})")
    return proc


def primary_endpoint(lab: Lab) -> str:
    return f"{lab.beacon.address}:{PROBE_PORTS[0]}"


def alternate_endpoint(lab: Lab) -> str:
    return f"{lab.beacon.alternate_address}:{PROBE_PORTS[1]}"


def probe_nat(lab: Lab, host: Host, local_port: int = 0, tcp: bool = True) -> dict:
    """Measure the NAT in front of ``host`` (see ``probe.measure``).

    The result's ``behaviour`` holds the RFC 4787 mapping and filtering
    names from ``probe.classify``.
    """
    argv = ["client", "--server", primary_endpoint(lab), "--alternate", alternate_endpoint(lab)]
    if tcp:
        argv.append("--tcp")
    if local_port:
        argv += ["--local-port", str(local_port)]
    return _run_probe(lab, host, argv)


def blast(lab: Lab, host: Host, count: int = 1000) -> dict:
    """Send ``count`` datagrams from ``host`` to the beacon; count arrivals."""
    return _run_probe(lab, host, ["blast", "--server", primary_endpoint(lab), "--count", str(count)])


def _run_probe(lab: Lab, host: Host, argv: list[str]) -> dict:
    done = lab.run(
        host,
        [sys.executable, "-m", "pilotproto.lab.probe", *argv],
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
    )
    if done.returncode != 0:
        raise LabError(f"the probe on {host.name} failed (exit {done.returncode}): {done.stderr.strip()}")
    return json.loads(done.stdout)
