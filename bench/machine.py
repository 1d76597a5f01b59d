"""The machine's own limit: a plain memory copy, counted in fluxcore records."""

from __future__ import annotations

import numpy as np

from bench.common import RECORD_SIZE, Row, Sizes, progress, time_runs


def memcpy_row(sizes: Sizes) -> Row:
    """numpy copy of a buffer far larger than the caches, as msg/s of RECORD_SIZE bytes.

    No log can append or read faster than it can copy its records once.
    """
    progress("machine: memcpy")
    source = np.full(sizes.memcpy_bytes, 0x5A, dtype=np.uint8)
    target = np.empty_like(source)  # first touched (page faults) by the untimed warm-up
    records = sizes.memcpy_bytes // RECORD_SIZE

    def work() -> int:
        np.copyto(target, source)
        return records

    timing = time_runs(work, max(sizes.repeats, 5))
    row = Row.throughput(
        "memcpy", "machine", timing, f"numpy copy of {sizes.memcpy_bytes >> 20} MiB"
    )
    row.extra["GB/s"] = sizes.memcpy_bytes / timing.median / 1e9
    row.extra["record_bytes"] = RECORD_SIZE
    return row
