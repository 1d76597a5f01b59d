"""Scheduled messages of a project: kept in SQLite until their deadline, then appended to the
project's SCHEDULE log, where consumers read them like any other message.

A schedule has an id (unique per project), a deadline (epoch milliseconds) and a message (the
bytes a client sent, stored unchanged) with its segment. Scheduling an id again replaces the
pending schedule, unless `if_absent`; cancelling removes it. A timer on the event loop fires at
the earliest deadline: the due schedules go into the log in one append, then leave the table.
The log gives each the index of the moment it fired, so a handler reads its deadline from the
index (to the millisecond when the server was up at the deadline). A crash between the append
and the delete delivers those schedules again after the restart: at least once, never lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from fluxcore.errors import LogError

from .store import connect, transaction

__all__ = ["SCHEDULES_FILE", "Schedule", "ScheduleStore"]

SCHEDULES_FILE = "schedules.sqlite"

logger = logging.getLogger("fluxcore.server")

FIRE_LIMIT = 10_000  # schedules appended per firing; more due ones follow at once
RETRY_S = 1.0  # after a failed append (a full disk, say), try again this much later

# Appends the messages buffer[offsets[i]:offsets[i + 1]] with their segments to the log.
Deliver = Callable[[bytes, npt.NDArray[np.int64], npt.NDArray[np.uint8]], None]


class Schedule(NamedTuple):
    schedule_id: str
    deadline: int  # epoch ms
    if_absent: bool


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class ScheduleStore:
    def __init__(self, path: str, *, durable: bool, deliver: Deliver) -> None:
        self._db = connect(path, durable=durable)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS schedules (id TEXT PRIMARY KEY,"
            " deadline INTEGER NOT NULL, segment INTEGER NOT NULL, message BLOB NOT NULL)"
        )
        self._db.execute(
            "CREATE INDEX IF NOT EXISTS schedules_by_deadline ON schedules (deadline, id)"
        )
        self._deliver = deliver
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: int | None = None  # the deadline the timer is set for
        self._closed = False

    # -- requests ----------------------------------------------------------------------------

    def schedule(
        self,
        schedules: Sequence[Schedule],
        buffer: Any,
        offsets: npt.NDArray[np.int64],
        segments: npt.NDArray[np.uint8],
    ) -> list[bool]:
        """Stores schedule i with message buffer[offsets[i]:offsets[i + 1]], committed before
        it returns; says for each whether it was stored (False: `if_absent` and the id exists)."""
        stored: list[bool] = []
        data = memoryview(buffer)
        with transaction(self._db):
            for i, item in enumerate(schedules):
                row = (item.schedule_id, item.deadline, int(segments[i]),
                       bytes(data[int(offsets[i]) : int(offsets[i + 1])]))
                verb = "INSERT OR IGNORE" if item.if_absent else "INSERT OR REPLACE"
                cursor = self._db.execute(
                    f"{verb} INTO schedules (id, deadline, segment, message) VALUES (?, ?, ?, ?)",
                    row)
                stored.append(cursor.rowcount == 1)
        due = [s.deadline for s, ok in zip(schedules, stored, strict=True) if ok]
        if due:
            self._arm(min(due))
        return stored

    def cancel(self, schedule_id: str) -> bool:
        """Removes a pending schedule; False if there is none with this id (or it fired)."""
        cursor = self._db.execute("DELETE FROM schedules WHERE id = ?", (schedule_id,))
        return cursor.rowcount == 1

    def get(self, schedule_id: str) -> tuple[int, int, bytes] | None:
        """(deadline, segment, message) of a pending schedule, or None."""
        row = self._db.execute(
            "SELECT deadline, segment, message FROM schedules WHERE id = ?", (schedule_id,)
        ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]), bytes(row[2]))

    def pending(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM schedules").fetchone()[0])

    # -- firing ------------------------------------------------------------------------------

    def start(self) -> None:
        """Sets the timer for the earliest pending schedule (after a restart)."""
        self._arm(self._earliest())

    def _earliest(self) -> int | None:
        row = self._db.execute("SELECT MIN(deadline) FROM schedules").fetchone()
        return None if row[0] is None else int(row[0])

    def _arm(self, deadline: int | None) -> None:
        if deadline is None or self._closed:
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        # The loop's clock is monotonic; the deadline is wall-clock time. One millisecond more,
        # so that the timer does not fire just before the deadline's millisecond has begun.
        delay = max(0.0, (deadline + 1 - now_ms()) / 1000.0)
        self._timer = asyncio.get_running_loop().call_later(delay, self._fire)
        self._timer_at = deadline

    def _fire(self) -> None:
        self._timer = self._timer_at = None
        if self._closed:
            return
        now = now_ms()
        rows = self._db.execute(
            "SELECT id, segment, message FROM schedules WHERE deadline <= ?"
            " ORDER BY deadline, id LIMIT ?", (now, FIRE_LIMIT)
        ).fetchall()
        if rows:
            messages = [row[2] for row in rows]
            offsets = np.zeros(len(rows) + 1, dtype=np.int64)
            np.cumsum([len(m) for m in messages], out=offsets[1:])
            segments = np.array([row[1] for row in rows], dtype=np.uint8)
            try:
                self._deliver(b"".join(messages), offsets, segments)
            except (OSError, LogError) as exc:  # kept: they fire once the log takes them
                logger.error("could not append %d due schedules: %s", len(rows), exc)
                self._arm(now + int(RETRY_S * 1000))
                return
            with transaction(self._db):
                self._db.executemany(
                    "DELETE FROM schedules WHERE id = ? AND deadline <= ?",
                    [(row[0], now) for row in rows],
                )
        self._arm(self._earliest())

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._db.close()
