"""The key-value store of a project: a value (bytes) per key, in SQLite in the project's
directory. A store is committed before it is answered; the same key again overwrites, unless
`if_absent`. The event-sourcing clients keep their snapshots here."""

from __future__ import annotations

from collections.abc import Sequence

from .store import connect, transaction

__all__ = ["VALUES_FILE", "ValueStore"]

VALUES_FILE = "values.sqlite"


class ValueStore:
    def __init__(self, path: str, *, durable: bool) -> None:
        self._db = connect(path, durable=durable)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL)")

    def store(self, pairs: Sequence[tuple[str, bytes]], if_absent: bool) -> list[bool]:
        """Stores every pair in one transaction; says for each whether it was stored."""
        verb = "INSERT OR IGNORE" if if_absent else "INSERT OR REPLACE"
        stored: list[bool] = []
        with transaction(self._db):
            for pair in pairs:
                cursor = self._db.execute(f"{verb} INTO kv (key, value) VALUES (?, ?)", pair)
                stored.append(cursor.rowcount == 1)
        return stored

    def get(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def delete(self, key: str) -> bool:
        return self._db.execute("DELETE FROM kv WHERE key = ?", (key,)).rowcount == 1

    def close(self) -> None:
        self._db.close()
