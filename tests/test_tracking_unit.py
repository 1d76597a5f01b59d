"""Unit tests of server.tracking: the even split of the 128 segments and the tracker cluster
(rebalancing on join and leave, active trackers keeping their range, purge, single tracker)."""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.tracking import EMPTY, Cluster, Tracker, even_split

SEGMENTS = 128


def ranges(cluster: Cluster) -> dict[str, tuple[int, int]]:
    return {t: tr.range for t, tr in cluster.trackers.items()}


def assert_disjoint(cluster: Cluster) -> None:
    owner: dict[int, str] = {}
    for tracker_id, tracker in cluster.trackers.items():
        lo, hi = tracker.range
        assert 0 <= lo <= hi <= SEGMENTS, (tracker_id, tracker.range)
        for seg in range(lo, hi):
            assert seg not in owner, (
                f"segment {seg} held by {owner[seg]} and {tracker_id}: {ranges(cluster)}")
            owner[seg] = tracker_id


# -- even_split ------------------------------------------------------------------------------


def test_even_split_of_three() -> None:
    assert even_split(3) == [(0, 42), (42, 85), (85, 128)]


def test_even_split_small_counts() -> None:
    assert even_split(1) == [(0, 128)]
    assert even_split(2) == [(0, 64), (64, 128)]
    assert even_split(128) == [(i, i + 1) for i in range(128)]


@given(st.integers(min_value=1, max_value=128))
def test_even_split_covers_all_segments_evenly(count: int) -> None:
    split = even_split(count)
    assert len(split) == count
    assert split[0][0] == 0 and split[-1][1] == SEGMENTS
    for (_, hi), (lo, _) in itertools.pairwise(split):
        assert hi == lo  # contiguous, no gap, no overlap
    sizes = [hi - lo for lo, hi in split]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes)  # the last ones get the extra segment


# -- joins and leaves ------------------------------------------------------------------------


def test_join_and_leave_rebalance() -> None:
    cluster = Cluster("c")
    a = cluster.enter("a", "s1", None)
    assert a.range == (0, 128)
    cluster.enter("b", "s1", None)
    assert ranges(cluster) == {"a": (0, 64), "b": (64, 128)}
    cluster.enter("c", "s2", None)
    assert ranges(cluster) == {"a": (0, 42), "b": (42, 85), "c": (85, 128)}
    assert cluster.leave("b") is True
    assert ranges(cluster) == {"a": (0, 64), "c": (64, 128)}
    assert cluster.leave("b") is False
    cluster.leave_session("s2")
    assert ranges(cluster) == {"a": (0, 128)}
    cluster.leave("a")
    assert cluster.trackers == {}


def test_trackers_are_ordered_by_id_not_by_arrival() -> None:
    cluster = Cluster("c")
    cluster.enter("z", "s", None)
    cluster.enter("m", "s", None)
    cluster.enter("a", "s", None)
    assert ranges(cluster) == {"a": (0, 42), "m": (42, 85), "z": (85, 128)}


def test_leave_session_removes_only_that_sessions_trackers() -> None:
    cluster = Cluster("c")
    for tracker_id, session in (("a", "s1"), ("b", "s2"), ("c", "s1"), ("d", "s3")):
        cluster.enter(tracker_id, session, None)
    cluster.leave_session("s1")
    assert ranges(cluster) == {"b": (0, 64), "d": (64, 128)}
    cluster.leave_session("nobody")
    assert set(cluster.trackers) == {"b", "d"}


def test_reentering_tracker_takes_over_new_session() -> None:
    cluster = Cluster("c")
    cluster.enter("a", "s1", None)
    cluster.enter("a", "s2", 5.0)  # same tracker, reconnected
    assert cluster.trackers["a"].session_id == "s2"
    assert cluster.trackers["a"].purge_timeout == 5.0
    cluster.leave_session("s1")
    assert "a" in cluster.trackers


# -- active trackers -------------------------------------------------------------------------


def test_active_tracker_keeps_its_range_until_it_reads_again() -> None:
    cluster = Cluster("c")
    a = cluster.enter("a", "s", None)
    cluster.processing(a)  # got a batch of all 128 segments
    b = cluster.enter("b", "s", None)
    assert a.range == (0, 128)
    assert b.range == EMPTY  # nothing free until a comes back
    c = cluster.enter("c", "s", None)
    assert c.range == EMPTY
    assert_disjoint(cluster)
    cluster.enter("a", "s", None)  # a reads again: the split happens
    assert ranges(cluster) == {"a": (0, 42), "b": (42, 85), "c": (85, 128)}


def test_joiner_gets_what_active_trackers_do_not_hold() -> None:
    cluster = Cluster("c")
    a = cluster.enter("a", "s", None)
    b = cluster.enter("b", "s", None)
    assert (a.range, b.range) == ((0, 64), (64, 128))
    cluster.processing(a)
    c = cluster.enter("c", "s", None)
    # a keeps [0, 64); b's share [42, 85) minus a's range is [64, 85); c gets [85, 128)
    assert a.range == (0, 64)
    assert b.range == (64, 85)
    assert c.range == (85, 128)
    assert_disjoint(cluster)
    cluster.enter("a", "s", None)
    assert ranges(cluster) == {"a": (0, 42), "b": (42, 85), "c": (85, 128)}


def test_leave_of_active_tracker_frees_its_range() -> None:
    cluster = Cluster("c")
    a = cluster.enter("a", "s", None)
    cluster.processing(a)
    b = cluster.enter("b", "s", None)
    assert b.range == EMPTY
    cluster.leave("a")
    assert b.range == (0, 128)


# -- single tracker --------------------------------------------------------------------------


def test_single_tracker_gets_everything_others_nothing() -> None:
    cluster = Cluster("c", single_tracker=True)
    b = cluster.enter("b", "s", None)
    a = cluster.enter("a", "s", None)
    c = cluster.enter("c", "s", None)
    # the first owner keeps all segments; later (even lower sorting) trackers wait
    assert b.range == (0, 128)
    assert a.range == EMPTY and c.range == EMPTY
    cluster.processing(b)
    cluster.enter("a", "s", None)
    assert b.range == (0, 128) and a.range == EMPTY
    cluster.leave("b")
    owners = [t for t, r in ranges(cluster).items() if r != EMPTY]
    assert len(owners) == 1
    assert cluster.trackers[owners[0]].range == (0, 128)


def test_single_tracker_owner_purged_hands_over() -> None:
    cluster = Cluster("c", single_tracker=True)
    a = cluster.enter("a", "s", 1.0)
    b = cluster.enter("b", "s", 1.0)
    cluster.processing(a)
    assert cluster.purge(time.monotonic() + 5.0) == ["a"]
    assert b.range == (0, 128)


# -- purge -----------------------------------------------------------------------------------


def test_purge_removes_only_active_trackers_past_their_timeout() -> None:
    cluster = Cluster("c")
    waiting = cluster.enter("waiting", "s", 1.0)  # not active: never purged
    young = cluster.enter("young", "s", 100.0)
    old = cluster.enter("old", "s", 1.0)
    forever = cluster.enter("forever", "s", None)  # no purge timeout
    for tracker in (young, old, forever):
        cluster.processing(tracker)
    now = time.monotonic()
    assert cluster.purge(now) == []  # nobody past the timeout yet
    assert cluster.purge(now + 10.0) == ["old"]
    assert set(cluster.trackers) == {"waiting", "young", "forever"}
    assert "waiting" in cluster.trackers and not waiting.active
    assert sorted(cluster.purge(now + 1000.0)) == ["young"]
    assert set(cluster.trackers) == {"waiting", "forever"}


def test_purge_frees_segments_for_the_others() -> None:
    cluster = Cluster("c")
    a = cluster.enter("a", "s", 2.0)
    cluster.processing(a)
    b = cluster.enter("b", "s", 2.0)
    assert b.range == EMPTY
    cluster.purge(time.monotonic() + 3.0)
    assert ranges(cluster) == {"b": (0, 128)}


# -- waking waiting readers ------------------------------------------------------------------


class CountingWaiter:
    def __init__(self) -> None:
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1


def test_watchers_are_woken_on_a_change() -> None:
    cluster = Cluster("c")
    cluster.enter("a", "s", None)
    waiter = CountingWaiter()
    cluster.watch(waiter)
    cluster.enter("a", "s", None)  # nothing changes: no wake-up
    assert waiter.wakes == 0
    cluster.enter("b", "s", None)
    assert waiter.wakes == 1
    a = cluster.trackers["a"]
    cluster.processing(a)
    cluster.enter("a", "s", None)  # back from processing, same range: no change
    assert waiter.wakes == 1
    cluster.leave("b")
    assert waiter.wakes >= 2
    cluster.unwatch(waiter)
    seen = waiter.wakes
    cluster.enter("c", "s", None)
    assert waiter.wakes == seen


# -- property: ranges never overlap ----------------------------------------------------------

TRACKER_IDS = ["t0", "t1", "t2", "t3", "t4", "t5"]
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("enter"), st.sampled_from(TRACKER_IDS),
                  st.sampled_from([None, 1.0, 5.0])),
        st.tuples(st.just("processing"), st.sampled_from(TRACKER_IDS), st.none()),
        st.tuples(st.just("leave"), st.sampled_from(TRACKER_IDS), st.none()),
        st.tuples(st.just("purge"), st.none(), st.sampled_from([0.0, 2.0, 10.0])),
    ),
    max_size=60,
)


@pytest.mark.parametrize("single", [False, True])
@settings(max_examples=300, deadline=None)
@given(ops=OPS)
def test_ranges_never_overlap(single: bool, ops: list[tuple[str, str | None, object]]) -> None:
    cluster = Cluster("c", single_tracker=single)
    base = time.monotonic()
    for op, tracker_id, arg in ops:
        held = {t: tr.range for t, tr in cluster.trackers.items() if tr.active}
        if op == "enter":
            assert tracker_id is not None
            cluster.enter(tracker_id, "s", arg)  # type: ignore[arg-type]
            held.pop(tracker_id, None)  # it came back: it may lose its range
        elif op == "processing":
            tracker = cluster.trackers.get(tracker_id)  # type: ignore[arg-type]
            if tracker is None or tracker.range == EMPTY:
                continue  # the server marks only trackers that got a batch
            cluster.processing(tracker)
        elif op == "leave":
            cluster.leave(tracker_id)  # type: ignore[arg-type]
            held.pop(tracker_id, None)  # type: ignore[arg-type]
        else:
            now = base + float(arg)  # type: ignore[arg-type]
            expected = {
                t for t, tr in cluster.trackers.items()
                if tr.active and tr.purge_timeout is not None
                and now - tr.active_since > tr.purge_timeout
            }
            gone = cluster.purge(now)
            assert set(gone) == expected
            for t in gone:
                held.pop(t, None)
        assert_disjoint(cluster)
        # an active tracker keeps exactly its range while it is away
        for t, r in held.items():
            assert t in cluster.trackers
            assert cluster.trackers[t].range == r, (t, r, ranges(cluster))
        if single:
            owners = [r for r in ranges(cluster).values() if r != EMPTY]
            assert owners in ([], [(0, 128)])
    # once every tracker has come back, the split is even (or one owner for single)
    for tracker_id in sorted(cluster.trackers):
        cluster.enter(tracker_id, "s", None)
    assert_disjoint(cluster)
    ordered = sorted(cluster.trackers)
    if not ordered:
        return
    if single:
        assert sorted(r for r in ranges(cluster).values() if r != EMPTY) == [(0, 128)]
    else:
        assert [cluster.trackers[t].range for t in ordered] == even_split(len(ordered))


def test_tracker_defaults() -> None:
    tracker = Tracker("t", "s")
    assert tracker.range == EMPTY and not tracker.active and tracker.purge_timeout is None
