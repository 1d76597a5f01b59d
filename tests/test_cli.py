"""The `fluxcore` command, run as a real process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "fluxcore", *args], input=stdin, capture_output=True, timeout=60
    )


def test_append_tail_stats_verify(tmp_path: Path) -> None:
    path = str(tmp_path / "log")
    out = run("append", path, "--key", "k", stdin=b"one\ntwo\nthree\n")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["appended"] == 3
    tail = run("tail", path)
    assert tail.returncode == 0, tail.stderr
    lines = tail.stdout.splitlines()
    assert [line.split(b" ", 2)[2] for line in lines] == [b"one", b"two", b"three"]
    since = int(lines[1].split()[1])
    assert run("tail", path, "--since-ms", str(since)).stdout.splitlines()[-1].endswith(b"three")
    stats = json.loads(run("stats", path).stdout)
    assert stats["files"] == 1 and stats["last_index"] == int(lines[-1].split()[0])
    assert json.loads(run("verify", path).stdout) == {"records": 3}


def test_errors_are_one_clear_line(tmp_path: Path) -> None:
    out = run("stats", str(tmp_path / "missing"))
    assert out.returncode == 1
    assert out.stderr.startswith(b"fluxcore: ") and b"Traceback" not in out.stderr


def test_demo_runs_every_step(tmp_path: Path) -> None:
    # README's main command: every step of the tour must keep working.
    out = subprocess.run(
        [sys.executable, "-m", "fluxcore.server.demo", "--data", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    steps = [line.split(".", 1)[0] for line in out.stdout.splitlines()]
    assert steps == [str(n) for n in range(1, 11)], out.stdout
    assert "10,000 events handled" in out.stdout
    assert "[(0, 'ItemAdded'), (1, 'ItemAdded'), (2, 'ItemRemoved')]" in out.stdout
    assert "scheduled message 'CartAbandoned' delivered" in out.stdout
    # README's microclient, against the server
    assert "stream ['OrderPlaced', 'OrderShipped']" in out.stdout
    assert "ShipOrder again -> IllegalCommand(already shipped)" in out.stdout
    assert "shipped=True" in out.stdout and "'orders/place': 1, 'orders/ship': 2" in out.stdout
    assert "exit code 0" in out.stdout
