"""The machine's own limits, counted in fluxcore records: memory copy, page faults, disk."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np

from bench.common import MIB, RECORD_SIZE, JsonValue, Row, Sizes, progress, time_runs

PAGE_SIZE = mmap.PAGESIZE


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


def page_fault_row(sizes: Sizes) -> Row:
    """First touch of new anonymous memory, in microseconds per 4 KiB page.

    Every byte a log appends lands on a page the kernel has to hand out first. On
    a VM whose host backs guest memory lazily (and takes freed memory back, as
    virtio-balloon free page reporting does) that costs far more than the copy,
    and it caps any append path at RECORDS_PER_PAGE / fault time.
    """
    progress("machine: page_fault")
    size = sizes.memcpy_bytes
    pages = size // PAGE_SIZE
    held: list[mmap.mmap] = []  # kept mapped, so no repeat reuses a page freed by the last

    def work() -> int:
        region = mmap.mmap(-1, size)
        held.append(region)
        np.frombuffer(region, dtype=np.uint8)[::PAGE_SIZE] = 1
        return pages

    try:
        timing = time_runs(work, max(sizes.repeats, 5))
    finally:
        for region in held:
            region.close()
    fault_us = timing.median / pages * 1e6
    limit = PAGE_SIZE // RECORD_SIZE / fault_us
    note = f"first touch of a new {size >> 20} MiB mmap; caps appends at {limit:.1f}M msg/s"
    extra: dict[str, JsonValue] = {
        "repeats": len(timing.seconds),
        "min_us": min(timing.seconds) / pages * 1e6,
        "max_us": max(timing.seconds) / pages * 1e6,
        "append_limit_msg_s": limit * 1e6,
    }
    return Row("page_fault", "machine", "us", fault_us, pages, note, extra)


def disk_write_row(sizes: Sizes, directory: Path) -> Row:
    """Sequential write() of a new file then one fdatasync, as msg/s of RECORD_SIZE bytes.

    What a durable log sustains once the page cache no longer absorbs the
    writes: past a few hundred MB, fsync="interval" appends run at this speed.
    """
    progress("machine: disk_write")
    chunk = np.random.default_rng(1).bytes(MIB)
    chunks = sizes.disk_bytes // MIB
    path = directory / "disk_write.bin"

    def work() -> int:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for _ in range(chunks):
                os.write(fd, chunk)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        path.unlink()  # a few ms for an extent-mapped file; keeps the disk free
        return chunks * MIB // RECORD_SIZE

    timing = time_runs(work, sizes.repeats)
    note = f"write() {sizes.disk_bytes >> 20} MiB in 1 MiB chunks + fdatasync"
    row = Row.throughput("disk_write", "machine", timing, note)
    row.extra["MB/s"] = sizes.disk_bytes / timing.median / 1e6
    return row
