"""
``pilotctl demo``: a guided tour with a beacon and two agents on loopback.

Everything lives in a temporary directory and is torn down in ``finally``
(also on Ctrl-C or a failed step): no process and no file is left behind.
The agents are started by the very code behind ``pilotctl daemon start``.

The tour is the list ``STEPS``: each step is a function of the ``Tour``
that narrates through ``tour.say`` and returns a dict for ``--json``.  A
step that finds the system misbehaving raises a PilotError, which stops the
tour.  Later features (handshake, approve, ping) add steps to the list.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager

import attrs

from ..control.client import ControlClient
from ..errors import NotFound, PilotError, Unavailable
from . import daemon as daemon_control
from .output import Output, render_lookup
from .session_commands import render_peers, render_ping
from .trust import HANDSHAKE_TIMEOUT

LOOPBACK = "127.0.0.1"
BEACON_START_TIMEOUT = 5.0
AGENT_START_TIMEOUT = 6.0
STOP_TIMEOUT = 3.0
#: How long the tour waits for a pushed request or an uploaded visibility list.
TRUST_WAIT = 5.0


@attrs.define
class Agent:
    name: str
    public: bool
    home: str
    launch: daemon_control.Launch | None = None
    info: dict | None = None

    def call(self, cmd: str, **args) -> dict:
        return ControlClient(self.home).call(cmd, timeout=5.0, **args)

    def summary(self) -> dict:
        info = self.info or {}
        keys = ("hostname", "address", "public", "reflexive_endpoint", "local_endpoint", "nat_type", "registered", "pid")
        return {key: info.get(key) for key in keys}


@attrs.define
class Tour:
    out: Output
    workdir: str
    agents: dict[str, Agent] = attrs.field(factory=dict)
    beacon: str | None = None
    beacon_process: subprocess.Popen | None = None

    def say(self, text: str = "") -> None:
        self.out.say(text)

    def agent(self, name: str) -> Agent:
        return self.agents[name]


# -- steps ---------------------------------------------------------------------------


def start_beacon(tour: Tour) -> dict:
    port = free_udp_port()
    logfile = os.path.join(tour.workdir, "beacon.log")
    argv = daemon_control.twistd_argv(
        "", logfile, "pilot", "beacon", "--interface", LOOPBACK, "--port", str(port)
    )
    tour.say(f"Starting a beacon on {LOOPBACK}:{port}.")
    tour.say("  A beacon keeps the registry (name -> key -> endpoints) and tells every node")
    tour.say("  the address it sees it coming from (STUN), which is how nodes learn their NAT mapping.")
    tour.beacon_process = daemon_control.spawn_twistd(argv, logfile, cwd=tour.workdir)
    wait_for_udp_port(tour.beacon_process, port, logfile, BEACON_START_TIMEOUT)
    tour.beacon = f"{LOOPBACK}:{port}"
    return {"beacon": tour.beacon, "pid": tour.beacon_process.pid}


def start_agents(tour: Tour) -> dict:
    tour.say()
    tour.say("Starting two agents, each with its own home, key and permanent address:")
    for name, public in (("agent-a", False), ("agent-b", True)):
        agent = Agent(name, public, os.path.join(tour.workdir, name))
        tour.agents[name] = agent
        flag = " --public" if public else ""
        tour.say(f"  $ pilotctl --home {agent.home} daemon start --hostname {name} --beacon {tour.beacon}{flag}")
        config = daemon_control.prepare_start(agent.home, hostname=name, beacon=tour.beacon, public=public, port=0)
        # Launch both before waiting on either: they register in parallel.
        agent.launch = daemon_control.spawn_node(agent.home, config)
    deadline = time.monotonic() + AGENT_START_TIMEOUT
    for agent in tour.agents.values():
        remaining = max(0.5, deadline - time.monotonic())
        agent.info = daemon_control.wait_until_registered(agent.launch, remaining)
    tour.say()
    tour.say("What each agent learned from the beacon:")
    for agent in tour.agents.values():
        info = agent.info
        visibility = "public: anyone may look it up" if info.get("public") else "private (the default): invisible to strangers"
        tour.say(f"  {info.get('hostname')}")
        tour.say(f"    permanent address  {info.get('address')}  (derived from its Ed25519 key)")
        tour.say(f"    seen by beacon at  {info.get('reflexive_endpoint') or '-'}  (local {info.get('local_endpoint') or '-'})")
        tour.say(f"    NAT type           {info.get('nat_type') or 'unknown'}")
        tour.say(f"    visibility         {visibility}")
    return {"agents": {name: agent.summary() for name, agent in tour.agents.items()}}


def lookup_public_peer(tour: Tour) -> dict:
    tour.say()
    tour.say("agent-a looks up agent-b, which is public:")
    tour.say("  $ pilotctl lookup agent-b")
    found = tour.agent("agent-a").call("lookup", target="agent-b")
    expected = tour.agent("agent-b").info.get("address")
    if found.get("address") != expected:
        raise PilotError(f"the beacon answered agent-b with address {found.get('address')}, expected {expected}")
    for line in render_lookup(found).splitlines():
        tour.say("  " + line)
    return {"lookup": {"from": "agent-a", "target": "agent-b", "result": found}}


def lookup_private_peer(tour: Tour) -> dict:
    tour.say()
    tour.say("agent-b looks up agent-a, which is private:")
    tour.say("  $ pilotctl lookup agent-a")
    try:
        leaked = tour.agent("agent-b").call("lookup", target="agent-a")
    except NotFound as e:
        tour.say(f"  error: {e.message}")
        tour.say("  As it should be: a private node is visible only to nodes it trusts.")
        return {"lookup": {"from": "agent-b", "target": "agent-a", "result": e.code}}
    raise PilotError(f"private agent-a was visible to agent-b, which it does not trust: {leaked}")


def handshake_peer(tour: Tour) -> dict:
    tour.say()
    tour.say("agent-b asks private agent-a for trust (the beacon carries the signed request):")
    tour.say('  $ pilotctl handshake agent-a "demo: share results"')
    client = ControlClient(tour.agent("agent-b").home)
    sent = client.call("handshake", timeout=HANDSHAKE_TIMEOUT, target="agent-a", reason="demo: share results")
    tour.say(f"  Handshake sent to agent-a ({sent.get('state')}).")
    return {"handshake": {"from": "agent-b", "target": "agent-a", "result": sent}}


def show_pending(tour: Tour) -> dict:
    tour.say()
    tour.say("agent-a sees the request (pushed by the beacon, no polling):")
    tour.say("  $ pilotctl pending")
    pending = []
    deadline = time.monotonic() + TRUST_WAIT
    while not pending and time.monotonic() < deadline:
        pending = tour.agent("agent-a").call("pending").get("pending") or []
        if not pending:
            time.sleep(0.05)
    if not pending:
        raise Unavailable(f"agent-a did not receive agent-b's handshake request within {TRUST_WAIT:g} s")
    for request in pending:
        tour.say(f"  {request['hostname']}  {request['address']}  reason: {request['reason']}")
    return {"pending": pending}


def approve_peer(tour: Tour) -> dict:
    tour.say()
    tour.say("agent-a approves; trust is mutual:")
    tour.say("  $ pilotctl approve agent-b")
    approved = tour.agent("agent-a").call("approve", peer="agent-b")
    tour.say(f"  Trust established with {approved['peer']['hostname']} ({approved['peer']['address']}).")
    return {"approve": approved}


def lookup_after_trust(tour: Tour) -> dict:
    tour.say()
    tour.say("agent-b looks up agent-a again; agent-a's signed visibility list now names agent-b:")
    tour.say("  $ pilotctl lookup agent-a")
    deadline = time.monotonic() + TRUST_WAIT
    while True:
        try:
            found = tour.agent("agent-b").call("lookup", target="agent-a")
            break
        except NotFound:
            if time.monotonic() >= deadline:
                raise NotFound(f"agent-a is still invisible to agent-b {TRUST_WAIT:g} s after approving it") from None
            time.sleep(0.1)
    for line in render_lookup(found).splitlines():
        tour.say("  " + line)
    return {"lookup": {"from": "agent-b", "target": "agent-a", "result": found}}


def ping_peer(tour: Tour) -> dict:
    tour.say()
    tour.say("agent-b pings agent-a over an end-to-end encrypted session (relay first, then direct):")
    tour.say("  $ pilotctl ping agent-a --count 4")
    result = ControlClient(tour.agent("agent-b").home).call(
        "ping", timeout=30, target="agent-a", count=4, interval=0.25, reply_timeout=2.0
    )
    for line in render_ping(result).splitlines():
        tour.say("  " + line)
    if result["received"] == 0:
        raise Unavailable("agent-a did not answer a single ping")
    return {"ping": result}


def show_peers(tour: Tour) -> dict:
    tour.say()
    tour.say("agent-b's view of its sessions:")
    tour.say("  $ pilotctl peers")
    peers = tour.agent("agent-b").call("peers")
    for line in render_peers(peers).splitlines():
        tour.say("  " + line)
    return {"peers": peers["peers"]}


STEPS = [
    ("start a beacon", start_beacon),
    ("start two agents", start_agents),
    ("look up a public agent", lookup_public_peer),
    ("look up a private agent", lookup_private_peer),
    ("ask for trust", handshake_peer),
    ("see the pending request", show_pending),
    ("approve it", approve_peer),
    ("look up the private agent again", lookup_after_trust),
    ("ping over the encrypted session", ping_peer),
    ("show the sessions", show_peers),
]


# -- running and cleaning up ---------------------------------------------------------


def run_demo(out: Output, keep: bool = False, steps=None) -> dict:
    steps = STEPS if steps is None else steps
    started = time.monotonic()
    tour = Tour(out, tempfile.mkdtemp(prefix="pilot-demo-"))
    out.say(f"pilot demo: a beacon and two agents on this machine, in {tour.workdir}")
    out.say()
    results = []
    try:
        for title, step in steps:
            try:
                results.append({"step": title, **step(tour)})
            except PilotError as e:
                raise _step_failed(title, e, keep) from None
    finally:
        cleaned = cleanup(tour, keep)
    elapsed = round(time.monotonic() - started, 2)
    out.say()
    out.say(f"Done in {elapsed:g} s. {cleaned}")
    out.say("Try it for real: pilotctl daemon start --hostname NAME --beacon HOST:PORT")
    return {
        "beacon": tour.beacon,
        "agents": {name: agent.summary() for name, agent in tour.agents.items()},
        "steps": results,
        "elapsed_s": elapsed,
        "workdir": tour.workdir if keep else None,
    }


def _step_failed(title: str, error: PilotError, keep: bool) -> PilotError:
    hint = error.hint
    if not keep:
        hint = (hint + " " if hint else "") + "Run 'pilotctl demo --keep' to keep the logs for a look."
    failed = type(error)(f"demo step '{title}' failed: {error.message}", hint=hint)
    failed.code = error.code
    return failed


def cleanup(tour: Tour, keep: bool) -> str:
    """Stop every process the tour started and remove its files; say what was done."""
    with _sigint_ignored():
        stopped = 0
        for agent in tour.agents.values():
            if agent.launch is not None:
                _stop_agent(agent)
                stopped += 1
        if tour.beacon_process is not None:
            _end_process(tour.beacon_process)
        if keep:
            return f"Stopped {stopped} agents and the beacon; logs kept in {tour.workdir}"
        shutil.rmtree(tour.workdir, ignore_errors=True)
        return f"Stopped {stopped} agents and the beacon; removed {tour.workdir}"


def _stop_agent(agent: Agent) -> None:
    try:
        daemon_control.stop_daemon(agent.home, timeout=STOP_TIMEOUT)
    except PilotError:
        pass  # not (or no longer) answering: the process handle below still ends it
    _end_process(agent.launch.process)


def _end_process(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    for send, grace in ((process.terminate, 2.0), (process.kill, 2.0)):
        try:
            send()
            process.wait(grace)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def _sigint_ignored():
    # A second Ctrl-C must not abandon child processes half way through cleanup.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# -- loopback helpers ------------------------------------------------------------------


def free_udp_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def udp_port_bound(port: int, host: str = LOOPBACK) -> bool:
    """True if some socket is bound to UDP ``port`` (on ``host`` or the wildcard)."""
    try:
        with open("/proc/net/udp") as f:
            rows = f.read().splitlines()[1:]
    except OSError:
        return _bind_probe_fails(port, host)
    wanted = {_proc_net_address(host, port), _proc_net_address("0.0.0.0", port)}
    return any(row.split()[1] in wanted for row in rows if len(row.split()) > 1)


def _proc_net_address(host: str, port: int) -> str:
    # /proc/net/udp shows the IPv4 address as the native-endian u32 in hex.
    packed = socket.inet_aton(host)
    return f"{int.from_bytes(packed, 'little' if _little_endian() else 'big'):08X}:{port:04X}"


def _little_endian() -> bool:
    return sys.byteorder == "little"


def _bind_probe_fails(port: int, host: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as e:
            return e.errno == errno.EADDRINUSE
    return False


def wait_for_udp_port(process: subprocess.Popen, port: int, logfile: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not udp_port_bound(port):
        exit_code = process.poll()
        if exit_code is not None:
            tail = daemon_control.log_tail(logfile)
            raise Unavailable(
                f"the beacon exited (code {exit_code}) before listening" + (f":\n{tail}" if tail else ""),
                hint=f"The full log is {logfile}",
            )
        if time.monotonic() >= deadline:
            raise Unavailable(f"the beacon did not listen on UDP port {port} within {timeout:g} s")
        time.sleep(0.05)
