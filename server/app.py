"""The server: accepts connections, owns the projects, purges silent trackers, records connects
and disconnects in each project's METRICS log, and shuts down cleanly on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sqlite3
import ssl
import sys
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fluxcore
from fluxcore.errors import LogError
from fluxcore.log import Log
from fluxcore.protocol import MessageType, ProtocolError, encode_control

from .buffers import ReceiveBudget, UnsentBytes
from .config import ServerConfig
from .descriptors import Descriptors, raise_open_file_limit
from .metrics import consumer_stats
from .open_logs import OpenLogs, default_max_open_logs
from .project import Project
from .session import Session

__all__ = ["Server", "run"]

logger = logging.getLogger("fluxcore.server")


class Server:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.version = fluxcore.__version__
        self.sessions: set[Session] = set()
        self.projects: dict[str, Project] = {}
        self.stopping = False
        self._server: asyncio.Server | None = None
        self._unix_server: asyncio.AbstractServer | None = None
        self._purge_task: asyncio.Task[None] | None = None
        self._flush_task: asyncio.Task[None] | None = None
        self._metrics_task: asyncio.Task[None] | None = None
        self._idle_task: asyncio.Task[None] | None = None
        # fdatasync runs here, off the event loop; one sync serves every append waiting for it.
        self._sync_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fluxcore-sync")
        before, soft, hard = raise_open_file_limit()
        self.descriptors = Descriptors()
        logger.info("open-file limit: soft %d (was %d), hard %d; %d kept in reserve for health "
                    "checks and error answers", soft, before, hard, self.descriptors.reserve)
        # Logs closed while idle stay this server's: it holds its data directory's flock,
        # the owner lock of every log it opens (open_logs.py).
        os.makedirs(config.data_dir, exist_ok=True)
        self._data_dir_lock = _lock_data_dir(config.data_dir)
        self.open_logs = OpenLogs(config.max_open_logs
                                  or default_max_open_logs(self.descriptors.threshold))
        logger.info("at most %d logs open at a time (max_open_logs); idle ones are closed",
                    self.open_logs.limit)
        self._recent: dict[str, RecentAppends] = {}
        # server_buffer bounds both: large frames being received, answers not yet sent.
        self.receive_budget = ReceiveBudget(config.server_buffer)
        self.unsent = UnsentBytes()

    def project(self, name: str) -> Project:
        project = self.projects.get(name)
        if project is None:
            if self.descriptors.lowest_free() >= self.descriptors.threshold:
                raise self.descriptors.refuse(f"project {name!r} not opened")
            project = Project(name, self.config, self.descriptors, self.open_logs,
                              owner_lock=self.config.data_dir)
            self.projects[name] = project
        return project

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        context = None
        if self.config.tls_cert:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        self._server = await loop.create_server(
            lambda: Session(self), self.config.host, self.config.port, ssl=context,
            reuse_address=True, backlog=1024,
        )
        if self.config.unix_path:
            # Same sessions as over TCP, without TLS: the socket file's permissions guard it.
            # A socket file left by a server that died is replaced (asyncio and uvloop both
            # remove a stale socket at the path; anything else there is an error).
            try:
                self._unix_server = await loop.create_unix_server(
                    lambda: Session(self), self.config.unix_path, backlog=1024)
            except OSError as exc:
                raise OSError(exc.errno, f"cannot listen on the Unix socket"
                                         f" {self.config.unix_path}: {exc.strerror or exc}"
                              ) from exc
        self._purge_task = loop.create_task(self._purge_loop())
        self._flush_task = loop.create_task(self._flush_loop())
        if self.config.metrics_interval_s > 0:
            self._metrics_task = loop.create_task(self._metrics_loop())
        if self.config.idle_timeout_s > 0:
            self._idle_task = loop.create_task(self._idle_loop())
        # Every project opens now, not on its first client: schedules fire and events a crash
        # left unpublished go out whether or not one of its clients comes back.
        os.makedirs(self.config.data_dir, exist_ok=True)
        for name in sorted(os.listdir(self.config.data_dir)):
            if os.path.isdir(os.path.join(self.config.data_dir, name, "logs")):
                self.project(name).schedules.start()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop accepting, finish what was read (acks included), flush, close."""
        if self.stopping:
            return
        self.stopping = True
        if self._server is not None:
            self._server.close()
        if self._unix_server is not None:
            self._unix_server.close()
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.pause_reading()
        # Appends are done in the loop as they arrive; wait for acks that wait for a sync.
        pending = [task for session in self.sessions for task in session.pending_acks]
        if pending:
            await asyncio.wait(pending, timeout=10)
        for session in list(self.sessions):
            session.close()
        for task in (self._purge_task, self._flush_task, self._metrics_task, self._idle_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._server is not None:
            await self._server.wait_closed()
        if self._unix_server is not None:
            self._unix_server.close()
            await self._unix_server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(str(self.config.unix_path))
        for project in self.projects.values():
            project.close()  # syncs every log (unless fsync is never)
        self.open_logs.shutdown()  # and the idle logs being closed
        self._sync_pool.shutdown(wait=True)
        self.descriptors.close()
        os.close(self._data_dir_lock)

    def session_closed(self, session: Session) -> None:
        self.sessions.discard(session)
        project = session.project
        if project is None or self.stopping:
            return
        self._report_session(session)  # its traffic since the last report
        for (log_name, consumer), cluster in session.clusters.items():
            for tracker_id in cluster.leave_session(session.session_id):
                self.tracker_gone(project, log_name, consumer, tracker_id, "disconnected",
                                  session)
        self.record_metric(project, "disconnect", session.metric_body())

    def tracker_gone(self, project: Project, log_name: str, consumer: str, tracker_id: str,
                     reason: str, session: Session | None = None) -> None:
        """A `disconnect_tracker` metric: a tracker left (or was purged, or its connection
        closed) and its segments went to the others."""
        body = {"log": log_name, "consumer": consumer, "tracker": tracker_id, "reason": reason,
                "timestamp": int(time.time() * 1000)}
        if session is not None:
            body.update(client_id=session.client_id, session=session.session_id)
        self.record_metric(project, "disconnect_tracker", body)

    def _report_session(self, session: Session) -> None:
        counts = session.stats.take()
        if counts is not None and session.project is not None:
            now = time.monotonic()
            interval_ms = int((now - session.reported_at) * 1000)
            session.reported_at = now
            self.record_metric(session.project, "client_stats",
                               {**session.metric_body(), "interval_ms": interval_ms, **counts})

    async def _metrics_loop(self) -> None:
        interval = self.config.metrics_interval_s
        while True:
            await asyncio.sleep(interval)
            for session in list(self.sessions):
                self._report_session(session)
            for project in list(self.projects.values()):
                for stats in consumer_stats(project):
                    self.record_metric(project, "consumer_stats",
                                       {**stats, "timestamp": int(time.time() * 1000)})

    def record_metric(self, project: Project, kind: str, body: dict[str, Any]) -> None:
        """Appends a message of payload type `kind` to the project's METRICS log."""
        try:
            project.append_own("metrics", MessageType.METRICS, encode_control(body),
                               payload_type=kind, source="fluxcore-server")
        except (OSError, ProtocolError, LogError) as exc:
            logger.error("could not record %s in %s: %s", kind, project.name, exc)

    def recent_appends(self, client_id: str) -> RecentAppends:
        """The last appends of a client, by first message id: what a resend must not repeat."""
        recent = self._recent.get(client_id)
        if recent is None:
            if len(self._recent) >= 4096:  # bounded: ~50 MB at most, oldest client first
                self._recent.pop(next(iter(self._recent)))
            recent = self._recent[client_id] = RecentAppends()
        return recent

    async def sync_log(self, log: Log, index: int) -> None:
        """Waits until `log` is on disk up to `index`. Should the log be closed meanwhile (it
        went idle), its close synced it, or failed to: the durable index says which."""
        loop = asyncio.get_running_loop()
        durable = await loop.run_in_executor(self._sync_pool, log._sync_to, index)
        if durable < index:
            raise OSError(f"{log.path}: closed before index {index} was synced")

    def buffered(self) -> int:
        """Bytes answered and not yet sent, all connections together (at most 5 ms old)."""
        return self.unsent.total()

    def over_buffer(self) -> bool:
        """Whether all connections together hold more unsent bytes than `server_buffer`."""
        return self.unsent.total() > self.config.server_buffer

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            for project in self.projects.values():
                try:
                    project.positions.flush()
                except sqlite3.Error as exc:  # keep them in memory; the next flush tries again
                    logger.error("storing positions of %s failed: %s", project.name, exc)
                try:
                    project.events.retry()
                except sqlite3.Error as exc:
                    logger.error("publishing stored events of %s failed: %s", project.name, exc)
                try:
                    project.search.retry()
                except sqlite3.Error as exc:
                    logger.error("publishing stored documents of %s failed: %s", project.name,
                                 exc)

    async def _idle_loop(self) -> None:
        """Pings connections gone quiet and closes those that stay so (Session.check_idle)."""
        timeout = self.config.idle_timeout_s
        period = timeout / 6
        last = time.monotonic()
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            # A loop that could not run for a while (the process was stopped, the machine
            # paused) has not read what came meanwhile: nobody counts as silent this round.
            stalled, last = now - last > 2 * period, now
            if self.stopping:
                continue
            for session in list(self.sessions):
                session.check_idle(now, timeout, stalled)

    async def _purge_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.purge_interval_s)
            now = time.monotonic()
            for project in self.projects.values():
                for (log_name, consumer), cluster in project.cluster_items():
                    gone = cluster.purge(now)
                    if gone:
                        logger.info("purged trackers %s of %s", gone, consumer)
                    for tracker_id in gone:
                        self.tracker_gone(project, log_name, consumer, tracker_id, "purged")


def _lock_data_dir(path: str) -> int:
    """An flock on the data directory, held while the server runs: one server per directory."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LogError(f"{path}: another process (a server?) uses this data directory") from None
    return fd


class RecentAppends(OrderedDict[bytes, tuple[tuple[int, int], ...]]):
    """A bounded map of first message id -> the ranges (first index, count) its messages
    were stored in, as the ACK names them; oldest out first."""

    limit = 128  # more than a client keeps in flight; older resends are found in the log

    def __setitem__(self, key: bytes, value: tuple[tuple[int, int], ...]) -> None:
        super().__setitem__(key, value)
        if len(self) > self.limit:
            self.popitem(last=False)


async def _serve(config: ServerConfig) -> None:
    server = Server(config)
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    unix = f" and unix:{config.unix_path}" if config.unix_path else ""
    print(f"fluxcore listening on {config.host}:{server.port}{unix}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()
        print("fluxcore stopped", flush=True)


def run(config: ServerConfig) -> int:
    """Runs the server until SIGTERM or SIGINT; uvloop when it is installed."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(config))
    else:
        uvloop.run(_serve(config))
    return 0
