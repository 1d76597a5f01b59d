"""Event sourcing against a real server: a stream per aggregate, numbered from 0, published to
the EVENT log unless store-only; read back in pages; deleted; relationships; a kill -9 loses no
committed event and publishes what it interrupted; bad requests are refused."""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import struct

import pytest

from fluxcore import segment_of
from fluxcore.client import AsyncClient, Client, Message, MessageType, ProtocolError, Relationship
from fluxcore.protocol import Op, decode_control, encode_control

from .service_harness import TOKEN, ServerProcess


def event_consumer(client: Client, name: str) -> queue.Queue[Message]:
    got: queue.Queue[Message] = queue.Queue()
    client.consume(name, MessageType.EVENT, got.put, from_index=0)
    return got


def test_streams_numbered_and_published(client: Client) -> None:
    got = event_consumer(client, "projection")
    assert client.append_events("order-1", [b"placed", b"paid"],
                                types=["OrderPlaced", "OrderPaid"]) == 1
    assert client.append_events("order-2", [b"placed"], types="OrderPlaced") == 0
    assert client.append_events("order-1", [b"shipped"], types="OrderShipped",
                                metadata={"user": "u1"}) == 2
    events = client.get_events("order-1")
    assert [(e.index, e.data, e.type) for e in events] == [
        (0, b"placed", "OrderPlaced"), (1, b"paid", "OrderPaid"), (2, b"shipped", "OrderShipped")]
    assert events[2].metadata == {"user": "u1"}
    assert [e.data for e in client.get_events("order-1", after_sequence=0)] == [b"paid",
                                                                                b"shipped"]
    assert client.get_events("nobody") == []
    # Published on the EVENT log too, routed by the aggregate id, in order per aggregate.
    published = [got.get(timeout=10) for _ in range(4)]
    by_aggregate = [m.data for m in published if m.segment == segment_of("order-1")]
    if segment_of("order-1") != segment_of("order-2"):
        assert by_aggregate == [b"placed", b"paid", b"shipped"]
    assert {m.message_id for m in published} == {e.message_id for e in events} | {
        client.get_events("order-2")[0].message_id}


def test_store_only_stays_out_of_the_log(client: Client) -> None:
    got = event_consumer(client, "projection")
    client.append_events("agg", [b"hidden"], store_only=True)
    client.append_events("agg", [b"seen"])
    assert got.get(timeout=10).data == b"seen"
    with pytest.raises(queue.Empty):
        got.get(timeout=0.5)
    assert [e.data for e in client.get_events("agg")] == [b"hidden", b"seen"]


def test_paged_read_and_delete(client: Client) -> None:
    payloads = [str(i).encode() for i in range(2500)]
    assert client.append_events("big", payloads, store_only=True) == 2499
    events = client.get_events("big", page_size=700)  # four pages
    assert [e.data for e in events] == payloads
    assert [e.index for e in events] == list(range(2500))
    assert client.delete_events("big")
    assert not client.delete_events("big")
    assert client.get_events("big") == []
    assert client.append_events("big", [b"again"], store_only=True) == 0  # a new stream


def test_relationships(client: Client) -> None:
    client.update_relationships(associations=[("order-1", "Order", "line-1"),
                                              ("order-1", "Order", "line-2"),
                                              ("cart-9", "Cart", "line-1")])
    assert client.get_aggregate_ids("line-1") == {"order-1": "Order", "cart-9": "Cart"}
    assert client.get_relationships("line-2") == [Relationship("order-1", "Order", "line-2")]
    client.update_relationships(dissociations=[("cart-9", "Cart", "line-1")])
    assert client.get_aggregate_ids("line-1") == {"order-1": "Order"}
    client.repair_relationships("order-1", "Order", ["line-3"])
    assert client.get_aggregate_ids("line-1") == {}
    assert client.get_aggregate_ids("line-3") == {"order-1": "Order"}


def test_events_survive_kill9_and_unpublished_go_out(server: ServerProcess) -> None:
    with Client.connect(server.address, token=TOKEN, name="w") as client:
        for i in range(20):
            client.append_events(f"a{i % 3}", [f"e{i}".encode()])
    server.kill()
    # A crash after the commit, before the EVENT log append: the stream has an event that was
    # never marked published.
    db = sqlite3.connect(server.data_dir / "public" / "events.sqlite")
    (upto,) = db.execute("SELECT value FROM meta WHERE key = 'published_upto'").fetchone()
    db.execute("UPDATE meta SET value = ? WHERE key = 'published_upto'", (upto - 1,))
    db.commit()
    db.close()
    server.start()
    with Client.connect(server.address, token=TOKEN, name="r") as client:
        assert [e.data for e in client.get_events("a1")] == [
            f"e{i}".encode() for i in range(20) if i % 3 == 1]
        got = event_consumer(client, "all")
        published = [got.get(timeout=10).data for _ in range(21)]
        assert sorted(published[:20]) == sorted(f"e{i}".encode() for i in range(20))
        assert published[20] == b"e19"  # published again after the restart: at least once
        assert client.append_events("a0", [b"next"]) == 7


def test_async_client_events(server: ServerProcess) -> None:
    async def main() -> None:
        async with await AsyncClient.connect(server.address, token=TOKEN, name="a") as client:
            assert await client.append_events("x", [b"1", b"2"], types="T") == 1
            events = await client.get_events("x")
            assert [(e.index, e.data) for e in events] == [(0, b"1"), (1, b"2")]
            await client.update_relationships([("x", "X", "e")])
            assert await client.get_aggregate_ids("e") == {"x": "X"}
            assert await client.delete_events("x")

    asyncio.run(main())


def test_bad_event_requests(client: Client) -> None:
    with pytest.raises(ProtocolError, match="1 to 1000"):
        client.append_events("", [b"x"])
    with pytest.raises(ProtocolError, match="1 to 1000"):
        client.get_events("x" * 1001)
    with pytest.raises(ProtocolError, match="max_size"):
        client.get_events("x", page_size=0)
    with pytest.raises(ProtocolError, match="aggregate id, aggregate type, entity id"):
        client._call(Op.UPDATE_RELATIONSHIPS, {"associations": [["a", "b"]]})
    frame = client._codec.append_events(0, "agg", [b"p"], types="T", metadata=None,
                                        store_only=False)[12:]
    (control_len,) = struct.unpack_from("<I", frame)
    append_body = frame[4 + control_len :]
    wrong = encode_control({"batches": [{"aggregate": "agg", "count": 2}]})

    def send(body: bytes) -> str:
        from fluxcore._ext import _proto

        future = client._send(lambda rid: bytes(
            _proto.frame_header(Op.APPEND_EVENTS, rid, len(body))) + body, answer=True)
        assert future is not None
        op, answer = future.result(10)
        assert op == Op.ERROR
        return str(decode_control(answer)["message"])

    assert "count 2 events" in send(struct.pack("<I", len(wrong)) + wrong + append_body)
    negative = encode_control({"batches": [{"aggregate": "agg", "count": -1}]})
    assert "negative" in send(struct.pack("<I", len(negative)) + negative + append_body)
    schedule = client._codec.schedule(0, [("s", 0, False)], [b"p"], payload_type="T")[12:]
    assert "of type EVENT" in send(schedule)
    # Nothing of a refused request was stored; the connection goes on.
    assert client.get_events("agg") == []
    assert client.append_events("agg", [b"ok"]) == 0
