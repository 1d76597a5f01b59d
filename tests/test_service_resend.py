"""A resent APPEND whose batch the log holds only in part (the server died in the middle of
storing it): acknowledged only once every message is in the log, each exactly once, with the
index of each message as the ACK gives it (docs/protocol.md, "Resending without duplicates")."""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

import fluxcore
from fluxcore._ext import _proto
from fluxcore.client import Client, MessageType
from fluxcore.client._wire import Codec, ack_indexes
from fluxcore.protocol import Guarantee, Op

from .service_harness import TOKEN, ServerProcess
from .test_service_client import RawConnection, resent

SEGMENT_FILE_SIZE = 1 << 20
SMALL_FILES = {"FLUXCORE_SEGMENT_FILE_SIZE": str(SEGMENT_FILE_SIZE)}


def new_codec() -> Codec:
    return Codec("raw-client", "raw", "public", TOKEN)


def event_log_path(data: Path) -> Path:
    return data / "public" / "logs" / "event"


def store_part(data: Path, frame: bytes, first: int, stop: int) -> None:
    """Writes messages [first, stop) of an APPEND frame into the event log, as the server's
    own append does (same bytes, same segments): what a kill -9 in the middle leaves."""
    _type, _guarantee, _topic, offsets, segments, _id = _proto.append_parse(
        frame, 12, len(frame))
    with fluxcore.Log(event_log_path(data), segment_file_size=SEGMENT_FILE_SIZE) as log:
        log.append_buffer(frame, offsets[first : stop + 1], segments=segments[first:stop])


def message_ids(frame: bytes) -> list[bytes]:
    _type, _guarantee, _topic, offsets, _segs, _id = _proto.append_parse(frame, 12, len(frame))
    out = []
    for start in offsets[:-1]:
        start = int(start)
        type_len, id_len = struct.unpack_from("<HH", frame, start + 2)
        out.append(frame[start + 40 + type_len : start + 40 + type_len + id_len])
    return out


def stored_ids(address: str) -> list[tuple[int, bytes]]:
    """(index, message id) of every message of the event log, in log order."""
    with Client.connect(address, token=TOKEN) as client:
        out: list[tuple[int, bytes]] = []
        after = 0
        while True:
            messages = client.read_from_index(MessageType.EVENT, after, 10_000)
            if not messages:
                return out
            out += [(m.index, m.message_id.encode()) for m in messages]
            after = messages[-1].index + 1


def check_acked(ack: tuple[int, int, bytes], request_id: int, frame: bytes,
                log: Sequence[tuple[int, bytes]]) -> np.ndarray:
    op, rid, body = ack
    assert (op, rid) == (Op.ACK, request_id)
    indexes = ack_indexes(body)
    ids = message_ids(frame)
    assert len(indexes) == len(ids)
    by_id: dict[bytes, list[int]] = {}
    for index, message_id in log:
        by_id.setdefault(message_id, []).append(index)
    # Every message of the batch is stored exactly once, under the index the ACK gives it.
    assert [by_id.get(i) for i in ids] == [[int(x)] for x in indexes]
    return indexes


def test_resend_stores_the_missing_suffix_of_a_partly_stored_batch(tmp_path: Path) -> None:
    data = tmp_path / "data"
    raw_codec = new_codec()
    payloads = [b"m%04d" % i + b"x" * (3 + i * 37 % 1500) for i in range(3000)]
    frame = raw_codec.append(7, MessageType.EVENT, payloads, payload_type="T",
                             guarantee=Guarantee.STORED)
    # The server died after storing the first 1,654 messages: more than one segment file.
    store_part(data, frame, 0, 1654)
    assert len(list(event_log_path(data).glob("*.seg"))) >= 2
    server = ServerProcess(data, env=SMALL_FILES).start()
    try:
        raw = RawConnection(server.address, raw_codec)
        raw.sock.sendall(resent(frame))
        ack = raw.read()
        log = stored_ids(server.address)
        assert len(log) == 3000
        indexes = check_acked(ack, 7, frame, log)
        assert len(ack[2]) == 24  # two ranges: the stored prefix, then the suffix stored now
        # Asked again (the ACK was lost too): the same answer, nothing stored.
        raw.sock.sendall(resent(frame))
        assert raw.read() == ack
        raw.close()
        server.kill()
        server.start()
        raw = RawConnection(server.address, raw_codec)
        raw.sock.sendall(resent(frame))  # after a restart: found in the log, same indexes
        again = raw.read()
        assert np.array_equal(ack_indexes(again[2]), indexes)
        raw.close()
        assert stored_ids(server.address) == log
    finally:
        server.kill()


def test_resend_after_two_cut_attempts_finds_every_stored_run(tmp_path: Path) -> None:
    """The first append stored 3 messages, a resend stored 2 more before the server died
    again, with another client's message in between: the next resend stores the last 5."""
    data = tmp_path / "data"
    codec = new_codec()
    frame = codec.append(9, MessageType.EVENT, [b"p%d" % i for i in range(10)],
                         payload_type="T", guarantee=Guarantee.STORED)
    other = new_codec().append(1, MessageType.EVENT, [b"other"],
                                              payload_type="T", guarantee=Guarantee.STORED)
    store_part(data, frame, 0, 3)
    store_part(data, other, 0, 1)
    store_part(data, frame, 3, 5)
    server = ServerProcess(data, env=SMALL_FILES).start()
    try:
        raw = RawConnection(server.address, codec)
        raw.sock.sendall(resent(frame))
        ack = raw.read()
        raw.close()
        log = stored_ids(server.address)
        assert len(log) == 11
        indexes = check_acked(ack, 9, frame, log)
        assert len(ack[2]) == 36  # three runs of consecutive indexes
        assert list(indexes) == sorted(indexes)
        with Client.connect(server.address, token=TOKEN) as client:
            stored = client.read_from_index(MessageType.EVENT, 0, 100)
        assert [m.data for m in stored] == [b"p0", b"p1", b"p2", b"other", b"p3", b"p4",
                                            b"p5", b"p6", b"p7", b"p8", b"p9"]
    finally:
        server.kill()


def test_resend_of_a_fully_stored_batch_stores_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    codec = new_codec()
    frame = codec.append(3, MessageType.EVENT, [b"a", b"b", b"c"], payload_type="T",
                         guarantee=Guarantee.STORED)
    store_part(data, frame, 0, 3)
    server = ServerProcess(data, env=SMALL_FILES).start()
    try:
        raw = RawConnection(server.address, codec)
        raw.sock.sendall(resent(frame))
        ack = raw.read()
        raw.close()
        log = stored_ids(server.address)
        assert len(log) == 3
        check_acked(ack, 3, frame, log)
        assert len(ack[2]) == 12  # one range, as for any fresh append
    finally:
        server.kill()


@pytest.mark.parametrize("skew_s", [9.0, -3600.0])
def test_resend_is_found_whatever_the_clock_of_the_client(tmp_path: Path, skew_s: float
                                                          ) -> None:
    """The log is searched from 10 s before the batch's timestamp: a client's clock may be up
    to 10 s ahead of the server's, and any amount behind."""
    data = tmp_path / "data"
    frame, _next = _proto.encode_append(
        5, int(MessageType.EVENT), int(Guarantee.STORED), None,
        [b"s%d" % i for i in range(6)], "T", None, "raw-client", "skewed-", 0,
        timestamp=int((time.time() + skew_s) * 1000))
    store_part(data, frame, 0, 2)
    server = ServerProcess(data, env=SMALL_FILES).start()
    try:
        raw = RawConnection(server.address)
        raw.sock.sendall(resent(frame))
        ack = raw.read()
        raw.close()
        log = stored_ids(server.address)
        assert len(log) == 6
        check_acked(ack, 5, frame, log)
    finally:
        server.kill()


def test_empty_append_is_acknowledged_with_no_range_of_messages(server: ServerProcess) -> None:
    body = struct.pack("<BBHI", int(MessageType.EVENT), int(Guarantee.STORED), 0, 0)
    raw = RawConnection(server.address)
    raw.sock.sendall(struct.pack("<IBBHI", 8 + len(body), Op.APPEND, 0, 0, 4) + body)
    assert raw.read() == (Op.ACK, 4, struct.pack("<QI", 0, 0))
    raw.close()


def test_client_takes_every_range_of_a_split_ack() -> None:
    body = struct.pack("<QIQI", 1000, 2, 5000, 3)
    assert list(ack_indexes(body)) == [1000, 1001, 5000, 5001, 5002]
    assert list(ack_indexes(struct.pack("<QI", 7, 2))) == [7, 8]
