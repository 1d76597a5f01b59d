"""The embedded log: a directory of memory-mapped segment files with one writer and any number
of readers, in this process or others.

`Log` is a thin typed layer over the compiled core (`fluxcore._ext._log.LogCore`), which owns
the hot paths (append, append a batch, read a batch). This module owns what happens rarely:
opening and recovery, the writer's lock, rolling to a new segment file, retention, and handing
a dirty log of the ``interval`` policy to the process's sync scheduler (fluxcore/sync_scheduler.py).
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import logging
import math
import operator
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Literal

from fluxcore._ext._log import (
    Batch,
    LogCore,
    SegmentFile,
    max_payload_for,
    segment_file_create,
    segment_file_open,
)
from fluxcore.errors import (
    CorruptLogError,
    LogClosedError,
    LogError,
    LogFullError,
    LogLockedError,
)
from fluxcore.sync_scheduler import scheduler

__all__ = ["Batch", "FsyncPolicy", "Log"]

FsyncPolicy = Literal["never", "interval", "always"]
_FSYNC_MODES: dict[str, int] = {"never": 0, "interval": 1, "always": 2}
_SUFFIX = ".seg"
_TMP_SUFFIX = ".tmp"
_LOCK_NAME = "LOCK"
_NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
# Synced records further than this behind the newest stay out of the page cache: readers near
# the end of the log read from memory, a replay from further back reads from disk.
DEFAULT_PAGE_CACHE_BYTES = 1 << 30
# A new log's first segment file; each next one is FILE_GROWTH times larger, up to
# segment_file_size: a log holding a few records takes 1 MiB of disk, not a whole segment file,
# and a log written fast reaches full-size files after a few rolls (each roll costs a directory
# sync).
FIRST_FILE_SIZE = 1 << 20
FILE_GROWTH = 4

logger = logging.getLogger("fluxcore.log")


def _fsync_dir(path: str) -> None:
    # A new or removed directory entry is durable only once the directory itself is synced.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_name(first_index: int) -> str:
    return f"{first_index:020d}{_SUFFIX}"


def _int_arg(value: object, name: str, lo: int, hi: int = (1 << 64) - 1) -> int:
    """`value` as an int in lo..hi: TypeError unless it is an integer (an int or anything with
    __index__, never a float, str or bool), ValueError naming `name` if out of range."""
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    number = operator.index(value)  # type: ignore[arg-type]
    if not lo <= number <= hi:
        raise ValueError(f"{name} must be in {lo}..{hi}, not {number}")
    return number


def _timeout_arg(timeout: float | None) -> float | None:
    """None (no limit) or a number of seconds >= 0; NaN and negative times are refused."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds or None, not "
                        f"{type(timeout).__name__}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds or None, not {timeout}")
    return float(timeout)


class Log(LogCore):
    """An append-only log of records (bytes), each with a 64-bit index and a segment (0-127).

    Open it as a writer (the default: one per directory, enforced with a lock) or with
    ``readonly=True`` as a reader, which can tail a live writer in another process::

        with Log("/data/events") as log:
            index = log.append(b"hello", key="user-1")
            batch = log.read(after=0)
            for index, payload in batch:
                ...

    ``owner_lock=PATH`` hands the writer lock on to whoever holds an flock on PATH: the log
    stays that process's while it is closed, and other writers are refused (LogLockedError)
    until it lets PATH go. The server uses it to close idle logs and reopen them on use.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        readonly: bool = False,
        segment_file_size: int = 64 * 1024 * 1024,
        fsync: FsyncPolicy = "interval",
        fsync_interval_ms: int = 100,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        repair: bool = False,
        max_mapped_files: int = 64,
        page_cache_bytes: int | None = DEFAULT_PAGE_CACHE_BYTES,
        owner_lock: str | os.PathLike[str] | None = None,
    ) -> None:
        if not isinstance(fsync, str):
            raise TypeError(f"fsync must be a str, not {type(fsync).__name__}")
        if fsync not in _FSYNC_MODES:
            raise ValueError(f"fsync must be one of {sorted(_FSYNC_MODES)}, not {fsync!r}")
        if not isinstance(segment_file_size, int) or isinstance(segment_file_size, bool):
            raise TypeError("segment_file_size must be an int")
        if segment_file_size < 1 << 20 or segment_file_size % 4096 or segment_file_size >= 1 << 32:
            raise ValueError(
                "segment_file_size must be a multiple of 4096, at least 1 MiB and under 4 GiB"
            )
        _int_arg(fsync_interval_ms, "fsync_interval_ms", 1)
        _int_arg(max_mapped_files, "max_mapped_files", 2)
        for name, value in (
            ("retention_ms", retention_ms),
            ("retention_bytes", retention_bytes),
            ("page_cache_bytes", page_cache_bytes),
        ):
            if value is not None:
                _int_arg(value, name, 1)
        self._configure(readonly, segment_file_size, _FSYNC_MODES[fsync], page_cache_bytes or 0)
        self.path = os.fspath(path)
        self.fsync: FsyncPolicy = fsync
        self.fsync_interval_ms = fsync_interval_ms
        self.retention_ms = retention_ms
        self.retention_bytes = retention_bytes
        self.recovery: dict[str, int] = {"truncated_bytes": 0, "dropped_records": 0}
        # Sealed files a killed writer left unsynced, synced by this open (a writer's).
        self.synced_on_open = 0
        self.max_mapped_files = max_mapped_files
        self.owner_lock = None if owner_lock is None else os.path.abspath(owner_lock)
        self.page_cache_bytes = page_cache_bytes
        self._mapped: deque[int] = deque()  # first indexes of mapped files, oldest mapping first
        self._spares: list[SegmentFile] = []  # files ready to roll into (the append lock guards)
        self._last_file_size = 0  # size of the newest segment file (0: none yet)
        self._lock_fd = -1
        self._scheduled = False  # registered with the sync scheduler (the interval policy)
        self._sync_error: BaseException | None = None
        self._open_lock = threading.Lock()  # guards _refresh/_map against concurrent readers
        self._close_lock = threading.Lock()  # one close() at a time; the others wait for it
        if not os.path.isdir(self.path):
            if not create or readonly:
                raise FileNotFoundError(errno.ENOENT, "no log directory", self.path)
            os.makedirs(self.path, exist_ok=True)
        try:
            if readonly:
                self._refresh()
            else:
                self._open_writer(repair)
        except BaseException:
            self._release()
            raise

    # -- opening -----------------------------------------------------------------------------

    def _list_files(self) -> list[int]:
        starts = []
        for name in os.listdir(self.path):
            if name.endswith(_SUFFIX) and name[: -len(_SUFFIX)].isdigit():
                starts.append(int(name[: -len(_SUFFIX)]))
        starts.sort()
        return starts

    def _lock_writer(self) -> None:
        """Takes the log's writer lock: an flock on its LOCK file, held while the log is open.

        A writer opened with `owner_lock` also writes that path into LOCK, and the log stays
        its owner's after it closes: while some process holds an flock on the owner lock, only
        writers with the same `owner_lock` may open the log. The owner is looked at before
        LOCK is locked, so a writer refused for it never holds LOCK and never makes the owner's
        own reopening fail; and again after, in case the owner changed meanwhile."""
        lock_path = os.path.join(self.path, _LOCK_NAME)
        self._lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._check_owner()
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LogLockedError(f"{self.path}: another writer has this log open") from None
        owner = self._check_owner()
        wanted = self.owner_lock or ""
        if owner != wanted:
            os.ftruncate(self._lock_fd, 0)
            os.pwrite(self._lock_fd, wanted.encode(), 0)

    def _check_owner(self) -> str:
        """The owner lock named in LOCK ("" if none); LogLockedError if it is not ours and a
        process holds it."""
        owner = os.pread(self._lock_fd, 4096, 0).decode(errors="replace")
        if not owner or owner == self.owner_lock:
            return owner
        try:
            fd = os.open(owner, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return owner  # gone: its owner is gone too
        try:
            # A shared probe: two writers probing at once do not see each other as the owner.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LogLockedError(
                f"{self.path}: kept by the process that holds {owner} (a running server?); "
                "open it readonly, or stop that process first") from None
        finally:
            os.close(fd)  # also drops the probe's lock
        return owner

    def _open_writer(self, repair: bool) -> None:
        self._lock_writer()
        for name in os.listdir(self.path):
            if name.endswith(_TMP_SUFFIX):  # spare files of a writer that did not close
                os.unlink(os.path.join(self.path, name))
        starts = self._list_files()
        self._starts = starts
        self._files = [None] * len(starts)
        damaged_at = self._drop_files_after_damage() if repair else 0
        last_index = 0
        while self._starts:
            pos = len(self._starts) - 1
            previous = self._last_index_before(pos)
            f = self._open_file(self._starts[pos], writable=True)
            self._files[pos] = f
            report = f.recover(repair, previous, damaged_at)
            damaged_at = 0
            self.recovery["truncated_bytes"] += report["truncated_bytes"]
            self.recovery["dropped_records"] += report["dropped_records"]
            if report["cut_short"] or report["dropped_records"] or report["truncated_bytes"]:
                logger.warning(
                    "%s: %s; cut at the last intact record: %d records (%d bytes) dropped",
                    f.path,
                    f"the file was cut short to {report['cut_short']} bytes"
                    if report["cut_short"] else "damaged or torn tail",
                    report["dropped_records"],
                    report["truncated_bytes"],
                )
            if report["records"] == 0 and not f.sealed_end:
                # A file is named by its first record: an empty one (a crash right after a
                # roll, or a file whose every record was damaged, as reported above) goes,
                # so the next append names its file anew.
                self._files.pop()
                self._starts.pop()
                os.unlink(f.path)
                _fsync_dir(self.path)
                continue
            last_index = f.last_index or previous
            self._last_file_size = f.file_size
            if not f.sealed_end:
                self._active = f
            break
        if self.fsync != "never" and self._starts:
            self.synced_on_open = self._sync_sealed_files(len(self._starts) - 1)
        self._set_last_index(last_index)  # also the durable index: true once the above ran
        if self.fsync == "interval":
            scheduler.register()
            self._scheduled = True

    def _drop_files_after_damage(self) -> int:
        """repair=True: finds the first damaged record of the whole log (opening verifies only
        past the last checkpoint; bytes can rot below it) and removes every file after the
        damaged one, counting their records in `recovery`, so that the damaged file's recovery
        cuts the log there. Returns the damaged record's offset in what is now the last file
        (0: no damage found)."""
        damaged_pos, damaged_at = -1, 0
        for pos, first in enumerate(self._starts):
            try:
                reader = self._open_file(first, writable=False)
            except CorruptLogError:
                return 0  # a damaged header: the writer's open below reports (or repairs) it
            try:
                reader.verify_all()
            except CorruptLogError as exc:
                if exc.offset < reader.data_offset:
                    return 0  # not a record: as above
                damaged_pos, damaged_at = pos, exc.offset
                break
        if damaged_pos < 0:
            return 0
        for later in range(len(self._starts) - 1, damaged_pos, -1):
            try:
                dropped = self._open_file(self._starts[later], writable=False)
            except CorruptLogError as exc:  # its header is damaged too: it goes uncounted
                logger.warning("%s: not counted in recovery: %s", self.path, exc)
            else:
                self.recovery["dropped_records"] += dropped.published_records
                self.recovery["truncated_bytes"] += dropped.committed_end - dropped.data_offset
                del dropped  # unmapped before its file goes
            os.unlink(os.path.join(self.path, _file_name(self._starts[later])))
            logger.warning("%s: removed %s, after the damaged record at offset %d of %s",
                           self.path, _file_name(self._starts[later]), damaged_at,
                           _file_name(self._starts[damaged_pos]))
            del self._starts[later], self._files[later]
        _fsync_dir(self.path)
        return int(damaged_at)

    def _sync_sealed_files(self, pos: int) -> int:
        """Syncs the files before position `pos` that a writer sealed but did not sync (it was
        killed first): their records are in the page cache, not yet on disk, and the log is
        about to report them durable. Recovery syncs the last file itself. Files are synced in
        order, so the walk back ends at the first one whose checkpoint reaches its seal.
        Returns how many files were synced."""
        synced = 0
        for earlier in range(pos - 1, -1, -1):
            try:
                reader = self._map(earlier)
            except CorruptLogError:
                break  # e.g. cut short: reading it reports the damage; it is not extended here
            if reader is None:
                continue
            sealed = reader.sealed_end
            if not sealed or reader.checkpoint_offset >= sealed:
                break
            f = self._open_file(self._starts[earlier], writable=True)
            _end, last = f.end_and_last_index()
            f.flush(sealed, last)
            f.flush_header()
            synced += 1
        return synced

    def _last_index_before(self, pos: int) -> int:
        """Index of the last record in the files before position `pos` (0 if none)."""
        for earlier in range(pos - 1, -1, -1):
            f = self._map(earlier)
            if f is not None:
                _end, last = f.end_and_last_index()
                if last:
                    return int(last)
        return 0

    def _open_file(self, first_index: int, writable: bool) -> SegmentFile:
        file_path = os.path.join(self.path, _file_name(first_index))
        fd = os.open(file_path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
        # The SegmentFile owns fd from here on, even when it raises.
        return segment_file_open(file_path, fd, writable, first_index)

    def _map(self, pos: int) -> SegmentFile | None:
        """Maps the file at list position `pos` on first use (read-only); None if it is gone."""
        with self._open_lock:
            self._check_open()
            f = self._files[pos]
            if f is None:
                try:
                    f = self._open_file(self._starts[pos], writable=False)
                except FileNotFoundError:
                    return None
                self._files[pos] = f
                self._remember_mapping(self._starts[pos])
            return f

    def _remember_mapping(self, first_index: int) -> None:
        """Keeps at most `max_mapped_files` files mapped: the oldest mapping is dropped from the
        list (it is unmapped once no Batch or view uses it) and mapped again when read."""
        self._mapped.append(first_index)
        while len(self._mapped) > self.max_mapped_files:
            oldest = self._mapped.popleft()
            pos = bisect.bisect_left(self._starts, oldest)
            if (pos < len(self._starts) and self._starts[pos] == oldest
                    and self._files[pos] is not self._active):
                self._files[pos] = None

    def _refresh(self) -> None:
        """A reader re-lists the directory: new files from the writer, old ones retired."""
        with self._open_lock:
            self._check_open()
            known = dict(zip(self._starts, self._files, strict=True))
            starts = self._list_files()
            self._files = [known.get(s) for s in starts]
            self._starts = starts

    # -- rolling and retention ---------------------------------------------------------------

    def _next_file_size(self, previous: int, payload: int) -> int:
        """Size of the file rolled into after one of `previous` bytes (0: the first file)
        for a record of `payload` bytes: FILE_GROWTH times the previous (at least
        FIRST_FILE_SIZE), more if the record needs it, at most segment_file_size. Each file's
        header records its own size."""
        full = self.segment_file_size
        size = min(max(FILE_GROWTH * previous, FIRST_FILE_SIZE), full)
        while size < full and max_payload_for(size) < payload:
            size = min(FILE_GROWTH * size, full)
        return size

    def _new_spare(self, size: int) -> SegmentFile:
        """A new file of `size` bytes under a temporary name, its blocks reserved
        (posix_fallocate): appends into it cannot fail for lack of space. Nothing is
        pre-faulted: batches reach the file through pwrite, which needs no page faults."""
        name = f".spare-{os.getpid()}-{time.monotonic_ns()}{_TMP_SUFFIX}"
        spare_path = os.path.join(self.path, name)
        fd = os.open(spare_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            try:
                os.posix_fallocate(fd, 0, size)
            except BaseException:
                os.close(fd)
                raise
            # From here on the SegmentFile owns fd, even when it raises.
            return segment_file_create(spare_path, fd, size)
        except OSError as exc:
            os.unlink(spare_path)
            if exc.errno in _NO_SPACE:
                raise LogFullError(
                    exc.errno,
                    f"{self.path}: no space for a new {size}-byte segment "
                    f"file ({os.strerror(exc.errno)}); nothing was written",
                ) from exc
            raise
        except BaseException:
            os.unlink(spare_path)
            raise

    def _reserve(self, sizes: list[int]) -> None:
        """Makes sure spare files of these sizes exist, in this order: a batch that will roll
        into new files gets them before it writes anything, so that a full disk fails it
        whole. Spares of other sizes (left by a batch that failed) are replaced."""
        for k, size in enumerate(sizes):
            if k < len(self._spares) and self._spares[k].file_size != size:
                stale, self._spares = self._spares[k:], self._spares[:k]
                for spare in stale:
                    os.unlink(spare.path)
            if k == len(self._spares):
                self._spares.append(self._new_spare(size))

    def _roll(self, first_index: int, payload: int) -> None:
        """Seals the active file and makes a spare the new active file, named `first_index`,
        big enough for a record of `payload` bytes. Called by the core with the append lock
        held."""
        self._reserve([self._next_file_size(self._last_file_size, payload)])
        spare = self._spares.pop(0)
        old = self._active
        if old is not None:
            old.seal()
            self._unsynced.append(old)
        spare.set_first_index(first_index)
        final = os.path.join(self.path, _file_name(first_index))
        os.rename(spare.path, final)
        spare.path = final
        _fsync_dir(self.path)
        self._files.append(spare)
        self._starts.append(first_index)
        self._active = spare
        self._last_file_size = spare.file_size
        with self._open_lock:
            self._remember_mapping(first_index)
        self._apply_retention()

    def _apply_retention(self) -> None:
        if self.retention_bytes is None and self.retention_ms is None:
            return
        removed = False
        cutoff = (time.time_ns() // 1_000_000 - (self.retention_ms or 0)) << 16
        total = self._disk_bytes() if self.retention_bytes is not None else 0
        while len(self._starts) > 1:  # never the active (last) file
            too_big = self.retention_bytes is not None and total > self.retention_bytes
            # Every record of file 0 is older than the first record of file 1.
            too_old = self.retention_ms is not None and self._starts[1] <= cutoff
            if not (too_big or too_old):
                break
            total -= self._file_bytes(0)
            f = self._files.pop(0)
            first = self._starts.pop(0)
            if f is not None and f in self._unsynced:
                self._unsynced.remove(f)
            if f is not None and f in self._cached:
                self._cached.remove(f)
            # The mapping of a removed file lives on while a Batch or view refers to it.
            os.unlink(os.path.join(self.path, _file_name(first)))
            removed = True
        if removed:
            _fsync_dir(self.path)

    def _file_bytes(self, pos: int) -> int:
        """Size of the file at list position `pos` (0 if it is gone)."""
        f = self._files[pos]
        if f is not None:
            return int(f.file_size)
        try:
            return os.stat(os.path.join(self.path, _file_name(self._starts[pos]))).st_size
        except FileNotFoundError:
            return 0

    def _disk_bytes(self) -> int:
        return sum(self._file_bytes(pos) for pos in range(len(self._starts)))

    # -- syncing -----------------------------------------------------------------------------

    def _schedule_sync(self) -> None:
        """Called by the core after the first append since the last sync (``interval``)."""
        scheduler.schedule(self, self.fsync_interval_ms / 1000.0)

    def _background_sync(self) -> None:
        """The scheduler's sync of this log, `fsync_interval_ms` after it became dirty."""
        try:
            self._sync_to(0)
        except OSError as exc:  # sync() re-raises it to the application; tried again later
            logger.error("background sync of %s failed: %s", self.path, exc)
            self._sync_error = exc
            if not self.closed:
                self._schedule_sync()

    def sync(self) -> int:
        """Writes every appended record to disk; returns the durable index."""
        self._check_open()
        if self.readonly:
            raise LogError("the log was opened readonly; only a writer syncs")
        error, self._sync_error = self._sync_error, None
        if error is not None:
            raise error
        return int(self._sync_to(0))

    # -- reading helpers ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise LogClosedError("the log is closed")

    def find(self, index: int) -> int | None:
        """The first index >= `index` present in the log, or None."""
        self._check_open()
        index = _int_arg(index, "index", -(1 << 64), 1 << 64)  # at or below 0: the first
        after = max(index, 1) - 1
        while True:
            batch = self.read(after, max_count=1)
            if len(batch):
                return int(batch.indexes[0])
            if batch.next_after == after:
                return None
            after = batch.next_after

    def find_time(self, ms: int) -> int | None:
        """Index of the first record with a timestamp (index >> 16) at or after `ms`, or None."""
        ms = _int_arg(ms, "ms", -(1 << 64), (1 << 48) - 1)  # before 1970: the first record
        return self.find(max(ms, 0) << 16)

    def wait(self, after: int, timeout: float | None = 1.0) -> bool:
        """Waits until a record with index > `after` exists; False at the timeout.

        Works across processes by polling the mapped files: spins briefly, then sleeps in steps
        growing to 1 ms, so a new record is seen within about a millisecond.
        """
        self._check_open()
        after = _int_arg(after, "after", 0)
        timeout = _timeout_arg(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0
        while True:
            self._check_open()  # close() from another thread ends the wait
            if self._has_after(after):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(0.001, delay * 2 + 0.00005)

    def tail(
        self,
        after: int = 0,
        *,
        timeout: float | None = None,
        max_count: int = 10_000,
        verify: bool = True,
    ) -> Iterator[Batch]:
        """Yields non-empty batches as records arrive, until `timeout` passes with none.
        The arguments are checked here, before the first batch is asked for."""
        self._check_open()
        after = _int_arg(after, "after", 0)
        timeout = _timeout_arg(timeout)
        _int_arg(max_count, "max_count", 1, (1 << 63) - 1)
        return self._tail(after, timeout, max_count, verify)

    def _tail(
        self, after: int, timeout: float | None, max_count: int, verify: bool
    ) -> Iterator[Batch]:
        while True:
            batch = self.read(after, max_count=max_count, verify=verify)
            after = batch.next_after
            if len(batch):
                yield batch
            elif not self.wait(after, timeout):
                return

    def verify(self) -> int:
        """CRC-checks every record of every file; returns the count of records."""
        self._check_open()
        if self.readonly:
            self._refresh()
        total = 0
        for first in list(self._starts):
            self._check_open()
            pos = bisect.bisect_left(self._starts, first)
            if pos == len(self._starts) or self._starts[pos] != first:
                continue  # removed by retention meanwhile
            f = self._map(pos)
            if f is not None:
                total += int(f.verify_all())
        return total

    @property
    def first_index(self) -> int:
        """Index of the oldest record still kept (0 when the log is empty)."""
        if self.readonly:
            self._refresh()
        return int(self._starts[0]) if self._starts else 0

    @property
    def last_index(self) -> int:
        """Index of the newest record (0 when the log is empty)."""
        if not self.readonly:
            return int(super().last_index)
        self._refresh()
        for pos in range(len(self._starts) - 1, -1, -1):
            f = self._map(pos)
            if f is not None:
                _end, last = f.end_and_last_index()
                if last:
                    return int(last)
        return 0

    def stats(self) -> dict[str, Any]:
        """Counters and sizes of the log."""
        self._check_open()
        files = [f for f in self._files if f is not None]
        return {
            "path": self.path,
            "readonly": self.readonly,
            "fsync": self.fsync,
            "files": len(self._starts),
            "bytes": self._disk_bytes(),
            "segment_file_size": self.segment_file_size,
            "first_index": self.first_index,
            "last_index": self.last_index,
            "durable_index": int(self.durable_index),
            "appended": int(self.appended),
            "views_alive": sum(f.exports for f in files),
            "spare_files": len(self._spares),
            "max_payload": int(max_payload_for(self.segment_file_size)),
        }

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Syncs (unless the policy is ``never``), leaves the sync schedule and releases the
        lock. Batches read before stay valid: their files stay mapped while they live."""
        with self._close_lock:
            if self.closed:
                return
            # Calls from here on raise LogClosedError; appends in flight finish first (the
            # final sync covers them), reads in flight finish or raise.
            self._mark_closed()
            try:
                if not self.readonly:
                    self._quiesce()
                    if self.fsync != "never":
                        self._sync_to(0)
                        if self._active is not None:
                            self._active.flush_header()
            finally:
                self._release()

    def _release(self) -> None:
        if self._scheduled:
            self._scheduled = False
            scheduler.unregister(self)
        spares, self._spares = self._spares, []
        for spare in spares:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spare.path)
        with self._open_lock:
            self._mark_closed()
            self._active = None
            self._files = []
            self._starts = []
            self._unsynced = []
            self._cached = []
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = -1

    def __enter__(self) -> Log:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "reader" if self.readonly else "writer"
        state = "closed" if self.closed else f"last_index={self.last_index}"
        return f"<Log {self.path!r} {mode} {state}>"
