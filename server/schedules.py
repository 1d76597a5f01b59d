"""Scheduled messages of a project: kept in SQLite until their deadline, then appended to the
project's SCHEDULE log, where consumers read them like any other message.

A schedule has an id (unique per project), a deadline (epoch milliseconds; one in the past
counts as "now") and a message (the bytes a client sent, stored unchanged) with its segment.
Scheduling an id again replaces the schedule, unless `if_absent`; cancelling removes it. A timer
on the event loop fires at the earliest deadline: the due schedules go into the log, one append
per deadline, with the deadline as index (`deadline << 16`, counting up for schedules due in the
same millisecond, or the log's next index if it already holds a later one), so a handler reads
its deadline from the index to the millisecond. A fired schedule stays findable (its message is
then read from the log) until it is cancelled, replaced, or the log's retention drops the
message, as in the original. A crash between the append and marking the schedules fired
delivers them again after the restart: at least once, never lost.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from fluxcore.errors import LogError
from fluxcore.log import Log

from .store import connect, transaction

__all__ = ["SCHEDULES_FILE", "Schedule", "ScheduleStore"]

SCHEDULES_FILE = "schedules.sqlite"

logger = logging.getLogger("fluxcore.server")

FIRE_LIMIT = 10_000  # schedules appended per firing; more due ones follow at once
DEADLINES_PER_FIRING = 64  # appends per firing (one per deadline; each synced under `always`)
RETRY_S = 1.0  # after a failed append (a full disk, say), try again this much later


class Schedule(NamedTuple):
    schedule_id: str
    deadline: int  # epoch ms
    if_absent: bool


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class ScheduleStore:
    def __init__(self, path: str, *, durable: bool, log: Callable[[], Log],
                 appended: Callable[[], None]) -> None:
        """`log` gives the SCHEDULE log; `appended` is called after each append to it."""
        self._db = connect(path, durable=durable)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS schedules (id TEXT PRIMARY KEY,"
            " deadline INTEGER NOT NULL, segment INTEGER NOT NULL, message BLOB NOT NULL)"
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(schedules)")}
        if "fired" not in columns:  # a store from before fired schedules were kept
            self._db.execute("ALTER TABLE schedules ADD COLUMN fired INTEGER")
        # `fired`: NULL while pending; once fired, the index of its message in the log (and
        # `message` is emptied: the log has it).
        self._db.execute("DROP INDEX IF EXISTS schedules_by_deadline")
        self._db.execute("CREATE INDEX IF NOT EXISTS pending_by_deadline"
                         " ON schedules (deadline, id) WHERE fired IS NULL")
        self._db.execute("CREATE INDEX IF NOT EXISTS fired_by_index"
                         " ON schedules (fired) WHERE fired IS NOT NULL")
        self._log = log
        self._appended = appended
        self._pruned_below = 0  # fired schedules below this index are gone from the store
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
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
        it returns; says for each whether it was stored (False: `if_absent` and a schedule
        with the id exists, pending or fired)."""
        stored: list[bool] = []
        data = memoryview(buffer)
        now = now_ms()
        due: list[int] = []
        with transaction(self._db):
            for i, item in enumerate(schedules):
                deadline = max(item.deadline, now)  # as the original: the past is "now"
                row = (item.schedule_id, deadline, int(segments[i]),
                       bytes(data[int(offsets[i]) : int(offsets[i + 1])]))
                verb = "INSERT OR IGNORE" if item.if_absent else "INSERT OR REPLACE"
                cursor = self._db.execute(
                    f"{verb} INTO schedules (id, deadline, segment, message, fired)"
                    " VALUES (?, ?, ?, ?, NULL)", row)
                stored.append(cursor.rowcount == 1)
                if cursor.rowcount == 1:
                    due.append(deadline)
        if due:
            self._arm(min(due))
        return stored

    def cancel(self, schedule_id: str) -> bool:
        """Removes a schedule, pending or fired; True if it was pending (it will not fire)."""
        row = self._db.execute(
            "SELECT fired FROM schedules WHERE id = ?", (schedule_id,)).fetchone()
        if row is None:
            return False
        self._db.execute("DELETE FROM schedules WHERE id = ?", (schedule_id,))
        return row[0] is None

    def get(self, schedule_id: str) -> tuple[int, int, bytes, int | None] | None:
        """(deadline, segment, message, index in the log once fired) of a schedule, pending
        or fired, or None."""
        row = self._db.execute(
            "SELECT deadline, segment, message, fired FROM schedules WHERE id = ?",
            (schedule_id,)).fetchone()
        if row is None:
            return None
        deadline, segment, message, fired = int(row[0]), int(row[1]), bytes(row[2]), row[3]
        if fired is not None:
            found = self._logged(int(fired))
            if found is None:  # the log's retention dropped it: the schedule is gone too
                self._db.execute("DELETE FROM schedules WHERE id = ? AND fired = ?",
                                 (schedule_id, fired))
                return None
            message = found
        return deadline, segment, message, None if fired is None else int(fired)

    def _logged(self, index: int) -> bytes | None:
        batch = self._log().read(index - 1, max_count=1)
        if len(batch) and int(batch.indexes[0]) == index:
            return batch.payloads()[0]
        return None

    def pending(self) -> int:
        return int(self._db.execute(
            "SELECT COUNT(*) FROM schedules WHERE fired IS NULL").fetchone()[0])

    # -- firing ------------------------------------------------------------------------------

    def start(self) -> None:
        """Sets the timer for the earliest pending schedule (after a restart)."""
        self._arm(self._earliest())

    def _earliest(self) -> int | None:
        row = self._db.execute(
            "SELECT MIN(deadline) FROM schedules WHERE fired IS NULL").fetchone()
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
            "SELECT id, deadline, segment, message FROM schedules"
            " WHERE fired IS NULL AND deadline <= ? ORDER BY deadline, id LIMIT ?",
            (now, FIRE_LIMIT)).fetchall()
        fired: list[tuple[int, str]] = []  # (index, id)
        groups = itertools.groupby(rows, key=lambda row: int(row[1]))
        try:
            log = self._log()
            for deadline, group in itertools.islice(groups, DEADLINES_PER_FIRING):
                due = list(group)
                messages = [row[3] for row in due]
                offsets = np.zeros(len(due) + 1, dtype=np.int64)
                np.cumsum([len(m) for m in messages], out=offsets[1:])
                segments = np.array([row[2] for row in due], dtype=np.uint8)
                # The deadline is the index; if the log already holds a later one (a
                # schedule fired late), the next one.
                first = max(deadline << 16, log.last_index + 1)
                indexes = log.append_buffer(b"".join(messages), offsets, segments=segments,
                                            first_index=first)
                fired.extend(zip(indexes.tolist(), (row[0] for row in due), strict=True))
        except (OSError, LogError, ValueError) as exc:  # kept: they fire once the log takes them
            logger.error("could not append %d due schedules: %s", len(rows) - len(fired), exc)
            self._mark_fired(fired)
            self._arm(now + int(RETRY_S * 1000))
            return
        self._mark_fired(fired)
        if len(fired) < len(rows) or len(rows) == FIRE_LIMIT:
            # more are due: go on in the next turn of the loop, after other work
            self._timer = asyncio.get_running_loop().call_soon(self._fire)
            self._timer_at = now
        else:
            self._arm(self._earliest())

    def _mark_fired(self, fired: list[tuple[int, str]]) -> None:
        if not fired:
            return
        with transaction(self._db):
            self._db.executemany("UPDATE schedules SET fired = ?, message = x'' WHERE id = ?",
                                 fired)
            kept_from = self._log().first_index
            if kept_from > self._pruned_below:  # retention dropped older messages
                self._db.execute("DELETE FROM schedules WHERE fired IS NOT NULL AND fired < ?",
                                 (kept_from,))
                self._pruned_below = kept_from
        self._appended()

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._db.close()
