"""Trackers and the clusters they form: the instances of one consumer split the 128 segments
of a log between them, and the split follows them as they join, leave or go silent.

Invariants, after every change:
- the ranges of the trackers of a cluster never overlap, so each message is handled by at most
  one tracker of a consumer;
- a tracker that got a batch (active: it is processing, or about to read again) keeps exactly
  its range until it reads again, leaves or is purged; nobody else gets any of it;
- every other segment has exactly one owner among the trackers that hold no such fixed range,
  unless the fixed ranges cut the free segments into more pieces than there are such trackers
  (then the smallest pieces wait for an active tracker to read again, which rebalances).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["EMPTY", "SEGMENTS", "Cluster", "Tracker", "even_split", "free_ranges", "share"]

SEGMENTS = 128
EMPTY = (0, 0)
Range = tuple[int, int]


class Waiter(Protocol):
    def wake(self) -> None: ...


@dataclass(eq=False)
class Tracker:
    tracker_id: str
    session_id: str
    purge_timeout: float | None = None  # seconds an active tracker may stay away
    range: Range = EMPTY
    active: bool = False  # got a batch and has not come back for the next one
    active_since: float = 0.0

    @property
    def fixed(self) -> bool:
        """Its range may not change: it got a batch of these segments and has not read again."""
        return self.active and self.range != EMPTY


def _split(lo: int, hi: int, count: int) -> list[Range]:
    """[lo, hi) in `count` contiguous pieces; the last `(hi - lo) % count` get one more."""
    base, extra = divmod(hi - lo, count)
    ranges, start = [], lo
    for i in range(count):
        size = base + (1 if i >= count - extra else 0)
        ranges.append((start, start + size))
        start += size
    return ranges


def even_split(count: int) -> list[Range]:
    """128 segments over `count` trackers; the last `128 % count` get one more."""
    return _split(0, SEGMENTS, count)


def free_ranges(fixed: list[Range]) -> list[Range]:
    """The maximal runs of segments that no range in `fixed` covers, in order."""
    runs: list[Range] = []
    start = 0
    for lo, hi in sorted(r for r in fixed if r[1] > r[0]):
        if lo > start:
            runs.append((start, lo))
        start = max(start, hi)
    if start < SEGMENTS:
        runs.append((start, SEGMENTS))
    return runs


def share(runs: list[Range], count: int) -> list[Range]:
    """`count` ranges, in segment order, that cover `runs` as evenly as possible; EMPTY at the
    end for trackers left over. With fewer trackers than runs, the largest runs are covered."""
    if count <= 0:
        return []
    if len(runs) > count:
        largest = sorted(runs, key=lambda r: (r[0] - r[1], r[0]))[:count]
        return sorted(largest)
    if not runs:
        return [EMPTY] * count
    trackers_per_run = [1] * len(runs)
    for _ in range(count - len(runs)):
        # The next tracker goes where a tracker's share is largest (the first such run).
        best, best_share = -1, 1.0
        for i, (lo, hi) in enumerate(runs):
            size = (hi - lo) / trackers_per_run[i]
            if size > best_share:
                best, best_share = i, size
        if best < 0:
            break  # every free segment has its own tracker
        trackers_per_run[best] += 1
    out: list[Range] = []
    for (lo, hi), n in zip(runs, trackers_per_run, strict=True):
        out.extend(_split(lo, hi, n))
    return out + [EMPTY] * (count - len(out))


@dataclass(eq=False)
class Cluster:
    """The trackers of one consumer on one log."""

    consumer: str
    single_tracker: bool = False
    trackers: dict[str, Tracker] = field(default_factory=dict)
    _waiters: set[Waiter] = field(default_factory=set)
    # What the last rebalance saw: each tracker and, if fixed, its range. Ranges change only
    # in _rebalance, and it gives the same ranges for the same input: when the input is what
    # it was, nothing can move (a tracker back from processing its batch, most often).
    _balanced: tuple[object, ...] = ()

    def enter(
        self, tracker_id: str, session_id: str, purge_timeout: float | None
    ) -> Tracker:
        """A tracker asks for its next batch: it joins, or comes back from processing."""
        tracker = self.trackers.get(tracker_id)
        if tracker is None:
            tracker = Tracker(tracker_id, session_id, purge_timeout)
            self.trackers[tracker_id] = tracker
            self._rebalance()
        else:
            tracker.session_id = session_id
            tracker.purge_timeout = purge_timeout
            if tracker.active:
                tracker.active = False
                self._rebalance()
        return tracker

    def processing(self, tracker: Tracker) -> None:
        """The tracker got a batch (an empty one too): it keeps its range until it reads
        again, and is purged if it stays away longer than its purge timeout."""
        if not tracker.active:
            tracker.active = True
            tracker.active_since = time.monotonic()

    def leave(self, tracker_id: str) -> bool:
        if self.trackers.pop(tracker_id, None) is None:
            return False
        self._rebalance()
        self.wake()  # the leaver's own pending read must end, whatever the others got
        return True

    def leave_session(self, session_id: str) -> list[str]:
        """Removes the trackers of a closed connection; returns their ids."""
        gone = [t for t, tr in self.trackers.items() if tr.session_id == session_id]
        for tracker_id in gone:
            del self.trackers[tracker_id]
        if gone:
            self._gone()
        return gone

    def purge(self, now: float) -> list[str]:
        """Removes trackers that stayed away (active) longer than their purge timeout."""
        gone = [
            t.tracker_id
            for t in self.trackers.values()
            if t.active and t.purge_timeout is not None and now - t.active_since > t.purge_timeout
        ]
        for tracker_id in gone:
            del self.trackers[tracker_id]
        if gone:
            self._gone()
        return gone

    def _gone(self) -> None:
        # Reads of a tracker that is gone must end even if no range moved: a parked read is
        # answered for its group without looking at its own tracker (reads.py).
        if not self._rebalance():
            self.wake()

    def _rebalance(self) -> bool:
        """Returns whether a range moved (the waiting reads were woken)."""
        ordered = sorted(self.trackers.values(), key=lambda t: t.tracker_id)
        balanced = tuple((t.tracker_id, t.range) if t.fixed else t.tracker_id for t in ordered)
        if balanced == self._balanced:
            return False
        self._balanced = balanced
        before = {t.tracker_id: t.range for t in ordered}
        movable = [t for t in ordered if not t.fixed]
        if self.single_tracker:
            # One tracker gets every segment; it stays the owner while it is there.
            owner = next((t for t in ordered if t.range == (0, SEGMENTS)), None)
            if owner is None:
                owner = next(iter(movable), None)
            for t in movable:
                t.range = (0, SEGMENTS) if t is owner else EMPTY
        else:
            runs = free_ranges([t.range for t in ordered if t.fixed])
            for t, assigned in zip(movable, share(runs, len(movable)), strict=True):
                t.range = assigned
        if {t.tracker_id: t.range for t in ordered} != before:
            self.wake()
            return True
        return False

    # -- waiting for a change of ranges --------------------------------------------------

    def watch(self, waiter: Waiter) -> None:
        """`waiter.wake()` is called at every change of ranges or membership until unwatched."""
        self._waiters.add(waiter)

    def unwatch(self, waiter: Waiter) -> None:
        self._waiters.discard(waiter)

    def watchers(self) -> list[Waiter]:
        return list(self._waiters)

    def wake(self) -> None:
        for waiter in list(self._waiters):
            waiter.wake()
