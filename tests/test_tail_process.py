"""A read-only reader in one process tails a live writer in another, across segment-file rolls."""

from __future__ import annotations

import importlib.util
import json
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fluxcore

HELPER = Path(__file__).with_name("_writer_proc.py")
_spec = importlib.util.spec_from_file_location("_fluxcore_writer_proc", HELPER)
wp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wp)

MiB = 1 << 20
COUNT = 600  # about 6 MiB with the size mix of write_paced: several 1 MiB files


def _start(cmd: str, args: dict, stdin=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(HELPER), cmd, json.dumps(args)],
        env=wp.child_env(),
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_ready(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if line.strip() != "ready":
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"child not ready (got {line!r}{out!r}); stderr:\n{err}")


def _finish(proc: subprocess.Popen, timeout: float = 180.0) -> None:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"child timed out; stderr:\n{err}")
    assert proc.returncode == 0, f"child failed (rc {proc.returncode}); stderr:\n{err}"


def _tail_from_child(tmp_path: Path, path: Path, open_writer_first: bool) -> None:
    out = tmp_path / "reader.json"
    writer = fluxcore.Log(path, segment_file_size=MiB, fsync="never") if open_writer_first else None
    reader = _start("tail", {"path": str(path), "count": COUNT, "out": str(out), "timeout": 150})
    try:
        _wait_ready(reader)
        if writer is None:
            writer = fluxcore.Log(path, segment_file_size=MiB, fsync="never")
        time.sleep(0.2)  # let the reader reach wait() on an empty log
        indexes = wp.write_paced(writer, COUNT, seed=7)
        files = len(list(path.glob("*.seg")))
        _finish(reader)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.communicate()
        if writer is not None:
            writer.close()
    assert files >= 4, f"only {files} segment files: the test did not cross rolls"
    seen = json.loads(out.read_text())
    assert seen["indexes"] == indexes


def test_reader_process_tails_writer(tmp_path):
    _tail_from_child(tmp_path, tmp_path / "log", open_writer_first=True)


def test_reader_opened_on_empty_dir(tmp_path):
    path = tmp_path / "log"
    path.mkdir()
    _tail_from_child(tmp_path, path, open_writer_first=False)


def test_reader_here_writer_in_child(tmp_path):
    path = tmp_path / "log"
    out = tmp_path / "writer.json"
    writer = _start(
        "write",
        {"path": str(path), "count": COUNT, "seed": 11, "out": str(out), "segment_file_size": MiB},
        stdin=subprocess.PIPE,
    )
    got: list[tuple[int, bytes]] = []
    try:
        _wait_ready(writer)
        with fluxcore.Log(path, readonly=True) as log:
            assert len(log.read(after=0)) == 0
            writer.stdin.write("go\n")
            writer.stdin.flush()
            after = 0
            deadline = time.monotonic() + 150
            while len(got) < COUNT:
                assert time.monotonic() < deadline, f"timed out after {len(got)} records"
                b = log.read(after=after)
                if len(b) == 0:
                    if writer.poll() is not None and writer.returncode != 0:
                        break
                    log.wait(after, timeout=1.0)
                    continue
                for index, payload in b:
                    tag, _ = wp.check_payload(payload)
                    assert tag == len(got), f"expected record #{len(got)}, got #{tag}"
                    got.append((int(index), payload))
                after = b.next_after
            _finish(writer)
            assert len(log.read(after=after)) == 0
            files = len(list(path.glob("*.seg")))
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.communicate()
    assert files >= 4, f"only {files} segment files: the test did not cross rolls"
    assert [i for i, _ in got] == json.loads(out.read_text())["indexes"]
