"""The clients' receive path: decode_batch turns a BATCH body into Messages whose fields read
as the protocol gives them, with no more objects per message than it needs."""

from __future__ import annotations

import asyncio
import gc
import struct
import sys

import pytest

from fluxcore._ext import _proto
from fluxcore.client import AsyncClient, Client, MessageType
from fluxcore.protocol import batch_body, encode_metadata

from .service_harness import TOKEN, ServerProcess

_MSG_HEADER = struct.Struct("<BBHHHHHIIIqq")  # docs/protocol.md, "A message"
_REC_HEADER = struct.Struct("<IIQHHI")  # length, crc, index, segment, flags, reserved


def record(index: int, message_id: bytes, data: bytes, *, type_: bytes = b"OrderPlaced",
           source: bytes = b"client-1", metadata: bytes = b"") -> bytes:
    """One record in the log's layout (padded to 8 bytes) carrying one message."""
    fields = type_ + message_id + source + metadata + data
    message = _MSG_HEADER.pack(1, 0, len(type_), len(message_id), len(source), 0, 0, 3,
                               len(metadata), len(data), 1_700_000_000_000, -1) + fields
    rec = _REC_HEADER.pack(_REC_HEADER.size + len(message), 0, index, index % 128, 0, 0) + message
    return rec + bytes(-len(rec) % 8)


def decode(records: list[bytes]) -> list[_proto.Message]:
    body = batch_body(records)
    messages: list[_proto.Message] = _proto.decode_batch(body, 0, len(body))[4]
    return messages


@pytest.mark.parametrize("message_id", [
    b"", b"abc-1", b"0123456789abcdef0123456789abcdef",  # a uuid's hex
    b"12345678-1234-1234-1234-123456789abc",  # a uuid with dashes
    b"x" * 39, b"y" * 40, b"z" * 41, b"w" * 300, "caf\u00e9-\u4e2d".encode(),
])
def test_message_id_reads_as_sent(message_id: bytes) -> None:
    messages = decode([record(7, message_id, b"{}"), record(8, message_id + b"2", b"[]")])
    assert [m.message_id for m in messages] == [message_id.decode(),
                                                message_id.decode() + "2"]
    assert messages[0].message_id is messages[0].message_id  # decoded once
    assert [m.data for m in messages] == [b"{}", b"[]"]
    assert [m.index for m in messages] == [7, 8]
    assert messages[0].type == "OrderPlaced" and messages[0].source == "client-1"
    assert messages[0].revision == 3 and messages[0].timestamp == 1_700_000_000_000


def test_message_id_that_is_not_utf8_reads_with_replacement_characters() -> None:
    message = decode([record(1, b"id-\xff\xfe", b"x")])[0]
    assert message.message_id == "id-\ufffd\ufffd"


def test_message_outlives_the_body_it_was_decoded_from() -> None:
    body = bytearray(batch_body([record(5, b"kept-id", b"payload")]))
    message = _proto.decode_batch(body, 0, len(body))[4][0]
    body[:] = bytes(len(body))  # the client reuses its receive buffer
    del body
    assert (message.message_id, message.data, message.type) == ("kept-id", b"payload",
                                                                 "OrderPlaced")
    assert "index=5" in repr(message)


def test_metadata_reads_as_sent() -> None:
    raw = encode_metadata({"$trace.id": "t-1"})
    assert raw is not None
    with_metadata, without = decode([record(1, b"a", b"x", metadata=raw),
                                     record(2, b"b", b"y")])
    assert with_metadata.metadata == {"$trace.id": "t-1"} and without.metadata == {}


def test_decode_batch_keeps_two_objects_per_message() -> None:
    # A Message and its data bytes; the message id (uuid-sized) is read from the Message
    # itself on first use, not made for every message a consumer gets.
    count = 1000
    body = batch_body([record(i, f"{i:032x}".encode(), b'{"id": %d}' % i)
                       for i in range(count)])
    _proto.decode_batch(body, 0, len(body))  # warm: caches and free lists
    before = sys.getallocatedblocks()
    messages = _proto.decode_batch(body, 0, len(body))[4]
    made = sys.getallocatedblocks() - before
    assert len(messages) == count
    assert made <= 2 * count + 50, f"{made / count:.2f} objects per message"


def test_messages_are_not_tracked_by_the_garbage_collector() -> None:
    # One per message consumed: tracking them would run a collection every few hundred.
    message = decode([record(1, b"an-id", b"x", metadata=encode_metadata({"k": "v"}) or b"")])[0]
    assert message.metadata == {"k": "v"}
    assert not gc.is_tracked(message)


def test_both_clients_read_batches_split_over_many_receives(server: ServerProcess) -> None:
    # 400 messages of 8 KiB: the answer (about 3.3 MB) arrives in many socket reads, and the
    # small frames around it (acks) whole, many to one read.
    payloads = [bytes([i % 251]) * 8192 for i in range(400)]

    async def with_async_client() -> list[_proto.Message]:
        async with await AsyncClient.connect(server.address, token=TOKEN, name="a") as client:
            await client.publish_batch(MessageType.EVENT, payloads, type="Big")
            for payload in payloads[:50]:
                await client.publish(MessageType.EVENT, payload[:10], type="Small")
            return await client.read_from_index(MessageType.EVENT, max_size=1000)

    read_async = asyncio.run(with_async_client())
    with Client.connect(server.address, token=TOKEN, name="s") as client:
        read_sync = client.read_from_index(MessageType.EVENT, max_size=1000)
    for messages in (read_async, read_sync):
        assert [m.data for m in messages] == payloads + [p[:10] for p in payloads[:50]]
        assert len({m.message_id for m in messages}) == 450


def test_message_fields_are_read_only_and_decoded_once() -> None:
    raw = encode_metadata({"k": "v"})
    assert raw is not None
    message = decode([record(9, b"m-1", b"x", metadata=raw)])[0]
    assert message.metadata is message.metadata and message.message_id is message.message_id
    for name in ("data", "type", "message_id", "source", "target", "format", "metadata",
                 "revision", "timestamp", "request_id", "index", "segment", "flags"):
        with pytest.raises(AttributeError):
            setattr(message, name, getattr(message, name))
    assert (message.target, message.format, message.request_id, message.segment,
            message.flags, message.is_error) == ("", "", -1, 9, 0, False)
