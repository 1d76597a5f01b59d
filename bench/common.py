"""What every benchmark module shares: sizes, the data set, the timer and result rows."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

PAYLOAD_SIZE = 100
RECORD_HEADER_SIZE = 24
# A fluxcore record is its header plus payload, padded to 8 bytes: 128 bytes on disk.
RECORD_SIZE = (RECORD_HEADER_SIZE + PAYLOAD_SIZE + 7) & ~7
BATCH = 10_000
SEGMENT_COUNT = 128
MIB = 2**20

JsonValue = float | int | str


@dataclass(frozen=True)
class Sizes:
    """How much work one run does; every message count is a multiple of BATCH."""

    single: int  # messages per repeat of append_single
    batch: int  # messages per repeat of append_batch
    read: int  # messages in the log that read_batch / read_iterate walk
    route: int  # keys per repeat of route_batch
    repeats: int  # timed repeats (after one untimed warm-up)
    memcpy_bytes: int
    disk_bytes: int  # written and fdatasync'ed per repeat of disk_write
    rss_bytes: int  # payload bytes appended by rss_outside_maps
    rss_retention_bytes: int


# A 64 MiB fluxcore segment file holds ~520k records: every append repeat spans
# at least two of them, so file rolls (and their page faults) are in every median.
QUICK = Sizes(
    single=1_000_000,
    batch=1_000_000,
    read=1_000_000,
    route=1_000_000,
    repeats=3,
    memcpy_bytes=256 * MIB,
    disk_bytes=512 * MIB,
    rss_bytes=256 * 10**6,
    # Below the appended volume, so retention really drops files in the quick run too.
    rss_retention_bytes=128 * MIB,
)
FULL = Sizes(
    single=2_000_000,
    batch=4_000_000,
    read=4_000_000,
    route=5_000_000,
    repeats=5,
    memcpy_bytes=256 * MIB,
    disk_bytes=2048 * MIB,
    rss_bytes=5 * 10**9,
    rss_retention_bytes=1024 * MIB,
)


@dataclass(frozen=True)
class Dataset:
    """BATCH distinct messages; every system gets exactly these bytes, batch after batch."""

    payloads: list[bytes]
    keys: list[str]
    segments: npt.NDArray[np.uint8]
    segment_list: list[int]  # the same segments as Python ints, for APIs that take ints


def make_dataset(seed: int = 20_261_127) -> Dataset:
    # Random bytes: nothing on the way (page cache, SQLite, LMDB) can compress them.
    rng = random.Random(seed)
    payloads = [rng.randbytes(PAYLOAD_SIZE) for _ in range(BATCH)]
    keys = [f"user-{rng.randrange(10**9)}" for _ in range(BATCH)]
    segment_list = [rng.randrange(SEGMENT_COUNT) for _ in range(BATCH)]
    segments = np.array(segment_list, dtype=np.uint8)
    return Dataset(payloads, keys, segments, segment_list)


@dataclass(frozen=True)
class Timing:
    n: int  # messages per repeat
    seconds: list[float]  # one per timed repeat, warm-up excluded

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rate(self) -> float:
        return self.n / self.median


def time_runs(work: Callable[[], int], repeats: int) -> Timing:
    """Run `work` once untimed, then `repeats` times; `work` returns its message count.

    The cyclic GC is off inside a repeat (as timeit does) so that a collection
    triggered by one system's allocations is not billed to another.
    """
    expected = work()
    seconds: list[float] = []
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter_ns()
            n = work()
            stop = time.perf_counter_ns()
        finally:
            gc.enable()
        if n != expected:
            raise RuntimeError(f"work did {n} messages in a repeat, {expected} in warm-up")
        seconds.append((stop - start) / 1e9)
    return Timing(expected, seconds)


@dataclass
class Row:
    name: str
    system: str
    unit: str  # "msg/s" | "us" | "MB"
    value: float
    n: int
    note: str = ""
    extra: dict[str, JsonValue] = field(default_factory=dict)

    @classmethod
    def throughput(cls, name: str, system: str, timing: Timing, note: str = "") -> Row:
        extra: dict[str, JsonValue] = {
            "repeats": len(timing.seconds),
            "median_s": timing.median,
            "min_s": min(timing.seconds),
            "max_s": max(timing.seconds),
        }
        return cls(name, system, "msg/s", timing.rate, timing.n, note, extra)

    def to_json(self) -> dict[str, JsonValue]:
        out: dict[str, JsonValue] = {
            "name": self.name,
            "system": self.system,
            "unit": self.unit,
            "value": float(self.value),
            "n": int(self.n),
        }
        if self.note:
            out["note"] = self.note
        out.update(self.extra)
        return out


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    context: list[str] = field(default_factory=list)  # versions, load: what to read them against

    def skip(self, what: str, reason: str) -> None:
        message = f"{what}: {reason}"
        self.skipped.append(message)
        print(f"skipped {message}", file=sys.stderr, flush=True)

    @contextmanager
    def attempt(self, what: str) -> Iterator[None]:
        """Record a failing measurement as skipped, with its reason, and go on."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - a broken system must not stop the rest
            traceback.print_exc(file=sys.stderr)
            self.skip(what, f"{type(exc).__name__}: {exc}")

    def get(self, name: str, system: str) -> Row | None:
        for row in self.rows:
            if row.name == name and row.system == system:
                return row
        return None


@contextmanager
def scratch_dir(base: str | None, label: str) -> Iterator[Path]:
    """A fresh directory on the real disk (not tmpfs), removed afterwards."""
    # Flush what earlier workloads left dirty, so their writeback is not billed here.
    os.sync()
    path = Path(tempfile.mkdtemp(prefix=f"fluxbench-{label}-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed (as `fluxcore serve` does): the asyncio clients' fastest setting."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop
