"""The logs a server keeps open: at most `max_open_logs`, least recently used closed first.

An open log holds descriptors (its lock, its files) and mappings; a server with thousands of
topics keeps only the busy ones open. A closed log is reopened by its project on its next use,
so nothing holds a Log object for longer than it uses it: callers look logs up through
`Project.log()` each time. Logs closed here stay the server's: the server holds an flock on
its data directory and opens every log with it as `owner_lock` (fluxcore/log.py), so no other
writer can take a log while it is closed.

Closing waits for the end of the event loop's current callback: a Log that `Project.log()`
returned stays open until the code that asked for it returns to the loop. Code that keeps a log
across an `await` looks it up again after (or, like a durable ack, learns from the log that a
close synced it).

A close syncs the log (unless its policy is ``never``): on a slow disk that takes long, so it
runs on a thread of its own, never on the event loop. The log leaves its project first, on the
loop, so nothing uses it while it closes; a log asked for again meanwhile is taken back if its
close has not begun, else the project waits for that close before it opens the log again (the
old writer holds the log's lock until its close ends: one writer at a time).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

from fluxcore.errors import LogError
from fluxcore.log import Log

if TYPE_CHECKING:
    from .project import Project

__all__ = ["OpenLogs", "default_max_open_logs"]

logger = logging.getLogger("fluxcore.server")

# Each open log maps at least one file; the kernel allows 65,530 mappings per process
# (vm.max_map_count), and mapped views of older files take more.
_MAX_AUTO = 8192
_MIN_AUTO = 16
_DESCRIPTOR_SHARE = 8  # automatic: open logs may take about 1/4 of the descriptors (2 each)


def default_max_open_logs(descriptor_threshold: int) -> int:
    """`max_open_logs` when the configuration says 0 (automatic): from the open-file limit."""
    return max(_MIN_AUTO, min(descriptor_threshold // _DESCRIPTOR_SHARE, _MAX_AUTO))


class OpenLogs:
    """Every open log of the server's projects, least recently used first, and the idle ones
    being closed. The owner of the thread that closes them: `shutdown()` waits for them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._order: OrderedDict[Log, tuple[Project, str]] = OrderedDict()
        self._closing: asyncio.Handle | None = None
        # Closes in flight, by (project, log name); the lock guards it and `closed` against
        # the closing thread.
        self._pending: dict[tuple[Project, str], tuple[Log, concurrent.futures.Future[None]]] = {}
        self._lock = threading.Lock()
        self._closer: concurrent.futures.ThreadPoolExecutor | None = None
        self.closed = 0  # logs closed for being idle, since the start (for stats and tests)

    def __len__(self) -> int:
        return len(self._order)

    def used(self, log: Log) -> None:
        """`log` was looked up: it is now the most recently used."""
        self._order.move_to_end(log)

    def opened(self, log: Log, project: Project, name: str) -> None:
        self._order[log] = (project, name)
        if len(self._order) > self.limit and self._closing is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop (a project used on its own): close now
                self.close_idle(in_background=False)
                return
            self._closing = loop.call_soon(self.close_idle)

    def forget(self, log: Log) -> None:
        """`log` was closed by its project (the project closes)."""
        self._order.pop(log, None)

    def close_idle(self, in_background: bool = True) -> None:
        """Closes the least recently used logs until at most `limit` are open: each leaves its
        project now, and is closed (synced) on the closing thread, or here if not
        `in_background`."""
        self._closing = None
        while len(self._order) > self.limit:
            log, (project, name) = self._order.popitem(last=False)
            project.detach_log(name, log)
            if not in_background:
                self._close(project, name, log)
                continue
            if self._closer is None:
                self._closer = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="fluxcore-close")
            with self._lock:
                future = self._closer.submit(self._close, project, name, log)
                self._pending[(project, name)] = (log, future)

    def reclaim(self, project: Project, name: str) -> Log | None:
        """Before `project` opens its log `name`: the log itself if it was left to close and
        its close has not begun (it is open, and the project's again); else None, once no
        close of that log is in flight any more (this waits for one that runs)."""
        with self._lock:
            found = self._pending.get((project, name))
            if found is not None and found[1].cancel():
                del self._pending[(project, name)]
                return found[0]
        if found is not None:
            found[1].result()  # _close reports its own errors
        return None

    def _close(self, project: Project, name: str, log: Log) -> None:
        try:
            log.close()
        except (OSError, LogError) as exc:  # its final sync failed: said, and it is closed
            logger.error("closing idle log %s of %s: %s", name, project.name, exc)
        finally:
            with self._lock:
                found = self._pending.get((project, name))
                if found is not None and found[0] is log:
                    del self._pending[(project, name)]
                self.closed += 1

    def shutdown(self) -> None:
        """Waits for the closes in flight and ends the closing thread."""
        if self._closer is not None:
            self._closer.shutdown(wait=True)
            self._closer = None
