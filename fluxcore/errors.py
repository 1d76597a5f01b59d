"""The exceptions of fluxcore. A leaf module: the compiled core raises these too."""

from __future__ import annotations

__all__ = [
    "CorruptLogError",
    "LogClosedError",
    "LogError",
    "LogFullError",
    "LogLockedError",
    "RecordTooLargeError",
]


class LogError(Exception):
    """Base class of every error the log raises."""


class LogClosedError(LogError):
    """The log was used after close()."""


class LogLockedError(LogError):
    """Another writer (in this process or another) holds the log's lock."""


class RecordTooLargeError(LogError, ValueError):
    """A payload does not fit in one segment file."""


class LogFullError(LogError, OSError):
    """No space for a new segment file: the disk is full, or a file size limit was hit.

    Nothing of the failed append was written; the log stays readable and appendable once
    space returns. ``errno`` holds the operating system's error number.
    """


class CorruptLogError(LogError):
    """A damaged record or file: names the file and the byte offset."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"{path}: offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason

    def __reduce__(self) -> tuple[type[CorruptLogError], tuple[str, int, str]]:
        return (type(self), (self.path, self.offset, self.reason))
