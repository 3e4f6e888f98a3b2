"""
The control socket as a file: its path, its mode, a stale one, connecting to it.

Plain ``socket`` and ``os``, no Twisted: ``pilotctl`` and the blocking
client use this without loading the reactor.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct

from ..errors import AlreadyRunning, InvalidArgument, NotRunning, PermissionDenied, StateError, Timeout

SOCKET_MODE = 0o600
_MAX_UNIX_PATH = 107  # sun_path is 108 bytes on Linux, one of them the NUL


def check_socket_path(path: str) -> str:
    if len(os.fsencode(path)) > _MAX_UNIX_PATH:
        raise InvalidArgument(
            f"control socket path is too long for a UNIX socket: {path}",
            hint="Use a shorter --home (UNIX socket paths are limited to 107 bytes).",
        )
    return path


def socket_is_live(path: str) -> bool:
    """True if something accepts connections on the UNIX socket at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
        return True
    except socket.timeout:
        # A full backlog still means someone owns it.
        return True
    except OSError as e:
        if e.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise
    finally:
        probe.close()


def remove_stale_socket(path: str) -> None:
    """Delete ``path`` if it is a socket nobody listens on; raise AlreadyRunning if someone does."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise StateError(
            f"{path} exists and is not a socket",
            hint="Move that file aside; the daemon needs the name for its control socket.",
        )
    if socket_is_live(path):
        raise AlreadyRunning(f"a pilot daemon is already listening on {path}")
    os.unlink(path)


def check_reachable(path: str, home: str) -> None:
    """Before connecting to ``path``: NotRunning if there is no socket file,
    PermissionDenied if we may not reach it.  Other oddities are left for
    ``connect()`` to report."""
    check_socket_path(path)
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise NotRunning(f"no pilot daemon is running for {home}") from None
    except PermissionError as e:
        # A directory on the way we may not search (another user's 0700
        # home): the daemon may well run, we just cannot reach it.
        raise _denied(path, e) from None
    except OSError:
        return  # connect() says what is wrong, in its own words


def connect_failure(error: OSError, path: str, home: str) -> Exception:
    """What a failed ``connect()`` to the control socket means, for a person."""
    if error.errno in (errno.ECONNREFUSED, errno.ENOENT):
        return NotRunning(f"no pilot daemon is running for {home} (stale control socket)")
    if error.errno in (errno.EACCES, errno.EPERM):
        return _denied(path, error)
    return error


def connect_socket(path: str, home: str, timeout: float) -> socket.socket:
    """
    A blocking connection to the control socket at ``path`` (the daemon of
    ``home``), with ``timeout`` set; NotRunning, Timeout or PermissionDenied
    with the reason a person can act on.
    """
    check_reachable(path, home)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except socket.timeout:
        sock.close()
        raise Timeout(f"the daemon did not accept a control connection within {timeout:g} s") from None
    except OSError as e:
        sock.close()
        failure = connect_failure(e, path, home)
        if failure is e:
            raise
        raise failure from None
    return sock


def _denied(path: str, error: OSError) -> PermissionDenied:
    return PermissionDenied(
        f"cannot open the control socket {path}: {error.strerror}",
        hint="Run pilotctl as the user that started the daemon (the socket is private to that user).",
    )


def peer_pid(sock: socket.socket) -> int | None:
    """The pid of the process that listens on the other end of ``sock``, where the OS says (Linux)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    try:
        pid, _uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i")))
    except OSError:
        return None
    return pid
