"""The peers a user would pick instead of fluxcore, each used the way its docs advise."""

from __future__ import annotations

import itertools
import sqlite3
import struct
import time
from pathlib import Path
from typing import Any

from bench.common import BATCH, Dataset
from bench.workloads import LogStore, Router

# fluxcore's fsync="interval" default; LMDB gets the same group-commit cadence.
SYNC_INTERVAL_NS = 100_000_000
LMDB_MAP_SIZE = 64 * 2**30  # address space only; the file grows with the data


class SqliteStore(LogStore):
    """One table keyed by rowid; the rowid plays fluxcore's index."""

    system = "sqlite"
    setup = "WAL, synchronous=NORMAL: fsync at checkpoints only; 1 txn per 10,000 msgs"
    _INSERT = "INSERT INTO log (segment, payload) VALUES (?, ?)"
    _PAGE = "SELECT id, segment, payload FROM log WHERE id > ? ORDER BY id LIMIT ?"

    @classmethod
    def unavailable(cls) -> str | None:
        return None  # stdlib

    def __init__(self, directory: Path) -> None:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one pair per batch.
        self._db = sqlite3.connect(directory / "log.db", isolation_level=None)
        self._cursor = self._db.cursor()
        self._cursor.execute("PRAGMA journal_mode=WAL")
        self._cursor.execute("PRAGMA synchronous=NORMAL")
        self._cursor.execute(
            "CREATE TABLE IF NOT EXISTS log"
            " (id INTEGER PRIMARY KEY, segment INTEGER NOT NULL, payload BLOB NOT NULL)"
        )

    def append_each(self, data: Dataset) -> None:
        # One execute() per message, but one transaction per 10,000 of them: a
        # transaction per message would time SQLite's commit, not its insert path.
        cursor = self._cursor
        execute = cursor.execute
        sql = self._INSERT
        execute("BEGIN")
        for payload, segment in zip(data.payloads, data.segment_list, strict=True):
            execute(sql, (segment, payload))
        execute("COMMIT")

    def append_batch(self, data: Dataset) -> None:
        cursor = self._cursor
        cursor.execute("BEGIN")
        cursor.executemany(self._INSERT, zip(data.segment_list, data.payloads, strict=True))
        cursor.execute("COMMIT")

    def read_batch(self) -> int:
        execute = self._cursor.execute
        count = after = 0
        while True:
            rows = execute(self._PAGE, (after, BATCH)).fetchall()
            if not rows:
                return count
            count += len(rows)
            after = rows[-1][0]

    def read_iterate(self) -> tuple[int, int]:
        execute = self._cursor.execute
        count = touched = after = 0
        while True:
            page = 0
            for rowid, _segment, payload in execute(self._PAGE, (after, BATCH)):
                touched += len(payload)
                after = rowid
                page += 1
            if not page:
                return count, touched
            count += page

    def close(self) -> None:
        self._cursor.close()
        self._db.close()


class LmdbStore(LogStore):
    """Keys are an 8-byte big-endian counter (LMDB's natural sorted append); values the payload.

    LMDB keeps no segment per record: the value would need a per-message concat.
    """

    system = "lmdb"
    setup = (
        "sync=False, metasync=False + env.sync() every 100 ms at commit"
        " (= fsync interval); 1 write txn per 10,000 msgs"
    )
    _KEY = struct.Struct(">Q")

    @classmethod
    def unavailable(cls) -> str | None:
        try:
            import lmdb  # noqa: F401
        except ImportError as exc:
            return f"py-lmdb not installed ({exc})"
        return None

    def __init__(self, directory: Path) -> None:
        import lmdb

        self._env: Any = lmdb.open(
            str(directory), map_size=LMDB_MAP_SIZE, sync=False, metasync=False
        )
        with self._env.begin() as txn:
            last = txn.cursor()
            self._next_key = self._KEY.unpack(last.key())[0] + 1 if last.last() else 1
        self._synced_at = time.perf_counter_ns()

    def _sync_if_due(self) -> None:
        # Group commit like fluxcore's interval policy: committed transactions
        # reach the disk within ~100 ms, without an fsync per transaction.
        now = time.perf_counter_ns()
        if now - self._synced_at >= SYNC_INTERVAL_NS:
            self._env.sync(True)
            self._synced_at = now

    def append_each(self, data: Dataset) -> None:
        key = self._next_key
        pack = self._KEY.pack
        with self._env.begin(write=True) as txn:
            put = txn.put
            for payload in data.payloads:
                put(pack(key), payload, append=True)
                key += 1
        self._next_key = key
        self._sync_if_due()

    def append_batch(self, data: Dataset) -> None:
        first = self._next_key
        keys = map(self._KEY.pack, range(first, first + len(data.payloads)))
        with self._env.begin(write=True) as txn:
            txn.cursor().putmulti(zip(keys, data.payloads, strict=True), append=True)
        self._next_key = first + len(data.payloads)
        self._sync_if_due()

    def read_batch(self) -> int:
        # One read txn for the whole walk, pages of BATCH taken off one cursor:
        # cheaper for LMDB than re-seeking a new cursor per page.
        count = 0
        with self._env.begin() as txn:
            records = txn.cursor().iternext()
            while page := list(itertools.islice(records, BATCH)):
                count += len(page)
        return count

    def read_iterate(self) -> tuple[int, int]:
        count = touched = 0
        with self._env.begin() as txn:
            records = txn.cursor().iternext()
            while True:
                page = 0
                for _key, value in itertools.islice(records, BATCH):
                    touched += len(value)
                    page += 1
                if not page:
                    return count, touched
                count += page

    def close(self) -> None:
        self._env.sync(True)
        self._env.close()


def xxhash_unavailable() -> str | None:
    try:
        import xxhash  # noqa: F401
    except ImportError as exc:
        return f"xxhash not installed ({exc})"
    return None


def xxhash_router() -> Router:
    """What routing costs without fluxcore: the xxhash package in a Python loop."""
    from xxhash import xxh64_intdigest

    def route(keys: list[str]) -> list[int]:
        return [xxh64_intdigest(key.encode()) % 128 for key in keys]

    return route
