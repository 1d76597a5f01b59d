"""Unit tests of server.tracking: the even split of the 128 segments and the tracker cluster
(rebalancing on join and leave, active trackers keeping their range, purge, single tracker)."""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from server.tracking import EMPTY, Cluster, Tracker, even_split, free_ranges, share

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


def assert_covered(cluster: Cluster) -> None:
    """Every segment has exactly one owner (the original's assertAllSegmentsCovered)."""
    assert_disjoint(cluster)
    if not cluster.trackers:
        return
    held = sorted(r for r in ranges(cluster).values() if r != EMPTY)
    assert held and held[0][0] == 0 and held[-1][1] == SEGMENTS, ranges(cluster)
    for (_, hi), (lo, _) in itertools.pairwise(held):
        assert hi == lo, f"segments {hi}..{lo - 1} have no owner: {ranges(cluster)}"


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
    # a keeps [0, 64); b and c share the rest, which stays covered
    assert a.range == (0, 64)
    assert b.range == (64, 96)
    assert c.range == (96, 128)
    assert_covered(cluster)
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


# -- the original's TrackerCluster cases (TrackerClusterTest), with 128 segments --------------
# withWaitingTracker = enter (a READ), withActiveTracker = processing (a batch went out),
# withoutTracker = leave.


def five_waiting() -> Cluster:
    cluster = Cluster("c")
    for n in range(1, 6):
        cluster.enter(f"c{n}", "s", None)
    return cluster


def test_case_single_client_covers_all_segments() -> None:
    cluster = Cluster("c")
    c = cluster.enter("client", "s", None)
    assert c.range == (0, 128)
    cluster.processing(c)
    assert c.range == (0, 128)


def test_case_equal_segments_with_multiple_clients() -> None:
    cluster = Cluster("c")
    for n in range(1, 5):
        cluster.enter(f"c{n}", "s", None)
    assert ranges(cluster) == {"c1": (0, 32), "c2": (32, 64), "c3": (64, 96), "c4": (96, 128)}
    assert_covered(cluster)


def test_case_odd_number_of_clients() -> None:
    cluster = Cluster("c")
    for n in range(1, 4):
        cluster.enter(f"c{n}", "s", None)
    assert_covered(cluster)


def test_case_segment_of_processing_client_is_fixed() -> None:
    # The first case: five waiting, c5 active, c1 leaves. Before the fix c2..c4 got
    # [0, 32), [32, 64), [64, 96) and segments 96..101 had no owner until c5 read again.
    cluster = five_waiting()
    c5 = cluster.trackers["c5"]
    assert c5.range == (102, 128)
    cluster.processing(c5)
    cluster.leave("c1")
    assert c5.range == (102, 128)  # fixed while it processes
    assert_covered(cluster)
    assert ranges(cluster) == {"c2": (0, 34), "c3": (34, 68), "c4": (68, 102), "c5": (102, 128)}


def test_case_adding_clients_in_reverse_alphabetical_order() -> None:
    cluster = Cluster("c")
    cluster.enter("c2", "s", None)
    c1 = cluster.enter("c1", "s", None)
    assert ranges(cluster) == {"c1": (0, 64), "c2": (64, 128)}
    cluster.processing(c1)
    assert ranges(cluster) == {"c1": (0, 64), "c2": (64, 128)}
    cluster.enter("c1", "s", None)
    assert ranges(cluster) == {"c1": (0, 64), "c2": (64, 128)}
    assert_covered(cluster)


def test_case_all_is_well_when_processing_client_listens_again() -> None:
    cluster = five_waiting()
    cluster.processing(cluster.trackers["c5"])
    cluster.leave("c1")
    cluster.enter("c5", "s", None)
    assert_covered(cluster)
    cluster.enter("c1", "s", None)
    assert len(cluster.trackers) == 5
    assert_covered(cluster)
    assert [cluster.trackers[f"c{n}"].range for n in range(1, 6)] == even_split(5)


def test_case_all_processing_and_a_client_is_added() -> None:
    cluster = Cluster("c")
    for n in range(1, 5):
        cluster.enter(f"c{n}", "s", None)
    for n in range(1, 5):
        cluster.processing(cluster.trackers[f"c{n}"])
    c5 = cluster.enter("c5", "s", None)
    assert len(cluster.trackers) == 5
    assert_covered(cluster)
    assert c5.range == EMPTY


def test_case_all_processing_and_a_client_is_added_reverse_order() -> None:
    cluster = Cluster("c")
    c2 = cluster.enter("c2", "s", None)
    cluster.processing(c2)
    c1 = cluster.enter("c1", "s", None)
    assert c2.range == (0, 128)
    assert c1.range == EMPTY


def test_case_segments_redistributed_when_an_active_client_comes_back() -> None:
    # The second case: c1 active on everything, c2 active on nothing (it got an empty
    # batch); when c1 reads again, c2 must get the other half. Before the fix c2 stayed empty.
    cluster = Cluster("c")
    c1 = cluster.enter("c1", "s", None)
    cluster.processing(c1)
    c2 = cluster.enter("c2", "s", None)
    cluster.processing(c2)
    assert (c1.range, c2.range) == ((0, 128), EMPTY)
    cluster.enter("c1", "s", None)
    assert (c1.range, c2.range) == ((0, 64), (64, 128))


def test_case_purging_ceased_trackers() -> None:
    cluster = Cluster("c")
    cluster.enter("c1", "s", 1.0)
    c2 = cluster.enter("c2", "s", 1.0)
    cluster.processing(c2)
    now = time.monotonic()
    assert cluster.purge(now) == []
    assert set(cluster.trackers) == {"c1", "c2"}
    assert cluster.purge(now + 2.0) == ["c2"]
    assert set(cluster.trackers) == {"c1"}
    assert cluster.trackers["c1"].range == (0, 128)


def test_fixed_ranges_that_cut_the_free_segments_in_two() -> None:
    cluster = Cluster("c")
    for n in range(1, 5):
        cluster.enter(f"c{n}", "s", None)
    cluster.processing(cluster.trackers["c2"])  # [32, 64)
    cluster.leave("c4")
    # free: [0, 32) and [64, 128); two movable trackers take one run each
    assert ranges(cluster) == {"c1": (0, 32), "c2": (32, 64), "c3": (64, 128)}
    cluster.leave("c3")
    # one movable tracker for two runs: the larger is covered, [0, 32) waits for c2
    assert ranges(cluster) == {"c1": (64, 128), "c2": (32, 64)}
    cluster.enter("c2", "s", None)  # c2 reads again: everything is covered at once
    assert ranges(cluster) == {"c1": (0, 64), "c2": (64, 128)}


def test_share_and_free_ranges() -> None:
    assert free_ranges([]) == [(0, 128)]
    assert free_ranges([(0, 10), (10, 20), (100, 128)]) == [(20, 100)]
    assert free_ranges([(5, 10), (50, 60)]) == [(0, 5), (10, 50), (60, 128)]
    assert share([(0, 128)], 3) == even_split(3)
    assert share([], 2) == [EMPTY, EMPTY]
    assert share([(0, 2)], 4) == [(0, 1), (1, 2), EMPTY, EMPTY]
    assert share([(0, 5), (10, 50), (60, 128)], 2) == [(10, 50), (60, 128)]
    assert share([(0, 10), (20, 120)], 4) == [(0, 10), (20, 53), (53, 86), (86, 120)]


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


# -- property: no overlap, nothing stranded, active ranges untouched -------------------------

TRACKER_IDS = ["t0", "t1", "t2", "t3", "t4", "t5"]
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("enter"), st.sampled_from(TRACKER_IDS),
                  st.sampled_from([None, 1.0, 5.0])),
        st.tuples(st.just("processing"), st.sampled_from(TRACKER_IDS), st.none()),
        st.tuples(st.just("leave"), st.sampled_from(TRACKER_IDS), st.none()),
        st.tuples(st.just("leave_session"), st.sampled_from(["s0", "s1"]), st.none()),
        st.tuples(st.just("purge"), st.none(), st.sampled_from([0.0, 2.0, 10.0])),
    ),
    max_size=60,
)


def assert_nothing_stranded(cluster: Cluster, single: bool) -> None:
    """Segments no active tracker holds have exactly one owner among the others, unless the
    active trackers' ranges cut them into more runs than there are other trackers."""
    assert_disjoint(cluster)
    fixed = [tr.range for tr in cluster.trackers.values() if tr.active and tr.range != EMPTY]
    movable = [tr for tr in cluster.trackers.values() if not (tr.active and tr.range != EMPTY)]
    owned = {seg for tr in movable for seg in range(*tr.range)}
    if single:
        owners = [r for r in ranges(cluster).values() if r != EMPTY]
        assert owners in ([], [(0, 128)]), ranges(cluster)
        if movable and not fixed:
            assert owners == [(0, 128)], ranges(cluster)
        return
    runs = free_ranges(fixed)
    free = {seg for lo, hi in runs for seg in range(lo, hi)}
    assert owned <= free
    if len(movable) >= len(runs):
        assert owned == free, f"segments {sorted(free - owned)} stranded: {ranges(cluster)}"
    else:  # a forced gap: each movable tracker covers a whole run
        assert sorted(tr.range for tr in movable) == sorted(
            r for r in runs if r in {tr.range for tr in movable})
        assert len(owned) == sum(tr.range[1] - tr.range[0] for tr in movable)


@pytest.mark.parametrize("single", [False, True])
@settings(max_examples=400, deadline=None)
@given(ops=OPS)
def test_rebalancing_never_strands_or_steals(
        single: bool, ops: list[tuple[str, str | None, object]]) -> None:
    cluster = Cluster("c", single_tracker=single)
    base = time.monotonic()
    sessions = {t: f"s{i % 2}" for i, t in enumerate(TRACKER_IDS)}
    for op, name, arg in ops:
        # what each active tracker holds: nobody else may get any of it while it is away
        held = {t: tr.range for t, tr in cluster.trackers.items() if tr.active}
        if op == "enter":
            assert name is not None
            cluster.enter(name, sessions[name], arg)  # type: ignore[arg-type]
            held.pop(name, None)  # it came back: it may get another range
        elif op == "processing":
            tracker = cluster.trackers.get(name)  # type: ignore[arg-type]
            if tracker is None:
                continue  # the server sends batches only to trackers in the cluster
            cluster.processing(tracker)
        elif op == "leave":
            cluster.leave(name)  # type: ignore[arg-type]
            held.pop(name, None)  # type: ignore[arg-type]
        elif op == "leave_session":
            for gone in cluster.leave_session(name):  # type: ignore[arg-type]
                held.pop(gone, None)
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
        for t, r in held.items():
            assert t in cluster.trackers
            if r != EMPTY:  # an active tracker's segments stay exactly its own
                assert cluster.trackers[t].range == r, (t, r, ranges(cluster))
                assert cluster.trackers[t].active
        assert_nothing_stranded(cluster, single)
    # once every tracker has come back, the split is even (or one owner for single)
    for tracker_id in sorted(cluster.trackers):
        cluster.enter(tracker_id, sessions[tracker_id], None)
    assert_nothing_stranded(cluster, single)
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


@settings(max_examples=300, deadline=None)
@given(
    single=st.booleans(),
    steps=st.lists(st.tuples(st.sampled_from(["enter", "processing", "leave", "purge"]),
                             st.sampled_from(["a", "b", "c"]),
                             st.just("s")), max_size=30),
)
@example(single=False, steps=[("enter", "a", "s"), ("enter", "b", "s"), ("processing", "a", "s"),
                              ("leave", "b", "s"), ("enter", "a", "s")])
def test_a_rebalance_skipped_for_unchanged_input_changes_nothing(
        single: bool, steps: list[tuple[str, str, str]]) -> None:
    """A rebalance is skipped when the trackers and the fixed ranges are what the last one
    saw; after every step the ranges are exactly what a full rebalance gives."""
    cluster = Cluster("c", single_tracker=single)
    for action, tracker_id, session in steps:
        if action == "enter":
            cluster.enter(tracker_id, session, 1.0)
        elif action == "processing" and tracker_id in cluster.trackers:
            cluster.processing(cluster.trackers[tracker_id])
        elif action == "leave":
            cluster.leave(tracker_id)
        elif action == "purge":
            cluster.purge(time.monotonic() + 5.0)
        assert_disjoint(cluster)
        kept = ranges(cluster)
        cluster._balanced = ()  # forget what the last rebalance saw: a full one
        cluster._rebalance()
        assert ranges(cluster) == kept, (action, tracker_id)


def test_a_tracker_back_from_its_batch_keeps_its_range_without_waking_anyone() -> None:
    cluster = Cluster("c")
    woken: list[str] = []

    class Watcher:
        def wake(self) -> None:
            woken.append("woken")

    for tracker_id in ("a", "b"):
        cluster.enter(tracker_id, "s", None)
    before = ranges(cluster)
    cluster.watch(Watcher())
    for _ in range(3):
        cluster.processing(cluster.trackers["a"])
        cluster.enter("a", "s", None)
    assert ranges(cluster) == before and woken == []
    cluster.enter("c", "s", None)  # a joiner still moves the ranges, and wakes the watchers
    assert ranges(cluster) != before and woken == ["woken"]


def test_a_tracker_back_from_its_batch_takes_the_segments_freed_meanwhile() -> None:
    cluster = Cluster("c")
    cluster.enter("a", "s", None)
    cluster.enter("b", "s", None)
    cluster.processing(cluster.trackers["a"])
    cluster.leave("b")
    assert ranges(cluster) == {"a": (0, 64)}  # a keeps its range while it processes
    cluster.enter("a", "s", None)
    assert ranges(cluster) == {"a": (0, SEGMENTS)}
