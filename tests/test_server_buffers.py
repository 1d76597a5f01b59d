"""The receive budget of server/buffers.py: grants within the bound, first come first served,
a frame larger than the bound alone, and everything given back."""

from __future__ import annotations

from fluxcore.server.buffers import ReceiveBudget


class Owner:
    def __init__(self, name: str) -> None:
        self.name = name
        self.grants = 0

    def granted(self) -> None:
        self.grants += 1


def test_grants_stay_within_the_bound_and_waiters_go_in_order() -> None:
    budget = ReceiveBudget(100)
    a, b, c, d = Owner("a"), Owner("b"), Owner("c"), Owner("d")
    assert budget.request(a, 60)
    assert not budget.request(b, 50)  # 110 > 100: waits
    assert not budget.request(c, 10)  # fits, but b came first: no overtaking
    assert budget.granted == 60 and budget.waiting() == 2
    budget.release(a)
    assert (b.grants, c.grants) == (1, 1)
    assert budget.granted == 60 and budget.waiting() == 0
    assert budget.request(b, 40)  # less than held: nothing changes
    assert not budget.request(d, 45)
    budget.release(b, keep=10)  # shrinking part of a grant frees room too
    assert d.grants == 1 and budget.granted == 65
    for owner in (b, c, d):
        budget.release(owner)
    assert budget.granted == 0
    assert budget.peak <= 100


def test_a_frame_larger_than_the_bound_goes_alone() -> None:
    budget = ReceiveBudget(100)
    big, small = Owner("big"), Owner("small")
    assert budget.request(small, 10)
    assert not budget.request(big, 500)
    budget.release(small)
    assert big.grants == 1 and budget.granted == 500
    assert not budget.request(small, 1)
    budget.release(big)
    assert small.grants == 1 and budget.granted == 1


def test_a_waiter_that_leaves_is_forgotten() -> None:
    budget = ReceiveBudget(100)
    a, b, c = Owner("a"), Owner("b"), Owner("c")
    assert budget.request(a, 100)
    assert not budget.request(b, 50)
    assert not budget.request(c, 50)
    budget.release(b)  # closed while waiting
    budget.release(a)
    assert b.grants == 0 and c.grants == 1 and budget.granted == 50
