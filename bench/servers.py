"""Start the servers of the service suite on loopback, and always stop them.

Each server runs in its own process group with its output in a log file of its
scratch directory; `running_server` kills the whole group on the way out, on
an error or Ctrl-C too, and asks the kernel to kill it should the harness die
without unwinding (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    """A TCP port nobody listens on right now on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def find_binary(name: str, fallbacks: tuple[str, ...] = ()) -> str | None:
    """The server binary on PATH (or in /usr/sbin, which a non-root PATH may miss)."""
    found = shutil.which(name)
    if found is not None:
        return found
    for path in (*fallbacks, f"/usr/sbin/{name}", f"/usr/local/sbin/{name}"):
        if os.access(path, os.X_OK):
            return path
    return None


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the harness is killed -9,
    # the kernel sends the server SIGKILL instead of leaving it behind.
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((HOST, port)) == 0


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group, then SIGKILL if it has not exited in time."""
    if process.poll() is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # anything it forked (redis AOF rewrite)
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print(f"server {process.args!r} ignored SIGTERM; killing it", file=sys.stderr)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@contextlib.contextmanager
def running_server(
    name: str,
    argv: list[str],
    port: int,
    directory: Path,
    ready: Callable[[str], bool] | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Server]:
    """Start `argv`, wait until it is ready, yield it, and stop its process group.

    Ready means: the port accepts connections and, if `ready` is given, it
    returns True for the log written so far (say, a "listening" line).
    """
    log = directory / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=directory,
            env=env,
            start_new_session=True,  # its own process group: killpg reaches all of it
            preexec_fn=_die_with_parent,
        )
    server = Server(name, port, process, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            code = process.poll()
            if code is not None:
                raise RuntimeError(f"{name} exited with {code} at start:\n{server.log_tail()}")
            text = log.read_text(errors="replace")
            if (ready is None or ready(text)) and _port_open(port):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{name} not ready after {START_TIMEOUT_S:.0f} s:\n{server.log_tail()}"
                )
            time.sleep(0.05)
        yield server
    finally:
        _stop(process)
        _report_failures(server)


def _report_failures(server: Server) -> None:
    """The server's log goes with its scratch directory: show what went wrong first."""
    try:
        text = server.log.read_text(errors="replace")
    except OSError:
        return
    if "Traceback" in text or "ERROR" in text or "panic" in text:
        tail = "\n".join(text.splitlines()[-40:])
        print(f"--- {server.name} server log (last 40 lines) ---\n{tail}", file=sys.stderr)


@contextlib.contextmanager
def terminate_raises() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt, so that `finally` blocks stop the servers."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def redis_argv(binary: str, port: int, directory: Path) -> list[str]:
    # AOF with fsync every second: the reply goes out once the command is
    # written to the AOF (page cache), the disk follows on an interval, as
    # fluxcore's fsync=interval does. No RDB snapshots.
    return [
        binary,
        "--bind", HOST,
        "--port", str(port),
        "--dir", str(directory),
        "--save", "",
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--daemonize", "no",
        "--protected-mode", "yes",
        "--loglevel", "warning",
        "--logfile", "",
    ]  # fmt: skip


def nats_argv(binary: str, port: int, directory: Path) -> list[str]:
    # JetStream file storage; nats-server acks once the message is written to
    # its store file and fsyncs on its own interval (sync_interval, 2 min).
    return [binary, "-a", HOST, "-p", str(port), "-js", "-sd", str(directory)]


def fluxcore_argv(port: int, directory: Path, token: str) -> list[str]:
    return [
        sys.executable, "-m", "fluxcore", "serve",
        "--data", str(directory / "data"),
        "--host", HOST,
        "--port", str(port),
        "--token", token,
        "--fsync", "interval",
    ]  # fmt: skip


def fluxcore_ready(text: str) -> bool:
    return "listening on" in text
