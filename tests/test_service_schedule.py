"""Scheduled messages against a real server: delivered at their deadline, not before; replaced,
cancelled, looked up; kept across a kill -9 of the server; bad requests refused."""

from __future__ import annotations

import asyncio
import queue
import struct
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from fluxcore import Log
from fluxcore.app import Microclient
from fluxcore.client import AsyncClient, Client, Message, MessageType, ProtocolError, Scheduled
from fluxcore.protocol import Op, decode_control, encode_control, time_from_index

from .service_harness import TOKEN, ServerProcess


def schedule_consumer(client: Client, name: str) -> queue.Queue[tuple[float, Message]]:
    """A consumer of the SCHEDULE log that notes when each message arrived."""
    got: queue.Queue[tuple[float, Message]] = queue.Queue()
    client.consume(name, MessageType.SCHEDULE, lambda m: got.put((time.time(), m)),
                   from_index=0)
    return got


def test_delivered_at_the_deadline_not_before(client: Client) -> None:
    got = schedule_consumer(client, "timer")
    deadline = time.time() + 1.0
    sid = client.schedule(b"wake up", deadline, type="Reminder", key="user-1",
                          metadata={"why": "test"})
    assert sid is not None
    pending = client.get_schedule(sid)
    assert isinstance(pending, Scheduled)
    assert pending.deadline_ms == round(deadline * 1000)
    assert pending.message.data == b"wake up" and pending.message.type == "Reminder"
    assert pending.message.metadata == {"why": "test"}
    with pytest.raises(queue.Empty):
        got.get(timeout=0.5)  # not before the deadline
    arrived, message = got.get(timeout=10)
    assert arrived >= deadline
    assert message.data == b"wake up" and message.type == "Reminder"
    assert message.metadata == {"why": "test"}
    # The index is the deadline, to the millisecond (the first index of that millisecond).
    assert message.index == round(deadline * 1000) << 16
    assert time_from_index(message.index) == round(deadline * 1000)
    # A fired schedule stays findable, as in the original, until cancelled.
    fired = client.get_schedule(sid)
    assert fired is not None and fired.deadline_ms == round(deadline * 1000)
    assert fired.message.data == b"wake up" and fired.message.type == "Reminder"
    assert fired.message.index == message.index
    assert not client.cancel_schedule(sid)  # it was not pending any more
    assert client.get_schedule(sid) is None  # but it is gone now


def test_a_naive_datetime_deadline_is_local_time(client: Client,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A datetime without tzinfo is the client's local time (the TZ of its process), as
    datetime.timestamp() takes it, in client.schedule and app.schedule; an aware one is that
    moment wherever the client is."""
    monkeypatch.setenv("TZ", "XST-05:30")  # 5 h 30 min east of UTC: neither UTC nor whole hours
    time.tzset()
    try:
        naive = datetime(2100, 1, 1, 12, 0)
        client.schedule(b"local", naive, schedule_id="naive")
        client.schedule(b"utc", naive.replace(tzinfo=UTC), schedule_id="aware")
        local = client.get_schedule("naive")
        utc = client.get_schedule("aware")
        assert local is not None and utc is not None
        assert utc.deadline_ms == 4102488000000  # 2100-01-01T12:00:00Z
        assert local.deadline_ms == utc.deadline_ms - (5 * 3600 + 30 * 60) * 1000
        app = Microclient("naive-deadlines").start(client)  # app.schedule: the same rule
        try:
            app.schedule(b"app", naive, schedule_id="app-naive")
        finally:
            app.stop()
        from_app = client.get_schedule("app-naive")
        assert from_app is not None and from_app.deadline_ms == local.deadline_ms
    finally:
        monkeypatch.undo()  # the TZ the process had
        time.tzset()


def test_replace_cancel_and_if_absent(client: Client) -> None:
    got = schedule_consumer(client, "timer")
    soon = timedelta(seconds=0.6)
    client.schedule(b"first", soon, schedule_id="a")
    client.schedule(b"second", soon, schedule_id="a")  # replaces "first"
    assert client.schedule(b"third", soon, schedule_id="a", if_absent=True) is None
    client.schedule(b"cancelled", soon, schedule_id="b")
    assert client.cancel_schedule("b")
    assert not client.cancel_schedule("b")
    client.schedule(b"later", timedelta(seconds=1.5), schedule_id="c")
    delivered = [got.get(timeout=10)[1].data, got.get(timeout=10)[1].data]
    assert delivered == [b"second", b"later"]  # in deadline order, each once
    with pytest.raises(queue.Empty):
        got.get(timeout=0.5)


def test_same_deadline_counts_up_and_past_deadline_is_now(client: Client) -> None:
    got = schedule_consumer(client, "timer")
    deadline_ms = int(time.time() * 1000) + 500
    for name in ("b", "a", "c"):
        client.schedule(name.encode(), deadline_ms / 1000, schedule_id=f"same-{name}")
    delivered = [got.get(timeout=10)[1] for _ in range(3)]
    # one millisecond, three schedules: indexes count up from the deadline's, in id order
    assert [m.data for m in delivered] == [b"a", b"b", b"c"]
    assert [m.index for m in delivered] == [(deadline_ms << 16) + i for i in range(3)]
    for message, name in zip(delivered, "abc", strict=True):
        fired = client.get_schedule(f"same-{name}")
        assert fired is not None and fired.message.index == message.index
        assert fired.deadline_ms == deadline_ms
    # A deadline in the past counts as the moment it was scheduled (the original's rule).
    before = int(time.time() * 1000)
    client.schedule(b"late", before / 1000 - 3600, schedule_id="late")
    late = got.get(timeout=10)[1]
    found = client.get_schedule("late")
    assert found is not None and found.deadline_ms >= before
    assert late.index == found.deadline_ms << 16


def test_fired_schedules_stay_until_replaced_or_cancelled(client: Client) -> None:
    got = schedule_consumer(client, "timer")
    client.schedule(b"one", timedelta(seconds=0.2), schedule_id="kept")
    first = got.get(timeout=10)[1]
    # if_absent finds the fired schedule: nothing new is scheduled
    assert client.schedule(b"two", timedelta(seconds=0.2), schedule_id="kept",
                           if_absent=True) is None
    found = client.get_schedule("kept")
    assert found is not None and found.message.data == b"one"
    # scheduling the id again (without if_absent) makes it pending with the new message
    client.schedule(b"three", timedelta(seconds=0.3), schedule_id="kept")
    pending = client.get_schedule("kept")
    assert pending is not None and pending.message.data == b"three"
    second = got.get(timeout=10)[1]
    assert second.data == b"three" and second.index > first.index
    with pytest.raises(queue.Empty):
        got.get(timeout=0.5)


def test_many_due_at_once_in_deadline_order(client: Client) -> None:
    got = schedule_consumer(client, "timer")
    base = time.time() + 0.5
    for i in reversed(range(300)):  # scheduled last-first, delivered by deadline
        client.schedule(str(i).encode(), base + i / 1000, schedule_id=f"s{i}")
    delivered = [got.get(timeout=10)[1] for _ in range(300)]
    assert [m.data for m in delivered] == [str(i).encode() for i in range(300)]
    indexes = [m.index for m in delivered]
    assert indexes == sorted(indexes)


def test_past_deadline_fires_at_once(client: Client) -> None:
    got = schedule_consumer(client, "timer")
    client.schedule(b"overdue", datetime.now(UTC) - timedelta(hours=1))
    _, message = got.get(timeout=10)
    assert message.data == b"overdue"


def test_schedules_survive_kill9(server: ServerProcess) -> None:
    with Client.connect(server.address, token=TOKEN, name="before") as client:
        client.schedule(b"during", time.time() + 1.0, schedule_id="during")  # due while down
        client.schedule(b"after", time.time() + 4.0, schedule_id="after")
        client.schedule(b"cancelled", time.time() + 1.0, schedule_id="gone")
        client.cancel_schedule("gone")
    server.kill()
    time.sleep(1.5)
    server.start()
    with Client.connect(server.address, token=TOKEN, name="after") as client:
        pending = client.get_schedule("after")
        assert pending is not None and pending.message.data == b"after"
        got = schedule_consumer(client, "timer")
        during = got.get(timeout=10)[1]
        assert during.data == b"during"
        # fired late (the server was down at its deadline), its index is still the deadline
        found = client.get_schedule("during")
        assert found is not None and during.index == found.deadline_ms << 16
        arrived, message = got.get(timeout=10)
        assert message.data == b"after" and arrived >= time.time() - 10
        with pytest.raises(queue.Empty):
            got.get(timeout=0.5)


def test_async_client_schedules(server: ServerProcess) -> None:
    async def main() -> None:
        async with await AsyncClient.connect(server.address, token=TOKEN, name="a") as client:
            got: asyncio.Queue[Message] = asyncio.Queue()
            await client.consume("timer", MessageType.SCHEDULE, got.put_nowait, from_index=0)
            sid = await client.schedule(b"x", timedelta(seconds=0.3), type="T")
            assert sid is not None
            found = await client.get_schedule(sid)
            assert found is not None and found.message.data == b"x"
            await client.schedule(b"y", timedelta(seconds=0.3), schedule_id="y")
            assert await client.cancel_schedule("y")
            message = await asyncio.wait_for(got.get(), 10)
            assert message.data == b"x" and message.type == "T"
            fired = await client.get_schedule(sid)
            assert fired is not None and fired.message.index == message.index
            assert fired.deadline_ms << 16 == message.index
            assert not await client.cancel_schedule(sid)
            assert await client.get_schedule(sid) is None

    asyncio.run(main())


def test_bad_schedules_are_refused(client: Client) -> None:
    with pytest.raises(ProtocolError, match="SCHEDULE"):
        client.publish(MessageType.SCHEDULE, b"no", type="T")
    with pytest.raises(ProtocolError, match="1 to 200"):
        client.schedule(b"x", time.time(), schedule_id="")
    with pytest.raises(ProtocolError, match="1 to 200"):
        client.cancel_schedule("x" * 201)
    with pytest.raises(TypeError):
        client.schedule(b"x", "tomorrow")  # type: ignore[arg-type]
    codec = client._codec

    def raw(body: bytes) -> Exception:
        future = client._send(
            lambda rid: bytes(_frame(rid, body)), answer=True)
        assert future is not None
        op, answer = future.result(10)
        assert op == Op.ERROR
        return ProtocolError("", decode_control(answer)["message"])

    good = codec.schedule(0, [("id", 0, False)], [b"p"], payload_type="T")[12:]
    (control_len,) = struct.unpack_from("<I", good)
    append_body = good[4 + control_len :]
    assert "shorter" in str(raw(b"\x01"))
    assert "past the frame" in str(raw(struct.pack("<I", 1000) + b"x"))
    two = encode_control({"schedules": [{"id": "a", "deadline": 0}, {"id": "b", "deadline": 0}]})
    assert "2 schedules for 1 messages" in str(raw(struct.pack("<I", len(two)) + two
                                                   + append_body))
    wrong = encode_control({"schedules": [{"id": "a", "deadline": "soon"}]})
    assert "wrong type" in str(raw(struct.pack("<I", len(wrong)) + wrong + append_body))
    huge = encode_control({"schedules": [{"id": "a", "deadline": 1 << 60}]})
    assert "epoch milliseconds" in str(raw(struct.pack("<I", len(huge)) + huge + append_body))
    # The connection and the server go on.
    assert client.schedule(b"fine", time.time() + 60) is not None


def _frame(request_id: int, body: bytes) -> bytes:
    from fluxcore._ext import _proto

    return bytes(_proto.frame_header(Op.SCHEDULE, request_id, len(body))) + body


def test_a_store_from_before_fired_schedules_were_kept_opens(tmp_path: Path) -> None:
    import sqlite3

    from server.schedules import ScheduleStore

    path = str(tmp_path / "schedules.sqlite")
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE schedules (id TEXT PRIMARY KEY, deadline INTEGER NOT NULL,"
                " segment INTEGER NOT NULL, message BLOB NOT NULL)")
    old.execute("CREATE INDEX schedules_by_deadline ON schedules (deadline, id)")
    old.execute("INSERT INTO schedules VALUES ('s', 123, 7, x'01')")
    old.commit()
    old.close()

    def no_log() -> Log:
        raise AssertionError("a pending schedule is read from the store")

    store = ScheduleStore(path, durable=False, log=no_log, appended=lambda: None)
    try:
        assert store.get("s") == (123, 7, b"\x01", None)
        assert store.pending() == 1
    finally:
        store.close()


def test_a_fired_schedule_goes_with_its_message(tmp_path: Path) -> None:
    # Once the schedule log's retention drops the message, the fired schedule is gone too.
    from server.schedules import Schedule, ScheduleStore

    log = Log(tmp_path / "log", segment_file_size=1 << 20, retention_bytes=2 << 20)
    store = ScheduleStore(str(tmp_path / "schedules.sqlite"), durable=False,
                          log=lambda: log, appended=lambda: None)

    async def fire() -> None:
        offsets = np.array([0, 5], dtype=np.int64)
        store.schedule([Schedule("s", 0, False)], b"hello", offsets,
                       np.array([3], dtype=np.uint8))
        while store.pending():
            await asyncio.sleep(0.01)

    try:
        asyncio.run(fire())
        found = store.get("s")
        assert found is not None and found[1:3] == (3, b"hello")
        assert found[3] == log.read(0).indexes[0]  # where it is in the log
        for _ in range(4):  # four more files: the first one, with the message, is dropped
            log.append_batch([b"x" * 100_000] * 10)
        assert log.read(0).payloads()[0] != b"hello"  # retention dropped it
        assert store.get("s") is None
    finally:
        store.close()
        log.close()
