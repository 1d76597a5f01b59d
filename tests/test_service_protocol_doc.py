"""What docs/protocol.md says, checked against a real server with a client written from that
page (tests/_raw.py): record layout, CRC coverage, segments, indexes, READ's fields and
defaults, request and response step by step, and which error code answers which failure."""

from __future__ import annotations

import itertools
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import crc32c
import pytest
import xxhash

from fluxcore import segment_of
from fluxcore._ext import _proto
from fluxcore.client import Client, Message, MessageType
from fluxcore.client._wire import Codec
from fluxcore.protocol import Guarantee, Op, decode_control

from ._raw import ask, connect, error_code, frame, read_frame, records
from .service_harness import TOKEN, ServerProcess


@pytest.fixture
def small_files_server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data",
                         env={"FLUXCORE_SEGMENT_FILE_SIZE": str(1 << 20)}).start()
    try:
        yield proc
    finally:
        proc.kill()


def publish(server: ServerProcess, payloads: list[bytes], keys: list[str]) -> list[int]:
    with Client.connect(server.address, token=TOKEN, name="publisher") as client:
        indexes = client.publish_batch(MessageType.EVENT, payloads, type="T", keys=keys)
        assert indexes is not None
        return [int(i) for i in indexes]


def test_records_indexes_segments_and_crc_as_documented(server: ServerProcess) -> None:
    for key, segment in (("hello", 35), ("foo", 63), ("user-123", 73), ("", 25)):
        assert xxhash.xxh64(key.encode(), seed=0).intdigest() % 128 == segment
        assert segment_of(key) == segment
    keys = [f"order-{i}" for i in range(50)]
    payloads = [b"p" * (i % 13) for i in range(50)]  # sizes that need padding
    before_ms = int(time.time() * 1000)
    indexes = publish(server, payloads, keys)
    after_ms = int(time.time() * 1000)
    with connect(server, "doc-reader") as sock:
        op, body = ask(sock, Op.READ_FROM_INDEX, 7,
                       {"type": int(MessageType.EVENT), "min_index": indexes[0]})
        assert op == Op.BATCH
        (_start, _end, caught_up, last_index), found = records(body)
    assert caught_up and last_index == indexes[-1]
    assert [r[2] for r in found] == indexes
    for (length, crc, index, segment, message, covered), key, payload in zip(
            found, keys, payloads, strict=True):
        assert length == 24 + len(message)
        assert crc == crc32c.crc32c(struct.pack("<I", length) + covered)
        assert segment == xxhash.xxh64(key.encode(), seed=0).intdigest() % 128
        assert before_ms <= index >> 16 <= after_ms
        data_len = struct.unpack_from("<I", message, 20)[0]
        assert message[len(message) - data_len :] == payload
    assert all(b > a for a, b in itertools.pairwise(indexes))


def test_read_fields_defaults_and_last_index(server: ServerProcess) -> None:
    indexes = publish(server, [b"m%d" % i for i in range(1030)], [f"k{i}" for i in range(1030)])
    with connect(server, "doc-tracker") as sock:
        # Only the required fields, and a last_index: max_size is 1024 messages by default.
        op, body = ask(sock, Op.READ, 2, {"type": int(MessageType.EVENT), "consumer": "d",
                                          "tracker": "t", "last_index": 0})
        assert op == Op.BATCH
        (start, end, caught_up, last_index), found = records(body)
        assert (start, end, caught_up) == (0, 128, False)
        assert [r[2] for r in found] == indexes[:1024] and last_index == indexes[1023]
        # last_index is exclusive; max_size counts messages; client_index keeps no position
        op, body = ask(sock, Op.READ, 3, {
            "type": int(MessageType.EVENT), "consumer": "d2", "tracker": "t", "max_size": 3,
            "client_index": True, "last_index": indexes[10]})
        assert [r[2] for r in records(body)[1]] == indexes[11:14]
        op, body = ask(sock, Op.GET_POSITION, 4, {"type": int(MessageType.EVENT),
                                                  "consumer": "d2"})
        assert decode_control(body) == {"position": []}
        # nil only where the default is nil; wrong types are refused
        op, body = ask(sock, Op.READ, 5, {"type": int(MessageType.EVENT), "consumer": "d3",
                                          "tracker": "t", "max_size": None})
        assert error_code(op, body) == "bad_request"
        op, body = ask(sock, Op.READ, 6, {"type": int(MessageType.EVENT), "consumer": "d3",
                                          "tracker": "t", "type_filter": "(", "last_index": 0})
        assert error_code(op, body) == "bad_request"
        op, body = ask(sock, Op.READ, 7, {
            "type": int(MessageType.EVENT), "consumer": "d3", "tracker": "t", "topic": None,
            "type_filter": None, "last_index": None, "purge_timeout_ms": None,
            "store_position": None, "max_timeout_ms": 100})
        assert op == Op.BATCH  # nil where the default is nil: fine


def test_request_and_response_step_by_step(server: ServerProcess) -> None:
    with Client.connect(server.address, token=TOKEN, name="handler") as handler_client:
        handler_client.consume("shipping", MessageType.COMMAND,
                               lambda m: b"shipped " + m.data, from_index=0)
        with connect(server, "requester") as sock:
            codec = Codec("requester", "raw", "public", TOKEN)
            # 1. listen for results first
            results_read = {"type": int(MessageType.RESULT),
                            "consumer": "raw_$request-handler", "tracker": "requester/results",
                            "ignore_segment": True, "filter_target": True,
                            "client_index": True,
                            "last_index": (int(time.time() * 1000) - 2000) << 16,
                            "max_timeout_ms": 10_000}
            answers: list[Message] = []

            def listen() -> None:
                op, body = ask(sock, Op.READ, 100, results_read)
                assert op == Op.BATCH
                answers.extend(_proto.decode_batch(body, 0, len(body))[4])

            listener = threading.Thread(target=listen)
            listener.start()
            time.sleep(0.3)
            # 2. the request: source = our client id, a request id of ours
            sock.sendall(codec.append(0, MessageType.COMMAND, [b"order 7"], payload_type="Ship",
                                      guarantee=Guarantee.SENT, message_request_id=41))
            listener.join(30)
            assert not listener.is_alive()
    # 3. and 4.: the handler's result, addressed to us, with our request id
    assert len(answers) == 1
    result = answers[0]
    assert (result.request_id, result.target, result.data) == (41, "requester",
                                                               b"shipped order 7")
    assert not result.is_error


def test_error_codes_as_the_table_says(small_files_server: ServerProcess) -> None:
    server = small_files_server
    with connect(server, "doc-errors") as sock:
        # too_large: a message bigger than a 1 MiB segment file holds; the connection goes on
        codec = Codec("doc-errors", "raw", "public", TOKEN)
        sock.sendall(codec.append(3, MessageType.EVENT, [b"x" * (1 << 20)], payload_type="T",
                                  guarantee=Guarantee.STORED))
        op, request_id, body = read_frame(sock)
        assert request_id == 3 and error_code(op, body) == "too_large"
        # bad_frame: an APPEND body that does not parse; the connection goes on
        sock.sendall(frame(Op.APPEND, 4, b"\x02\x02"))
        op, request_id, body = read_frame(sock)
        assert request_id == 4 and error_code(op, body) == "bad_frame"
        # unknown_op, bad_request (a field missing, HELLO again)
        sock.sendall(frame(99, 5))
        op, request_id, body = read_frame(sock)
        assert request_id == 5 and error_code(op, body) == "unknown_op"
        op, body = ask(sock, Op.GET_POSITION, 6, {"type": int(MessageType.EVENT)})
        assert error_code(op, body) == "bad_request"
        op, body = ask(sock, Op.HELLO, 7, {"client_id": "x", "client_name": "x"})
        assert error_code(op, body) == "bad_request"
        sock.sendall(frame(Op.PING, 8))
        assert read_frame(sock) == (Op.PONG, 8, b"")
        # bad_frame on a frame header: answered with request id 0, then closed
        sock.sendall(struct.pack("<IBBHI", 4, Op.PING, 0, 0, 9))
        op, request_id, body = read_frame(sock)
        assert request_id == 0 and error_code(op, body) == "bad_frame"
        with pytest.raises(ConnectionResetError):
            read_frame(sock)
    # auth: a wrong token (closes)
    host, port = server.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as intruder:
        intruder.sendall(Codec("intruder", "raw", "public", "wrong").hello(1))
        op, request_id, body = read_frame(intruder)
        assert request_id == 1 and error_code(op, body) == "auth"
        with pytest.raises(ConnectionResetError):
            read_frame(intruder)


def test_a_batch_ends_at_the_end_of_a_file(small_files_server: ServerProcess) -> None:
    # max_size is an upper bound: a batch holds the messages of one of the log's files at most
    indexes = publish(small_files_server, [b"x" * 1000] * 3000, [f"k{i}" for i in range(3000)])
    with connect(small_files_server, "doc-files") as sock:
        got: list[int] = []
        sizes = []
        while len(got) < 3000:
            op, body = ask(sock, Op.READ, 2, {
                "type": int(MessageType.EVENT), "consumer": "files", "tracker": "t",
                "max_size": 10_000, "client_index": True,
                "last_index": got[-1] if got else 0})
            assert op == Op.BATCH
            batch = [r[2] for r in records(body)[1]]
            assert batch, "an empty batch before the end of the log"
            sizes.append(len(batch))
            got.extend(batch)
    assert got == indexes
    assert len(sizes) >= 3 and max(sizes) < 1100  # ~1,000 records of 1 KB per 1 MiB file
