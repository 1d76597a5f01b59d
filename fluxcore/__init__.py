"""fluxcore: the Flux Capacitor service, and the embedded memory-mapped log it stands on."""

from fluxcore._ext._log import crc32c_hardware, segment_of, segments_of
from fluxcore.errors import (
    CorruptLogError,
    LogClosedError,
    LogError,
    LogFullError,
    LogLockedError,
    RecordTooLargeError,
)
from fluxcore.log import Batch, FsyncPolicy, Log

__all__ = [
    "Batch",
    "CorruptLogError",
    "FsyncPolicy",
    "Log",
    "LogClosedError",
    "LogError",
    "LogFullError",
    "LogLockedError",
    "RecordTooLargeError",
    "crc32c_hardware",
    "segment_of",
    "segments_of",
]

__version__ = "0.1.0"
