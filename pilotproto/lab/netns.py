"""
Thin wrappers over ``ip netns``, ``ip``, ``nft`` and ``sysctl`` for the lab.

Every command runs with a captured stderr and a bounded timeout; a failure
becomes a :class:`LabError` quoting the command and the kernel's complaint.
Namespaces are named ``pilotlab-<id>-<role>`` and each lab writes its owner's
pid to ``/run/pilotlab/<id>.pid`` so :func:`cleanup_stale` can tell a
crashed run's leftovers from a lab another process is still using.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from pilotproto.lab.errors import LabError

NAME_PREFIX = "pilotlab-"
STATE_DIR = Path("/run/pilotlab")
COMMAND_TIMEOUT = 20.0


def check_prerequisites() -> None:
    """Raise :class:`LabError` unless the lab can run on this machine."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise LabError(
            "The network lab needs root (it creates network namespaces and nftables rules).",
            hint="Run the lab (or these tests) as root, e.g. with sudo.",
        )
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            raise LabError(
                f"The network lab needs the '{tool}' command, which is not installed.",
                hint=f"Install it with: apt-get install -y {package}",
            )


def command(argv: list[str], *, input: str | None = None) -> str:
    """Run one administrative command; return its stdout or raise LabError."""
    try:
        done = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=COMMAND_TIMEOUT
        )
    except FileNotFoundError as e:
        raise LabError(f"'{argv[0]}' is not installed: {e}") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"'{' '.join(argv)}' did not finish within {COMMAND_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        raise LabError(
            f"'{' '.join(argv)}' failed (exit {done.returncode}): {done.stderr.strip()}"
        )
    return done.stdout


class Namespace:
    """One network namespace the lab created, addressed by name."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"

    def exec_argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def ip(self, *args: str) -> str:
        return command(["ip", "-n", self.name, *args])

    def nft(self, script: str) -> str:
        return command(self.exec_argv(["nft", "-f", "-"]), input=script)

    def sysctl(self, **settings: object) -> None:
        # Written through /proc inside the namespace: no dependency on procps.
        lines = [f"echo {value} > /proc/sys/{key.replace('__', '/')}" for key, value in settings.items()]
        command(self.exec_argv(["sh", "-ec", "; ".join(lines)]))

    def run(self, argv: list[str]) -> str:
        return command(self.exec_argv(argv))

    def pids(self) -> list[int]:
        try:
            out = command(["ip", "netns", "pids", self.name])
        except LabError:
            return []
        return [int(p) for p in out.split()]


def create_namespace(name: str) -> Namespace:
    command(["ip", "netns", "add", name])
    ns = Namespace(name)
    ns.ip("link", "set", "dev", "lo", "up")
    # No IPv6 at all: no router solicitations or DAD noise, and one address
    # family to reason about.
    ns.sysctl(net__ipv6__conf__all__disable_ipv6=1, net__ipv6__conf__default__disable_ipv6=1)
    return ns


def link(a: Namespace, a_name: str, b: Namespace, b_name: str) -> None:
    """A veth pair with one end in each namespace, both up."""
    a.ip("link", "add", "name", a_name, "type", "veth", "peer", "name", b_name, "netns", b.name)
    a.ip("link", "set", "dev", a_name, "up")
    b.ip("link", "set", "dev", b_name, "up")


def kill_namespace_processes(ns: Namespace, grace: float = 2.0) -> None:
    """SIGTERM whatever still runs in ``ns``, then SIGKILL what is left."""
    pids = ns.pids()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # it ended on its own
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _alive(p)]
            if pids:
                time.sleep(0.02)
        if not pids:
            return


def delete_namespace(name: str) -> None:
    ns = Namespace(name)
    kill_namespace_processes(ns)
    try:
        command(["ip", "netns", "del", name])
    except LabError:
        if name in list_namespaces():
            raise


def list_namespaces() -> list[str]:
    out = command(["ip", "netns", "list"])
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def write_owner(lab_id: str) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    (STATE_DIR / f"{lab_id}.pid").write_text(f"{os.getpid()}\n")


def forget_owner(lab_id: str) -> None:
    with contextlib.suppress(FileNotFoundError):  # already forgotten
        (STATE_DIR / f"{lab_id}.pid").unlink()


def owner_alive(lab_id: str) -> bool:
    try:
        pid = int((STATE_DIR / f"{lab_id}.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        return False
    return _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it holds no namespace any more.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def cleanup_stale(prefix: str = NAME_PREFIX, force: bool = False) -> list[str]:
    """Delete lab namespaces left behind by runs that died; return their names.

    Only namespaces named ``prefix...`` are considered, and a lab whose
    owning process is still alive is left alone unless ``force`` is true,
    so this is safe to call while other labs are running.
    """
    check_prerequisites()
    removed = []
    for name in list_namespaces():
        if not name.startswith(prefix) or not name.startswith(NAME_PREFIX):
            continue
        lab_id = name[len(NAME_PREFIX):].split("-", 1)[0]
        if not force and owner_alive(lab_id):
            continue
        delete_namespace(name)
        forget_owner(lab_id)
        removed.append(name)
    if STATE_DIR.is_dir():
        for pid_file in STATE_DIR.glob("*.pid"):
            if not owner_alive(pid_file.stem):
                forget_owner(pid_file.stem)
    return removed
