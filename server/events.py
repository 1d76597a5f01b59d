"""Event sourcing: an event stream per aggregate, and which aggregates each entity belongs to,
in SQLite in the project's directory.

Appending events puts them in their aggregate's stream, numbered 0, 1, ... per aggregate, and,
unless `store_only`, publishes them to the project's EVENT log, where consumers read them like
any other event. The stream is the truth: the events are committed to it first, then appended
to the log, then marked published. After a crash in between, the project publishes the rest
when it opens again (at least once, never lost). Deleting a stream leaves the log as it is.

A stream keeps each event as a record in the log's own layout, its sequence number in the index
field: reading a stream sends those records back to back as one BATCH, with no work per event
in Python.
"""

from __future__ import annotations

import itertools
import logging
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from fluxcore._ext import _proto
from fluxcore.errors import LogError
from fluxcore.protocol import ErrorCode, ProtocolError

from .store import connect, transaction

__all__ = ["EVENTS_FILE", "EventBatch", "EventStore"]

EVENTS_FILE = "events.sqlite"
logger = logging.getLogger("fluxcore.server")
_RECORD_LENGTH = struct.Struct("<I")

# Appends the messages buffer[offsets[i]:offsets[i + 1]] to the EVENT log; returns the last index.
Publish = Callable[[Any, npt.NDArray[np.int64], npt.NDArray[np.uint8]], int]


class EventBatch(NamedTuple):
    aggregate: str
    event_count: int  # how many of the request's messages, in order, go to this aggregate
    store_only: bool
    # The stream's last number the writer saw (-1: empty); None: append whatever is there.
    expected_sequence: int | None = None


class EventStore:
    def __init__(self, path: str, *, durable: bool, publish: Publish) -> None:
        self._db = connect(path, durable=durable)
        # AUTOINCREMENT: ids are never reused, so "published up to id N" stays true after
        # a stream's deletion.
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " aggregate TEXT NOT NULL, seq INTEGER NOT NULL, publish INTEGER NOT NULL,"
            " record BLOB NOT NULL, UNIQUE (aggregate, seq))")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS relationships (entity TEXT NOT NULL,"
            " aggregate TEXT NOT NULL, aggregate_type TEXT NOT NULL,"
            " PRIMARY KEY (entity, aggregate))")
        self._db.execute(
            "CREATE INDEX IF NOT EXISTS relationships_by_aggregate ON relationships (aggregate)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        self._publish = publish
        # Events committed that the log did not take yet. Until the first retry() looks, a
        # crash may have left some.
        self.backlog = True

    # -- streams -----------------------------------------------------------------------------

    def append(
        self,
        batches: Sequence[EventBatch],
        buffer: Any,
        offsets: npt.NDArray[np.int64],
        segments: npt.NDArray[np.uint8],
    ) -> tuple[list[int], int]:
        """Stores the events (message i is buffer[offsets[i]:offsets[i + 1]]) in their streams
        and publishes those not `store_only`. Returns the last sequence number of each batch's
        stream (-1: still empty) and the last EVENT log index written (0: none)."""
        last: list[int] = []
        published: list[tuple[int, int]] = []
        position = 0
        with transaction(self._db):
            for batch in batches:
                first = self._next_sequence(batch.aggregate)
                if batch.expected_sequence is not None and first - 1 != batch.expected_sequence:
                    raise ProtocolError(
                        ErrorCode.CONFLICT,
                        f"aggregate {batch.aggregate!r} is at sequence {first - 1}, the writer "
                        f"expected {batch.expected_sequence}: another writer came first")
                stop = position + batch.event_count
                records = _proto.stream_records(buffer, offsets, segments, position, stop, first)
                self._db.executemany(
                    "INSERT INTO events (aggregate, seq, publish, record) VALUES (?, ?, ?, ?)",
                    zip(itertools.repeat(batch.aggregate), range(first, first + batch.event_count),
                        itertools.repeat(0 if batch.store_only else 1), records, strict=False))
                last.append(first + batch.event_count - 1)
                if not batch.store_only and batch.event_count:
                    published.append((position, stop))
                position = stop
        index = 0
        if self.backlog:  # earlier events still wait for the log: these go after them
            index = self._publish_backlog()
        elif published:
            try:
                index = self._publish_ranges(buffer, offsets, segments, published)
            except (OSError, LogError) as exc:
                # Stored all the same: they go to the log once it takes them again.
                logger.error("publishing %d events failed, kept for later: %s",
                             sum(b - a for a, b in published), exc)
                self.backlog = True
            else:
                self._mark_published()
        return last, index

    def retry(self) -> None:
        """Publishes the backlog if there is one (the server calls this every 100 ms)."""
        if self.backlog:
            self._publish_backlog()

    def _publish_backlog(self) -> int:
        try:
            index = self.publish_pending()
        except (OSError, LogError) as exc:
            logger.error("publishing stored events failed, kept for later: %s", exc)
            return 0
        return index

    def _next_sequence(self, aggregate: str) -> int:
        (top,) = self._db.execute(
            "SELECT MAX(seq) FROM events WHERE aggregate = ?", (aggregate,)).fetchone()
        return 0 if top is None else int(top) + 1

    def _publish_ranges(
        self,
        buffer: Any,
        offsets: npt.NDArray[np.int64],
        segments: npt.NDArray[np.uint8],
        ranges: list[tuple[int, int]],
    ) -> int:
        if len(ranges) == 1:  # the usual case: straight from the receive buffer
            start, stop = ranges[0]
            return self._publish(buffer, offsets[start : stop + 1], segments[start:stop])
        data = memoryview(buffer)
        parts = [data[int(offsets[a]) : int(offsets[b])] for a, b in ranges]
        bounds = [np.zeros(1, dtype=np.int64)]
        base = 0
        for a, b in ranges:
            bounds.append(offsets[a + 1 : b + 1] - offsets[a] + base)
            base += int(offsets[b] - offsets[a])
        return self._publish(b"".join(parts), np.concatenate(bounds),
                             np.concatenate([segments[a:b] for a, b in ranges]))

    def _mark_published(self) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO meta (key, value)"
            " SELECT 'published_upto', COALESCE(MAX(id), 0) FROM events")

    def publish_pending(self) -> int:
        """Publishes the events committed but not yet published (after a crash, or while the
        log could not take them); returns the last EVENT log index written (0: none)."""
        row = self._db.execute(
            "SELECT value FROM meta WHERE key = 'published_upto'").fetchone()
        upto = 0 if row is None else int(row[0])
        records = [bytes(r[0]) for r in self._db.execute(
            "SELECT record FROM events WHERE id > ? AND publish = 1 ORDER BY id", (upto,))]
        index = 0
        if records:
            messages, segments = [], []
            for record in records:  # the rare path: after a crash or a full disk
                (length,) = _RECORD_LENGTH.unpack_from(record)
                messages.append(record[24:length])
                segments.append(record[16])
            offsets = np.zeros(len(messages) + 1, dtype=np.int64)
            np.cumsum([len(m) for m in messages], out=offsets[1:])
            index = self._publish(b"".join(messages), offsets,
                                  np.array(segments, dtype=np.uint8))
        self._mark_published()
        self.backlog = False
        return index

    def read(self, aggregate: str, after: int, max_size: int) -> list[bytes]:
        """Up to `max_size` records of the stream after sequence number `after`, in order."""
        return [bytes(r[0]) for r in self._db.execute(
            "SELECT record FROM events WHERE aggregate = ? AND seq > ? ORDER BY seq LIMIT ?",
            (aggregate, after, max_size))]

    def delete(self, aggregate: str) -> bool:
        """Deletes the stream; False if it had no events."""
        return self._db.execute(
            "DELETE FROM events WHERE aggregate = ?", (aggregate,)).rowcount > 0

    # -- relationships -----------------------------------------------------------------------

    def update_relationships(
        self,
        associations: Iterable[tuple[str, str, str]],
        dissociations: Iterable[tuple[str, str, str]],
    ) -> None:
        """(aggregate id, aggregate type, entity id) links to add and to remove, at once."""
        with transaction(self._db):
            self._db.executemany(
                "INSERT OR REPLACE INTO relationships (aggregate, aggregate_type, entity)"
                " VALUES (?, ?, ?)", associations)
            self._db.executemany(
                "DELETE FROM relationships WHERE aggregate = ? AND entity = ?",
                ((aggregate, entity) for aggregate, _type, entity in dissociations))

    def repair_relationships(self, aggregate: str, aggregate_type: str,
                             entities: Iterable[str]) -> None:
        """Makes `entities` all the entities of the aggregate."""
        with transaction(self._db):
            self._db.execute("DELETE FROM relationships WHERE aggregate = ?", (aggregate,))
            self._db.executemany(
                "INSERT OR REPLACE INTO relationships (aggregate, aggregate_type, entity)"
                " VALUES (?, ?, ?)",
                ((aggregate, aggregate_type, entity) for entity in entities))

    def relationships(self, entity: str) -> list[tuple[str, str, str]]:
        """(aggregate id, aggregate type, entity id) of every aggregate the entity is in."""
        return [(str(a), str(t), entity) for a, t in self._db.execute(
            "SELECT aggregate, aggregate_type FROM relationships WHERE entity = ?"
            " ORDER BY aggregate", (entity,))]

    def close(self) -> None:
        self._db.close()
