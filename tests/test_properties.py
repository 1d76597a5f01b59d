"""Property tests: random mixes of appends read back exactly, filtered and searched like a model."""

from __future__ import annotations

import bisect
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
import xxhash
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import fluxcore

MiB = 1 << 20
SETTINGS = settings(
    max_examples=50,
    deadline=None,
    database=None,  # failures print a reproducible example; keep the tree clean
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def payload(size: int, seed: int) -> bytes:
    # cheap, distinct and not all zeros
    return (seed.to_bytes(4, "little") * (size // 4 + 1))[:size] if size else b""


sizes = st.integers(0, 5000)
payloads = st.builds(payload, sizes, st.integers(0, 2**32 - 1))
keys = st.text(max_size=12)
routing = st.one_of(
    st.none(), st.tuples(st.just("segment"), st.integers(0, 127)), st.tuples(st.just("key"), keys)
)
ops = st.one_of(
    st.tuples(st.just("append"), payloads, routing),
    st.tuples(
        st.just("batch"),
        st.lists(payloads, min_size=1, max_size=20),
        st.sampled_from(["", "k", "s"]),
        st.randoms(use_true_random=False),
    ),
    st.tuples(st.just("buffer"), st.lists(payloads, min_size=1, max_size=20)),
    st.tuples(st.just("preset"), st.integers(1, 5000 << 16), payloads),
    # a few large records so that examples cross segment-file rolls
    st.tuples(st.just("big"), st.lists(st.integers(100_000, 300_000), min_size=1, max_size=5)),
)


def segment_for_key(key: str) -> int:
    return xxhash.xxh64(key.encode("utf-8"), seed=0).intdigest() % 128


class Model:
    def __init__(self) -> None:
        self.indexes: list[int] = []
        self.payloads: list[bytes] = []
        self.segments: list[int | None] = []  # None: spread by the log, unknown here

    def add(self, indexes, items, segs) -> None:
        indexes = [int(i) for i in indexes]
        assert len(indexes) == len(items)
        for i in indexes:
            assert not self.indexes or i > self.indexes[-1], "indexes not strictly increasing"
            self.indexes.append(i)
        self.payloads.extend(items)
        self.segments.extend(segs)


def apply(log: fluxcore.Log, model: Model, op) -> None:
    kind = op[0]
    if kind == "append":
        _, p, r = op
        if r is None:
            model.add([log.append(p)], [p], [None])
        elif r[0] == "segment":
            model.add([log.append(p, segment=r[1])], [p], [r[1]])
        else:
            model.add([log.append(p, key=r[1])], [p], [segment_for_key(r[1])])
    elif kind == "batch":
        _, items, mode, rnd = op
        if mode == "k":
            ks = [f"key-{rnd.randrange(1000)}" for _ in items]
            idx = log.append_batch(items, keys=ks)
            segs = [segment_for_key(k) for k in ks]
        elif mode == "s":
            segs = [rnd.randrange(128) for _ in items]
            idx = log.append_batch(items, segments=np.array(segs, dtype=np.uint8))
        else:
            idx = log.append_batch(items)
            segs = [None] * len(items)
        assert isinstance(idx, np.ndarray) and idx.dtype == np.uint64
        model.add(idx, items, segs)
    elif kind == "buffer":
        _, items = op
        bounds = np.zeros(len(items) + 1, dtype=np.int64)
        np.cumsum([len(p) for p in items], out=bounds[1:])
        idx = log.append_buffer(b"".join(items), bounds)
        model.add(idx, items, [None] * len(items))
    elif kind == "preset":
        _, gap, p = op
        want = log.last_index + gap
        got = log.append(p, index=want)
        assert got == want
        model.add([got], [p], [None])
    else:
        _, big = op
        items = [payload(s, s) for s in big]
        model.add(log.append_batch(items), items, [None] * len(items))


def read_all(log: fluxcore.Log, max_count: int, segments=None):
    idx, segs, pls = [], [], []
    after = 0
    while True:
        b = log.read(after=after, max_count=max_count, segments=segments, verify=True)
        if len(b) == 0:
            if segments is not None and b.next_after > after:
                after = b.next_after  # a stretch with no record in range
                continue
            if log.last_index > after and segments is None:
                raise AssertionError(f"empty read after {after} but last_index is {log.last_index}")
            return idx, segs, pls
        assert len(b) <= max_count
        assert b.next_after > after
        assert len(b.indexes) == len(b.segments) == len(b.offsets) == len(b.lengths) == len(b)
        data = b.data
        got = b.payloads()
        for k in range(len(b)):
            off, ln = int(b.offsets[k]), int(b.lengths[k])
            assert bytes(data[off : off + ln]) == got[k]
            assert b[k] == (int(b.indexes[k]), got[k])
        assert list(b) == [(int(i), p) for i, p in zip(b.indexes, got, strict=True)]
        idx.extend(int(i) for i in b.indexes)
        segs.extend(int(s) for s in b.segments)
        pls.extend(got)
        after = b.next_after


def check_log(log: fluxcore.Log, model: Model, max_count: int, ranges) -> None:
    idx, segs, pls = read_all(log, max_count)
    assert idx == model.indexes
    assert pls == model.payloads
    for want, got in zip(model.segments, segs, strict=True):
        assert 0 <= got < 128
        if want is not None:
            assert got == want
    if model.indexes:
        assert log.first_index == model.indexes[0]
        assert log.last_index == model.indexes[-1]
    else:
        assert log.first_index == 0 and log.last_index == 0

    for lo, hi in ranges:
        f_idx, f_segs, f_pls = read_all(log, max_count, segments=(lo, hi))
        expect = [k for k, s in enumerate(segs) if lo <= s < hi]
        assert f_idx == [idx[k] for k in expect], (lo, hi)
        assert f_pls == [pls[k] for k in expect]
        assert all(lo <= s < hi for s in f_segs)

    # find / find_time against brute force
    probes = {0, 1}
    for i in model.indexes:
        probes.update((i - 1, i, i + 1))
    if model.indexes:
        probes.add(model.indexes[-1] + (1 << 20))
    for q in sorted(probes):
        k = bisect.bisect_left(model.indexes, q)
        assert log.find(q) == (model.indexes[k] if k < len(model.indexes) else None), q
    stamps = [i >> 16 for i in model.indexes]
    ms_probes = {0}
    for ms in stamps:
        ms_probes.update((ms - 1, ms, ms + 1))
    for ms in sorted(ms_probes):
        k = bisect.bisect_left(stamps, ms)
        assert log.find_time(ms) == (model.indexes[k] if k < len(model.indexes) else None), ms


ranges_st = st.lists(
    st.tuples(st.integers(0, 127), st.integers(1, 128))
    .map(lambda t: (min(t), max(t)))
    .filter(lambda t: t[0] < t[1]),
    min_size=1,
    max_size=3,
)


@SETTINGS
@given(ops=st.lists(ops, max_size=25), max_count=st.integers(1, 200), ranges=ranges_st)
def test_model(tmp_path, ops, max_count, ranges):
    with tempfile.TemporaryDirectory(dir=tmp_path) as d:
        path = Path(d) / "log"
        model = Model()
        with fluxcore.Log(path, segment_file_size=MiB, fsync="never") as log:
            for op in ops:
                apply(log, model, op)
            check_log(log, model, max_count, ranges)
        files = len(list(path.glob("*.seg")))
        event("several segment files" if files > 1 else "one segment file")
        with fluxcore.Log(path, segment_file_size=MiB) as log:
            check_log(log, model, max_count, ranges)
            # appends continue after a reopen, above everything that was there
            p = payload(33, 1)
            model.add([log.append(p)], [p], [None])
            check_log(log, model, max_count, ranges[:1])
        with fluxcore.Log(path, readonly=True) as log:
            check_log(log, model, max_count, ranges[:1])


def test_index_is_millis_and_counter(tmp_path):
    with fluxcore.Log(tmp_path / "log") as log:
        before = int(time.time() * 1000)
        idx = [int(i) for i in log.append_batch([b"x"] * 1000)]
        after = int(time.time() * 1000)
    assert all(b > a for a, b in itertools.pairwise(idx))
    # generous bounds: the timestamp part is wall-clock milliseconds
    assert before - 2000 <= idx[0] >> 16 <= after + 2000


def test_clock_behind_preset_still_increases(tmp_path):
    with fluxcore.Log(tmp_path / "log") as log:
        future = (int(time.time() * 1000) + 3_600_000) << 16
        assert log.append(b"a", index=future) == future
        nxt = [log.append(b"b") for _ in range(5)] + [int(i) for i in log.append_batch([b"c"] * 5)]
        assert nxt[0] > future
        assert all(b > a for a, b in itertools.pairwise(nxt))
        assert log.find_time(future >> 16) == future


def test_empty_log_queries(tmp_path):
    with fluxcore.Log(tmp_path / "log") as log:
        assert len(log.read(after=0)) == 0
        assert log.find(0) is None
        assert log.find_time(0) is None
        assert log.first_index == 0 and log.last_index == 0
        assert log.wait(0, timeout=0.05) is False
        assert log.verify() == 0
