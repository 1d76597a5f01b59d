"""One thread syncs every log of the process that has the ``interval`` policy.

A log is handed to the scheduler when it becomes dirty (its first append after a sync) and is
synced `fsync_interval_ms` later, with everything appended to it meanwhile (group commit). A log
nobody appends to is not in the schedule at all, so 1,000 idle logs cost no thread and no CPU.
The thread runs while logs with the ``interval`` policy are open and ends after the last one
closes; a process forked with open logs starts its own when its logs are next dirty.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from typing import Protocol

logger = logging.getLogger("fluxcore.log")


class SyncTarget(Protocol):
    """What the scheduler needs of a log."""

    @property
    def closed(self) -> bool: ...

    def _background_sync(self) -> None: ...


class SyncScheduler:
    """A heap of (due time, log); the owner of the one sync thread of the process."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, SyncTarget]] = []
        self._due: set[int] = set()  # id() of each log in the heap
        self._order = itertools.count()
        self._open = 0  # logs registered (open writers with the interval policy)
        self._thread: threading.Thread | None = None
        self.syncs = 0  # syncs done since the process started (for tests and stats)

    @property
    def open_logs(self) -> int:
        """Open logs with the ``interval`` policy in this process."""
        return self._open

    def register(self) -> None:
        """An open log with the ``interval`` policy; the thread runs while any is open."""
        with self._cond:
            self._open += 1

    def unregister(self, log: SyncTarget) -> None:
        """The log closed (its own close synced it): it leaves the schedule, and the thread
        ends once no log is left. Does not wait for the thread: close() stays prompt."""
        with self._cond:
            self._open -= 1
            if id(log) in self._due:
                self._due.discard(id(log))
                self._heap = [e for e in self._heap if e[2] is not log]
                heapq.heapify(self._heap)
            self._cond.notify()

    def schedule(self, log: SyncTarget, delay_s: float) -> None:
        """Syncs `log` in `delay_s` seconds, unless it is already due."""
        with self._cond:
            key = id(log)
            if key in self._due:
                return
            self._due.add(key)
            due = time.monotonic() + delay_s
            heapq.heappush(self._heap, (due, next(self._order), log))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="fluxcore-sync", daemon=True
                )
                self._thread.start()
            elif self._heap[0][2] is log:
                self._cond.notify()  # it is due before whatever the thread sleeps for

    def _next_due(self) -> SyncTarget | None:
        """Waits for the next log that is due; None when the thread should end."""
        with self._cond:
            while True:
                if not self._heap:
                    if self._open <= 0:
                        self._thread = None
                        return None
                    self._cond.wait()
                    continue
                due, _order, log = self._heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                self._due.discard(id(log))
                return log

    def _run(self) -> None:
        while (log := self._next_due()) is not None:
            if log.closed:
                continue  # close() synced it
            log._background_sync()
            self.syncs += 1

    def _after_fork(self) -> None:
        # The child has none of the parent's threads: a new schedule, started on demand.
        self._cond = threading.Condition(threading.Lock())
        self._heap = []
        self._due = set()
        self._thread = None


scheduler = SyncScheduler()
os.register_at_fork(after_in_child=scheduler._after_fork)
