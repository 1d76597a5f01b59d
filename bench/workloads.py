"""The workloads, written once and run unchanged over every system.

A system plugs in as a `LogStore` (fluxcore, SQLite, LMDB) or a routing
function; this module decides what is timed, what is warm-up and what is
checked, so that every system is measured the same way.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from bench.common import (
    BATCH,
    PAYLOAD_SIZE,
    Dataset,
    Results,
    Row,
    Sizes,
    progress,
    scratch_dir,
    time_runs,
)

# Keys in, one segment per key out: a list of ints or a uint8 array.
Segments = Sequence[int] | npt.NDArray[np.uint8]
Router = Callable[[list[str]], Segments]


class LogStore(abc.ABC):
    """One open store in its own directory, as a user of that system would write it."""

    system: ClassVar[str]
    setup: ClassVar[str]  # durability and layout, printed as the note of every row

    @classmethod
    @abc.abstractmethod
    def unavailable(cls) -> str | None:
        """Why this system cannot run here, or None."""

    @abc.abstractmethod
    def __init__(self, directory: Path) -> None: ...

    @abc.abstractmethod
    def append_each(self, data: Dataset) -> None:
        """Append the BATCH messages of `data` with one API call per message."""

    @abc.abstractmethod
    def append_batch(self, data: Dataset) -> None:
        """Append the BATCH messages of `data` in one batch call."""

    @abc.abstractmethod
    def read_batch(self) -> int:
        """Read the whole store in pages of BATCH; return the message count."""

    @abc.abstractmethod
    def read_iterate(self) -> tuple[int, int]:
        """Like read_batch, touching every payload; return (messages, payload bytes)."""

    @abc.abstractmethod
    def close(self) -> None: ...


def _appender(append: Callable[[Dataset], None], data: Dataset, count: int) -> Callable[[], int]:
    calls = count // BATCH

    def work() -> int:
        for _ in range(calls):
            append(data)
        return calls * BATCH

    return work


def run_log_store(
    store_type: type[LogStore], data: Dataset, sizes: Sizes, base: str | None, results: Results
) -> None:
    """append_single, append_batch, read_batch, read_iterate for one system.

    Each workload gets a fresh directory. The appends keep growing one store
    across the warm-up and the repeats (steady state, file rolls included); the
    reads walk a store filled untimed with `sizes.read` messages and reopened.
    """
    system = store_type.system
    reason = store_type.unavailable()
    if reason is not None:
        results.skip(system, reason)
        return
    note = store_type.setup

    for name, count, method in (
        ("append_single", sizes.single, "append_each"),
        ("append_batch", sizes.batch, "append_batch"),
    ):
        with (
            results.attempt(f"{name} on {system}"),
            scratch_dir(base, f"{system}-{name}") as path,
        ):
            progress(f"{system}: {name}")
            store = store_type(path)
            try:
                work = _appender(getattr(store, method), data, count)
                timing = time_runs(work, sizes.repeats)
            finally:
                store.close()
            results.rows.append(Row.throughput(name, system, timing, note))

    with results.attempt(f"reads on {system}"), scratch_dir(base, f"{system}-read") as path:
        progress(f"{system}: fill {sizes.read} messages for the reads")
        store = store_type(path)
        try:
            _appender(store.append_batch, data, sizes.read)()
        finally:
            store.close()
        store = store_type(path)
        try:
            _run_reads(store, sizes, results, note)
        finally:
            store.close()


def _run_reads(store: LogStore, sizes: Sizes, results: Results, note: str) -> None:
    system = store.system

    def read_batch() -> int:
        return _checked(store.read_batch(), sizes.read, "read_batch")

    def read_iterate() -> int:
        count, touched = store.read_iterate()
        if touched != count * PAYLOAD_SIZE:
            raise RuntimeError(f"read_iterate touched {touched} bytes in {count} payloads")
        return _checked(count, sizes.read, "read_iterate")

    for name, work in (("read_batch", read_batch), ("read_iterate", read_iterate)):
        with results.attempt(f"{name} on {system}"):
            progress(f"{system}: {name}")
            results.rows.append(Row.throughput(name, system, time_runs(work, sizes.repeats), note))


def _checked(count: int, expected: int, name: str) -> int:
    if count != expected:
        raise RuntimeError(f"{name} returned {count} messages, the store holds {expected}")
    return count


def run_router(
    system: str,
    make_router: Callable[[], Router],
    data: Dataset,
    sizes: Sizes,
    results: Results,
    note: str = "",
) -> Segments | None:
    """route_batch: map BATCH string keys to segments per call; returns one call's answer."""
    with results.attempt(f"route_batch on {system}"):
        progress(f"{system}: route_batch")
        route = make_router()
        calls = sizes.route // BATCH

        def work() -> int:
            for _ in range(calls):
                route(data.keys)
            return calls * BATCH

        results.rows.append(
            Row.throughput("route_batch", system, time_runs(work, sizes.repeats), note)
        )
        return route(data.keys)
    return None
