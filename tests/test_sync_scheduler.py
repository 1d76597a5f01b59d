"""The sync scheduler: one thread syncs every log of the process with the ``interval`` policy,
each dirty log within its interval, idle logs not at all; kill -9 across many logs loses
nothing acknowledged; a writer's open syncs the sealed files a killed writer left unsynced."""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import pytest

import fluxcore
from fluxcore.sync_scheduler import scheduler

HELPER = Path(__file__).with_name("_writer_proc.py")
_spec = importlib.util.spec_from_file_location("_fluxcore_writer_proc_sched", HELPER)
assert _spec is not None and _spec.loader is not None
wp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wp)


def _sync_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "fluxcore-sync"]


def _wait_for_no_sync_thread(open_before: int) -> None:
    """The thread ends once no log with the interval policy is open (unless a log of another
    test was left open: then it stays, idle)."""
    if open_before == 0:
        _wait_for(lambda: not _sync_threads(), "the sync thread to end")


def _wait_for(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_many_interval_logs_share_one_thread_and_each_is_synced(tmp_path: Path) -> None:
    before = threading.active_count()
    open_before = scheduler.open_logs
    logs = [fluxcore.Log(tmp_path / f"l{k}", fsync="interval", fsync_interval_ms=5,
                         segment_file_size=1 << 20) for k in range(40)]
    try:
        assert threading.active_count() <= before + 1
        assert len(_sync_threads()) <= 1
        for rnd in range(2):  # a log synced once is synced again when it is dirty again
            last = [log.append(f"r{rnd}".encode()) for log in logs]
            assert threading.active_count() <= before + 1
            pairs = list(zip(logs, last, strict=True))
            _wait_for(lambda p=pairs: all(log.durable_index == i for log, i in p),
                      "every log to become durable")
    finally:
        for log in logs:
            log.close()
    _wait_for_no_sync_thread(open_before)


def test_idle_logs_are_not_synced(tmp_path: Path) -> None:
    logs = [fluxcore.Log(tmp_path / f"l{k}", fsync="interval", fsync_interval_ms=1,
                         segment_file_size=1 << 20) for k in range(50)]
    try:
        for log in logs:
            log.append(b"x")
        _wait_for(lambda: all(not log.sync_pending for log in logs), "the first syncs")
        time.sleep(0.05)  # a sync picked just before the check above may still be counted
        syncs = scheduler.syncs
        time.sleep(0.3)  # 300 intervals: a per-log timer would have synced 15,000 times
        assert scheduler.syncs == syncs
    finally:
        for log in logs:
            log.close()


def test_close_is_prompt_and_leaves_the_schedule(tmp_path: Path) -> None:
    log = fluxcore.Log(tmp_path / "l", fsync="interval", fsync_interval_ms=600_000,
                       segment_file_size=1 << 20)
    last = log.append(b"x")
    assert log.sync_pending and log.durable_index < last
    started = time.monotonic()
    log.close()  # syncs itself; does not wait ten minutes for the scheduled sync
    assert time.monotonic() - started < 60
    assert log.durable_index == last
    ref = weakref.ref(log)
    del log
    gc.collect()
    assert ref() is None, "the scheduler still holds a closed log"
    with fluxcore.Log(tmp_path / "l", segment_file_size=1 << 20) as again:
        assert again.last_index == last


def test_a_failed_log_open_leaves_no_registration(tmp_path: Path) -> None:
    open_before = scheduler.open_logs
    with (fluxcore.Log(tmp_path / "l", fsync="interval", segment_file_size=1 << 20),
          pytest.raises(fluxcore.LogLockedError)):
        fluxcore.Log(tmp_path / "l", fsync="interval", segment_file_size=1 << 20)
    assert scheduler.open_logs == open_before
    _wait_for_no_sync_thread(open_before)


def _wait_ready(proc: subprocess.Popen[str]) -> None:
    ready, _, _ = select.select([proc.stdout], [], [], 60.0)
    line = proc.stdout.readline() if ready and proc.stdout else ""
    if line.strip() != "ready":
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"child did not start (got {line!r}); stderr:\n{err}")


def _acked(side: Path) -> list[tuple[int, int, int, int]]:
    out = []
    for line in side.read_text().splitlines(keepends=True) if side.exists() else []:
        if not line.endswith("\n"):
            break  # torn by the kill
        for item in line.split():
            k, index, tag, size = (int(x) for x in item.split(":"))
            out.append((k, index, tag, size))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("fsync", ["always", "interval"])
def test_kill9_loop_across_many_logs(tmp_path: Path, fsync: str) -> None:
    rng = random.Random(11)
    logs, acked_total = 12, 0
    for rnd in range(6):
        side = tmp_path / f"side-{rnd}.txt"
        args = {"path": str(tmp_path), "side": str(side), "seed": rnd + 1, "fsync": fsync,
                "logs": logs, "segment_file_size": 1 << 20, "fsync_interval_ms": 5}
        proc = subprocess.Popen([sys.executable, str(HELPER), "crash_many", json.dumps(args)],
                                env=wp.child_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            _wait_ready(proc)
            time.sleep(rng.uniform(0.05, 0.5))
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        acked = _acked(side)
        acked_total += len(acked)
        stored: dict[int, dict[int, bytes]] = {}
        for k in range(logs):
            with fluxcore.Log(tmp_path / f"log-{k}", segment_file_size=1 << 20,
                              fsync=fsync) as log:  # type: ignore[arg-type]
                assert log.durable_index == log.last_index
                stored[k] = {i: p for b in log.tail(0, timeout=0) for i, p in b}
        for k, index, tag, size in acked:
            assert stored[k].get(index) == wp.make_payload(tag, size), (
                f"round {rnd}: log {k} lost acknowledged index {index}")
    assert acked_total > 0


def test_open_syncs_sealed_files_a_killed_writer_left_unsynced(tmp_path: Path) -> None:
    # The child fills several 1 MiB files with fsync="interval" and an interval no sync
    # reaches, then dies without closing: the sealed files are in the page cache only.
    code = (
        "import os, sys, fluxcore\n"
        "log = fluxcore.Log(sys.argv[1], fsync='interval', fsync_interval_ms=600000,\n"
        "                   segment_file_size=1 << 20)\n"
        "log.append_batch([b'a' * 1000] * 1500)\n"
        "log.sync()\n"  # the first files are synced: not synced again on open
        "log.append_batch([b'b' * 1000] * 3000)\n"
        "print(log.stats()['files'], flush=True)\n"
        "os._exit(0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "l")], env=wp.child_env(),
                         capture_output=True, text=True, timeout=120, check=True)
    files = int(out.stdout.strip())
    assert files >= 5
    with fluxcore.Log(tmp_path / "l", segment_file_size=1 << 20) as log:
        # Files 3 .. files-1 were sealed after the sync; the last one is the recovered file.
        assert 2 <= log.synced_on_open <= files - 2
        assert log.durable_index == log.last_index
        sealed_synced = log.synced_on_open
    with fluxcore.Log(tmp_path / "l", segment_file_size=1 << 20) as log:
        assert log.synced_on_open == 0, "files synced before are not synced again"
    assert sealed_synced
