"""The embedded Log API: append, batches, reads, filters, rolls, search, waiting, reopen."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

import fluxcore
from fluxcore import Log

from .conftest import seg_files

PAYLOAD = b"p" * 100


def read_all(log: Log, after: int = 0, **kwargs: object) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    while True:
        batch = log.read(after, **kwargs)  # type: ignore[arg-type]
        out.extend(batch)
        if not len(batch) and batch.next_after == after:
            return out
        after = batch.next_after


def test_append_returns_time_ordered_indexes(log: Log) -> None:
    before = time.time_ns() // 1_000_000
    first = log.append(b"one")
    second = log.append(b"two")
    after = time.time_ns() // 1_000_000
    assert second > first
    assert before <= first >> 16 <= after
    assert log.last_index == second
    assert log.first_index == first
    assert read_all(log) == [(first, b"one"), (second, b"two")]


def test_empty_log(log: Log) -> None:
    batch = log.read(0)
    assert len(batch) == 0
    assert batch.next_after == 0
    assert log.last_index == 0 and log.first_index == 0
    assert log.find(0) is None
    assert not log.wait(0, timeout=0.01)


def test_keys_route_to_their_segment(log: Log) -> None:
    log.append(b"a", key="hello")
    log.append(b"b", segment=7)
    log.append_batch([b"c", b"d"], keys=["foo", b"user-123"])
    batch = log.read(0)
    assert batch.segments.tolist() == [35, 7, 63, 73]


def test_records_without_key_spread_over_segments(log: Log) -> None:
    log.append_batch([PAYLOAD] * 2000)
    segments = log.read(0).segments
    assert len(np.unique(segments)) == 128


def test_batch_and_buffer_appends_read_back(log: Log) -> None:
    payloads = [bytes([i % 251]) * (i % 300) for i in range(1000)]
    indexes = log.append_batch(payloads, segments=np.arange(1000) % 128)
    assert indexes.dtype == np.uint64 and len(indexes) == 1000
    assert np.all(np.diff(indexes.astype(np.int64)) == 1)
    buffer = b"".join(payloads)
    offsets = np.cumsum([0] + [len(p) for p in payloads])
    more = log.append_buffer(buffer, offsets)
    assert more[0] > indexes[-1]
    records = read_all(log)
    assert [p for _, p in records] == payloads + payloads
    assert [i for i, _ in records] == indexes.tolist() + more.tolist()


def test_batch_arrays_describe_the_mapped_bytes(log: Log) -> None:
    log.append_batch([b"x" * n for n in (1, 50, 100)], segments=[1, 2, 3])
    batch = log.read(0)
    data = batch.data
    assert data.readonly
    for i in range(len(batch)):
        start, length = int(batch.offsets[i]), int(batch.lengths[i])
        assert bytes(data[start : start + length]) == batch[i][1]
    assert batch.payloads() == [b"x", b"x" * 50, b"x" * 100]
    assert batch[-1] == (int(batch.indexes[-1]), b"x" * 100)
    with pytest.raises(IndexError):
        batch[3]


def test_read_limits(log: Log) -> None:
    log.append_batch([PAYLOAD] * 50)
    assert len(log.read(0, max_count=7)) == 7
    assert len(log.read(0, max_bytes=250)) == 2
    assert len(log.read(0, max_bytes=1)) == 1  # one record always fits
    with pytest.raises(ValueError):
        log.read(0, max_count=0)


def test_segment_range_filter(log: Log) -> None:
    segments = np.arange(600) % 128
    indexes = log.append_batch([PAYLOAD] * 600, segments=segments)
    got = read_all(log, segments=(10, 20))
    expected = [int(i) for i, s in zip(indexes, segments, strict=True) if 10 <= s < 20]
    assert [i for i, _ in got] == expected
    assert read_all(log, segments=(5, 5)) == []
    with pytest.raises(ValueError):
        log.read(0, segments=(3, 200))


def test_filtered_read_moves_past_skipped_records(log: Log) -> None:
    indexes = log.append_batch([PAYLOAD] * 10, segments=[1] * 10)
    batch = log.read(0, segments=(2, 3))
    assert len(batch) == 0
    assert batch.next_after == indexes[-1]


def test_reads_cross_rolled_files(log_dir: Path) -> None:
    with Log(log_dir, segment_file_size=1 << 20) as log:
        payloads = [bytes([i % 256]) * 1000 for i in range(3000)]  # ~3 MB: several files
        for chunk in range(0, 3000, 500):
            log.append_batch(payloads[chunk : chunk + 500])
        assert len(seg_files(log_dir)) >= 3
        got = read_all(log)
        assert [p for _, p in got] == payloads
        batch = log.read(0, max_count=100_000)
        assert 0 < len(batch) < 3000  # one file per read
    with Log(log_dir, segment_file_size=1 << 20) as log:
        assert [p for _, p in read_all(log)] == payloads


def test_file_names_are_first_indexes(log_dir: Path) -> None:
    with Log(log_dir, segment_file_size=1 << 20) as log:
        for _ in range(5):
            log.append_batch([b"z" * 4000] * 100)
        names = seg_files(log_dir)
        starts = [int(n[:-4]) for n in names]
        for start in starts:
            assert log.find(start) == start
            assert log.read(start - 1, max_count=1).indexes[0] == start


def test_find_and_find_time(log: Log) -> None:
    a = log.append(b"a")
    time.sleep(0.005)
    b = log.append(b"b")
    assert log.find(0) == a
    assert log.find(a) == a
    assert log.find(a + 1) == b
    assert log.find(b + 1) is None
    assert log.find_time(a >> 16) == a
    assert log.find_time(b >> 16) == b
    assert log.find_time((b >> 16) + 1) is None


def test_preset_index_must_grow(log: Log) -> None:
    future = (time.time_ns() // 1_000_000 + 60_000) << 16
    assert log.append(b"scheduled", index=future) == future
    # The clock is now "behind" the last index: appends continue strictly above it.
    assert log.append(b"next") == future + 1
    assert log.append_batch([b"x", b"y"]).tolist() == [future + 2, future + 3]
    with pytest.raises(ValueError, match="not greater"):
        log.append(b"old", index=future)


def test_wait_sees_an_append_from_another_thread(log: Log) -> None:
    last = log.append(b"first")
    timer = threading.Timer(0.05, lambda: log.append(b"second"))
    timer.start()
    try:
        assert log.wait(last, timeout=10)
    finally:
        timer.join()
    assert log.read(last)[0][1] == b"second"


def test_tail_yields_batches_then_stops(log: Log) -> None:
    log.append_batch([PAYLOAD] * 25)
    seen = sum(len(b) for b in log.tail(0, timeout=0.05, max_count=10))
    assert seen == 25


@pytest.mark.parametrize("policy", ["never", "interval", "always"])
def test_policies_reopen_with_everything(log_dir: Path, policy: str) -> None:
    with Log(log_dir, fsync=policy, fsync_interval_ms=5, segment_file_size=1 << 20) as log:  # type: ignore[arg-type]
        log.append(b"one")
        log.append_batch([b"two", b"three"])
        durable = log.sync()
        assert durable == log.last_index
        assert log.stats()["durable_index"] == durable
    with Log(log_dir, segment_file_size=1 << 20) as log:
        assert [p for _, p in read_all(log)] == [b"one", b"two", b"three"]
        assert log.recovery == {"truncated_bytes": 0, "dropped_records": 0}


def test_interval_policy_syncs_in_the_background(log_dir: Path) -> None:
    with Log(log_dir, fsync="interval", fsync_interval_ms=5) as log:
        last = log.append(b"x")
        deadline = time.monotonic() + 10
        while log.durable_index < last and time.monotonic() < deadline:
            time.sleep(0.005)
        assert log.durable_index == last


def test_always_policy_is_durable_on_return(log_dir: Path) -> None:
    with Log(log_dir, fsync="always") as log:
        index = log.append(b"x")
        assert log.durable_index == index
        batch = log.append_batch([b"y"] * 3)
        assert log.durable_index == batch[-1]


def test_concurrent_appenders_lose_nothing(log_dir: Path) -> None:
    with Log(log_dir, segment_file_size=1 << 20) as log:

        def work(tag: int) -> None:
            for i in range(200):
                if i % 2:
                    log.append(f"{tag}:{i}".encode())
                else:
                    log.append_batch([f"{tag}:{i}:{j}".encode() for j in range(50)])

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        records = read_all(log)
        assert len(records) == 4 * (100 + 100 * 50)
        assert len({p for _, p in records}) == len(records)
        indexes = [i for i, _ in records]
        assert indexes == sorted(indexes) and len(set(indexes)) == len(indexes)
        assert log.verify() == len(records)


def test_stats(log: Log) -> None:
    log.append_batch([PAYLOAD] * 10)
    stats = log.stats()
    assert stats["appended"] == 10
    assert stats["files"] == 1
    assert stats["last_index"] == log.last_index
    batch = log.read(0)
    view = batch.data
    assert log.stats()["views_alive"] == 1
    view.release()
    assert log.stats()["views_alive"] == 0
    assert stats["max_payload"] > 1_000_000


def test_batch_outlives_close(log_dir: Path) -> None:
    log = Log(log_dir)
    log.append(b"kept")
    batch = log.read(0)
    log.close()
    assert batch.payloads() == [b"kept"]
    assert bytes(batch.data[batch.offsets[0] : batch.offsets[0] + 4]) == b"kept"


def test_reader_in_process_sees_writer(log_dir: Path) -> None:
    with (
        Log(log_dir, segment_file_size=1 << 20) as writer,
        Log(log_dir, readonly=True) as reader,
    ):
        assert reader.read(0).next_after == 0
        first = writer.append(b"a")
        assert reader.wait(0, timeout=5)
        assert list(reader.read(0)) == [(first, b"a")]
        writer.append_batch([b"b" * 5000] * 600)  # rolls into new files
        got = read_all(reader)
        assert len(got) == 601
        assert reader.last_index == writer.last_index
        assert reader.first_index == writer.first_index
        with pytest.raises(fluxcore.LogError):
            reader.append(b"no")


def test_at_most_max_mapped_files_stay_mapped(log_dir: Path) -> None:
    with Log(log_dir, segment_file_size=1 << 20, max_mapped_files=2) as log:
        payloads = [bytes([i % 256]) * 3000 for i in range(2000)]  # ~6 MB: 6+ files
        for chunk in range(0, 2000, 250):
            log.append_batch(payloads[chunk : chunk + 250])
        assert len(seg_files(log_dir)) >= 6
        assert sum(f is not None for f in log._files) <= 3  # two plus the active one
        kept = log.read(0)  # a batch keeps its file mapped even once dropped from the list
        assert [p for _, p in read_all(log)] == payloads  # maps each file again on the way
        assert sum(f is not None for f in log._files) <= 3
        assert kept.payloads() == payloads[: len(kept)]
    with Log(log_dir, readonly=True, max_mapped_files=2) as reader:
        assert [p for _, p in read_all(reader)] == payloads
        assert sum(f is not None for f in reader._files) <= 2
    with pytest.raises(ValueError):
        Log(log_dir, max_mapped_files=1)


def test_append_buffer_with_a_preset_first_index(log: Log) -> None:
    # The server's schedules use it: a due schedule's index is its deadline's.
    first = log.append(b"now")
    base = first + (5 << 16)
    buffer = b"abc"
    indexes = log.append_buffer(buffer, [0, 1, 2, 3], segments=[1, 2, 3], first_index=base)
    assert indexes.tolist() == [base, base + 1, base + 2]
    assert log.read(first).indexes.tolist() == [base, base + 1, base + 2]
    assert log.read(first).segments.tolist() == [1, 2, 3]
    for bad in (base + 2, first, 0):  # not above the last index, or not an index at all
        with pytest.raises(ValueError):
            log.append_buffer(buffer, [0, 3], first_index=bad)
    with pytest.raises(TypeError):
        log.append_buffer(buffer, [0, 3], first_index=1.5)  # type: ignore[arg-type]
    assert log.last_index == base + 2  # nothing of the refused appends was written
    assert log.append_buffer(buffer, [0, 3]).tolist()[0] > base + 2


@pytest.mark.parametrize("policy", ["never", "interval", "always"])
def test_one_record_buffers_read_back_and_survive_reopen(log_dir: Path, policy: str) -> None:
    # A batch of one small record (the server's request and result appends) is written through
    # the mapping, a bigger batch with pwrite: both kinds, interleaved, read back in order.
    payloads = [b"one-%d" % i if i % 3 else b"x" * 70_000 for i in range(12)]
    with Log(log_dir, fsync=policy) as log:  # type: ignore[arg-type]
        for payload in payloads:
            log.append_buffer(payload, np.array([0, len(payload)], dtype=np.int64),
                              segments=np.array([7], dtype=np.uint8))
        log.append_buffer(b"ab", np.array([0, 1, 2], dtype=np.int64),
                          segments=np.array([1, 2], dtype=np.uint8))
        assert [bytes(p) for p in log.read(0).payloads()] == [*payloads, b"a", b"b"]
    with Log(log_dir, fsync=policy) as log:  # type: ignore[arg-type]
        batch = log.read(0)
        assert [bytes(p) for p in batch.payloads()] == [*payloads, b"a", b"b"]
        assert [int(s) for s in batch.segments] == [7] * 12 + [1, 2]


def test_buffer_segments_out_of_range_are_refused(log: Log) -> None:
    for segments in (np.array([128], dtype=np.uint8), np.array([-1], dtype=np.int64)):
        with pytest.raises(ValueError, match=r"0\.\.127"):
            log.append_buffer(b"x", np.array([0, 1], dtype=np.int64), segments=segments)
    assert len(log.read(0)) == 0
