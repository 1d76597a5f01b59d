"""A project's logs: created on first use, retention defaults and settings kept in SQLite."""

from __future__ import annotations

from pathlib import Path

from fluxcore.server import ServerConfig
from fluxcore.server.project import METRICS_RETENTION_MS, Project


def test_retention_defaults_and_settings(tmp_path: Path) -> None:
    config = ServerConfig(data_dir=str(tmp_path), segment_file_size=1 << 20)
    project = Project("shop", config)
    try:
        assert project.log("metrics").retention_ms == METRICS_RETENTION_MS  # a month
        assert project.log("event").retention_ms is None  # kept indefinitely
        project.set_retention("event", 60_000)
        project.set_retention("metrics", None)  # back to the default
        assert project.log("event").retention_ms == 60_000
        assert project.log("metrics").retention_ms == METRICS_RETENTION_MS
        assert sorted(project.logs()) == ["event", "metrics"]
    finally:
        project.close()
    reopened = Project("shop", config)
    try:
        assert reopened.log("event").retention_ms == 60_000  # kept across restarts
    finally:
        reopened.close()
    everything = ServerConfig(data_dir=str(tmp_path / "b"), segment_file_size=1 << 20,
                              retention_ms=5_000)
    project = Project("shop", everything)
    try:
        assert project.log("metrics").retention_ms == 5_000  # the server's setting wins
    finally:
        project.close()
