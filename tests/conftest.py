"""Shared fixtures. Every test runs against the compiled extension built by `pip install`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import fluxcore


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "log"


@pytest.fixture
def log(log_dir: Path) -> Iterator[fluxcore.Log]:
    with fluxcore.Log(log_dir, segment_file_size=1 << 20) as opened:
        yield opened


def seg_files(path: str | os.PathLike[str]) -> list[str]:
    return sorted(n for n in os.listdir(path) if n.endswith(".seg"))
