"""SQLite as the server's stores use it (schedules, values): one file per store in the
project's directory, in WAL mode, written from the event loop."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["connect", "transaction"]


def connect(path: str, *, durable: bool) -> sqlite3.Connection:
    """A connection in autocommit mode: a statement outside BEGIN commits on its own.

    A WAL commit survives a crash of the process; `durable` (the `always` fsync policy) also
    syncs it, so that it survives a power loss."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
    return db


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """Everything inside commits together, or, if it raises, not at all."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
