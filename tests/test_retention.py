"""Retention drops whole old segment files on roll, never the current one; views outlive it."""

from __future__ import annotations

import gc
import time
from pathlib import Path

import numpy as np

import fluxcore

MiB = 1 << 20
REC = 100_000  # ten records fill a 1 MiB segment file


def payload(k: int, size: int = REC) -> bytes:
    return k.to_bytes(8, "little") * (size // 8)


def seg_files(log: fluxcore.Log):
    return sorted(Path(log.path).glob("*.seg"))


def read_all(log):
    out, after = [], 0
    while True:
        b = log.read(after=after, verify=True)
        if len(b) == 0:
            return out
        out.extend((int(i), p) for i, p in b)
        after = b.next_after


def check_suffix(log, written):
    """What is left is exactly a suffix of what was written, starting at the oldest file on disk."""
    got = read_all(log)
    assert got, "retention removed everything"
    assert got == written[len(written) - len(got) :]
    files = seg_files(log)
    assert log.first_index == got[0][0]
    assert int(files[0].stem) <= log.first_index
    assert log.stats()["first_index"] == log.first_index
    assert log.find(0) == log.first_index
    b = log.read(after=0)
    assert int(b.indexes[0]) == log.first_index
    return got


def test_retention_bytes(tmp_path):
    with fluxcore.Log(tmp_path / "log", segment_file_size=MiB, retention_bytes=3 * MiB) as log:
        written = []
        for k in range(90):  # ~9 MiB, about 9 rolls
            p = payload(k)
            written.append((log.append(p), p))
        files = seg_files(log)
        on_disk = sum(f.stat().st_size for f in files)
        assert 2 <= len(files) <= 4, [f.name for f in files]
        assert on_disk <= 3 * MiB + MiB
        got = check_suffix(log, written)
        assert len(got) < len(written)
        assert got[-1] == written[-1]
        assert log.stats()["files"] == len(files)
    with fluxcore.Log(tmp_path / "log", segment_file_size=MiB, retention_bytes=3 * MiB) as log:
        assert check_suffix(log, written) == got


def test_retention_never_drops_current_file(tmp_path):
    with fluxcore.Log(tmp_path / "log", segment_file_size=MiB, retention_bytes=1) as log:
        written = []
        for k in range(60):
            p = payload(k)
            written.append((log.append(p), p))
            files = seg_files(log)
            assert 1 <= len(files) <= 2, [f.name for f in files]
            assert log.last_index == written[-1][0]
            b = log.read(after=written[-1][0] - 1)
            assert b[0] == written[-1]
        got = check_suffix(log, written)
        assert got[-1] == written[-1]
        assert len(got) <= 20


def test_retention_ms(tmp_path):
    with fluxcore.Log(tmp_path / "log", segment_file_size=MiB, retention_ms=300) as log:
        written = []
        seen = set()
        for k in range(25):  # 3 files
            p = payload(k)
            written.append((log.append(p), p))
            seen.update(f.name for f in seg_files(log))
        current = seg_files(log)[-1]
        old_files = seen - {current.name}  # every record in these is older than the sleep
        assert len(old_files) >= 2
        time.sleep(1.2)
        for k in range(25, 50):  # rolls at least twice more, so `current` is no longer current
            p = payload(k)
            written.append((log.append(p), p))
        now_files = {f.name for f in seg_files(log)}
        assert not (old_files & now_files), (
            f"expired files still there: {sorted(old_files & now_files)}"
        )
        assert len(now_files) >= 1
        got = check_suffix(log, written)
        assert got[-1] == written[-1]
        assert log.first_index >= int(current.stem)


def test_retention_ms_keeps_young_files(tmp_path):
    with fluxcore.Log(
        tmp_path / "log", segment_file_size=MiB, retention_ms=3_600_000, retention_bytes=1 << 40
    ) as log:
        written = []
        for k in range(50):
            p = payload(k)
            written.append((log.append(p), p))
        assert len(seg_files(log)) >= 5
        assert read_all(log) == written
        assert log.first_index == written[0][0]


def test_views_outlive_dropped_file(tmp_path):
    with fluxcore.Log(tmp_path / "log", segment_file_size=MiB, retention_bytes=1) as log:
        first = [payload(k) for k in range(5)]
        idx = [int(i) for i in log.append_batch(first)]
        first_file = seg_files(log)[0]
        b = log.read(after=0)
        assert [p for _, p in b] == first
        data = b.data
        arr = np.frombuffer(b.data, dtype=np.uint8)
        offsets, lengths = np.array(b.offsets), np.array(b.lengths)
        assert log.stats()["views_alive"] >= 1
        for k in range(5, 40):  # rolls several times; the first file is dropped
            log.append(payload(k))
        assert not first_file.exists(), "the first file was not dropped"
        assert log.first_index > idx[-1]
        # the batch and the views taken from it still read the dropped file's bytes
        gc.collect()
        assert b.payloads() == first
        assert list(b.indexes) == idx
        for k in range(5):
            o, n = int(offsets[k]), int(lengths[k])
            assert bytes(data[o : o + n]) == first[k]
            assert arr[o : o + n].tobytes() == first[k]
        del b
        gc.collect()
        # the numpy array alone keeps the mapping alive
        assert arr[int(offsets[4]) : int(offsets[4]) + int(lengths[4])].tobytes() == first[4]
        assert bytes(data[int(offsets[0]) : int(offsets[0]) + 16]) == first[0][:16]
        del data, arr
        gc.collect()
        assert log.stats()["views_alive"] == 0


def test_views_outlive_close(tmp_path):
    log = fluxcore.Log(tmp_path / "log", segment_file_size=MiB)
    items = [payload(k, 1000) for k in range(10)]
    log.append_batch(items)
    b = log.read(after=0)
    mv = b.data
    log.close()
    assert b.payloads() == items
    o, n = int(b.offsets[3]), int(b.lengths[3])
    assert bytes(mv[o : o + n]) == items[3]
    del b, mv
    gc.collect()
