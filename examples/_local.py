"""
A beacon and a few agents on this machine, for the examples.

Everything it does is what you would type in a shell (each command is printed
as it runs), in a temporary directory that is removed afterwards::

    twistd -n pilot beacon --interface 127.0.0.1 --port 9000
    pilotctl --home A daemon start --hostname agent-a --beacon 127.0.0.1:9000
    pilotctl --home B handshake agent-a "why"   # B asks A for trust ...
    pilotctl --home A approve agent-b           # ... and A says yes

Use it as a context manager::

    with LocalNet() as net:
        a, b = net.agents("agent-a", "agent-b")   # two daemons, trusting each other
        ...                                         # a.home / b.home are their homes

Examples that run against your own daemons take ``--home`` instead.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

#: the commands, as this interpreter runs them (a venv's pilotctl and twistd)
PILOTCTL = [sys.executable, "-m", "pilotproto.cli"]
TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]


class Agent:
    def __init__(self, name: str, home: str):
        self.name = name
        self.home = home
        self.address: str | None = None

    def ctl(self, *args: str, check: bool = True) -> dict:
        """Run ``pilotctl --home HOME --json ARGS``; its ``data`` (raises on an error unless ``check`` is false)."""
        return _pilotctl("--home", self.home, "--json", *args, check=check)

    def env(self) -> dict:
        """An environment whose default pilot home is this agent's (for ``twistd ... pilot:`` and the SDK)."""
        return dict(os.environ, PILOT_HOME=self.home)


class LocalNet:
    """One beacon on loopback and the agents you ask for; all gone when the ``with`` block ends."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.workdir = tempfile.mkdtemp(prefix="pilot-ex-")
        self.beacon: str | None = None
        self._beacon_process: subprocess.Popen | None = None
        self._agents: list[Agent] = []
        self._processes: list[subprocess.Popen] = []

    def __enter__(self) -> "LocalNet":
        try:
            self.start_beacon()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def start_beacon(self) -> str:
        port = _free_udp_port()
        log = os.path.join(self.workdir, "beacon.log")
        argv = [*TWISTD, "-n", "--pidfile", "", "--logfile", log, "pilot", "beacon", "--interface", "127.0.0.1",
                "--port", str(port)]  # fmt: skip
        self.say(f"$ twistd -n pilot beacon --interface 127.0.0.1 --port {port}")
        self._beacon_process = subprocess.Popen(argv, cwd=self.workdir, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        _wait_for_udp(port, self._beacon_process, log)
        self.beacon = f"127.0.0.1:{port}"
        return self.beacon

    def agent(self, name: str, public: bool = False) -> Agent:
        """Start a daemon for ``name`` and wait until it is registered."""
        agent = Agent(name, os.path.join(self.workdir, name))
        self._agents.append(agent)
        flags = ["--public"] if public else []
        self.say(f"$ pilotctl --home {agent.home} daemon start --hostname {name} --beacon {self.beacon} {' '.join(flags)}")
        info = agent.ctl("daemon", "start", "--hostname", name, "--beacon", self.beacon, *flags)
        agent.address = info.get("address")
        return agent

    def trust(self, asker: Agent, approver: Agent, reason: str = "an example") -> None:
        """``asker`` asks ``approver`` for trust and ``approver`` approves: trust is then mutual."""
        self.say(f"$ pilotctl --home {asker.home} handshake {approver.name} '{reason}'")
        asker.ctl("handshake", approver.name, reason)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pending = approver.ctl("pending")["pending"]
            if any(entry.get("hostname") == asker.name for entry in pending):
                break
            time.sleep(0.1)
        self.say(f"$ pilotctl --home {approver.home} approve {asker.name}")
        approver.ctl("approve", asker.name)
        # Trust is mutual once the approval reached the asker.
        while time.monotonic() < deadline:
            trusted = asker.ctl("trust")["trusted"]
            if any(entry.get("hostname") == approver.name and entry.get("mutual") for entry in trusted):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{asker.name} never heard {approver.name}'s approval")

    def agents(self, *names: str) -> list[Agent]:
        """Start each agent, then make every pair trust each other."""
        started = [self.agent(name) for name in names]
        for i, asker in enumerate(started):
            for approver in started[i + 1 :]:
                self.trust(asker, approver)
        return started

    def spawn(self, argv: list[str], env: dict | None = None, **kwargs) -> subprocess.Popen:
        """A background process that is ended with the net."""
        process = subprocess.Popen(argv, env=env, start_new_session=True, **kwargs)
        self._processes.append(process)
        return process

    def close(self) -> None:
        for process in self._processes:
            _end(process)
        for agent in self._agents:
            _pilotctl("--home", agent.home, "daemon", "stop", check=False, quiet=True)
        if self._beacon_process is not None:
            _end(self._beacon_process)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _pilotctl(*args: str, check: bool = True, quiet: bool = False) -> dict:
    done = subprocess.run([*PILOTCTL, *args], capture_output=True, text=True, timeout=60)
    if quiet:
        return {}
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        raise RuntimeError(f"pilotctl {' '.join(args)} printed no JSON: {done.stdout}{done.stderr}") from None
    if answer.get("status") != "ok" and check:
        raise RuntimeError(f"pilotctl {' '.join(args)}: {answer.get('message')} ({answer.get('hint')})")
    return answer.get("data", answer)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_udp(port: int, process: subprocess.Popen, log: str, timeout: float = 10.0) -> None:
    """Until something binds ``port`` (the beacon is up), or the beacon exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            text = open(log).read() if os.path.exists(log) else ""
            raise RuntimeError(f"the beacon exited: {text[-2000:]}")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return
        time.sleep(0.05)
    raise RuntimeError(f"the beacon did not bind UDP port {port} within {timeout} s")


def _end(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(5)
