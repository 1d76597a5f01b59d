"""Open-file descriptors: the server raises its soft limit to the hard one at start and keeps a
reserve below the limit, so that a health check, an error answer or a refusal always has a
descriptor, however many connections and logs there are.

The kernel hands out the lowest free descriptor, so the number a new descriptor gets says how
full the table is: if it is at or above `threshold` (the limit minus the reserve), every one
below was taken when it was made. New connections and new logs are refused there, with a clear
error; the reserve above is only used for answers that close right after (and for the files an
open log adds as it grows).
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import time

__all__ = ["Descriptors", "OutOfDescriptors", "raise_open_file_limit"]

logger = logging.getLogger("fluxcore.server")

_RESERVE_MIN = 32
_RESERVE_MAX = 1024
_BUILTIN_SHARE = 2  # built-in logs may also use 1/2 of the reserve: EVENT goes on after topics
_LOG_EVERY_S = 10.0


class OutOfDescriptors(OSError):
    """A new connection or log refused: the server is at its open-file limit."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EMFILE, message)

    def __str__(self) -> str:
        return str(self.strerror)


def _system_ceiling() -> int:
    try:
        with open("/proc/sys/fs/nr_open", encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20


def raise_open_file_limit() -> tuple[int, int, int]:
    """Raises the soft RLIMIT_NOFILE to the hard limit; returns (soft before, soft, hard)."""
    before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _system_ceiling() if hard == resource.RLIM_INFINITY else hard
    if before != resource.RLIM_INFINITY and before < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open-file limit from %d to %d: %s",
                           before, target, exc)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return before, soft, hard


class Descriptors:
    """The descriptor table of this process: how full it is, and whether there is room."""

    def __init__(self) -> None:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.limit = soft if soft != resource.RLIM_INFINITY else _system_ceiling()
        self.reserve = min(max(_RESERVE_MIN, self.limit // 16), _RESERVE_MAX)
        self.threshold = self.limit - self.reserve
        self._probe = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self.refused = 0  # connections and logs refused, since the start
        self.refused_open = 0  # refused connections not closed yet
        self._reported_at = 0.0
        self._reported = 0

    def lowest_free(self) -> int:
        """The number the next descriptor would get (the limit if there is none)."""
        try:
            fd = os.dup(self._probe)
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                return self.limit
            raise
        os.close(fd)
        return fd

    def connection_allowed(self, fd: int) -> bool:
        """Whether a connection that got descriptor `fd` may stay."""
        return fd < self.threshold

    def hold_refused(self) -> bool:
        """A connection in the reserve waits for its refusal (or health answer); False if a
        quarter of the reserve is taken by such already: close it at once."""
        if self.refused_open >= self.reserve // 4:
            self.refuse("connection closed unanswered")
            return False
        self.refused_open += 1
        return True

    def release_refused(self) -> None:
        self.refused_open -= 1

    def check_log(self, name: str, builtin: bool) -> None:
        """Raises OutOfDescriptors unless a new log may open now."""
        threshold = self.threshold + (self.reserve // _BUILTIN_SHARE if builtin else 0)
        if self.lowest_free() >= threshold:
            raise self.refuse(f"log {name!r} not opened")

    def refuse(self, what: str) -> OutOfDescriptors:
        """The error for something refused; a line in the server's log (at most every 10 s,
        with the count since the last one)."""
        self.refused += 1
        message = (f"{what}: the server is at its limit of open files ({self.limit}, "
                   f"{self.reserve} kept for health checks and errors)")
        now = time.monotonic()
        if now - self._reported_at >= _LOG_EVERY_S:
            logger.error("%s; %d refused since the last report", message,
                         self.refused - self._reported)
            self._reported_at, self._reported = now, self.refused
        return OutOfDescriptors(message)

    def close(self) -> None:
        os.close(self._probe)
