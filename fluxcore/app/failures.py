"""Logging handler failures without flooding the log: a handler that fails on every message of
a busy log would write a line per message. Per handler, the first failure is logged in full
(with its traceback); later ones are counted, and at most once every `interval_s` one line
says how many failed since and what the last one was."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["FailureLog"]


class _Tally:
    __slots__ = ("last", "since", "suppressed")

    def __init__(self, now: float) -> None:
        self.since = now  # when the last line about this handler was written
        self.suppressed = 0
        self.last = ""


class FailureLog:
    """The failure lines of one app's handlers (thread-safe: trackers are threads or tasks)."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self._lock = threading.Lock()
        self._tallies: dict[str, _Tally] = {}

    def failed(self, handler: str, what: str, exc: BaseException) -> None:
        """`handler` failed on `what` (a message's description) with `exc`."""
        now = self.clock()
        with self._lock:
            tally = self._tallies.get(handler)
            if tally is None:
                self._tallies[handler] = _Tally(now)
                first = True
            else:
                first = False
                tally.suppressed += 1
                tally.last = f"{what}: {type(exc).__name__}: {exc}"
                if now - tally.since < self.interval_s:
                    return
                count, last, tally.suppressed, tally.since = tally.suppressed, tally.last, 0, now
        if first:
            self.logger.error("handler %s failed on %s (further failures of it are counted and "
                              "logged every %gs)", handler, what, self.interval_s, exc_info=exc)
        else:
            self.logger.error("handler %s failed %d more times since the last line about it; "
                              "the last on %s", handler, count, last)

    def flush(self) -> None:
        """Logs the counts not logged yet (when the app stops)."""
        with self._lock:
            pending = [(name, t.suppressed, t.last) for name, t in self._tallies.items()
                       if t.suppressed]
            for tally in self._tallies.values():
                tally.suppressed = 0
                tally.since = self.clock()
        for name, count, last in pending:
            self.logger.error("handler %s failed %d more times; the last on %s", name, count,
                              last)
