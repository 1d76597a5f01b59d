"""kill -9 a writer at random moments; every acknowledged record survives, intact and in order."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fluxcore

HELPER = Path(__file__).with_name("_writer_proc.py")
_spec = importlib.util.spec_from_file_location("_fluxcore_writer_proc", HELPER)
wp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wp)

SEGMENT_FILE_SIZE = 1 << 20
PARENT_TAG = 1 << 62  # tags of records appended by the parent between rounds


def _wait_line(proc: subprocess.Popen, expect: str, timeout: float = 60.0) -> None:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if line.strip() != expect:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"child did not report {expect!r} (got {line!r}); stderr:\n{err}")


def _parse_side(side: Path) -> list[tuple[int, int, int]]:
    """(index, tag, size) of every record acknowledged to the child; a torn last line is ignored."""
    out = []
    text = side.read_text() if side.exists() else ""
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        for item in line.split():
            index, tag, size = (int(x) for x in item.split(":"))
            out.append((index, tag, size))
    return out


def _scan(log: fluxcore.Log) -> tuple[np.ndarray, np.ndarray]:
    """Indexes and lengths of every record, CRC-checked."""
    idx, lens = [], []
    after = 0
    while True:
        b = log.read(after=after, max_count=1 << 20, max_bytes=1 << 30, verify=True)
        if len(b) == 0:
            break
        assert b.next_after > after
        assert np.all(b.segments < 128)
        idx.append(np.asarray(b.indexes, dtype=np.uint64))
        lens.append(np.asarray(b.lengths, dtype=np.int64))
        after = b.next_after
    if not idx:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    return np.concatenate(idx), np.concatenate(lens)


def _payloads_after(log: fluxcore.Log, after: int) -> dict[int, bytes]:
    out = {}
    while True:
        b = log.read(after=after, verify=True)
        if len(b) == 0:
            return out
        for index, payload in b:
            out[int(index)] = payload
        after = b.next_after


def _crash_rounds(tmp_path: Path, fsync: str, rounds: int, seed: int, min_files: int) -> None:
    rng = random.Random(seed)
    path = tmp_path / "log"
    prev_idx = np.zeros(0, np.uint64)
    prev_len = np.zeros(0, np.int64)
    acked_total = 0
    for rnd in range(rounds):
        side = tmp_path / f"side-{rnd}.txt"
        args = {
            "path": str(path),
            "side": str(side),
            "seed": seed * 1000 + rnd + 1,
            "fsync": fsync,
            "segment_file_size": SEGMENT_FILE_SIZE,
            "budget": 2 << 20,
            # Small enough that the writer drops synced pages from the cache while it is killed.
            "page_cache_bytes": SEGMENT_FILE_SIZE,
        }
        proc = subprocess.Popen(
            [sys.executable, str(HELPER), "crash", json.dumps(args)],
            env=wp.child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _wait_line(proc, "ready")
            time.sleep(rng.choice((0.0, rng.uniform(0, 0.05), rng.uniform(0, 0.4))))
            if proc.poll() is not None:
                pytest.fail(f"writer died on its own (rc {proc.returncode}):\n{proc.stderr.read()}")
            os.kill(proc.pid, signal.SIGKILL)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == -signal.SIGKILL, f"writer rc {proc.returncode}:\n{err}"
        acked = _parse_side(side)
        acked_total += len(acked)

        with fluxcore.Log(path, segment_file_size=SEGMENT_FILE_SIZE, fsync=fsync) as log:
            rec = log.recovery
            assert isinstance(rec, dict)
            for key in ("truncated_bytes", "dropped_records"):
                assert isinstance(rec[key], int) and rec[key] >= 0, rec
            idx, lens = _scan(log)
            # strictly increasing, hence no duplicates
            assert np.all(idx[1:] > idx[:-1]), f"round {rnd}: indexes not strictly increasing"
            # nothing present after the previous round was lost or changed
            assert len(idx) >= len(prev_idx), (
                f"round {rnd}: {len(prev_idx) - len(idx)} records lost"
            )
            assert np.array_equal(idx[: len(prev_idx)], prev_idx), (
                f"round {rnd}: old indexes changed"
            )
            assert np.array_equal(lens[: len(prev_len)], prev_len), (
                f"round {rnd}: old lengths changed"
            )
            if len(idx):
                assert log.last_index == int(idx[-1])
                assert log.first_index == int(idx[0])
            last_before = int(prev_idx[-1]) if len(prev_idx) else 0
            new = _payloads_after(log, last_before)
            assert sorted(new) == [int(i) for i in idx[len(prev_idx) :]]
            seen_tags = {}
            for index, payload in new.items():
                tag, size = wp.check_payload(payload)
                assert tag not in seen_tags, f"round {rnd}: tag {tag} stored twice"
                seen_tags[tag] = index
            for index, tag, size in acked:
                assert index in new, f"round {rnd}: acknowledged index {index} (tag {tag}) missing"
                assert new[index] == wp.make_payload(tag, size), (
                    f"round {rnd}: index {index} differs"
                )

            # appends continue after recovery
            p = wp.make_payload(PARENT_TAG + rnd, rng.randint(0, 5000))
            i = log.append(p)
            if len(idx):
                assert i > int(idx[-1])
            b = log.read(after=i - 1)
            assert len(b) == 1 and b[0][0] == i and b[0][1] == p
            prev_idx = np.append(idx, np.uint64(i))
            prev_len = np.append(lens, np.int64(len(p)))
    # The loop must have exercised something: acknowledged appends and several file rolls.
    assert acked_total > rounds
    assert len(list(path.glob("*.seg"))) >= min_files


@pytest.mark.slow
def test_kill9_loop_interval(tmp_path):
    _crash_rounds(tmp_path, "interval", rounds=30, seed=1, min_files=3)


@pytest.mark.slow
def test_kill9_loop_fsync_always(tmp_path):
    _crash_rounds(tmp_path, "always", rounds=6, seed=2, min_files=1)


@pytest.mark.slow
def test_kill9_loop_fsync_never(tmp_path):
    _crash_rounds(tmp_path, "never", rounds=10, seed=3, min_files=2)
