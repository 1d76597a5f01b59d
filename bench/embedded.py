"""fluxcore, the system under test, plugged into the shared workloads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import BATCH, Dataset
from bench.workloads import LogStore, Router


def fluxcore_unavailable() -> str | None:
    try:
        import fluxcore

        fluxcore.Log  # noqa: B018 - a half-built package imports but lacks Log
    except (ImportError, AttributeError) as exc:
        return f"fluxcore not importable ({type(exc).__name__}: {exc})"
    return None


class FluxcoreStore(LogStore):
    system = "fluxcore"
    setup = (
        'Log(fsync="interval"): group fdatasync every 100 ms; synced records over 1 GiB'
        " behind the end leave the page cache"
    )

    @classmethod
    def unavailable(cls) -> str | None:
        return fluxcore_unavailable()

    def __init__(self, directory: Path) -> None:
        import fluxcore

        self._log: Any = fluxcore.Log(str(directory), fsync="interval")

    def append_each(self, data: Dataset) -> None:
        append = self._log.append
        for payload, segment in zip(data.payloads, data.segment_list, strict=True):
            append(payload, segment=segment)

    def append_batch(self, data: Dataset) -> None:
        self._log.append_batch(data.payloads, segments=data.segments)

    def read_batch(self) -> int:
        read = self._log.read
        count = after = 0
        while True:
            batch = read(after, max_count=BATCH)
            after, done = _advance(after, batch)
            if done:
                return count
            count += len(batch)

    def read_iterate(self) -> tuple[int, int]:
        read = self._log.read
        count = touched = after = 0
        while True:
            batch = read(after, max_count=BATCH)
            after, done = _advance(after, batch)
            if done:
                return count, touched
            for _index, payload in batch:
                touched += len(payload)
            count += len(batch)

    def close(self) -> None:
        self._log.close()


def _advance(after: int, batch: Any) -> tuple[int, bool]:
    """The next `after`, and whether the log is exhausted.

    An empty batch that still moves next_after forward (records filtered out, a
    file boundary) is not the end; a batch that does not move it is.
    """
    next_after = int(batch.next_after)
    if next_after <= after:
        if len(batch):
            raise RuntimeError(f"read(after={after}) returned records but next_after={next_after}")
        return after, True
    return next_after, False


def fluxcore_router() -> Router:
    from fluxcore import segments_of

    route: Router = segments_of
    return route
