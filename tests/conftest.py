"""Shared fixtures. Every test runs against the compiled extension built by `pip install`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import fluxcore
from fluxcore.client import Client

from .service_harness import TOKEN, ServerProcess


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "log"


@pytest.fixture
def log(log_dir: Path) -> Iterator[fluxcore.Log]:
    with fluxcore.Log(log_dir, segment_file_size=1 << 20) as opened:
        yield opened


def seg_files(path: str | os.PathLike[str]) -> list[str]:
    return sorted(n for n in os.listdir(path) if n.endswith(".seg"))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A real `fluxcore serve` process on a free loopback port, token `TOKEN`."""
    proc = ServerProcess(tmp_path / "data").start()
    try:
        yield proc
    finally:
        proc.kill()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    with Client.connect(server.address, token=TOKEN, name="test") as c:
        yield c
