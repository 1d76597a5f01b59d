"""Scheduled messages against a real server: delivered at their deadline, not before; replaced,
cancelled, looked up; kept across a kill -9 of the server; bad requests refused."""

from __future__ import annotations

import asyncio
import queue
import struct
import time
from datetime import UTC, datetime, timedelta

import pytest

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
    # The index carries the deadline: the server was up, so to within a few milliseconds.
    assert abs(time_from_index(message.index) / 1000 - deadline) < 0.2
    assert client.get_schedule(sid) is None  # fired: no longer pending
    assert not client.cancel_schedule(sid)


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
        assert got.get(timeout=10)[1].data == b"during"
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
