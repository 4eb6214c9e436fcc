"""Small process and port facts shared by the parts of the local stack."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time

import psutil


class StackError(RuntimeError):
    """A local stack problem, worded so the reader knows what to do next."""


def write_private(path: str | os.PathLike, data: bytes | str, *, append: bool = False,
                  exclusive: bool = False) -> None:
    """Write a file readable by its owner only, from the moment it exists (0600): it holds a secret."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    try:
        view = memoryview(data.encode() if isinstance(data, str) else data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def who_listens(port: int) -> str:
    """A short description of the process listening on a port, when the OS lets us see it."""
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                proc = psutil.Process(conn.pid)
                return f"pid {conn.pid} ({' '.join(proc.cmdline()[:3])})"
    return "another process"


def require_free_port(port: int, what: str, env_var: str, host: str = "127.0.0.1") -> None:
    if not port_is_free(port, host):
        raise StackError(
            f"port {port} for {what} is already in use by {who_listens(port)}. "
            f"Stop that process, or choose another port with {env_var}=<port>."
        )


def process_matches(pid: int | None, create_time: float | None) -> bool:
    """True when pid is alive and is the very process we started (not a recycled pid)."""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(proc.create_time() - create_time) < 1.0
    except psutil.Error:
        return False


def create_time_of(pid: int) -> float:
    return psutil.Process(pid).create_time()


def terminate(pid: int, create_time: float | None, timeout: float = 10.0) -> bool:
    """Stop the process we started (and only it); True when something was stopped."""
    if not process_matches(pid, create_time):
        return False
    proc = psutil.Process(pid)
    children = proc.children(recursive=True)
    for p in [proc, *children]:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
    alive = _wait_exited([proc, *children], timeout)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    _wait_exited(alive, 5)
    return True


def _wait_exited(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """psutil.wait_procs (which reaps our own children), counting a zombie as exited, as process_matches does:
    a part that an earlier command started is init's child, and init may take seconds to reap it, while its
    ports and files were closed when it exited. The processes still running at the timeout."""
    deadline = time.monotonic() + timeout
    alive = list(procs)
    while alive:
        _, alive = psutil.wait_procs(alive, timeout=0.05)
        alive = [p for p in alive if not _zombie(p)]
        if time.monotonic() >= deadline:
            break
    return alive


def _zombie(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:  # not ours to look at: waited for as wait_procs would
        return False


def wait_until(check, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - retried until the deadline, reported below
            last_error = exc
        time.sleep(interval)
    detail = f": {last_error}" if last_error else ""
    raise StackError(f"{what} did not become ready within {timeout:.0f}s{detail}")

