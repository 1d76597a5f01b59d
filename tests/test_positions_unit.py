"""Unit tests of server.positions: a consumer's positions only move forward, per segment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server.positions import UNSET, PositionStore


@pytest.fixture
def store(tmp_path: Path) -> PositionStore:
    return PositionStore(str(tmp_path / "positions.db"))


def test_store_sets_unset_segments_and_moves_only_forward(store: PositionStore) -> None:
    store.store("event", "c", 0, 64, 100)
    got = store.get("event", "c")
    assert (got[:64] == 100).all() and (got[64:] == UNSET).all()
    store.store("event", "c", 32, 128, 50)  # back for 32..63, new for 64..127
    got = store.get("event", "c")
    assert (got[:64] == 100).all() and (got[64:] == 50).all()
    store.store("event", "c", 0, 128, 75)
    got = store.get("event", "c")
    assert (got[:64] == 100).all() and (got[64:] == 75).all()
    store.store("event", "c", 10, 10, 500)  # an empty range stores nothing
    assert (store.get("event", "c") == got).all()


def test_an_array_once_handed_out_never_changes(store: PositionStore) -> None:
    """A store replaces the array: what a reader holds stays what it read (reads.py)."""
    store.store("event", "c", 0, 128, 10)
    held = store.get("event", "c")
    store.store("event", "c", 0, 128, 20)
    assert (held == 10).all() and (store.get("event", "c") == 20).all()
    store.store("event", "c", 0, 128, 5)  # nothing moves: the same array stays
    assert store.get("event", "c") is store.get("event", "c")


def test_positions_survive_a_reopen(tmp_path: Path) -> None:
    first = PositionStore(str(tmp_path / "positions.db"))
    first.store("event", "c", 0, 128, 2**64 - 2)  # the largest index there is
    first.store("command", "c", 5, 6, 7)
    first.close()
    again = PositionStore(str(tmp_path / "positions.db"))
    try:
        assert (again.get("event", "c") == np.uint64(2**64 - 2)).all()
        expected = np.full(128, UNSET, dtype=np.uint64)
        expected[5] = 7
        assert (again.get("command", "c") == expected).all()
    finally:
        again.close()
