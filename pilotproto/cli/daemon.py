"""
Starting, stopping and checking the background daemon.

The daemon is always ``twistd -n pilot node --home HOME`` run as a child in
its own session, so it outlives pilotctl and a Ctrl-C in pilotctl's terminal
does not reach it.  Everything else goes through the control socket; the pid
file is used only to wait for the process to end and, as a last resort, to
signal it.

These functions block; the clock (``monotonic``/``sleep``) is injected so
tests can run the waiting loops without waiting.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import socket
import subprocess
import sys
import time

import attrs

from .. import identity
from ..control.client import ControlClient
from ..control.socketfile import remove_stale_socket, socket_is_live
from ..errors import (
    AlreadyRunning,
    InvalidArgument,
    NotRunning,
    PermissionDenied,
    PilotError,
    StateError,
    Timeout,
    Unavailable,
)
from ..node.config import CONTROL_SOCKET, LOG_FILE, PID_FILE, NodeConfig
from ..node.udp import PortInUse
from ..tap import parse_start_error

TWISTD_BOOTSTRAP = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
DEFAULT_START_TIMEOUT = 10.0
DEFAULT_STOP_TIMEOUT = 10.0
_POLL_INTERVAL = 0.05
_TERM_GRACE = 3.0
_KILL_GRACE = 2.0
_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\dT\S+ \[[^\]]*\] ")


class SystemClock:
    monotonic = staticmethod(time.monotonic)
    sleep = staticmethod(time.sleep)


SYSTEM_CLOCK = SystemClock()


def twistd_argv(pidfile: str, logfile: str, *plugin_args: str) -> list[str]:
    """The command line that runs ``twistd -n`` with this interpreter."""
    return [sys.executable, "-c", TWISTD_BOOTSTRAP, "-n", "--pidfile", pidfile, "--logfile", logfile, *plugin_args]


def child_environment() -> dict:
    """Our environment, with this copy of pilotproto first on the child's path."""
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    paths = [package_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != package_root]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def spawn_twistd(argv: list[str], logfile: str, cwd: str) -> subprocess.Popen:
    with open(logfile, "ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            cwd=cwd,
            env=child_environment(),
            start_new_session=True,
            close_fds=True,
        )


def log_tail(path: str, lines: int = 12, max_bytes: int = 8192) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    # Drop twistd's "TIMESTAMP [system] " prefix: the message is what matters.
    return "\n".join(_LOG_PREFIX.sub("", line) for line in text.splitlines()[-lines:])


# -- processes ---------------------------------------------------------------


def read_pid(home: str) -> int | None:
    try:
        with open(os.path.join(home, PID_FILE)) as f:
            text = f.read(32).strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateError(f"cannot read {os.path.join(home, PID_FILE)}: {e.strerror}") from None
    return int(text) if text.isdigit() and int(text) > 0 else None


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs.  Our own exited child counts as gone, but is left for its Popen to reap."""
    with contextlib.suppress(ChildProcessError):  # not our child: ask the kernel below
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # The state letter follows the parenthesised command name.
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state != b"Z"
    except (OSError, IndexError):
        return True


def is_pilot_process(pid: int) -> bool:
    """True if ``pid`` is alive and looks like a pilot twistd (guards against pid reuse)."""
    if not pid_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc: trust the pid file
    return b"twistd" in cmdline and b"pilot" in cmdline


def live_daemon_pid(home: str) -> int | None:
    """The pid from the pid file if that process is a running pilot daemon; a stale file is removed."""
    pid = read_pid(home)
    if pid is not None and is_pilot_process(pid):
        return pid
    _remove(os.path.join(home, PID_FILE))
    return None


def wait_for_exit(pid: int, timeout: float, clock=SYSTEM_CLOCK) -> bool:
    deadline = clock.monotonic() + timeout
    while pid_alive(pid):
        if clock.monotonic() >= deadline:
            return False
        clock.sleep(_POLL_INTERVAL)
    return True


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):  # already gone is what we wanted
        os.unlink(path)


# -- start ---------------------------------------------------------------------


@attrs.frozen
class Launch:
    """A daemon process that was started and has not yet been seen to register."""

    home: str
    config: NodeConfig
    process: subprocess.Popen

    @property
    def log_path(self) -> str:
        return os.path.join(self.home, LOG_FILE)


def prepare_start(home: str, hostname=None, beacon=None, public=None, port=None, auto_approve=None, **beacon_tls) -> NodeConfig:
    """Check nothing runs for ``home``, merge the settings, make sure the identity loads and the port is free.

    ``beacon`` is one HOST:PORT or a list (``--beacon`` repeated: the node
    registers with every one); ``beacon_tls`` takes ``beacon_tls``,
    ``beacon_ca`` and ``beacon_fingerprint`` (the first and last also one
    value or a list, paired with the beacons by position).
    Nothing is saved: the daemon gets the settings on its command line, and
    :func:`start_daemon` saves them once it has registered, so a failed
    start leaves ``config.json`` as it was."""
    config = NodeConfig.load(home).merged(
        hostname=hostname, beacon=beacon, public=public, port=port, auto_approve=auto_approve, **beacon_tls
    )
    if config.hostname is None:
        raise InvalidArgument(
            "no hostname given and none saved in the config",
            hint="Pass --hostname NAME (it is saved for next time), or run 'pilotctl init --hostname NAME'.",
        )
    if config.beacon is None:
        raise InvalidArgument(
            "no beacon given and none saved in the config",
            hint="Pass --beacon HOST:PORT (it is saved for next time).",
        )
    ensure_not_running(home)
    # Load (or make) the identity here so a corrupt key file is reported by
    # this command, not buried in the daemon log.
    identity.load_or_create(home)
    check_udp_port_free(config.port)
    return config


def check_udp_port_free(port: int) -> None:
    """Fail now, with a hint, if the daemon could not bind ``port`` (0: any port, always free).

    The daemon would fail the same way, but only in its log; a program may
    still take the port between this check and the daemon's bind, and then
    the daemon's own one-line error is reported (:func:`_died`)."""
    if not port:
        return
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind(("", port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise PortInUse(
                f"UDP port {port} is in use by another program",
                hint=f"Choose another --port, or --port 0 for any free port (nothing was saved). To see who has it: ss -ulpn 'sport = :{port}'",
            ) from None
        if e.errno == errno.EACCES:
            raise PermissionDenied(f"UDP port {port} needs root", hint="Choose a port above 1023, or --port 0 for any.") from None
        raise PilotError(f"cannot use UDP port {port}: {e.strerror}") from None
    finally:
        probe.close()


def ensure_not_running(home: str) -> None:
    pid = live_daemon_pid(home)
    if pid is not None:
        raise AlreadyRunning(f"a pilot daemon (pid {pid}) is already running for {home}")
    if socket_is_live_quietly(os.path.join(home, CONTROL_SOCKET)):
        raise AlreadyRunning(f"a pilot daemon is already listening on {os.path.join(home, CONTROL_SOCKET)}")


def socket_is_live_quietly(path: str) -> bool:
    try:
        return os.path.lexists(path) and socket_is_live(path)
    except OSError:
        return False


def node_arguments(home: str, config: NodeConfig) -> list[str]:
    """``twistd pilot node`` options carrying every setting of ``config``.

    The daemon runs with these before they are saved: they reach
    ``config.json`` only once it has registered."""
    args = ["--home", home, "--hostname", config.hostname, "--port", str(config.port)]
    for beacon in config.beacons:
        args += ["--beacon", beacon]
    args.append("--public" if config.public else "--private")
    args.append("--auto-approve" if config.auto_approve else "--no-auto-approve")
    # Per beacon, in the beacons' order: the Nth goes with the Nth --beacon.
    for tls in config.beacon_tls:
        args += ["--beacon-tls", tls]
    for fingerprint in config.beacon_fingerprint:
        args += ["--beacon-fingerprint", fingerprint]
    if config.beacon_ca is not None:
        args += ["--beacon-ca", config.beacon_ca]
    return args


def spawn_node(home: str, config: NodeConfig) -> Launch:
    os.makedirs(home, mode=0o700, exist_ok=True)
    argv = twistd_argv(
        os.path.join(home, PID_FILE), os.path.join(home, LOG_FILE), "pilot", "node", *node_arguments(home, config)
    )
    return Launch(home, config, spawn_twistd(argv, os.path.join(home, LOG_FILE), cwd=home))


def wait_until_registered(launch: Launch, timeout: float, client=None, clock=SYSTEM_CLOCK) -> dict:
    """Poll ``info`` until the node says it is registered; the node's info, plus its log path."""
    client = client or ControlClient(launch.home)
    deadline = clock.monotonic() + timeout
    info = None
    while True:
        exit_code = launch.process.poll()
        if exit_code is not None:
            raise _died(launch, exit_code)
        remaining = deadline - clock.monotonic()
        if remaining <= 0:
            raise _still_trying(launch, info, timeout)
        try:
            info = client.call("info", timeout=max(0.5, min(remaining, 2.0)))
        except NotRunning:
            info = None  # not listening yet
        except Timeout:
            continue  # busy starting (that call already waited): ask again, keeping what it said last
        if info is not None and info.get("registered"):
            return dict(info, log=launch.log_path)
        refusal = _refusal(info)
        if refusal is not None:
            # Retrying cannot help (a taken name stays taken): do not leave
            # a daemon knocking on the beacon's door forever.
            _end_process(launch.process)
            raise refusal
        clock.sleep(_POLL_INTERVAL)


REFUSAL_CODES = {"name_taken", "refused", "invalid_argument"}


def _refusal(info) -> PilotError | None:
    """The beacon's final refusal reported in ``info["beacon_error"]``, if any."""
    error = (info or {}).get("beacon_error")
    if not isinstance(error, dict) or error.get("code") not in REFUSAL_CODES:
        return None
    refusal = PilotError.from_dict(error)
    refusal.message = f"the beacon refused to register this node: {refusal.message}"
    refusal.args = (refusal.message,)
    return refusal


def _end_process(process) -> None:
    for send in (process.terminate, process.kill):
        try:
            send()
            process.wait(_TERM_GRACE)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _died(launch: Launch, exit_code: int) -> PilotError:
    tail = log_tail(launch.log_path)
    # A start the daemon refused (port in use, a second daemon, a bad
    # option) is one line in its log (pilotproto.tap): report that error.
    for line in reversed(tail.splitlines()):
        error = parse_start_error(line)
        if error is not None:
            error.message = f"the daemon could not start: {error.message}"
            error.args = (error.message,)
            error.hint = " ".join(filter(None, [error.hint, "Nothing was saved."]))
            return error
    message = f"the daemon exited (code {exit_code}) before registering"
    if tail:
        message += ":\n" + tail
    return Unavailable(message, hint=f"The full log is {launch.log_path}; nothing was saved.")


def _still_trying(launch: Launch, info, timeout: float) -> PilotError:
    advice = ""
    if info is None:
        what = "its control socket did not come up"
    else:
        what = f"it has not registered with the beacon {', '.join(launch.config.beacons)}"
        error = info.get("beacon_error")
        if isinstance(error, dict) and error.get("message"):
            what += f" (last beacon error: {error['message']})"
            advice = f"{error['hint']} " if error.get("hint") else ""
    return Timeout(
        f"the daemon (pid {launch.process.pid}) is running but {what} within {timeout:g} s; it keeps trying in the background",
        hint=f"{advice}Check 'pilotctl daemon status', 'pilotctl netcheck' and the log {launch.log_path}. "
        "The settings are saved only by a start that registers.",
    )


def start_daemon(
    home: str,
    hostname=None,
    beacon=None,
    public=None,
    port=None,
    timeout: float = DEFAULT_START_TIMEOUT,
    auto_approve=None,
    beacon_tls=None,
    beacon_ca=None,
    beacon_fingerprint=None,
) -> dict:
    config = prepare_start(
        home, hostname=hostname, beacon=beacon, public=public, port=port, auto_approve=auto_approve,
        beacon_tls=beacon_tls, beacon_ca=beacon_ca, beacon_fingerprint=beacon_fingerprint,
    )
    info = wait_until_registered(spawn_node(home, config), timeout)
    # Only now: the settings worked, so they become the saved ones.
    config.save(home)
    return info


# -- stop and status ---------------------------------------------------------


def stop_daemon(home: str, timeout: float = DEFAULT_STOP_TIMEOUT, client=None, clock=SYSTEM_CLOCK) -> dict:
    """Ask the daemon to shut down; signal it if it will not.  Returns {"pid", "stopped_by"}."""
    client = client or ControlClient(home)
    pid = live_daemon_pid(home)
    asked = False
    try:
        if pid is None:
            pid = client.call("info", timeout=2.0).get("pid")
        client.call("shutdown", timeout=3.0)
        asked = True
    except NotRunning:
        if pid is None:
            raise NotRunning(f"no pilot daemon is running for {home}") from None
    except Timeout:
        pass  # wedged: fall through to signals
    stopped_by = "shutdown"
    if isinstance(pid, int) and pid > 0:
        if not (asked and wait_for_exit(pid, timeout, clock)):
            stopped_by = _signal_until_gone(pid, clock)
    else:
        _wait_for_socket_to_close(os.path.join(home, CONTROL_SOCKET), timeout, clock)
    _remove(os.path.join(home, PID_FILE))
    try:
        remove_stale_socket(os.path.join(home, CONTROL_SOCKET))
    except PilotError:
        pass  # something else took the socket over; not ours to delete
    return {"pid": pid, "stopped_by": stopped_by}


def _signal_until_gone(pid: int, clock) -> str:
    if not pid_alive(pid):
        return "shutdown"
    if not is_pilot_process(pid):
        raise Timeout(
            f"process {pid} did not exit, and it does not look like a pilot twistd, so it was not signalled",
            hint="Stop the program that embeds the node yourself.",
        )
    for sig, grace, name in ((signal.SIGTERM, _TERM_GRACE, "sigterm"), (signal.SIGKILL, _KILL_GRACE, "sigkill")):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return name
        if wait_for_exit(pid, grace, clock):
            return name
    raise Timeout(f"daemon process {pid} did not exit even after SIGKILL")


def _wait_for_socket_to_close(path: str, timeout: float, clock) -> None:
    deadline = clock.monotonic() + timeout
    while socket_is_live_quietly(path):
        if clock.monotonic() >= deadline:
            raise Timeout(f"the daemon still answers on {path} after {timeout:g} s")
        clock.sleep(_POLL_INTERVAL)


def daemon_status(home: str, client=None) -> dict:
    client = client or ControlClient(home)
    pid = live_daemon_pid(home)
    try:
        info = client.call("info", timeout=5.0)
    except NotRunning:
        if pid is not None:
            raise Unavailable(
                f"daemon process {pid} is running but its control socket does not answer",
                hint=f"It may still be starting; see the log {os.path.join(home, LOG_FILE)}",
            ) from None
        raise
    return dict(info, log=os.path.join(home, LOG_FILE))
