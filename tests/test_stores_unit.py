"""The server's SQLite stores on their own: an event stream whose log is full keeps the events
and publishes them, in order, once the log takes them again."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from fluxcore.server.events import EventBatch, EventStore

from fluxcore import segment_of
from fluxcore._ext import _proto
from fluxcore.client._wire import Codec
from fluxcore.errors import LogFullError
from fluxcore.protocol import Guarantee, MessageType


def parsed(payloads: list[bytes]) -> tuple[bytes, Any, Any]:
    """An APPEND_EVENTS request's messages as the server sees them."""
    frame = Codec("c", "n", "p", "t").append(0, MessageType.EVENT, payloads, payload_type="E",
                                             guarantee=Guarantee.STORED,
                                             keys=["agg"] * len(payloads))
    _type, _g, _topic, offsets, segments, _first = _proto.append_parse(frame, 12, len(frame))
    return frame, offsets, segments


def test_a_full_log_keeps_events_for_later(tmp_path: Path) -> None:
    published: list[bytes] = []
    full = [True]

    def publish(buffer: Any, offsets: Any, segments: Any) -> int:
        if full[0]:
            raise LogFullError(28, "no space")
        data = memoryview(buffer)
        for a, b in itertools.pairwise(offsets):
            published.append(bytes(data[int(a) : int(b)]))
        assert set(segments.tolist()) == {segment_of("agg")}
        return len(published)

    store = EventStore(str(tmp_path / "events.sqlite"), durable=False, publish=publish)
    store.retry()  # as a project does on opening: nothing was left unpublished
    assert not store.backlog
    frame, offsets, segments = parsed([b"one", b"two"])
    last, index = store.append([EventBatch("agg", 2, False)], frame, offsets, segments)
    assert last == [1] and index == 0 and store.backlog  # stored, not yet published
    store.retry()  # still full
    assert store.backlog and published == []
    full[0] = False
    frame, offsets, segments = parsed([b"three"])
    last, index = store.append([EventBatch("agg", 1, False)], frame, offsets, segments)
    assert last == [2] and not store.backlog
    assert [p[-3:] for p in published] == [b"one", b"two", b"ree"]  # in stream order
    assert index == 3
    store.retry()  # nothing left
    assert len(published) == 3
    records = store.read("agg", -1, 10)
    lengths = [int.from_bytes(r[:4], "little") for r in records]
    assert [r[n - 3 : n] for r, n in zip(records, lengths, strict=True)] == [b"one", b"two",
                                                                             b"ree"]
    store.close()


def test_unpublished_events_go_out_when_a_store_opens(tmp_path: Path) -> None:
    path = str(tmp_path / "events.sqlite")

    def refuse(buffer: Any, offsets: Any, segments: Any) -> int:
        raise LogFullError(28, "no space")

    store = EventStore(path, durable=False, publish=refuse)
    frame, offsets, segments = parsed([b"kept"])
    store.append([EventBatch("agg", 1, False)], frame, offsets, segments)
    store.close()
    out: list[int] = []
    store = EventStore(path, durable=False,
                       publish=lambda b, o, s: out.append(len(o) - 1) or 1)
    assert store.backlog  # until it has looked
    store.retry()
    assert out == [1] and not store.backlog
    store.close()
