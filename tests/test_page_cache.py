"""The writer keeps at most `page_cache_bytes` of synced records in the page cache.

Residency is read with mincore(2) on a mapping of our own, which reports what the page cache
holds for the file whoever mapped it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import struct
from pathlib import Path

import pytest

import fluxcore

MiB = 1 << 20
PAGE = mmap.PAGESIZE
PAYLOAD = 1000

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]


def resident_bytes(path: Path, start: int, stop: int) -> int:
    """Bytes of pages in [start, stop) of `path` that the page cache holds now."""
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap failed")
        try:
            pages = (size + PAGE - 1) // PAGE
            vec = ctypes.create_string_buffer(pages)
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
            flags = vec.raw[start // PAGE : (stop + PAGE - 1) // PAGE]
            return PAGE * sum(b & 1 for b in flags)
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def segment_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.seg"))


def records_resident(path: Path) -> int:
    """Bytes of the record region of a segment file in the page cache (not its header and
    sparse index, which the writer keeps mapped)."""
    with open(path, "rb") as f:
        (data_offset,) = struct.unpack_from("<Q", f.read(40), 32)
    return resident_bytes(path, data_offset, os.path.getsize(path))


def read_payloads(log: fluxcore.Log) -> list[bytes]:
    out: list[bytes] = []
    after = 0
    while True:
        batch = log.read(after, max_count=100_000, max_bytes=1 << 40)
        if len(batch) == 0:
            return out
        out.extend(bytes(p) for _, p in batch)
        after = batch.next_after


def fill(log: fluxcore.Log, megabytes: int) -> list[bytes]:
    payloads = [os.urandom(PAYLOAD) for _ in range(megabytes * MiB // PAYLOAD)]
    log.append_batch(payloads)
    return payloads


@pytest.mark.parametrize("fsync", ["interval", "always"])
def test_synced_records_beyond_the_window_leave_the_cache(tmp_path, fsync):
    path = tmp_path / "log"
    with fluxcore.Log(path, fsync=fsync, segment_file_size=MiB, page_cache_bytes=2 * MiB) as log:
        payloads = fill(log, 12)
        log.sync()
        files = segment_files(path)
        assert len(files) >= 12
        old = sum(records_resident(f) for f in files[:-4])
        new = sum(records_resident(f) for f in files[-2:])
        # Everything more than the window (plus the step dropped at once) behind is gone ...
        assert old == 0
        # ... the newest records stay cached.
        assert new > MiB

        # Records dropped from the cache read back from disk, byte for byte.
        assert read_payloads(log) == payloads
    with fluxcore.Log(path, readonly=True) as reader:
        assert read_payloads(reader) == payloads


def test_no_window_leaves_the_cache_to_the_kernel(tmp_path):
    path = tmp_path / "log"
    with fluxcore.Log(path, segment_file_size=MiB, page_cache_bytes=None) as log:
        fill(log, 12)
        log.sync()
        files = segment_files(path)
        # Nothing under memory pressure here: the kernel keeps what was just written.
        assert sum(records_resident(f) for f in files[:-4]) > 4 * MiB


def test_views_over_dropped_pages_stay_valid(tmp_path):
    path = tmp_path / "log"
    with fluxcore.Log(path, segment_file_size=MiB, page_cache_bytes=MiB) as log:
        first = fill(log, 1)
        log.sync()
        batch = log.read(0, max_count=len(first), max_bytes=1 << 40)
        data = batch.data  # a view of the mapped file
        offset, length = int(batch.offsets[0]), int(batch.lengths[0])
        fill(log, 8)
        log.sync()
        assert records_resident(segment_files(path)[0]) == 0
        # The view's pages were taken out of the writer's mapping; reading faults them back.
        assert bytes(data[offset : offset + length]) == first[0]
        assert len(batch) > 900  # the first file's records, read before they were dropped
        assert [bytes(p) for _, p in batch] == first[: len(batch)]


def test_retention_and_window_together(tmp_path):
    # Retention removes files the window still lists; no file outlives its removal.
    path = tmp_path / "log"
    with fluxcore.Log(
        path, segment_file_size=MiB, page_cache_bytes=4 * MiB, retention_bytes=2 * MiB
    ) as log:
        for _ in range(6):
            fill(log, 2)
            log.sync()
        assert len(segment_files(path)) <= 3
        assert len(log._cached) <= 3
