"""A tracker's READ: answered at once when messages are there, otherwise parked until the next
append to its log, the next change of its cluster, or its deadline (long poll).

A parked read is woken by a plain call from the code that appended or rebalanced, and answers
from there, in the same turn of the event loop: no task, no future, no extra loop iteration
between an append and the batch leaving for the tracker that waited for it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fluxcore._ext import _proto
from fluxcore.errors import CorruptLogError
from fluxcore.protocol import ErrorCode

from .positions import UNSET
from .tracking import EMPTY

logger = logging.getLogger("fluxcore.server")

if TYPE_CHECKING:
    from fluxcore.log import Log

    from .project import Project
    from .session import Session
    from .tracking import Cluster, Tracker

__all__ = ["PendingRead", "ReadParams", "TypeFilter"]

# How many all-filtered-out batches one attempt skips before it lets other work run.
_SCANS_PER_TURN = 16


@dataclass(frozen=True, slots=True)
class ReadParams:
    log_name: str
    consumer: str
    tracker_id: str
    max_size: int
    timeout: float
    type_filter: str | None
    filter_target: bool
    ignore_segment: bool
    client_index: bool
    last_index: int | None


class TypeFilter:
    """A payload-type regex applied a batch at a time: one regex test per distinct type (by its
    hash), then a vectorised mask."""

    def __init__(self, pattern: str) -> None:
        self.regex = re.compile(pattern)
        self.verdicts: dict[int, bool] = {}

    def mask(self, batch: Any) -> np.ndarray[Any, np.dtype[np.bool_]]:
        hashes = _proto.type_hashes(batch)
        unique, first = np.unique(hashes, return_index=True)
        accepted = []
        for value, position in zip(unique.tolist(), first.tolist(), strict=True):
            verdict = self.verdicts.get(value)
            if verdict is None:
                verdict = self.regex.fullmatch(_proto.record_type(batch, position)) is not None
                self.verdicts[value] = verdict
            if verdict:
                accepted.append(value)
        return np.isin(hashes, np.array(accepted, dtype=np.uint64))


class PendingRead:
    def __init__(self, session: Session, request_id: int, params: ReadParams, project: Project,
                 log: Log, cluster: Cluster, tracker: Tracker,
                 type_filter: TypeFilter | None) -> None:
        self.session = session
        self.request_id = request_id
        self.params = params
        self.project = project
        self.log = log
        self.cluster = cluster
        self.tracker = tracker
        self.type_filter = type_filter
        self.done = False
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(loop.time() + params.timeout, self._expire)
        self._default_start = params.last_index if params.last_index is not None else (
            (int(time.time() * 1000) - 1000) << 16)
        self._watching = False

    def start(self) -> None:
        self.session.reads.add(self)
        self.wake()

    def wake(self) -> None:
        """Try to answer now; if there is nothing yet, keep waiting."""
        if self.done:
            return
        if not self.session.can_send():
            self._watch()
            self.session.when_writable(self)
            return
        try:
            answered = self._attempt()
        except CorruptLogError as exc:  # a damaged record is never sent; this reader is told
            logger.error("read of %s failed: %s", self.params.log_name, exc)
            self.session.send_error(self.request_id, ErrorCode.UNAVAILABLE, str(exc))
            self._finish()
            return
        if answered:
            self._finish()
        else:
            self._watch()

    def _attempt(self) -> bool:
        params, tracker, cluster = self.params, self.tracker, self.cluster
        for _ in range(_SCANS_PER_TURN):
            if params.tracker_id not in cluster.trackers:  # disconnected meanwhile
                self._send(_proto.empty_batch_frame(self.request_id, 0, 0, 0, True))
                return True
            seg_range = (0, 128) if params.ignore_segment else tracker.range
            if seg_range == EMPTY:
                return False
            if params.client_index:
                positions = None
                start = self._default_start
            else:
                stored = self.project.positions.get(params.log_name, params.consumer)
                positions = np.where(stored == UNSET, np.uint64(self._default_start), stored)
                start = int(positions[seg_range[0]:seg_range[1]].min())
            batch = self.log.read(start, max_count=params.max_size,
                                  segments=None if params.ignore_segment else seg_range)
            mask = self.type_filter.mask(batch) if self.type_filter and len(batch) else None
            scanned = batch.next_after != start
            frame, count = _proto.batch_frame(
                self.request_id, batch, positions, self.session.client_id, params.tracker_id,
                params.filter_target, mask, seg_range[0], seg_range[1],
                batch.next_after if scanned else 0, len(batch) < params.max_size)
            if count or (scanned and params.client_index):
                # Messages, or (for a reader that keeps its own index) the new last index, so
                # that it does not scan the filtered-out messages again.
                if count:
                    cluster.processing(tracker)
                self.session.delivered(frame, count)
                return True
            if not scanned:
                return False
            # Everything read was filtered out: move the consumer past it and look further.
            self.project.positions.store(params.log_name, params.consumer, seg_range[0],
                                         seg_range[1], batch.next_after)
        asyncio.get_running_loop().call_soon(self.wake)
        return False

    def _send(self, frame: bytes) -> None:
        self.session.send(frame)

    def _watch(self) -> None:
        if not self._watching:
            self._watching = True
            self.cluster.watch(self)
            self.project.watch_appends(self.params.log_name, self)

    def _expire(self) -> None:
        if not self.done:
            self._send(_proto.empty_batch_frame(self.request_id, *self._range(), 0, True))
            self._finish()

    def _range(self) -> tuple[int, int]:
        return (0, 128) if self.params.ignore_segment else self.tracker.range

    def _finish(self) -> None:
        self.done = True
        self._timer.cancel()
        if self._watching:
            self.cluster.unwatch(self)
            self.project.unwatch_appends(self.params.log_name, self)
        self.session.reads.discard(self)

    def cancel(self) -> None:
        """The session is gone: stop waiting, answer nothing."""
        if not self.done:
            self._finish()
