"""Starts a real `fluxcore serve` process on loopback for the service tests."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

TOKEN = "test-token"
_LISTENING = re.compile(r"fluxcore listening on ([\d.]+):(\d+)")


class ServerProcess:
    """`fluxcore serve` in a child process; `address` is host:port once started."""

    def __init__(self, data_dir: Path, *extra: str, token: str = TOKEN, port: int = 0,
                 env: dict[str, str] | None = None,
                 preexec_fn: Callable[[], None] | None = None) -> None:
        self.data_dir = data_dir
        self.preexec_fn = preexec_fn  # runs in the child before exec (e.g. setrlimit)
        self.env = env or {}
        self.extra = list(extra)
        self.token = token
        self.port = port
        self.proc: subprocess.Popen[str] | None = None
        self.address = ""
        self.output: list[str] = []

    def start(self, timeout: float = 30.0) -> ServerProcess:
        found = self.launch()
        if not found.wait(timeout):
            self.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.output))
        return self

    def launch(self) -> threading.Event:
        """Starts the process without waiting; the event is set once it listens."""
        cmd = [sys.executable, "-m", "fluxcore", "serve", "--data", str(self.data_dir),
               "--port", str(self.port), *self.extra]
        if self.token is not None and "--tokens" not in self.extra:
            cmd += ["--token", self.token]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1", **self.env), start_new_session=True,
            preexec_fn=self.preexec_fn)
        assert self.proc.stdout is not None
        found = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line)
                match = _LISTENING.search(line)
                if match and not found.is_set():
                    self.address = f"{match.group(1)}:{match.group(2)}"
                    self.port = int(match.group(2))  # a restart reuses the same port
                    found.set()

        threading.Thread(target=pump, daemon=True).start()
        return found

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: a clean shutdown. Returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """kill -9: no chance to flush or close anything."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0


def module_server(tmp_path_factory: pytest.TempPathFactory, name: str,
                  *extra: str) -> Iterator[ServerProcess]:
    """For a module-scoped fixture: a server of its own in a fresh directory, stopped after."""
    proc = ServerProcess(tmp_path_factory.mktemp(name) / "data", *extra).start()
    try:
        yield proc
    finally:
        proc.stop()


def stopped_by_sigterm(proc: subprocess.Popen[str]) -> str:
    """Sends SIGTERM to an app run as a program, checks that it exited cleanly (status 0),
    and returns what it printed; kills it if it did not end."""
    try:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        return out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


CLIENT_CHILD = Path(__file__).with_name("_client_proc.py")


def start_worker(options: dict[str, Any]) -> subprocess.Popen[str]:
    """A client process (tests/_client_proc.py) running with `options`, once it says ready."""
    proc = subprocess.Popen(
        [sys.executable, str(CLIENT_CHILD), json.dumps(options)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else ""
    if line.strip() != "ready":
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"worker did not start ({line!r}):\n{err}")
    return proc
