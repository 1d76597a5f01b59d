"""Reads that span the log's segment files. A new log's first file holds 1 MiB, so a few
thousand messages already cross a file boundary: READ_FROM_INDEX must still return up to
`max_size` messages, and READ's `caught_up` must not say 1 while messages remain."""

from __future__ import annotations

from fluxcore.client import Client, MessageType
from fluxcore.protocol import Op

from ._raw import ask, connect, records
from .service_harness import TOKEN, ServerProcess

COUNT = 9_000  # about 3 MB of records: past the first (1 MiB) file and into the second
PAYLOAD = b"b" * 300


def publish_many(server: ServerProcess) -> list[int]:
    with Client.connect(server.address, token=TOKEN, name="publisher") as client:
        indexes = client.publish_batch(MessageType.EVENT, [PAYLOAD] * COUNT, type="T")
        assert indexes is not None
        return [int(i) for i in indexes]


def test_read_from_index_fills_max_size_across_files(server: ServerProcess) -> None:
    indexes = publish_many(server)
    with Client.connect(server.address, token=TOKEN, name="reader") as client:
        got = client.read_from_index(MessageType.EVENT, 0, max_size=COUNT)
        assert [m.index for m in got] == indexes
        got = client.read_from_index(MessageType.EVENT, indexes[100], max_size=COUNT - 200)
        assert [m.index for m in got] == indexes[100:COUNT - 100]
    with connect(server, "raw-reader") as sock:
        op, body = ask(sock, Op.READ_FROM_INDEX, 7, {"type": int(MessageType.EVENT),
                                                    "min_index": 0, "max_size": COUNT - 1})
        assert op == Op.BATCH
        (_start, _end, caught_up, last_index), found = records(body)
        assert len(found) == COUNT - 1 and not caught_up and last_index == indexes[-2]
        op, body = ask(sock, Op.READ_FROM_INDEX, 8, {"type": int(MessageType.EVENT),
                                                    "min_index": 0, "max_size": COUNT + 1})
        (_start, _end, caught_up, last_index), found = records(body)
        assert len(found) == COUNT and caught_up and last_index == indexes[-1]


def test_read_is_caught_up_only_at_the_end(server: ServerProcess) -> None:
    indexes = publish_many(server)
    seen: list[int] = []
    with connect(server, "raw-tracker") as sock:
        request_id = 10
        while True:
            op, body = ask(sock, Op.READ, request_id, {
                "type": int(MessageType.EVENT), "consumer": "c", "tracker": "t",
                "max_size": COUNT, "max_timeout_ms": 0, "last_index": seen[-1] if seen else 0,
                "client_index": bool(seen)})
            assert op == Op.BATCH
            (_start, _end, caught_up, _last), found = records(body)
            seen += [record[2] for record in found]
            if caught_up:
                break
            assert len(seen) < COUNT, "caught_up stayed 0 with every message read"
            request_id += 1
    assert seen == indexes


def test_read_from_index_stops_near_16_mib(server: ServerProcess) -> None:
    big = b"m" * (3 << 20)
    with Client.connect(server.address, token=TOKEN, name="publisher") as client:
        indexes = [client.publish(MessageType.EVENT, big, type="Big") for _ in range(8)]
    with connect(server, "raw-reader") as sock:
        got: list[int] = []
        request_id = 20
        while True:
            op, body = ask(sock, Op.READ_FROM_INDEX, request_id, {
                "type": int(MessageType.EVENT), "min_index": got[-1] + 1 if got else 0,
                "max_size": 100})
            assert op == Op.BATCH
            (_start, _end, caught_up, last_index), found = records(body)
            assert 0 < len(found) <= 6  # 16 MiB and at most one record more
            assert sum(record[0] for record in found) <= (16 << 20) + len(big) + 1024
            got += [record[2] for record in found]
            assert last_index == got[-1]
            if caught_up:
                break
            request_id += 1
            assert request_id < 40
    assert got == indexes
