"""SQLite as the server's stores use it (schedules, values): one file per store in the
project's directory, in WAL mode, written from the event loop."""

from __future__ import annotations

import sqlite3

__all__ = ["connect"]


def connect(path: str, *, durable: bool) -> sqlite3.Connection:
    """A connection in autocommit mode: a statement outside BEGIN commits on its own.

    A WAL commit survives a crash of the process; `durable` (the `always` fsync policy) also
    syncs it, so that it survives a power loss."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
    return db
