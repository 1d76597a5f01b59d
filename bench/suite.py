"""Which workloads run on which systems, and in what order."""

from __future__ import annotations

import importlib
import os
import platform
import sqlite3
import tempfile
from pathlib import Path

import numpy as np

from bench.common import Dataset, Results, Sizes, make_dataset, progress, scratch_dir
from bench.embedded import FluxcoreStore, fluxcore_router, fluxcore_unavailable
from bench.machine import disk_write_row, memcpy_row, page_fault_row
from bench.peers import LmdbStore, SqliteStore, xxhash_router, xxhash_unavailable
from bench.rss import rss_row
from bench.workloads import LogStore, run_log_store, run_router

LOG_STORES: tuple[type[LogStore], ...] = (FluxcoreStore, SqliteStore, LmdbStore)


def run_embedded(sizes: Sizes, base: str | None) -> Results:
    """Every system of the embedded suite, one after the other, each in fresh directories."""
    base = base or tempfile.gettempdir()
    progress(f"embedded suite: scratch directories under {base}, {sizes}")
    results = Results()
    results.context.append(_machine())
    results.context.append(f"load average at start: {_load()}")
    data = make_dataset()
    for store_type in LOG_STORES:
        run_log_store(store_type, data, sizes, base, results)
    _run_routing(data, sizes, results)
    with results.attempt("memcpy on machine"):
        results.rows.append(memcpy_row(sizes))
    with results.attempt("page_fault on machine"):
        results.rows.append(page_fault_row(sizes))
    with results.attempt("disk_write on machine"), scratch_dir(base, "machine-disk") as path:
        results.rows.append(disk_write_row(sizes, path))
    reason = fluxcore_unavailable()
    if reason is not None:
        results.skip("rss_outside_maps", reason)
    else:
        with results.attempt("rss_outside_maps"), scratch_dir(base, "fluxcore-rss") as path:
            results.rows.append(rss_row(sizes, Path(path)))
    results.context.append(f"load average at end: {_load()}")
    return results


def _load() -> str:
    # Other processes on a 2-core machine move every row: say how busy it was.
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def _machine() -> str:
    versions = [f"python {platform.python_version()}", f"numpy {np.__version__}"]
    versions.append(f"sqlite {sqlite3.sqlite_version}")
    for module in ("fluxcore", "lmdb", "xxhash"):
        try:
            found = importlib.import_module(module)
            version = getattr(found, "__version__", getattr(found, "VERSION", "?"))
            versions.append(f"{module} {version}")
        except ImportError:
            versions.append(f"{module} -")
    return f"{os.cpu_count()} CPUs, {platform.platform()}; " + ", ".join(versions)


def _run_routing(data: Dataset, sizes: Sizes, results: Results) -> None:
    reason = fluxcore_unavailable()
    if reason is not None:
        results.skip("route_batch on fluxcore", reason)
        ours = None
    else:
        ours = run_router("fluxcore", fluxcore_router, data, sizes, results)
    reason = xxhash_unavailable()
    if reason is not None:
        results.skip("route_batch on python-xxhash", reason)
        return
    note = "[xxh64_intdigest(k.encode()) % 128 for k in keys]"
    theirs = run_router("python-xxhash", xxhash_router, data, sizes, results, note)
    # Routing is only worth timing if both agree on every key.
    if ours is not None and theirs is not None and list(ours) != list(theirs):
        wrong = sum(a != b for a, b in zip(ours, theirs, strict=True))
        results.skip("route check", f"segments_of disagrees with xxhash on {wrong} keys")
