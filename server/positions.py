"""Consumer positions: the last index each consumer processed, per segment, per log. Kept in
memory and in SQLite (WAL) in the project's directory, so they survive a restart.

Writes to SQLite are batched: `flush()` (every 100 ms by the server, and on close) writes what
changed since the last one. A crash loses at most that much progress, which only means some
messages are delivered again (at least once), never that one is skipped."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

__all__ = ["UNSET", "PositionStore"]

SEGMENTS = 128
UNSET = np.uint64(2**64 - 1)  # a segment the consumer never stored a position for
_ONE = np.uint64(1)

Positions = npt.NDArray[np.uint64]


class PositionStore:
    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS positions ("
            " log TEXT NOT NULL, consumer TEXT NOT NULL, segments BLOB NOT NULL,"
            " PRIMARY KEY (log, consumer))"
        )
        self._cache: dict[tuple[str, str], Positions] = {}
        self._dirty: set[tuple[str, str]] = set()
        self.on_write: Callable[[str, str], None] | None = None  # (log, consumer) moved

    def get(self, log: str, consumer: str) -> Positions:
        """The 128 positions (UNSET where none was stored). Do not modify the array: a store
        replaces it, so the array a reader holds stays what it was (reads.py relies on it)."""
        key = (log, consumer)
        found = self._cache.get(key)
        if found is None:
            row = self._db.execute(
                "SELECT segments FROM positions WHERE log = ? AND consumer = ?", key
            ).fetchone()
            if row is None:
                found = np.full(SEGMENTS, UNSET, dtype=np.uint64)
            else:
                found = np.frombuffer(row[0], dtype="<u8").astype(np.uint64)
            self._cache[key] = found
        return found

    def store(self, log: str, consumer: str, start: int, end: int, index: int) -> None:
        """Moves segments [start, end) forward to `index` (below UNSET); never back."""
        current = self.get(log, consumer)
        # One past each position, so that UNSET wraps to 0 and sorts before every index.
        lifted = current[start:end] + _ONE
        after = np.uint64(index + 1)
        if start >= end or lifted.min() >= after:
            return  # every segment is at `index` or past it already
        updated = current.copy()
        updated[start:end] = np.maximum(lifted, after) - _ONE
        self._write(log, consumer, updated)

    def reset(self, log: str, consumer: str, index: int) -> None:
        """Sets every segment to `index`: a rewind (replay) or a skip."""
        self._write(log, consumer, np.full(SEGMENTS, np.uint64(index), dtype=np.uint64))

    def _write(self, log: str, consumer: str, positions: Positions) -> None:
        self._cache[(log, consumer)] = positions
        self._dirty.add((log, consumer))
        if self.on_write is not None:
            self.on_write(log, consumer)

    def flush(self) -> None:
        """Writes the positions changed since the last flush, in one transaction."""
        if not self._dirty:
            return
        rows = [(log, consumer, self._cache[(log, consumer)].astype("<u8").tobytes())
                for log, consumer in self._dirty]
        self._dirty.clear()
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO positions (log, consumer, segments) VALUES (?, ?, ?)"
                " ON CONFLICT (log, consumer) DO UPDATE SET segments = excluded.segments", rows)

    def close(self) -> None:
        self.flush()
        self._db.close()


def merged_ranges(positions: Positions) -> list[object]:
    """The wire form of a position: [[start, end], index, ...], adjacent equal segments merged,
    segments without a position left out."""
    out: list[object] = []
    start = 0
    for seg in range(1, SEGMENTS + 1):
        if seg == SEGMENTS or positions[seg] != positions[start]:
            if positions[start] != UNSET:
                out.extend(([start, seg], int(positions[start])))
            start = seg
    return out
