"""Robustness of the server against a real process: authentication, project isolation, health,
a fuzz of broken frames, bounded memory under slow consumers, kill -9 and SIGTERM under load.

The frame-level tests speak the wire protocol (docs/protocol.md) over raw sockets, built here
with struct and msgspec, independently of the client."""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from fluxcore.client import Client, Guarantee, Message, MessageType, ProtocolError

from .service_harness import TOKEN, ServerProcess, start_worker

HEADER = struct.Struct("<IBBHI")  # length, op, flags, reserved, request_id
HELLO, APPEND, READ, STORE_POSITION, RESET_POSITION, GET_POSITION = 1, 2, 3, 4, 5, 6
DISCONNECT_TRACKER, READ_FROM_INDEX, SET_RETENTION, PING = 7, 8, 9, 10
SCHEDULE, CANCEL_SCHEDULE, GET_SCHEDULE, STORE_VALUES, GET_VALUE, DELETE_VALUE = range(11, 17)
APPEND_EVENTS, GET_EVENTS, DELETE_EVENTS, UPDATE_RELATIONSHIPS = range(17, 21)
REPAIR_RELATIONSHIPS, GET_RELATIONSHIPS = 21, 22
WELCOME, ACK, BATCH, RESULT, PONG, ERROR = 129, 130, 131, 132, 138, 143
ERROR_CODES = {"bad_frame", "unknown_op", "bad_request", "auth", "too_large", "unavailable",
               "internal", "idle"}
MSG_HEADER = struct.Struct("<BBHHHHHIIIqq")  # the 40-byte fixed header of a message
pack = msgspec.msgpack.encode


# -- raw protocol ----------------------------------------------------------------------------


def frame(op: int, request_id: int, body: bytes = b"", flags: int = 0) -> bytes:
    return HEADER.pack(8 + len(body), op, flags, 0, request_id) + body


def hello_body(token: str | None = TOKEN, project: str = "public",
               client_id: str = "raw-client") -> bytes:
    body: dict[str, Any] = {"client_id": client_id, "client_name": "raw", "project": project,
                            "protocol": 1}
    if token is not None:
        body["token"] = token
    return pack(body)


def encode_message(data: bytes, *, type: str = "Raw", message_id: str = "id-1",
                   source: str = "raw-client", target: str = "", fmt: str = "",
                   metadata: bytes = b"", request_id: int = -1) -> bytes:
    fields = [s.encode() for s in (type, message_id, source, target, fmt)]
    head = MSG_HEADER.pack(1, 0, *(len(f) for f in fields), 0, len(metadata), len(data),
                           int(time.time() * 1000), request_id)
    return head + b"".join(fields) + metadata + data


def append_body(messages: list[bytes], *, type_code: int = 2, guarantee: int = 2,
                topic: str = "", sizes: list[int] | None = None,
                segments: list[int] | None = None) -> bytes:
    topic_bytes = topic.encode()
    sizes = [len(m) for m in messages] if sizes is None else sizes
    segments = [i % 128 for i in range(len(messages))] if segments is None else segments
    return (struct.pack("<BBH", type_code, guarantee, len(topic_bytes)) + topic_bytes
            + struct.pack("<I", len(sizes)) + struct.pack(f"<{len(sizes)}I", *sizes)
            + bytes(segments) + b"".join(messages))


class Raw:
    """A raw protocol connection."""

    def __init__(self, address: str, timeout: float = 10.0) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_frame(self, timeout: float = 10.0) -> tuple[int, int, bytes] | None:
        """(op, request_id, body) of the next frame; None if the server closed."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 12:
                length, op, _flags, _reserved, request_id = HEADER.unpack_from(self.buf)
                assert 8 <= length <= 64 * 1024 * 1024, f"bad frame length {length} from server"
                if len(self.buf) >= 4 + length:
                    body = self.buf[12:4 + length]
                    self.buf = self.buf[4 + length:]
                    return op, request_id, body
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no frame from the server")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(1 << 16)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                assert not self.buf, f"the server closed mid-frame: {self.buf!r}"
                return None
            self.buf += chunk

    def hello(self, token: str | None = TOKEN, project: str = "public") -> None:
        self.send(frame(HELLO, 1, hello_body(token, project)))
        reply = self.recv_frame()
        assert reply is not None and reply[0] == WELCOME, reply
        welcome = msgspec.msgpack.decode(reply[2])
        assert welcome["server"] == "fluxcore" and welcome["protocol"] == 1

    def closed_by_server(self, timeout: float = 10.0) -> bool:
        try:
            return self.recv_frame(timeout) is None
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(server: ServerProcess) -> Iterator[Raw]:
    conn = Raw(server.address)
    try:
        yield conn
    finally:
        conn.close()


def decode_error(reply: tuple[int, int, bytes] | None) -> dict[str, Any]:
    assert reply is not None, "the server closed without an ERROR frame"
    op, _rid, body = reply
    assert op == ERROR, f"expected ERROR, got op {op}"
    error = msgspec.msgpack.decode(body)
    assert isinstance(error, dict) and error.get("code") in ERROR_CODES, error
    assert isinstance(error.get("message"), str) and error["message"], error
    return error


def health(address: str) -> bytes:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return data


def assert_healthy(server: ServerProcess) -> None:
    assert server.proc is not None and server.proc.poll() is None, "the server died:\n" + (
        "".join(server.output[-50:]))
    answer = health(server.address)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert answer.endswith(b"Healthy"), answer


def memory(server: ServerProcess) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile of the server, in bytes."""
    out = {}
    with open(f"/proc/{server.pid}/status", encoding="ascii") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(line.split()[1]) * 1024
    return out


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def read_whole_log(client: Client, message_type: MessageType) -> list[Message]:
    out: list[Message] = []
    index = 0
    while True:
        page = client.read_from_index(message_type, index, max_size=10_000)
        if not page:
            return out
        out.extend(page)
        index = page[-1].index + 1


# -- health and authentication ---------------------------------------------------------------


def test_health_check(server: ServerProcess) -> None:
    answer = health(server.address)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert body == b"Healthy"


def test_raw_hello_welcome_and_append(raw: Raw) -> None:
    raw.hello()
    raw.send(frame(APPEND, 7, append_body([encode_message(b"one"), encode_message(
        b"two", message_id="id-2")])))
    op, request_id, body = raw.recv_frame()  # type: ignore[misc]
    assert (op, request_id) == (ACK, 7)
    first, count = struct.unpack("<QI", body)
    assert count == 2 and first > 0
    raw.send(frame(PING, 8))
    assert raw.recv_frame()[:2] == (PONG, 8)  # type: ignore[index]


@pytest.mark.parametrize("token", ["wrong-token", "", None], ids=["wrong", "empty", "missing"])
def test_hello_with_bad_token_is_refused(raw: Raw, server: ServerProcess,
                                         token: str | None) -> None:
    raw.send(frame(HELLO, 3, hello_body(token)))
    reply = raw.recv_frame()
    error = decode_error(reply)
    assert error["code"] == "auth"
    assert reply is not None and reply[1] == 3
    assert raw.closed_by_server(), "the connection stayed open after a refused HELLO"
    assert_healthy(server)


@pytest.mark.parametrize("op", [PING, APPEND, READ_FROM_INDEX, 77], ids=str)
def test_hello_must_come_first(raw: Raw, server: ServerProcess, op: int) -> None:
    body = b"" if op in (PING, 77) else pack({"type": 2, "min_index": 0})
    raw.send(frame(op, 5, body))
    error = decode_error(raw.recv_frame())
    assert error["code"] == "auth"
    assert "hello" in error["message"].lower()
    assert raw.closed_by_server()
    assert_healthy(server)


def test_client_with_wrong_token_gets_auth_error(server: ServerProcess) -> None:
    with pytest.raises(ProtocolError) as caught:
        Client.connect(server.address, token="nope", name="intruder", reconnect=False)
    assert caught.value.code == "auth"
    with Client.connect(server.address, token=TOKEN, name="fine") as ok:
        assert ok.publish(MessageType.EVENT, b"x") is not None


def test_second_hello_and_unknown_op_after_hello(raw: Raw, server: ServerProcess) -> None:
    raw.hello()
    raw.send(frame(HELLO, 2, hello_body()))
    assert decode_error(raw.recv_frame())["code"] == "bad_request"
    raw.send(frame(99, 3, b"whatever"))
    error = decode_error(raw.recv_frame())
    assert error["code"] == "unknown_op"
    raw.send(frame(PING, 4))  # the connection is still usable
    assert raw.recv_frame()[:2] == (PONG, 4)  # type: ignore[index]


def test_bad_frame_length_closes_only_that_connection(raw: Raw, server: ServerProcess) -> None:
    other = Raw(server.address)
    try:
        other.hello()
        raw.hello()
        raw.send(struct.pack("<I", 3) + b"\x00" * 16)  # length under 8
        assert decode_error(raw.recv_frame())["code"] == "bad_frame"
        assert raw.closed_by_server()
        other.send(frame(PING, 9))
        assert other.recv_frame()[:2] == (PONG, 9)  # type: ignore[index]
    finally:
        other.close()


# -- projects --------------------------------------------------------------------------------


@pytest.fixture
def two_projects(tmp_path: Path) -> Iterator[ServerProcess]:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"alpha": "token-a", "beta": "token-b"}))
    proc = ServerProcess(tmp_path / "data", "--tokens", str(tokens), token=None).start()
    try:
        yield proc
    finally:
        proc.kill()


def test_token_per_project(two_projects: ServerProcess) -> None:
    address = two_projects.address
    for project, token in (("alpha", "token-b"), ("beta", "token-a"), ("gamma", "token-a"),
                           ("alpha", TOKEN)):
        conn = Raw(address)
        try:
            conn.send(frame(HELLO, 1, hello_body(token, project)))
            assert decode_error(conn.recv_frame())["code"] == "auth", (project, token)
            assert conn.closed_by_server()
        finally:
            conn.close()
    for project, token in (("alpha", "token-a"), ("beta", "token-b")):
        conn = Raw(address)
        try:
            conn.hello(token, project)
        finally:
            conn.close()


def test_projects_are_isolated(two_projects: ServerProcess) -> None:
    address = two_projects.address
    with Client.connect(address, token="token-a", project="alpha", name="same") as alpha, \
            Client.connect(address, token="token-b", project="beta", name="same") as beta:
        got_alpha: list[Message] = []
        got_beta: list[Message] = []
        alpha.consume("projector", MessageType.EVENT, got_alpha.append, from_index=0)
        beta.consume("projector", MessageType.EVENT, got_beta.append, from_index=0)
        a_indexes = alpha.publish_batch(MessageType.EVENT, [b"a%d" % i for i in range(20)])
        alpha.publish(MessageType.CUSTOM, b"secret", topic="shared")
        b_index = beta.publish(MessageType.EVENT, b"b0")
        assert a_indexes is not None and b_index is not None
        wait_for(lambda: len(got_alpha) >= 20 and len(got_beta) >= 1, 30, "both consumers")
        time.sleep(0.5)
        assert [m.data for m in got_alpha] == [b"a%d" % i for i in range(20)]
        assert [m.data for m in got_beta] == [b"b0"]
        assert [m.data for m in beta.read_from_index(MessageType.EVENT, 0)] == [b"b0"]
        assert beta.read_from_index(MessageType.CUSTOM, 0, topic="shared") == []
        # positions of a consumer of the same name are separate
        assert alpha.get_position("projector", MessageType.EVENT) == [[0, 128],
                                                                      int(a_indexes[-1])]
        assert beta.get_position("projector", MessageType.EVENT) == [[0, 128], b_index]
        beta.reset_position("projector", MessageType.EVENT, 1)
        assert alpha.get_position("projector", MessageType.EVENT) == [[0, 128],
                                                                      int(a_indexes[-1])]
        # a request in alpha is not answered by a handler in beta
        beta.consume("svc", MessageType.COMMAND, lambda m: b"from beta", from_index=0)
        with pytest.raises(TimeoutError):
            alpha.request(MessageType.COMMAND, b"hello?", timeout=1.5)
        # the METRICS logs record only their own project's connections
        sources = {m.data for m in alpha.read_from_index(MessageType.METRICS, 0)}
        assert sources and all(beta.client_id.encode() not in data for data in sources)
        assert any(alpha.client_id.encode() in data for data in sources)


# -- fuzz ------------------------------------------------------------------------------------

CONTROL_OPS = [READ, STORE_POSITION, RESET_POSITION, GET_POSITION, DISCONNECT_TRACKER,
               READ_FROM_INDEX, SET_RETENTION, HELLO, CANCEL_SCHEDULE, GET_SCHEDULE,
               STORE_VALUES, GET_VALUE, DELETE_VALUE, GET_EVENTS, DELETE_EVENTS,
               UPDATE_RELATIONSHIPS, REPAIR_RELATIONSHIPS, GET_RELATIONSHIPS]
KNOWN_OPS = [*CONTROL_OPS, APPEND, PING, SCHEDULE, APPEND_EVENTS]
FUZZ_VALUES: list[Any] = [None, True, -1, 0, 1, 128, 2**31, 2**63, -(2**63), 1.5, "", "x" * 300,
                          "..", "A", b"\x00\xff", [], [1], [0, 129], [5, 2], [1, 2, 3], {},
                          {"a": 1}, ["0", "1"], "Order.*", "(", "[", 10**9]


def fuzz_control(rng: random.Random, op: int) -> bytes:
    """A msgpack body with plausible keys and values of random, often wrong, types."""
    keys = ["type", "topic", "consumer", "tracker", "max_size", "max_timeout_ms", "type_filter",
            "filter_target", "ignore_segment", "single_tracker", "client_index", "last_index",
            "purge_timeout_ms", "segment", "min_index", "retention_ms", "final_empty_batch",
            "store_position", "client_id", "client_name", "project", "token", "protocol",
            "id", "key", "value", "values", "if_absent", "aggregate", "after", "entity",
            "entities", "aggregate_type", "associations", "dissociations", "schedules",
            "batches", "deadline", "count", "store_only"]
    body: dict[str, Any] = {}
    for key in rng.sample(keys, rng.randint(0, len(keys))):
        body[key] = rng.choice([*FUZZ_VALUES, rng.randint(-5, 20), f"c{rng.randint(0, 9)}",
                                [], [{"key": "k", "value": b"v", "id": "s", "deadline": 0,
                                      "aggregate": "a", "count": 1}], [["a", "A", "e"]],
                                b"bytes"])
    if rng.random() < 0.5:  # often a valid type, so that the other fields get checked
        body["type"] = rng.choice([1, 4, 5, 6, 7, 8, 11, 12])
    if op in (SET_RETENTION, RESET_POSITION, STORE_POSITION) and body.get("type") in (2, 3):
        body["type"] = 6  # leave the log and positions of the well-behaved client alone
    if op == READ:
        body["max_timeout_ms"] = rng.choice([0, 1, 50])
    if rng.random() < 0.1:
        return pack(rng.choice([[1, 2], 7, "map?", None, b"bytes"]))
    return pack(body)


def fuzz_append(rng: random.Random) -> bytes:
    count = rng.randint(0, 4)
    messages = [encode_message(rng.randbytes(rng.randint(0, 40)),
                               message_id=f"f{rng.getrandbits(32)}", type=rng.choice(["", "F"]))
                for _ in range(count)]
    sizes = [len(m) for m in messages]
    segments = [rng.randint(0, 127) for _ in messages]
    type_code = rng.choice([1, 2, 3, 4, 6, 7, 11, 12, 0, 13, 255])
    guarantee = rng.choice([0, 1, 2, 2, 3, 255])
    topic = rng.choice(["", "t", "bad topic", "x" * 101])
    damage = rng.randint(0, 9)
    if damage == 0 and sizes:
        sizes[rng.randrange(len(sizes))] += rng.choice([-1, 1, 1000, 2**31])
    elif damage == 1 and messages:  # a message whose own field lengths do not add up
        i = rng.randrange(len(messages))
        broken = bytearray(messages[i])
        offset = rng.choice([2, 4, 6, 8, 10, 16, 20])
        struct.pack_into("<H", broken, offset, rng.randint(0, 65535))
        messages[i] = bytes(broken)
    elif damage == 2 and messages:
        messages[rng.randrange(len(messages))] = b"\x02" + messages[0][1:]  # bad version
    elif damage == 3:
        segments = [rng.randint(128, 255) for _ in messages]
    elif damage == 4 and messages:
        messages[-1] = messages[-1][: rng.randint(0, len(messages[-1]))]  # truncated
    body = append_body(messages, type_code=type_code, guarantee=guarantee, topic=topic,
                       sizes=sizes, segments=segments)
    if damage == 5:
        body = body[: rng.randint(0, len(body))]
    elif damage == 6:
        body += rng.randbytes(rng.randint(1, 20))
    elif damage == 7:
        body = body[:4] + struct.pack("<I", rng.choice([2**32 - 1, 1000, 2**20])) + body[8:]
    return body


def fuzz_frames(rng: random.Random) -> bytes:
    """One to a few frames of one kind of damage."""
    # garbage, bad lengths and truncated frames end the connection: keep them rarer
    kind = rng.choices(range(8), weights=[4, 20, 4, 12, 20, 20, 20, 3])[0]
    rid = rng.getrandbits(32)
    if kind == 0:  # random garbage
        return rng.randbytes(rng.randint(1, 300))
    if kind == 1:  # a valid header and a garbage body
        return frame(rng.choice(KNOWN_OPS), rid, rng.randbytes(rng.randint(0, 200)))
    if kind == 2:  # huge or too small lengths
        length = rng.choice([2**32 - 1, 2**31, 64 * 1024 * 1024 + 1, 0, 1, 7,
                             64 * 1024 * 1024 - 8, 1 << 20])  # the last two: never complete
        return struct.pack("<I", length) + rng.randbytes(rng.randint(0, 64))
    if kind == 3:  # unknown ops, also the server's own answer ops
        op = rng.choice([0, 23, 100, 128, 129, 130, 131, 143, 255])
        return frame(op, rid, rng.randbytes(rng.randint(0, 30)), flags=rng.randint(0, 255))
    if kind in (4, 5):  # msgpack with wrong types
        op = rng.choice(CONTROL_OPS)
        return frame(op, rid, fuzz_control(rng, op))
    if kind == 6:  # APPEND with inconsistent lengths, alone or after a control map
        op = rng.choice([APPEND, APPEND, SCHEDULE, APPEND_EVENTS])
        body = fuzz_append(rng)
        if op != APPEND:
            control = fuzz_control(rng, op)
            length = rng.choice([len(control)] * 4 + [len(control) + 1, 2**31])
            body = struct.pack("<I", length) + control + body
        return frame(op, rid, body, flags=rng.choice([0, 0, 1]))
    full = frame(rng.choice(KNOWN_OPS), rid, fuzz_control(rng, READ))  # truncated frame
    return full[: rng.randint(1, len(full) - 1)]


def fuzz_connection(address: str, seed: int) -> list[dict[str, Any]]:
    """Sends fuzz frames on one connection; returns the ERROR frames it got back, after
    checking that every answer is a well-formed frame."""
    rng = random.Random(seed)
    conn = Raw(address, timeout=10)
    errors: list[dict[str, Any]] = []
    try:
        if rng.random() < 0.85:
            conn.hello(project=rng.choice(["public", "public", "fuzz"]))
        for _ in range(rng.randint(5, 40)):
            try:
                conn.send(fuzz_frames(rng))
            except OSError:
                break  # the server closed the connection: fine after a bad header
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            try:
                reply = conn.recv_frame(max(deadline - time.monotonic(), 0.01))
            except (TimeoutError, OSError):
                break
            if reply is None:
                break
            op, _rid, body = reply
            assert op in (WELCOME, ACK, BATCH, RESULT, PONG, ERROR), f"answer op {op}"
            if op == ERROR:
                errors.append(decode_error(reply))
            elif op in (WELCOME, RESULT):
                assert isinstance(msgspec.msgpack.decode(body), dict)
    finally:
        conn.close()
    return errors


FDS_PER_LOG = 4  # its lock file, segment files, the spare file
FDS_PER_PROJECT = 24  # a second project's SQLite stores (database, WAL, shared memory each)
UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")  # .ci/run's second pass
FUZZ_RSS_GROWTH = 48 * 1024 * 1024  # heap, and the pages of the EVENT log written meanwhile
FUZZ_RSS_PER_LOG = 1024 * 1024  # the pages a new log touches (headers, index)


def descriptors(server: ServerProcess) -> int:
    return len(os.listdir(f"/proc/{server.pid}/fd"))


def log_count(server: ServerProcess) -> int:
    return sum(len(os.listdir(logs)) for logs in server.data_dir.glob("*/logs"))


@pytest.mark.slow
def test_fuzz_does_not_disturb_a_well_behaved_client(server: ServerProcess,
                                                     client: Client) -> None:
    got: list[Message] = []
    lock = threading.Lock()

    def on_message(message: Message) -> None:
        with lock:
            got.append(message)

    consumer = client.consume("steady", MessageType.EVENT, on_message, trackers=2, from_index=0)
    published: dict[int, bytes] = {}
    halt = threading.Event()
    publish_error: list[BaseException] = []

    def publish() -> None:
        n = 0
        try:
            while not halt.is_set():
                payloads = [b"steady-%d" % (n + i) for i in range(10)]
                indexes = client.publish_batch(MessageType.EVENT, payloads, type="Steady",
                                               keys=[f"k{(n + i) % 17}" for i in range(10)])
                assert indexes is not None
                published.update(zip((int(i) for i in indexes), payloads, strict=True))
                n += 10
                time.sleep(0.005)
        except BaseException as exc:  # noqa: BLE001 - reported below
            publish_error.append(exc)

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    before = memory(server), descriptors(server), log_count(server)
    errors: list[dict[str, Any]] = []
    connections = 600
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for found in pool.map(lambda seed: fuzz_connection(server.address, seed),
                                  range(connections)):
                errors.extend(found)
        assert_healthy(server)
    finally:
        halt.set()
        publisher.join(30)
    assert not publish_error, publish_error
    assert published, "the well-behaved client published nothing"
    # Every fuzz connection has closed: what they took is given back, but for the logs their
    # topic names created (and the second project's stores).
    wait_for(lambda: descriptors(server) - before[1] <= FDS_PER_LOG * (
        log_count(server) - before[2]) + FDS_PER_PROJECT, 10, "descriptors to be given back")
    after, fds, logs = memory(server), descriptors(server), log_count(server)
    print("fuzz: " + ", ".join(f"{key} {before[0][key] >> 20} -> {after[key] >> 20} MiB"
                               for key in after)
          + f", descriptors {before[1]} -> {fds}, logs {before[2]} -> {logs}")
    grown = after["VmRSS"] - before[0]["VmRSS"]
    if not UNDER_ASAN:  # AddressSanitizer keeps freed memory in quarantine: RSS says nothing
        assert grown < FUZZ_RSS_GROWTH + FUZZ_RSS_PER_LOG * (logs - before[2]), (
            f"{grown >> 20} MiB more RSS")
    wait_for(lambda: set(published) <= {m.index for m in list(got)}, 60,
             "the well-behaved consumer to get every message")
    time.sleep(0.5)
    consumer.stop()
    mine = [m for m in got if m.source == client.client_id]
    counts = collections.Counter(m.index for m in mine)
    assert set(counts) == set(published)
    assert max(counts.values()) == 1, "a message came twice"
    assert all(m.data == published[m.index] for m in mine)
    by_key: dict[int, list[int]] = collections.defaultdict(list)
    for m in mine:
        by_key[m.segment].append(m.index)
    assert all(v == sorted(v) for v in by_key.values())
    codes = collections.Counter(e["code"] for e in errors)
    print(f"fuzz: {connections} connections, ERROR answers {dict(codes)}")
    assert len(errors) > 500, f"the fuzz got few ERROR answers: {codes}"
    internal = [e for e in errors if e["code"] == "internal"]
    assert not internal, f"internal errors (server bugs): {internal[:5]}"
    # the server still works for raw clients too
    conn = Raw(server.address)
    try:
        conn.hello()
        conn.send(frame(PING, 1))
        assert conn.recv_frame()[:2] == (PONG, 1)  # type: ignore[index]
    finally:
        conn.close()
    assert_healthy(server)


# -- memory ----------------------------------------------------------------------------------

ANON_LIMIT = 400 * 1024 * 1024


@pytest.mark.slow
def test_memory_bounded_with_slow_consumer_and_fast_producer(server: ServerProcess,
                                                             client: Client) -> None:
    handled = [0]

    def slow(messages: list[Message]) -> None:
        handled[0] += len(messages)
        time.sleep(0.2)

    consumer = client.consume("slow", MessageType.EVENT, slow, batch=True, max_size=100,
                              from_index=0)
    payload = bytes(range(256)) * 64  # 16 KiB
    total = 1 << 30
    sent = 0
    peak: dict[str, int] = collections.defaultdict(int)
    futures: collections.deque[concurrent.futures.Future[Any]] = collections.deque()
    try:
        while sent < total:
            future = client.publish_batch_async(MessageType.EVENT, [payload] * 64)
            assert future is not None
            futures.append(future)
            sent += 64 * len(payload)
            if len(futures) > 16:
                futures.popleft().result(60)
            if sent % (64 << 20) == 0:
                for key, value in memory(server).items():
                    peak[key] = max(peak[key], value)
        client.flush(60)
        for key, value in memory(server).items():
            peak[key] = max(peak[key], value)
        assert handled[0] > 0
    finally:
        consumer.stop()
    print(f"server memory while writing {total >> 20} MiB: "
          + ", ".join(f"{k} {v >> 20} MiB" for k, v in peak.items()))
    # heap memory does not grow with the data; the mapped log pages (RssFile) are page cache
    assert peak["RssAnon"] < ANON_LIMIT, dict(peak)
    assert_healthy(server)


@pytest.mark.slow
def test_memory_bounded_when_a_reader_does_not_read_its_socket(server: ServerProcess,
                                                               client: Client) -> None:
    payload = bytes(range(256)) * 64  # 16 KiB
    for _ in range(400):  # 400 MiB of log
        client.publish_batch_async(MessageType.EVENT, [payload] * 64)
    client.flush(60)
    before = memory(server)
    conn = Raw(server.address)
    try:
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn.hello()
        # pipelined requests for far more data than the buffers allow; never read the answers
        requests = [frame(READ_FROM_INDEX, 10 + i, pack(
            {"type": 2, "topic": None, "min_index": 0, "max_size": 10_000})) for i in range(100)]
        requests += [frame(READ, 1000 + i, pack(
            {"type": 2, "topic": None, "consumer": f"c{i}", "tracker": "t", "max_size": 10_000,
             "max_timeout_ms": 1000, "last_index": 0})) for i in range(100)]
        conn.send(b"".join(requests))
        peak = before["RssAnon"]
        for _ in range(40):
            time.sleep(0.25)
            peak = max(peak, memory(server)["RssAnon"])
        print(f"server RssAnon {before['RssAnon'] >> 20} MiB before, peak {peak >> 20} MiB")
        assert peak - before["RssAnon"] < ANON_LIMIT, (
            f"the server buffered {(peak - before['RssAnon']) >> 20} MiB for a client that "
            "does not read")
        # the others are still served meanwhile
        assert client.publish(MessageType.EVENT, b"still here") is not None
        assert_healthy(server)
    finally:
        conn.close()


# -- crashes and shutdowns under load --------------------------------------------------------


class LoadPublisher(threading.Thread):
    """Publishes numbered batches (STORED) without waiting for each ack; keeps every future."""

    def __init__(self, client: Client) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.sent: list[tuple[list[bytes], concurrent.futures.Future[Any]]] = []
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        n = 0
        try:
            while not self.halt.is_set():
                payloads = [b"load-%d" % (n + i) for i in range(20)]
                future = self.client.publish_batch_async(
                    MessageType.EVENT, payloads, type="Load",
                    keys=[f"k{(n + i) % 97}" for i in range(20)], guarantee=Guarantee.STORED)
                assert future is not None
                self.sent.append((payloads, future))
                n += 20
                pending = [f for _, f in self.sent[-50:] if not f.done()]
                if len(pending) > 40:
                    concurrent.futures.wait(pending, timeout=1.0,
                                            return_when=concurrent.futures.FIRST_COMPLETED)
                time.sleep(0.002)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def acked(self) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for payloads, future in list(self.sent):
            if future.done() and future.exception() is None:
                out.update(zip((int(i) for i in future.result()), payloads, strict=True))
        return out

    def stop(self) -> None:
        self.halt.set()
        self.join(60)
        assert self.error is None, f"publishing failed: {self.error!r}"


def worker_handled(path: Path) -> list[tuple[int, int]]:
    """(index, segment) of every complete line a worker wrote."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="ascii").splitlines(keepends=True):
        if line.endswith("\n"):
            index, segment, _tracker, _data = line.split()
            out.append((int(index), int(segment)))
    return out


def positions_by_segment(position: list[Any]) -> list[int | None]:
    per_segment: list[int | None] = [None] * 128
    for (start, end), index in zip(position[::2], position[1::2], strict=True):
        for segment in range(start, end):
            per_segment[segment] = index
    return per_segment


def check_acked_present(client: Client, acked: dict[int, bytes]) -> list[Message]:
    log = read_whole_log(client, MessageType.EVENT)
    stored = {m.index: m.data for m in log}
    missing = [i for i in acked if i not in stored]
    assert not missing, f"{len(missing)} acknowledged messages are missing, e.g. {missing[:5]}"
    wrong = [i for i, data in acked.items() if stored[i] != data]
    assert not wrong, f"{len(wrong)} acknowledged messages have other data, e.g. {wrong[:5]}"
    return log


@pytest.mark.slow
def test_kill9_under_load_then_restart(server: ServerProcess, tmp_path: Path) -> None:
    out1, out2 = tmp_path / "worker1.txt", tmp_path / "worker2.txt"
    worker_options = {"address": server.address, "token": TOKEN, "consumer": "survivor",
                      "trackers": 2, "max_size": 100, "from_index": 0}
    in_process: list[Message] = []
    with Client.connect(server.address, token=TOKEN, name="loaded", reconnect=True) as client:
        client.consume("in-process", MessageType.EVENT, in_process.append, trackers=2,
                       from_index=0)
        worker = start_worker(dict(worker_options, out=str(out1)))
        publisher = LoadPublisher(client)
        publisher.start()
        try:
            time.sleep(2.0)
            assert publisher.acked(), "nothing was acknowledged before the crash"
            server.kill()  # kill -9 under load
            worker.kill()  # and the consumer with it: its position is what the server stored
            worker.wait(30)
            acked_before = publisher.acked()
            time.sleep(0.5)
            server.start()  # the same data directory and port
            assert_healthy(server)
            time.sleep(2.0)  # the client reconnects by itself and resends what is unanswered
        finally:
            publisher.stop()
        # every publish, also those in flight at the crash, is acknowledged in the end
        for _payloads, future in publisher.sent:
            future.result(60)
        index = client.publish(MessageType.EVENT, b"after the restart", type="After")
        assert index is not None
        acked = publisher.acked()
        assert set(acked_before) <= set(acked)
        with Client.connect(server.address, token=TOKEN, name="checker") as checker:
            check_acked_present(checker, acked)
            position = positions_by_segment(checker.get_position("survivor", MessageType.EVENT))
        assert any(p is not None for p in position), "no position survived the crash"
        # a new instance of the consumer resumes after the stored positions
        worker = start_worker(dict(worker_options, address=server.address, out=str(out2)))
        try:
            wanted = set(acked) | {index}
            wait_for(lambda: wanted <= {i for i, _ in worker_handled(out1) + worker_handled(
                out2)}, 60, "the consumer to handle every acknowledged message")
            early = [(i, s) for i, s in worker_handled(out2)
                     if position[s] is not None and i <= position[s]]
            assert not early, f"{len(early)} messages at or before the stored position came " \
                              f"again, e.g. {early[:5]}"
            # the in-process consumer reconnected with its client and goes on too
            wait_for(lambda: wanted <= {m.index for m in list(in_process)}, 60,
                     "the reconnected in-process consumer")
        finally:
            assert worker.stdin is not None
            worker.stdin.close()
            worker.wait(30)


@pytest.mark.slow
def test_sigterm_under_load_keeps_every_acked_message(server: ServerProcess) -> None:
    with Client.connect(server.address, token=TOKEN, name="loaded", reconnect=True) as client:
        publisher = LoadPublisher(client)
        publisher.start()
        try:
            time.sleep(2.0)
            assert server.stop() == 0  # SIGTERM while the publisher goes on
            assert any("stopped" in line for line in server.output)
            acked_at_stop = publisher.acked()
            assert acked_at_stop
            time.sleep(0.5)
            server.start()
            time.sleep(1.0)
        finally:
            publisher.stop()
        for _payloads, future in publisher.sent:
            future.result(60)
        acked = publisher.acked()
        assert set(acked_at_stop) <= set(acked)
        assert client.publish(MessageType.EVENT, b"after", type="After") is not None
        log = check_acked_present(client, acked)
        # a clean shutdown acknowledges what it stored: a resent publish is not stored twice
        copies = collections.Counter(m.data for m in log if m.type == "Load")
        twice = [data for data, n in copies.items() if n > 1]
        assert not twice, f"{len(twice)} messages stored twice, e.g. {twice[:3]}"


def test_silent_connections_are_closed(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", env={"FLUXCORE_HELLO_TIMEOUT_S": "0.5"}).start()
    try:
        silent = Raw(server.address)
        reply = silent.recv_frame(5)  # nothing sent: an ERROR, then the server closes
        assert reply is not None and reply[0] == ERROR
        assert "no HELLO within 0.5 s" in msgspec.msgpack.decode(reply[2])["message"]
        assert silent.closed_by_server(5)
        partial = Raw(server.address)
        partial.send(b"GET /heal")  # an HTTP request that never ends: 408
        partial.sock.settimeout(5)
        assert partial.sock.recv(100).startswith(b"HTTP/1.1 408")
        talker = Raw(server.address)
        talker.hello()
        time.sleep(1.0)  # past the timeout: a connection that said HELLO stays
        talker.send(frame(PING, 7))
        assert talker.recv_frame(5)[:2] == (PONG, 7)  # type: ignore[index]
        for conn in (silent, partial, talker):
            conn.close()
    finally:
        server.kill()
