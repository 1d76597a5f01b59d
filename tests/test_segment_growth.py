"""Segment files grow with the log: a new log's first file is 1 MiB, each next one four
times larger up to segment_file_size (more at once for a record that needs it); each file's
header holds its own size, so readers, recovery and damage detection work on files of any of
these sizes."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fluxcore
from fluxcore.errors import CorruptLogError

MiB = 1 << 20
HELPER = Path(__file__).with_name("_writer_proc.py")
_spec = importlib.util.spec_from_file_location("_fluxcore_writer_proc_growth", HELPER)
assert _spec is not None and _spec.loader is not None
wp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wp)


def _sizes(path: Path) -> list[int]:
    return [p.stat().st_size for p in sorted(path.glob("*.seg"))]


def _disk(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.iterdir())


def _read_all(log: fluxcore.Log) -> list[tuple[int, bytes]]:
    return [(i, p) for b in log.tail(0, timeout=0) for i, p in b]


def test_a_small_log_takes_one_mib_not_a_segment_file(tmp_path: Path) -> None:
    with fluxcore.Log(tmp_path / "l") as log:  # default segment_file_size: 64 MiB
        for k in range(3):
            log.append(b"m" * 100 + bytes([k]))
        assert log.stats()["bytes"] == MiB
    assert _sizes(tmp_path / "l") == [MiB]
    assert _disk(tmp_path / "l") <= MiB


def test_files_grow_up_to_segment_file_size(tmp_path: Path) -> None:
    payload = b"p" * 4000
    with fluxcore.Log(tmp_path / "l", segment_file_size=16 * MiB) as log:
        for _ in range(9):  # several rolls, in batches and single appends
            log.append_batch([payload] * 1000)
            log.append(payload)
        assert log.stats()["spare_files"] == 0
        written = _read_all(log)
        assert log.stats()["bytes"] == sum(_sizes(tmp_path / "l"))
    sizes = _sizes(tmp_path / "l")
    assert sizes[:3] == [MiB, 4 * MiB, 16 * MiB]
    assert all(s == 16 * MiB for s in sizes[3:]) and len(sizes) >= 4
    assert len(written) == 9 * 1001
    with fluxcore.Log(tmp_path / "l", segment_file_size=16 * MiB) as log:
        assert _read_all(log) == written
        assert log.verify() == len(written)
    with fluxcore.Log(tmp_path / "l", readonly=True) as reader:
        assert _read_all(reader) == written


def test_reopened_log_keeps_growing_from_its_last_file(tmp_path: Path) -> None:
    with fluxcore.Log(tmp_path / "l") as log:
        log.append_batch([b"x" * 1000] * 1100)  # past the first 1 MiB file
    assert _sizes(tmp_path / "l") == [MiB, 4 * MiB]
    with fluxcore.Log(tmp_path / "l") as log:
        log.append_batch([b"x" * 1000] * 4100)  # past the 4 MiB file
    assert _sizes(tmp_path / "l") == [MiB, 4 * MiB, 16 * MiB]


def test_a_big_record_gets_a_file_big_enough_at_once(tmp_path: Path) -> None:
    big = os.urandom(3 * MiB)
    with fluxcore.Log(tmp_path / "l", segment_file_size=16 * MiB) as log:
        first = log.append(b"small")
        second = log.append(big)
        # a batch mixing sizes across rolls: planned and reserved before anything is written
        third = log.append_batch([b"a" * 100, os.urandom(5 * MiB), b"b", os.urandom(9 * MiB),
                                  os.urandom(12 * MiB)])  # two rolls in one batch
        assert log.stats()["spare_files"] == 0
        got = dict(_read_all(log))
    assert got[first] == b"small" and got[second] == big and len(got) == 7
    assert [len(got[int(i)]) for i in third] == [100, 5 * MiB, 1, 9 * MiB, 12 * MiB]
    assert _sizes(tmp_path / "l") == [MiB, 4 * MiB, 16 * MiB, 16 * MiB]


def test_retention_bytes_counts_each_files_own_size(tmp_path: Path) -> None:
    with fluxcore.Log(tmp_path / "l", segment_file_size=2 * MiB, retention_bytes=5 * MiB) as log:
        for _ in range(12):
            log.append_batch([b"r" * 1000] * 500)
        total = sum(_sizes(tmp_path / "l"))
        assert total <= 5 * MiB
        assert log.stats()["bytes"] == total
        # kept as much as fits: one more file would pass the limit
        assert total + 2 * MiB > 5 * MiB


def test_a_cut_small_file_is_damage_an_intact_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "l"
    with fluxcore.Log(path, segment_file_size=4 * MiB) as log:
        log.append_batch([b"c" * 1000] * 2000)  # files of 1 and 4 MiB
        expected = _read_all(log)
    files = sorted(path.glob("*.seg"))
    assert _sizes(path) == [MiB, 4 * MiB]
    with fluxcore.Log(path, readonly=True) as reader:
        assert reader.verify() == len(expected)  # a 1 MiB first file is whole, not cut
    os.truncate(files[0], MiB // 2)  # the small first file, cut short
    with fluxcore.Log(path, readonly=True) as reader, pytest.raises(CorruptLogError):
        _read_all(reader)


def test_a_reader_in_another_process_tails_growing_files(tmp_path: Path) -> None:
    path = tmp_path / "l"
    code = (
        "import sys, fluxcore\n"
        "log = fluxcore.Log(sys.argv[1], readonly=True)\n"
        "after, n = 0, 0\n"
        "while n < int(sys.argv[2]):\n"
        "    b = log.read(after, max_count=100000)\n"
        "    n += len(b); after = b.next_after\n"
        "    if not len(b): log.wait(after, timeout=1.0)\n"
        "print(n, after, flush=True)\n"
    )
    count = 4 * 1500
    with fluxcore.Log(path, segment_file_size=4 * MiB) as log:
        log.append(b"first")
        reader = subprocess.Popen([sys.executable, "-c", code, str(path), str(count + 1)],
                                  env=wp.child_env(), stdout=subprocess.PIPE, text=True)
        for _ in range(4):
            log.append_batch([b"t" * 1500] * 1500)
        out, _ = reader.communicate(timeout=120)
        n, after = (int(x) for x in out.split())
        assert n == count + 1 and after == log.last_index
    assert _sizes(path)[:3] == [MiB, 4 * MiB, 4 * MiB]
