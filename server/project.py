"""A project: its logs (one per message type, one per custom topic), consumer positions and
tracker clusters. Projects are fully isolated: each has its own directory."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import time
from typing import TYPE_CHECKING, Any

from fluxcore._ext import _proto
from fluxcore.log import Log
from fluxcore.protocol import ErrorCode, MessageType, ProtocolError, check_name, log_name

from .config import ServerConfig
from .events import EVENTS_FILE, EventStore
from .positions import PositionStore
from .reads import PendingRead, wake_all
from .schedules import SCHEDULES_FILE, ScheduleStore
from .search import SEARCH_FILE, SearchStore, document_publisher
from .tracking import Cluster, Waiter
from .values import VALUES_FILE, ValueStore
from .wake_groups import ShareGroups
from .web import WebProxy

if TYPE_CHECKING:
    from .descriptors import Descriptors
    from .open_logs import OpenLogs

__all__ = ["METRICS_RETENTION_MS", "Project"]

METRICS_RETENTION_MS = 30 * 24 * 3600 * 1000
# Logs a client names (custom topics, document collections): `max_logs` per project.
NAMED_LOG_PREFIXES = ("custom-", "document-")


class Project:
    def __init__(self, name: str, config: ServerConfig,
                 descriptors: Descriptors | None = None, open_logs: OpenLogs | None = None,
                 owner_lock: str | None = None) -> None:
        self.name = check_name("project", name)
        self.config = config
        self.path = os.path.join(config.data_dir, name)
        logs = os.path.join(self.path, "logs")
        os.makedirs(logs, exist_ok=True)
        self._descriptors = descriptors
        self._open_logs = open_logs  # the server's LRU of open logs (None: all stay open)
        self._owner_lock = owner_lock  # what keeps a closed log the server's (open_logs.py)
        self._named_logs = {entry for entry in os.listdir(logs)
                            if entry.startswith(NAMED_LOG_PREFIXES)}
        state = os.path.join(self.path, "state.sqlite")
        self.positions = PositionStore(state)
        self.positions.on_write = self._positions_moved
        self._settings = sqlite3.connect(state, check_same_thread=False)
        self._settings.execute("CREATE TABLE IF NOT EXISTS log_settings ("
                               " log TEXT PRIMARY KEY, retention_ms INTEGER)")
        self._settings.commit()
        self._logs: dict[str, Log] = {}
        self._closed_last_index: dict[str, int] = {}  # of logs closed while idle
        self._clusters: dict[tuple[str, str], Cluster] = {}
        self._append_waiters: dict[str, set[Waiter]] = {}  # but the parked reads in groups
        self.share_groups = ShareGroups()  # parked reads by log and what they would get
        # Ids of the messages the server writes itself: unique per run of the server, too.
        self._own_prefix = os.urandom(4).hex()
        self._own_counter = 0
        durable = config.fsync == "always"  # the stores sync each commit, as the logs do
        self.schedules = ScheduleStore(os.path.join(self.path, SCHEDULES_FILE), durable=durable,
                                       log=lambda: self.log("schedule"),
                                       appended=lambda: self.appended("schedule"))
        self.values = ValueStore(os.path.join(self.path, VALUES_FILE), durable=durable)
        self.events = EventStore(os.path.join(self.path, EVENTS_FILE), durable=durable,
                                 publish=self._publish_events)
        self.events.retry()  # what a crash left unpublished goes out first
        self.search = SearchStore(
            os.path.join(self.path, SEARCH_FILE), durable=durable,
            publish=document_publisher(self),
            open_log=self._open_document_log)
        self.search.retry()  # documents a crash left unpublished go out first
        self.web = WebProxy(self)

    def log(self, name: str) -> Log:
        """The log called `name`, opened (and created) on first use, reopened on use after it
        was closed for being idle. Valid until the caller returns to the event loop: look it
        up again after an `await`."""
        log = self._logs.get(name)
        if log is None:
            reclaimed = None if self._open_logs is None else self._open_logs.reclaim(self, name)
            log = self._logs[name] = self._open_log(name) if reclaimed is None else reclaimed
            self._closed_last_index.pop(name, None)
            if self._open_logs is not None:
                self._open_logs.opened(log, self, name)
        elif self._open_logs is not None:
            self._open_logs.used(log)
        return log

    def detach_log(self, name: str, log: Log) -> None:
        """`log` is about to be closed (the server's LRU found it idle): it is no longer
        this project's; the next log(name) reopens it."""
        if self._logs.get(name) is log:
            del self._logs[name]
            self._closed_last_index[name] = log.last_index

    def last_index(self, name: str) -> int:
        """The newest index of a log, without reopening it if it is closed (the server is its
        only writer, so it has not changed since)."""
        log = self._logs.get(name)
        if log is None and name in self._closed_last_index:
            return self._closed_last_index[name]
        return (log or self.log(name)).last_index

    def _open_log(self, name: str) -> Log:
        named = name.startswith(NAMED_LOG_PREFIXES)
        new = named and name not in self._named_logs
        if new and len(self._named_logs) >= self.config.max_logs:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, f"project {self.name!r} has {len(self._named_logs)} "
                f"custom topics and document collections, the server's max_logs: {name!r} is "
                "not created")
        if self._descriptors is not None:
            self._descriptors.check_log(name, builtin=not named)
        path = os.path.join(self.path, "logs", name)
        existed = os.path.isdir(path)
        retention = self._settings.execute(
            "SELECT retention_ms FROM log_settings WHERE log = ?", (name,)).fetchone()
        try:
            log = Log(
                path,
                owner_lock=self._owner_lock,
                fsync=self.config.fsync,  # type: ignore[arg-type]
                fsync_interval_ms=self.config.fsync_interval_ms,
                segment_file_size=self.config.segment_file_size,
                page_cache_bytes=self.config.page_cache_bytes,
                retention_ms=retention[0] if retention else self._default_retention(name),
            )
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE) or self._descriptors is None:
                raise
            if not existed:
                shutil.rmtree(path, ignore_errors=True)
            raise self._descriptors.refuse(f"log {name!r} not opened") from exc
        if self._descriptors is not None:
            try:  # the log took descriptors of the reserve: give them back
                self._descriptors.check_log(name, builtin=not named)
            except OSError:
                log.close()
                if not existed:
                    shutil.rmtree(path, ignore_errors=True)
                raise
        if named:
            self._named_logs.add(name)
        return log

    def _open_document_log(self, collection: str) -> None:
        self.log(log_name(MessageType.DOCUMENT, collection))

    def _default_retention(self, name: str) -> int | None:
        # As the original service: metrics are kept a month, everything else indefinitely
        # (unless the server is configured with a retention for every log).
        if self.config.retention_ms is None and name == "metrics":
            return METRICS_RETENTION_MS
        return self.config.retention_ms

    def set_retention(self, name: str, retention_ms: int | None) -> None:
        """Retention of one log (None: the server's default), kept across restarts."""
        with self._settings:
            self._settings.execute(
                "INSERT INTO log_settings (log, retention_ms) VALUES (?, ?)"
                " ON CONFLICT (log) DO UPDATE SET retention_ms = excluded.retention_ms",
                (name, retention_ms))
        self.log(name).retention_ms = (
            retention_ms if retention_ms is not None else self._default_retention(name))

    def logs(self) -> dict[str, Log]:
        return dict(self._logs)

    def cluster(self, log: str, consumer: str, single_tracker: bool) -> Cluster:
        key = (log, consumer)
        cluster = self._clusters.get(key)
        if cluster is None:
            cluster = Cluster(consumer, single_tracker=single_tracker)
            self._clusters[key] = cluster
        return cluster

    def cluster_items(self) -> list[tuple[tuple[str, str], Cluster]]:
        """((log, consumer), cluster) of every consumer that has read this project."""
        return list(self._clusters.items())

    def find_cluster(self, log: str, consumer: str) -> Cluster | None:
        return self._clusters.get((log, consumer))

    # -- waiting for appends -------------------------------------------------------------

    def watch_appends(self, log: str, waiter: Waiter) -> None:
        """`waiter.wake()` is called after every append to `log` until unwatched."""
        self._append_waiters.setdefault(log, set()).add(waiter)

    def unwatch_appends(self, log: str, waiter: Waiter) -> None:
        waiters = self._append_waiters.get(log)
        if waiters is not None:
            waiters.discard(waiter)

    def appended(self, log: str) -> None:
        parked = self.share_groups.of(log)
        waiters = self._append_waiters.get(log)
        if parked or waiters:
            wake_all(self, log, parked, list(waiters) if waiters else [])

    def _positions_moved(self, log: str, consumer: str) -> None:
        """A consumer's positions were stored: its parked reads would read from elsewhere."""
        cluster = self._clusters.get((log, consumer))
        if cluster is not None:
            for waiter in cluster.watchers():
                if type(waiter) is PendingRead:
                    waiter.regroup()

    def append_own(self, log_name: str, message_type: MessageType, payload: bytes, *,
                   payload_type: str, source: str, metadata: bytes | None = None,
                   request_id: int = -1) -> int:
        """Appends one message the server writes itself (metrics, web requests), wakes the
        readers of its log, and returns its index."""
        frame, self._own_counter = _proto.encode_append(
            0, message_type, 0, None, [payload], payload_type, None, source,
            f"{source}-{self._own_prefix}-", self._own_counter, metadata,
            int(time.time() * 1000), request_id)
        frames, _end, _needed = _proto.frame_scan(frame, 0, len(frame), len(frame))
        _op, _flags, _rid, start, end = frames[0]
        _type, _g, _topic, offsets, segments, _id = _proto.append_parse(frame, start, end)
        indexes = self.log(log_name).append_buffer(frame, offsets, segments=segments)
        self.appended(log_name)
        return int(indexes[0])

    def _publish_events(self, buffer: Any, offsets: Any, segments: Any) -> int:
        indexes = self.log("event").append_buffer(buffer, offsets, segments=segments)
        self.appended("event")
        return int(indexes[-1]) if len(indexes) else 0

    def close(self) -> None:
        self.schedules.close()
        self.values.close()
        self.events.close()
        self.search.close()
        for log in self._logs.values():
            if self._open_logs is not None:
                self._open_logs.forget(log)
            log.close()
        self._logs.clear()
        self.positions.close()
        self._settings.close()
