"""Many consumers parked on one log and woken by one append (README "Scale", the wake row):
reads grouped by what they would get share one read of the log, one frame and one compiled
send to all of their sockets. Each read still gets exactly its own messages, with its own
request id, in order: across partial writes, connections closed in the middle of a wake, a log
closed by the LRU meanwhile, and positions stored while a read waits. Real server processes,
raw sockets."""

from __future__ import annotations

import re
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest

from fluxcore._ext import _proto
from fluxcore.client import Client, MessageType

from .service_harness import TOKEN, ServerProcess
from .test_service_robustness import BATCH, READ, STORE_POSITION, Raw, assert_healthy, frame

TOPIC = "wake"
CUSTOM = int(MessageType.CUSTOM)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    # One open log at a time: every append to another topic closes the parked readers' log.
    proc = ServerProcess(tmp_path / "data", env={
        "FLUXCORE_SEGMENT_FILE_SIZE": str(1 << 20), "FLUXCORE_MAX_OPEN_LOGS": "1"}).start()
    try:
        yield proc
    finally:
        proc.kill()


@dataclass
class Published:
    index: int
    type: str
    data: bytes


@dataclass
class Parked:
    """One parked READ and what it must get."""

    request_id: int
    consumer: str
    after: int  # the index it reads after
    max_size: int = 100
    type_filter: str | None = None
    own_index: bool = True  # client_index; else the server's stored positions

    def expected(self, log: list[Published]) -> list[tuple[int, str, bytes]]:
        pattern = re.compile(self.type_filter) if self.type_filter else None
        return [(m.index, m.type, m.data) for m in log
                if m.index > self.after and (pattern is None or pattern.fullmatch(m.type))
                ][: self.max_size]

    def request(self) -> bytes:
        body: dict[str, Any] = {
            "type": CUSTOM, "topic": TOPIC, "consumer": self.consumer,
            "tracker": f"{self.consumer}-t", "max_size": self.max_size,
            "max_timeout_ms": 60_000}
        if self.own_index:
            body.update(client_index=True, last_index=self.after)
        if self.type_filter:
            body["type_filter"] = self.type_filter
        return frame(READ, self.request_id, msgspec.msgpack.encode(body))


@dataclass
class Consumer:
    conn: Raw
    reads: list[Parked] = field(default_factory=list)


def connect(server: ServerProcess, receive_buffer: int = 0) -> Raw:
    host, port = server.address.rsplit(":", 1)
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(30)
    sock.connect((host, int(port)))
    conn = Raw.__new__(Raw)
    conn.sock, conn.buf = sock, b""
    conn.hello()
    return conn


def store_position(conn: Raw, request_id: int, consumer: str, index: int) -> None:
    conn.send(frame(STORE_POSITION, request_id, msgspec.msgpack.encode({
        "type": CUSTOM, "topic": TOPIC, "consumer": consumer, "segment": [0, 128],
        "last_index": index})))
    reply = conn.recv_frame()
    assert reply is not None and reply[1] == request_id, reply


def publish(client: Client, payloads: list[bytes], types: list[str]) -> list[Published]:
    indexes = client.publish_batch(MessageType.CUSTOM, payloads, topic=TOPIC, types=types)
    assert indexes is not None
    return [Published(int(i), t, p) for i, t, p in zip(indexes, types, payloads, strict=True)]


def received(conn: Raw, count: int) -> dict[int, list[tuple[int, str, bytes]]]:
    """The next `count` frames of a connection: BATCHes, by request id."""
    out = {}
    for _ in range(count):
        reply = conn.recv_frame(30)
        assert reply is not None, "the server closed a consumer's connection"
        op, request_id, body = reply
        assert op == BATCH, (op, body[:200])
        messages = _proto.decode_batch(body, 0, len(body))[4]
        out[request_id] = [(m.index, m.type, m.data) for m in messages]
    return out


def park_all(server: ServerProcess, client: Client, log: list[Published], round_: int,
             big: bool) -> tuple[list[Consumer], list[Raw]]:
    """Consumers of every kind parked at the end of `log` or before it, and connections
    that will be closed just before the append."""
    last = log[-1].index
    rid = 1000 * round_
    consumers: list[Consumer] = []

    def add(reads: list[Parked], receive_buffer: int = 0) -> None:
        consumers.append(Consumer(connect(server, receive_buffer), reads))

    names = iter(range(1_000_000))

    def parked(**fields: Any) -> Parked:
        nonlocal rid
        rid += 1
        return Parked(rid, f"c{round_}-{next(names)}", **fields)

    for _ in range(24):  # caught up, all alike: one group
        add([parked(after=last)])
    add([parked(after=last), parked(after=last)])  # two reads of one group on one connection
    for back in range(2, 5):  # behind: they are answered at once, from older messages
        add([parked(after=log[-back].index)])
    for _ in range(4):
        add([parked(after=last, type_filter="A")])
        add([parked(after=last, max_size=1)])
    # Small receive windows and a reader that does not read: big frames are written in part
    # and the rest follows through the transport, the second one behind the first.
    add([parked(after=last), parked(after=last, max_size=2)],
        receive_buffer=4096 if big else 0)
    for _ in range(3):  # server-kept positions, stored at the end
        consumer = parked(after=last, own_index=False)
        conn = connect(server)
        store_position(conn, 1, consumer.consumer, last)
        consumers.append(Consumer(conn, [consumer]))
    for c in consumers:
        for read in c.reads:
            c.conn.send(read.request())
    leaving = []
    for _ in range(6):  # gone by the time the append comes
        conn = connect(server)
        conn.send(parked(after=last).request())
        leaving.append(conn)
    return consumers, leaving


def test_one_append_gives_every_parked_read_exactly_its_messages(
        server: ServerProcess) -> None:
    with Client.connect(server.address, token=TOKEN, name="publisher") as client:
        log = publish(client, [f"old-{i}".encode() for i in range(6)], ["A", "B"] * 3)
        for round_, big in ((1, False), (2, True), (3, False)):
            consumers, leaving = park_all(server, client, log, round_, big)
            answered_at_once = {
                read.request_id for c in consumers for read in c.reads
                if read.own_index and read.after < log[-1].index}
            time.sleep(0.5)  # every read parked (or answered, if behind)
            if round_ == 2:
                # The parked readers' log is closed by the LRU (one open log) meanwhile.
                client.publish(MessageType.CUSTOM, b"elsewhere", topic="other")
            for conn in leaving:  # closed with a reset, unread
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                     struct.pack("ii", 1, 0))
                conn.close()
            size = 100_000 if big else 10  # 400 KB: within one segment file (one read)
            payloads = [bytes([round_, k]) * size for k in range(4)]
            before = list(log)
            log += publish(client, payloads, ["A", "B", "A", "B"])
            for c in consumers:
                got = received(c.conn, len(c.reads))
                for read in c.reads:
                    source = before if read.request_id in answered_at_once else log
                    assert got[read.request_id] == read.expected(source), (round_, read)
                c.conn.close()
    assert_healthy(server)


def test_a_position_stored_while_a_read_waits_moves_it_out_of_its_group(
        server: ServerProcess) -> None:
    """Two consumers caught up at the same position would get the same frame; one of them has
    its position moved past the next message while it waits: it gets only what follows."""
    with Client.connect(server.address, token=TOKEN, name="publisher") as client:
        log = publish(client, [b"first"], ["A"])
        last = log[-1].index
        stay = Parked(1, "stay", after=last, own_index=False)
        moved = Parked(2, "moved", after=last, own_index=False)
        conns = []
        for read in (stay, moved):
            conn = connect(server)
            store_position(conn, 9, read.consumer, last)
            conn.send(read.request())
            conns.append(conn)
        time.sleep(0.3)
        skip_to = (int(time.time() * 1000) + 400) << 16
        other = connect(server)
        store_position(other, 3, moved.consumer, skip_to)
        early = publish(client, [b"early"], ["A"])
        assert early[0].index < skip_to
        assert received(conns[0], 1) == {1: stay.expected(early)}
        time.sleep(0.6)
        late = publish(client, [b"late"], ["A"])
        assert late[0].index > skip_to
        assert received(conns[1], 1) == {2: [(late[0].index, "A", b"late")]}
        for conn in (*conns, other):
            conn.close()


def test_a_read_whose_segments_change_while_it_waits_gets_only_its_segments(
        server: ServerProcess) -> None:
    """A parked read of a consumer whose second tracker joins meanwhile: the first keeps half
    the segments, and after one append each gets the messages of its own half, none twice,
    while a read that had the same answer before (another consumer, every segment) gets all."""
    with Client.connect(server.address, token=TOKEN, name="publisher") as client:
        log = publish(client, [b"first"], ["A"])
        last = log[-1].index
        # Another consumer at the same position, with every segment: the first tracker's
        # read would get the same answer as its read, until the second tracker joins.
        whole = Parked(1, "whole", after=last, own_index=False)
        whole_conn = connect(server)
        store_position(whole_conn, 9, whole.consumer, last)
        whole_conn.send(whole.request())
        conns = [connect(server), connect(server)]
        store_position(conns[0], 9, "halves", last)
        for i, conn in enumerate(conns):
            body = {"type": CUSTOM, "topic": TOPIC, "consumer": "halves", "tracker": f"t{i}",
                    "max_size": 100, "max_timeout_ms": 60_000}
            conn.send(frame(READ, 10 + i, msgspec.msgpack.encode(body)))
            time.sleep(0.3)  # the first parks alone, with every segment; then the second joins
        indexes = client.publish_batch(MessageType.CUSTOM, [b"m%d" % k for k in range(40)],
                                       topic=TOPIC, keys=[f"key-{k}" for k in range(40)])
        assert indexes is not None
        got = []
        for i, conn in enumerate(conns):
            reply = conn.recv_frame(30)
            assert reply is not None and reply[:2] == (BATCH, 10 + i), reply
            seg_start, seg_end, _caught_up, _last, messages = _proto.decode_batch(
                reply[2], 0, len(reply[2]))
            assert (seg_start, seg_end) == ((0, 64) if i == 0 else (64, 128))
            assert all(seg_start <= m.segment < seg_end for m in messages)
            got += [m.index for m in messages]
        assert sorted(got) == [int(i) for i in indexes]
        assert [m[0] for m in received(whole_conn, 1)[1]] == [int(i) for i in indexes]
        for conn in (*conns, whole_conn):
            conn.close()
