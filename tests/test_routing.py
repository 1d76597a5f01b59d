"""Our own XXH64 against the xxhash package, and segment routing (DESIGN.md §2 vectors)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

import fluxcore
from fluxcore._ext import _log


@pytest.mark.parametrize(
    ("key", "segment"), [("hello", 35), ("foo", 63), ("user-123", 73), ("", 25)]
)
def test_design_vectors(key: str, segment: int) -> None:
    assert fluxcore.segment_of(key) == segment
    assert fluxcore.segment_of(key.encode()) == segment


def test_every_length_matches_xxhash() -> None:
    rng = random.Random(7)
    for length in range(0, 300):
        data = rng.randbytes(length)
        for seed in (0, 1, 2**64 - 1):
            assert _log.xxh64_digest(data, seed) == xxhash.xxh64_intdigest(data, seed=seed)


@given(st.binary(max_size=2000), st.integers(min_value=0, max_value=2**64 - 1))
def test_random_inputs_match_xxhash(data: bytes, seed: int) -> None:
    assert _log.xxh64_digest(data, seed) == xxhash.xxh64_intdigest(data, seed=seed)


@given(st.lists(st.text(max_size=40), max_size=200))
def test_batch_routing_matches_single(keys: list[str]) -> None:
    segments = fluxcore.segments_of(keys)
    assert segments.dtype == np.uint8
    expected = [xxhash.xxh64_intdigest(k.encode("utf-8")) % 128 for k in keys]
    assert segments.tolist() == expected
    assert [fluxcore.segment_of(k) for k in keys] == expected


def test_non_ascii_keys_hash_their_utf8() -> None:
    key = "søren-ß-😀"
    assert fluxcore.segment_of(key) == xxhash.xxh64_intdigest(key.encode()) % 128


def test_bad_keys_are_refused() -> None:
    with pytest.raises(TypeError, match="str or bytes"):
        fluxcore.segment_of(123)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="str or bytes"):
        fluxcore.segments_of(["a", None])  # type: ignore[list-item]
    with pytest.raises(UnicodeEncodeError):
        fluxcore.segment_of("\ud800")  # a lone surrogate has no UTF-8 form
