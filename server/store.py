"""SQLite as the server's stores use it (schedules, values): one file per store in the
project's directory, in WAL mode, written from the event loop."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Checkpointer", "connect", "transaction"]

logger = logging.getLogger("fluxcore.server")


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


class Checkpointer:
    """Copies a store's WAL into its database file from a thread of its own, on a connection
    of its own, every `every_s` seconds, so that no commit on the event loop does it (the
    store's own connection then checkpoints only past a large WAL, as a backstop). A
    PASSIVE checkpoint waits for nobody: the store reads and writes on meanwhile. Its syncs
    are those of the store (`durable`). Stopped by close()."""

    def __init__(self, path: str, *, durable: bool, every_s: float = 0.5) -> None:
        self._db = connect(path, durable=durable)
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fluxcore-checkpoint",
                                        daemon=True)
        try:
            self._thread.start()
        except RuntimeError:  # no thread to be had: nothing of this stays open
            self._db.close()
            raise

    def _run(self) -> None:
        try:
            while not self._stop.wait(self._every_s):
                try:
                    self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.OperationalError as exc:  # a full disk: the WAL keeps it all
                    logger.error("checkpointing %s failed, tried again later: %s",
                                 self._db, exc)
        finally:
            self._db.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
