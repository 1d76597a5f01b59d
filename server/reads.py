"""A tracker's READ: answered at once when messages are there, otherwise parked until the next
append to its log, the next change of its cluster, or its deadline (long poll).

A parked read is woken by a plain call from the code that appended or rebalanced, and answers
from there, in the same turn of the event loop: no task, no future, no extra loop iteration
between an append and the batch leaving for the tracker that waited for it. Parked reads that
would get the same answer wait in one group (wake_groups.py): an append answers a group with one
read of the log, one frame and one compiled send to all of its sockets.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import re
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from fluxcore._ext import _proto
from fluxcore.errors import CorruptLogError
from fluxcore.protocol import ErrorCode

from .positions import UNSET
from .tracking import EMPTY
from .wake_groups import ShareGroup

logger = logging.getLogger("fluxcore.server")

if TYPE_CHECKING:
    from .project import Project
    from .session import Session
    from .tracking import Cluster, Tracker, Waiter

__all__ = ["Deadlines", "PendingRead", "ReadParams", "TypeFilter", "wake_all"]

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
                payload_type = _proto.record_type(batch, position)
                # A message without a payload type passes every filter, as in the original.
                verdict = not payload_type or self.regex.fullmatch(payload_type) is not None
                self.verdicts[value] = verdict
            if verdict:
                accepted.append(value)
        return np.isin(hashes, np.array(accepted, dtype=np.uint64))


class Deadlines:
    """The deadlines of one connection's parked reads, under one timer: a READ that parks
    costs a heap entry, not a timer of the event loop of its own (most are answered long
    before their deadline). The timer is set for the earliest deadline and moved only when an
    earlier one comes; when it fires, the reads past their deadline get their empty batch.
    Entries of reads answered meanwhile are dropped as the heap grows past twice the live
    reads, so it stays bounded by the reads the connection has parked."""

    def __init__(self, live: set[PendingRead]) -> None:
        self._live = live  # the connection's unanswered reads
        self._heap: list[tuple[float, int, PendingRead]] = []
        self._added = 0  # orders equal deadlines; reads themselves are never compared
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._loop = asyncio.get_running_loop()
        self.clock = self._loop.time

    def add(self, read: PendingRead) -> None:
        heap = self._heap
        if len(heap) > 2 * len(self._live) + 64:
            self._heap = heap = [entry for entry in heap if not entry[2].done]
            heapq.heapify(heap)
        self._added += 1
        heapq.heappush(heap, (read.deadline, self._added, read))
        if read.deadline < self._timer_at:
            self._arm(read.deadline)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._fire)
        self._timer_at = when

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        heap, now = self._heap, self._loop.time()
        try:
            while heap and (heap[0][0] <= now or heap[0][2].done):
                heapq.heappop(heap)[2].expire()  # nothing for a read answered meanwhile
        finally:  # should an answer fail (the loop logs it), the others still get theirs
            if heap:
                self._arm(heap[0][0])

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, math.inf
        self._heap.clear()


class PendingRead:
    def __init__(self, session: Session, request_id: int, params: ReadParams,
                 last_index: int | None, project: Project, cluster: Cluster,
                 tracker: Tracker, type_filter: TypeFilter | None) -> None:
        self.session = session
        self.request_id = request_id
        self.params = params
        self.project = project
        self.cluster = cluster
        self.tracker = tracker
        self.type_filter = type_filter
        self.done = False
        self.deadline = session.deadlines.clock() + params.timeout
        self._own_index = params.client_index and last_index is not None
        self._default_start = last_index if last_index is not None else (
            (int(time.time() * 1000) - 1000) << 16)
        self._watching = False
        self._next_after = 0  # where the last read of an attempt ended
        self._planned: tuple[Any, tuple[int, int], tuple[Any, int, tuple[int, int]]] | None = None
        # While parked with segments: the key it waits under in its project's ShareGroups,
        # and the group it shares with other reads of that key, if any.
        self.parked_key: Hashable | None = None
        self.group: ShareGroup | None = None
        self.slot = 0  # its entry in the group's arrays
        self._watches_appends = False  # parked without segments: woken by every append

    def start(self) -> None:
        self.session.reads.add(self)
        self.wake()

    def wake(self) -> None:
        """Try to answer now; if there is nothing yet, keep waiting."""
        if self.done:
            return
        if not self.session.can_send():
            self._park()
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
            self._park()

    def _attempt(self) -> bool:
        params = self.params
        for _ in range(_SCANS_PER_TURN):
            if params.tracker_id not in self.cluster.trackers:  # disconnected meanwhile
                self._send(_proto.empty_batch_frame(self.request_id, 0, 0, 0, True))
                return True
            plan = self._plan()
            if plan is None:
                return False
            positions, start, seg_range = plan
            batch = self._read(start, seg_range)
            if not len(batch) and batch.next_after == start:
                return False  # nothing new (a READ that parks): no frame to build
            frame, count, scanned = self._frame(
                self.request_id, batch, positions, start, seg_range)
            if count or (scanned and positions is None):
                # Messages, or (for a reader that keeps its own index) the new last index, so
                # that it does not scan the filtered-out messages again.
                self._deliver(frame, count)
                return True
            if not scanned:
                return False
            # Everything read was filtered out: move the consumer past it and look further.
            self.project.positions.store(params.log_name, params.consumer, seg_range[0],
                                         seg_range[1], self._next_after)
        asyncio.get_running_loop().call_soon(self.wake)
        return False

    def _plan(self) -> tuple[Any, int, tuple[int, int]] | None:
        """What an attempt reads now: (positions or None, start, segment range); None while
        the tracker has no range."""
        params = self.params
        seg_range = (0, 128) if params.ignore_segment else self.tracker.range
        if seg_range == EMPTY:
            return None
        if self._own_index:
            return None, self._default_start, seg_range
        stored = self.project.positions.get(params.log_name, params.consumer)
        # A store replaces the array (positions.py), so the same array means the same plan.
        planned = self._planned
        if planned is not None and planned[0] is stored and planned[1] == seg_range:
            return planned[2]
        positions = np.where(stored == UNSET, np.uint64(self._default_start), stored)
        plan = positions, int(positions[seg_range[0]:seg_range[1]].min()), seg_range
        self._planned = (stored, seg_range, plan)
        return plan

    def _read(self, start: int, seg_range: tuple[int, int]) -> Any:
        # Looked up at each read: an idle log may have been closed since the last (open_logs.py).
        return self.project.log(self.params.log_name).read(
            start, max_count=self.params.max_size,
            segments=None if self.params.ignore_segment else seg_range)

    def _frame(self, request_id: int, batch: Any, positions: Any, start: int,
               seg_range: tuple[int, int]) -> tuple[bytes, int, bool]:
        """(BATCH frame, messages in it, whether the read went past `start`)."""
        params = self.params
        mask = self.type_filter.mask(batch) if self.type_filter and len(batch) else None
        scanned = batch.next_after != start
        self._next_after = batch.next_after
        frame, count = _proto.batch_frame(
            request_id, batch, positions, self.session.client_id, params.tracker_id,
            params.filter_target, mask, seg_range[0], seg_range[1],
            batch.next_after if scanned else 0,
            len(batch) < params.max_size
            and self.project.last_index(params.log_name) <= batch.next_after)
        return frame, count, scanned

    def _share_key(self, positions: Any, start: int, seg_range: tuple[int, int]) -> object:
        """Reads with equal keys read the same messages into the same frame (but for the
        request id)."""
        params = self.params
        return (start, seg_range, params.max_size, params.type_filter, params.client_index,
                params.ignore_segment,
                (self.session.client_id, params.tracker_id) if params.filter_target else None,
                None if positions is None else positions[seg_range[0]:seg_range[1]].tobytes())

    def shared_answer(self) -> object:
        """For wake_all(): what every read of this one's group gets now, if this one can
        answer for them: its (frame, count), _NOTHING (nothing new: they stay parked), or
        _ONE_BY_ONE (anything unusual: each read tries on its own)."""
        if self.params.tracker_id not in self.cluster.trackers:
            return _ONE_BY_ONE  # (it gets its empty batch that way)
        plan = self._plan()
        if plan is None:
            return _ONE_BY_ONE
        positions, start, seg_range = plan
        try:
            batch = self._read(start, seg_range)
        except CorruptLogError:
            return _ONE_BY_ONE  # each reader is told
        if not len(batch) and batch.next_after == start:
            return _NOTHING
        frame, count, scanned = self._frame(self.request_id, batch, positions, start,
                                            seg_range)
        if count or (scanned and positions is None):
            return frame, count
        return _ONE_BY_ONE if scanned else _NOTHING

    def answered_shared(self, size: int, count: int) -> None:
        """Its group's frame (`size` bytes, `count` messages) went to its socket. What
        _finish() does, but for a read of a group that a wake took out of the project's
        groups (it watches no appends either): once per answered consumer, so kept short."""
        session = self.session
        stats = session.stats
        stats.batches_out += 1
        stats.messages_out += count
        stats.bytes_out += size
        self.cluster.processing(self.tracker)
        self.done = True
        self.group = self.parked_key = None
        self.cluster.unwatch(self)
        session.reads.discard(self)

    def _deliver(self, frame: bytes | bytearray, count: int) -> None:
        self.cluster.processing(self.tracker)
        self.session.delivered(frame, count)

    def _send(self, frame: bytes) -> None:
        self.session.send(frame)

    def _park(self) -> None:
        if not self._watching:
            self._watching = True
            self.session.deadlines.add(self)
            self.cluster.watch(self)
        self.regroup()

    def regroup(self) -> None:
        """Joins the group of what its answer now depends on (or, without segments for now,
        waits for appends alone)."""
        if self.done or not self._watching:
            return
        plan = self._plan() if self.params.tracker_id in self.cluster.trackers else None
        log = self.params.log_name
        if plan is None:
            self.project.share_groups.leave(self, log)
            if not self._watches_appends:
                self._watches_appends = True
                self.project.watch_appends(log, self)
        else:
            if self._watches_appends:
                self._watches_appends = False
                self.project.unwatch_appends(log, self)
            self.project.share_groups.join(self, log, self._share_key(*plan))

    def expire(self) -> None:
        """Its deadline passed (Deadlines): an empty batch, unless it was answered."""
        if not self.done:
            self._send(_proto.empty_batch_frame(self.request_id, *self._range(), 0, True))
            if self.cluster.trackers.get(self.params.tracker_id) is self.tracker:
                # Until it reads again, it counts as processing (and can be purged), as in the
                # original: a tracker that goes silent after an empty batch must not keep its
                # segments for good.
                self.cluster.processing(self.tracker)
            self._finish()

    def _range(self) -> tuple[int, int]:
        return (0, 128) if self.params.ignore_segment else self.tracker.range

    def _finish(self) -> None:
        self.done = True
        if self._watching:
            self.cluster.unwatch(self)
            self.project.share_groups.leave(self, self.params.log_name)
            if self._watches_appends:
                self.project.unwatch_appends(self.params.log_name, self)
        self.session.reads.discard(self)

    def cancel(self) -> None:
        """The session is gone: stop waiting, answer nothing."""
        if not self.done:
            self._finish()


_NOTHING = object()  # a group's read found nothing new: its reads stay parked
_ONE_BY_ONE = object()  # a group's read cannot answer for the others: each tries on its own


def wake_all(project: Project, log: str, parked: list[PendingRead | ShareGroup],
             waiters: list[Waiter]) -> None:
    """After an append to `log`: every read parked on it tries again, in one pass. The reads
    of a group (the same messages through the same filter; most often consumers that are all
    caught up) share one read of the log and one frame, built for the first of them and
    written to all of their sockets by one compiled call, each with its own request id. The
    bookkeeping of the answered reads waits for the end of the pass (the sends come first:
    they are what the consumers wait for). A read alone with its key answers as at any other
    time. Anything unusual (the whole server over its buffer bound, a connection with
    answers queued, a tracker that left, a batch all filtered out) takes the
    one-read-at-a-time path."""
    sent_groups: list[tuple[ShareGroup, Any, int, int]] = []
    one_by_one: list[Waiter] = []
    over_buffer: bool | None = None  # the server's, looked at once per pass
    try:
        for entry in parked:
            if type(entry) is ShareGroup:
                if entry.detached or not entry.reads:
                    continue  # answered or emptied by an earlier wake of this pass
                leader = entry.reads[0]
            else:
                leader = cast(PendingRead, entry)
                if leader.parked_key is None or leader.group is not None:
                    continue  # answered, or moved into a group, by an earlier wake of this pass
            if over_buffer is None:
                over_buffer = leader.session.server.over_buffer()
            alone = leader is entry
            if over_buffer or (alone and not leader.session.writable):
                found: object = _ONE_BY_ONE
            else:
                found = leader.shared_answer()
            if found is _NOTHING:
                continue
            project.share_groups.take(log, entry)
            if found is _ONE_BY_ONE:
                one_by_one.extend([leader] if alone else cast(ShareGroup, entry).reads)
                continue
            frame, count = cast(tuple[bytes, int], found)
            if alone:
                leader._deliver(frame, count)
                leader._finish()
                continue
            group = cast(ShareGroup, entry)
            sent = np.empty(len(group.reads), dtype=np.int64)
            try:
                whole = _proto.frame_send_each(frame, group.transports, group.fds,
                                               group.request_ids, sent)
            except BaseException:  # nothing known sent: each read tries on its own
                one_by_one.extend(group.reads)
                raise
            if whole != len(group.reads):
                _send_rest(group, frame, sent, one_by_one)
            sent_groups.append((group, sent, len(frame), count))
        one_by_one.extend(waiters)
    finally:
        for group, sent, size, count in sent_groups:
            for read, written in zip(group.reads, sent.tolist(), strict=True):
                if written != _proto.SEND_SKIPPED and not read.done:
                    read.answered_shared(size, count)
        for waiter in one_by_one:
            waiter.wake()


def _send_rest(group: ShareGroup, frame: bytes, sent: Any, one_by_one: list[Waiter]) -> None:
    """What frame_send_each() left: a socket that took part of the frame (or none of it, or
    failed) gets the rest through its transport, now, before anything else can be written
    to it; a read whose connection had answers queued is answered on its own later."""
    for i in np.flatnonzero(sent != len(frame)).tolist():
        read, written = group.reads[i], int(sent[i])
        if written == _proto.SEND_SKIPPED:
            one_by_one.append(read)
        else:  # on an error the transport finds it and closes the connection, as for any write
            read.session.send_rest(frame, read.request_id, max(written, 0))
