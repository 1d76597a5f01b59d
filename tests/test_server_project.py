"""A project's logs: created on first use, retention defaults and settings kept in SQLite."""

from __future__ import annotations

import time
from pathlib import Path

from fluxcore.server import ServerConfig
from fluxcore.server.open_logs import OpenLogs
from fluxcore.server.project import METRICS_RETENTION_MS, Project

from fluxcore.sync_scheduler import scheduler


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


def test_idle_logs_leave_the_sync_schedule_and_keep_their_settings(tmp_path: Path) -> None:
    """Two logs open at a time (no event loop: closed at once): a log closed while dirty is
    synced by its close and leaves the sync schedule; reopened, it has its retention and
    records, and only the open logs are scheduled."""
    config = ServerConfig(data_dir=str(tmp_path), segment_file_size=1 << 20,
                          fsync_interval_ms=50)
    open_logs = OpenLogs(2)
    registered = scheduler.open_logs
    project = Project("shop", config, open_logs=open_logs)
    try:
        project.set_retention("custom-kept", 60_000)
        names = [f"custom-t{i}" for i in range(6)]
        for round_ in range(3):
            for name in names:
                project.log(name).append(b"%d" % round_)
                assert len(open_logs) <= 2
                assert scheduler.open_logs == registered + len(open_logs)
        time.sleep(0.2)  # the schedule comes due: only open logs are synced
        for name in names:
            log = project.log(name)
            assert [bytes(p) for _i, p in log.read(0)] == [b"0", b"1", b"2"]
            assert log.durable_index == log.last_index  # synced by close, or since
        assert project.last_index("custom-t0") == project.log("custom-t0").last_index
        assert project.log("custom-kept").retention_ms == 60_000
        assert open_logs.closed >= 3 * len(names)
    finally:
        project.close()
    assert len(open_logs) == 0
    assert scheduler.open_logs == registered
