"""A project: its logs (one per message type, one per custom topic), consumer positions and
tracker clusters. Projects are fully isolated: each has its own directory."""

from __future__ import annotations

import os

from fluxcore.log import Log
from fluxcore.protocol import check_name

from .config import ServerConfig
from .positions import PositionStore
from .tracking import Cluster, Waiter

__all__ = ["Project"]


class Project:
    def __init__(self, name: str, config: ServerConfig) -> None:
        self.name = check_name("project", name)
        self.config = config
        self.path = os.path.join(config.data_dir, name)
        os.makedirs(os.path.join(self.path, "logs"), exist_ok=True)
        self.positions = PositionStore(os.path.join(self.path, "state.sqlite"))
        self._logs: dict[str, Log] = {}
        self._clusters: dict[tuple[str, str], Cluster] = {}
        self._append_waiters: dict[str, set[Waiter]] = {}

    def log(self, name: str) -> Log:
        """The log called `name`, opened (and created) on first use."""
        log = self._logs.get(name)
        if log is None:
            log = Log(
                os.path.join(self.path, "logs", name),
                fsync=self.config.fsync,  # type: ignore[arg-type]
                fsync_interval_ms=self.config.fsync_interval_ms,
                segment_file_size=self.config.segment_file_size,
                retention_ms=self.config.retention_ms,
            )
            self._logs[name] = log
        return log

    def logs(self) -> dict[str, Log]:
        return dict(self._logs)

    def cluster(self, log: str, consumer: str, single_tracker: bool) -> Cluster:
        key = (log, consumer)
        cluster = self._clusters.get(key)
        if cluster is None:
            cluster = Cluster(consumer, single_tracker=single_tracker)
            self._clusters[key] = cluster
        return cluster

    def find_cluster(self, log: str, consumer: str) -> Cluster | None:
        return self._clusters.get((log, consumer))

    def clusters(self) -> list[Cluster]:
        return list(self._clusters.values())

    # -- waiting for appends -------------------------------------------------------------

    def watch_appends(self, log: str, waiter: Waiter) -> None:
        """`waiter.wake()` is called after every append to `log` until unwatched."""
        self._append_waiters.setdefault(log, set()).add(waiter)

    def unwatch_appends(self, log: str, waiter: Waiter) -> None:
        waiters = self._append_waiters.get(log)
        if waiters is not None:
            waiters.discard(waiter)

    def appended(self, log: str) -> None:
        waiters = self._append_waiters.get(log)
        if waiters:
            for waiter in list(waiters):
                waiter.wake()

    def close(self) -> None:
        for log in self._logs.values():
            log.close()
        self._logs.clear()
        self.positions.close()
