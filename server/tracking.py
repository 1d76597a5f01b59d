"""Trackers and the clusters they form: the instances of one consumer split the 128 segments
of a log between them, and the split follows them as they join, leave or go silent.

Invariant: the ranges of the trackers of a cluster never overlap, so each message is handled by
at most one tracker of a consumer. A tracker that is processing a batch (active) keeps its range
until it reads again; the others get their share of the even split, minus what active trackers
still hold, until those come back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["EMPTY", "Cluster", "Tracker", "even_split"]

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


def even_split(count: int) -> list[Range]:
    """128 segments over `count` trackers; the last `128 % count` get one more."""
    base, extra = divmod(SEGMENTS, count)
    ranges, start = [], 0
    for i in range(count):
        size = base + (1 if i >= count - extra else 0)
        ranges.append((start, start + size))
        start += size
    return ranges


def _subtract(target: Range, taken: list[Range]) -> Range:
    """The largest contiguous part of `target` that no range in `taken` covers."""
    pieces = [target]
    for lo, hi in taken:
        next_pieces = []
        for a, b in pieces:
            if hi <= a or lo >= b:
                next_pieces.append((a, b))
                continue
            if a < lo:
                next_pieces.append((a, lo))
            if hi < b:
                next_pieces.append((hi, b))
        pieces = next_pieces
    best = max(pieces, key=lambda r: r[1] - r[0], default=EMPTY)
    return best if best[1] > best[0] else EMPTY


@dataclass(eq=False)
class Cluster:
    """The trackers of one consumer on one log."""

    consumer: str
    single_tracker: bool = False
    trackers: dict[str, Tracker] = field(default_factory=dict)
    _waiters: set[Waiter] = field(default_factory=set)

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
        """The tracker got a batch: it keeps its range until it reads again."""
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
            self._rebalance()
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
            self._rebalance()
        return gone

    def _rebalance(self) -> None:
        ordered = sorted(self.trackers.values(), key=lambda t: t.tracker_id)
        before = {t.tracker_id: t.range for t in ordered}
        if self.single_tracker:
            owner = next((t for t in ordered if t.range[0] == 0 and t.range[1] > 0), None)
            if owner is None:
                owner = next((t for t in ordered if not t.active), None)
            for t in ordered:
                if not t.active:
                    t.range = (0, SEGMENTS) if t is owner else EMPTY
        elif ordered:
            held = [t.range for t in ordered if t.active and t.range != EMPTY]
            for t, target in zip(ordered, even_split(len(ordered)), strict=True):
                if not t.active:
                    t.range = _subtract(target, held)
        if {t.tracker_id: t.range for t in ordered} != before or len(before) != len(ordered):
            self.wake()

    # -- waiting for a change of ranges --------------------------------------------------

    def watch(self, waiter: Waiter) -> None:
        """`waiter.wake()` is called at every change of ranges or membership until unwatched."""
        self._waiters.add(waiter)

    def unwatch(self, waiter: Waiter) -> None:
        self._waiters.discard(waiter)

    def wake(self) -> None:
        for waiter in list(self._waiters):
            waiter.wake()
