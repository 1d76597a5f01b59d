"""What one client, or many, can take from a server: receive-buffer memory, connections,
descriptors and logs (README "Limits"). Real server processes, raw sockets and the client."""

from __future__ import annotations

import os
import resource
import selectors
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from fluxcore.client import Client, MessageType, ProtocolError

from .service_harness import TOKEN, ServerProcess
from .test_service_robustness import (
    ACK,
    APPEND,
    BATCH,
    HELLO,
    PING,
    PONG,
    READ,
    WELCOME,
    Raw,
    append_body,
    assert_healthy,
    decode_error,
    encode_message,
    frame,
    hello_body,
    memory,
)

MIB = 1 << 20


def open_descriptors(server: ServerProcess) -> int:
    return len(os.listdir(f"/proc/{server.pid}/fd"))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data", env={
        "FLUXCORE_SEGMENT_FILE_SIZE": str(MIB)}).start()
    try:
        yield proc
    finally:
        proc.kill()


# -- receive buffers -------------------------------------------------------------------------


def announce(address: str, length: int, *, hello: bool) -> Raw:
    """A connection that announces a frame of `length` bytes and sends 1 KiB of it."""
    conn = Raw(address)
    if hello:
        conn.hello()
    conn.send(struct.pack("<IBBHI", length, APPEND, 0, 0, 99) + b"\x00" * 1024)
    return conn


def test_a_large_frame_before_hello_is_refused_without_taking_memory(
        server: ServerProcess) -> None:
    before = memory(server)["VmRSS"]
    conns = [announce(server.address, 64 * MIB, hello=False) for _ in range(16)]
    try:
        for conn in conns:
            error = decode_error(conn.recv_frame())
            assert error["code"] == "bad_frame"
            assert "before HELLO" in error["message"], error
            assert conn.closed_by_server()
        grown = memory(server)["VmRSS"] - before
        assert grown < 32 * MIB, f"16 frames announced before HELLO took {grown >> 20} MiB"
        assert_healthy(server)
    finally:
        for conn in conns:
            conn.close()


def test_frames_right_behind_hello_may_be_large(server: ServerProcess) -> None:
    """The 4 KiB limit is for the HELLO frame only: a client that sends a large APPEND in the
    same write as its HELLO is served."""
    conn = Raw(server.address)
    try:
        payload = os.urandom(200_000)
        conn.send(frame(HELLO, 1, hello_body())
                  + frame(APPEND, 2, append_body([encode_message(payload)])))
        assert conn.recv_frame()[0] == WELCOME  # type: ignore[index]
        assert conn.recv_frame()[:2] == (ACK, 2)  # type: ignore[index]
    finally:
        conn.close()


def test_announced_lengths_cost_no_memory_until_the_bytes_come(server: ServerProcess) -> None:
    before = memory(server)["VmRSS"]
    conns = [announce(server.address, 64 * MIB, hello=True) for _ in range(16)]
    try:
        time.sleep(0.5)
        grown = memory(server)["VmRSS"] - before
        # 16 x 64 MiB announced: the server holds what came (16 KiB), not what was announced.
        assert grown < 48 * MIB, f"announced frames took {grown >> 20} MiB of server memory"
        with Client.connect(server.address, token=TOKEN, name="normal") as client:
            assert client.publish(MessageType.EVENT, b"small") is not None
        assert_healthy(server)
    finally:
        for conn in conns:
            conn.close()


def test_large_frames_wait_for_the_receive_budget_and_all_complete(tmp_path: Path) -> None:
    """server_buffer bounds the frames being received: past it a connection waits, unread,
    until an earlier frame is done; then it is answered, nothing dropped."""
    server = ServerProcess(tmp_path / "data", env={
        "FLUXCORE_SERVER_BUFFER": str(3 * MIB), "FLUXCORE_SEGMENT_FILE_SIZE": str(8 * MIB),
    }).start()
    first, second = Raw(server.address), Raw(server.address)
    try:
        first.hello()
        second.hello()
        payload = os.urandom(2 * MIB)
        frames = [frame(APPEND, rid, append_body([encode_message(
            payload, message_id=f"big-{rid}")])) for rid in (1, 2)]
        first.send(frames[0][: MIB])  # 2 MiB granted to the first, 1 MiB of it arrived
        time.sleep(0.3)
        # The second frame does not fit the 3 MiB budget beside the first: its socket waits
        sender = Raw(server.address)  # a third connection is not held up by either
        sender.hello()
        sender.send(frame(PING, 5))
        assert sender.recv_frame()[:2] == (PONG, 5)  # type: ignore[index]
        second.sock.settimeout(60)
        sending = threading.Thread(target=second.send, args=(frames[1],))
        sending.start()  # all of it: the server reads it only once the first is done
        with pytest.raises(TimeoutError):
            second.recv_frame(1.0)
        first.send(frames[0][MIB:])
        op, rid, body = first.recv_frame(30)  # type: ignore[misc]
        assert (op, rid) == (ACK, 1), (op, rid, body)
        op, rid, body = second.recv_frame(30)  # type: ignore[misc]
        sending.join(30)
        assert (op, rid) == (ACK, 2), (op, rid, body)
        with Client.connect(server.address, token=TOKEN, name="check") as client:
            messages, after = [], 0  # a READ answers from one segment file: read them all
            while page := client.read_from_index(MessageType.EVENT, after + 1, 10):
                messages += page
                after = page[-1].index
        stored = [m.data for m in messages if m.type == "Raw"]
        assert stored == [payload, payload]
        sender.close()
    finally:
        first.close()
        second.close()
        server.kill()


def test_a_grown_buffer_shrinks_back_and_frees_the_budget(tmp_path: Path) -> None:
    """After its large frame, a connection's buffer goes back to the small size (within a
    second or so), and its grant serves another connection's frame."""
    server = ServerProcess(tmp_path / "data", env={
        "FLUXCORE_SERVER_BUFFER": str(3 * MIB), "FLUXCORE_SEGMENT_FILE_SIZE": str(8 * MIB),
    }).start()
    first, second = Raw(server.address), Raw(server.address)
    try:
        first.hello()
        second.hello()
        payload = os.urandom(2 * MIB)
        first.send(frame(APPEND, 1, append_body([encode_message(payload)])))
        assert first.recv_frame(30)[:2] == (ACK, 1)  # type: ignore[index]
        # The first connection stays open and idle; the second frame fits only once the
        # first buffer has shrunk.
        second.sock.settimeout(60)
        sending = threading.Thread(target=second.send, args=(
            frame(APPEND, 2, append_body([encode_message(payload, message_id="id-2")])),))
        sending.start()
        assert second.recv_frame(30)[:2] == (ACK, 2)  # type: ignore[index]
        sending.join(30)
        first.send(frame(PING, 3))  # and the first connection still works
        assert first.recv_frame()[:2] == (PONG, 3)  # type: ignore[index]
    finally:
        first.close()
        second.close()
        server.kill()


def test_a_frame_larger_than_the_whole_budget_is_taken_alone(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", env={
        "FLUXCORE_SERVER_BUFFER": str(MIB), "FLUXCORE_SEGMENT_FILE_SIZE": str(8 * MIB),
    }).start()
    conn = Raw(server.address)
    try:
        conn.hello()
        conn.send(frame(APPEND, 4, append_body([encode_message(os.urandom(3 * MIB))])))
        op, rid, _body = conn.recv_frame(30)  # type: ignore[misc]
        assert (op, rid) == (ACK, 4)
    finally:
        conn.close()
        server.kill()


# -- many connections ------------------------------------------------------------------------


def raise_own_open_file_limit(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def hello_many(address: str, count: int) -> list[socket.socket]:
    """`count` raw connections that said HELLO and got their WELCOME."""
    host, port = address.rsplit(":", 1)
    hello = frame(HELLO, 1, hello_body(client_id="many"))
    selector = selectors.DefaultSelector()
    conns: list[socket.socket] = []
    waiting = 0
    try:
        for i in range(count):
            sock = socket.create_connection((host, int(port)), timeout=30)
            sock.sendall(hello)
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, bytearray())
            conns.append(sock)
            waiting += 1
            if waiting >= 200 or i == count - 1:  # a window: the backlog is not the test
                while waiting:
                    events = selector.select(30)
                    assert events, f"no WELCOME within 30 s ({len(conns)} connections)"
                    for key, _ in events:
                        got = key.data
                        got += key.fileobj.recv(4096)  # type: ignore[union-attr]
                        if len(got) >= 12:
                            length, op = struct.unpack_from("<IB", got)
                            assert op == WELCOME, (op, bytes(got))
                            if len(got) >= 4 + length:
                                selector.unregister(key.fileobj)
                                waiting -= 1
    finally:
        selector.close()
    return conns


@pytest.mark.slow
def test_ten_thousand_idle_connections_cost_little_and_a_client_still_answers(
        tmp_path: Path) -> None:
    count = min(10_000, raise_own_open_file_limit(10_400) - 300)
    server = ServerProcess(tmp_path / "data").start()
    conns: list[socket.socket] = []
    try:
        with Client.connect(server.address, token=TOKEN, name="warm") as client:
            client.publish(MessageType.EVENT, b"warm")
        before = memory(server)["VmRSS"]
        conns = hello_many(server.address, count)
        time.sleep(1.0)
        per_connection = (memory(server)["VmRSS"] - before) / count
        print(f"{count} idle connections: {per_connection / 1024:.1f} KiB each")
        assert per_connection < 40 * 1024, f"{per_connection / 1024:.0f} KiB per idle connection"
        with Client.connect(server.address, token=TOKEN, name="normal") as client:
            assert client.publish(MessageType.EVENT, b"still served") is not None
            client.ping()
        raw = Raw(server.address)
        raw.hello()
        raw.send(frame(PING, 3))
        assert raw.recv_frame()[:2] == (PONG, 3)  # type: ignore[index]
        raw.close()
        assert_healthy(server)
    finally:
        for sock in conns:
            sock.close()
        server.kill()


# -- descriptors -----------------------------------------------------------------------------

LOW_LIMIT = 256


def low_descriptor_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LOW_LIMIT, LOW_LIMIT))


@pytest.mark.slow
def test_many_topics_under_a_low_descriptor_limit(tmp_path: Path) -> None:
    """With more logs allowed open than the descriptors hold (max_open_logs set high, the
    LRU never closes one), the logs past the limit are refused. test_service_open_logs.py
    has the same topics with the LRU at its automatic size: none refused."""
    server = ServerProcess(tmp_path / "data", env={"FLUXCORE_SEGMENT_FILE_SIZE": str(MIB),
                                                   "FLUXCORE_MAX_OPEN_LOGS": "100000"},
                           preexec_fn=low_descriptor_limit).start()
    try:
        stored: dict[str, list[int]] = {}
        refused: list[ProtocolError] = []
        with Client.connect(server.address, token=TOKEN, name="topics") as client:
            for i in range(300):
                topic = f"topic-{i}"
                try:
                    index = client.publish(MessageType.CUSTOM, b"%d" % i, topic=topic)
                except ProtocolError as exc:
                    refused.append(exc)
                    if len(refused) >= 20:
                        break
                    continue
                assert index is not None
                stored[topic] = [index]
            assert refused, "300 topics under a limit of 256 open files: none refused"
            for exc in refused:
                assert exc.code == "unavailable", exc
                assert "limit of open files" in str(exc), exc
            assert len(stored) > 20
            assert_healthy(server)
            # Existing logs go on, a built-in log opens still, nothing acknowledged is lost.
            for topic in list(stored)[:10]:
                index = client.publish(MessageType.CUSTOM, b"again", topic=topic)
                assert index is not None
                stored[topic].append(index)
            assert client.publish(MessageType.EVENT, b"event") is not None
            for topic, indexes in stored.items():
                found = [m.index for m in client.read_from_index(
                    MessageType.CUSTOM, 0, 10, topic=topic)]
                assert found == indexes, topic
        # New connections past the limit get an answer, never a silent reset.
        conns: list[Raw] = []
        outcomes = {"welcome": 0, "refused": 0}
        try:
            for _ in range(LOW_LIMIT):
                conn = Raw(server.address)
                conns.append(conn)
                conn.send(frame(HELLO, 1, hello_body()))
                reply = conn.recv_frame()
                assert reply is not None, "a connection was closed without an answer"
                if reply[0] == WELCOME:
                    outcomes["welcome"] += 1
                    continue
                error = decode_error(reply)
                assert error["code"] == "unavailable", error
                assert "limit of open files" in error["message"], error
                outcomes["refused"] += 1
                assert conn.closed_by_server()
                if outcomes["refused"] >= 5:
                    break
            assert outcomes["refused"] >= 5, outcomes
            assert_healthy(server)  # with every admitted connection still open
            silent = Raw(server.address)  # refused, says nothing: told, and closed soon
            conns.append(silent)
            error = decode_error(silent.recv_frame(5))
            assert error["code"] == "unavailable", error
            assert silent.closed_by_server(5)
            # A flood of refused connections takes at most a quarter of the reserve (8 of 32):
            # those past it are closed at once, the reserve stays for answers and logs.
            flood = [Raw(server.address) for _ in range(16)]
            conns.extend(flood)
            replies = [conn.recv_frame(5) for conn in flood]
            answered = [decode_error(reply) for reply in replies if reply is not None]
            assert all(error["code"] == "unavailable" for error in answered), answered
            assert 0 < len(answered) <= 8 < len(flood), len(answered)
            assert_healthy(server)
            web = Raw(server.address)
            conns.append(web)
            web.send(b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")
            web.sock.settimeout(5)
            assert web.sock.recv(100).startswith(b"HTTP/1.1 503")
        finally:
            for conn in conns:
                conn.close()
        log = "".join(server.output)
        assert "open-file limit: soft 256" in log, log[-2000:]
        assert "limit of open files" in log, log[-2000:]
        # Once the server has seen those connections close, their descriptors serve again.
        deadline = time.monotonic() + 10
        while True:
            try:
                client = Client.connect(server.address, token=TOKEN, name="after",
                                        reconnect=False)
                break
            except ProtocolError as exc:
                assert exc.code == "unavailable" and time.monotonic() < deadline, exc
                time.sleep(0.2)
        with client:
            assert client.publish(MessageType.CUSTOM, b"after", topic="topic-0") is not None
    finally:
        server.kill()


def test_server_raises_its_soft_descriptor_limit(tmp_path: Path) -> None:
    def lower_soft() -> None:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(512, hard), hard))

    server = ServerProcess(tmp_path / "data", preexec_fn=lower_soft).start()
    try:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        with open(f"/proc/{server.pid}/limits", encoding="ascii") as f:
            line = next(line for line in f if line.startswith("Max open files"))
        assert int(line.split()[3]) == hard, line
        assert f"open-file limit: soft {hard} (was {min(512, hard)})" in "".join(server.output)
    finally:
        server.kill()


# -- logs per project ------------------------------------------------------------------------


def test_logs_per_project_are_limited(tmp_path: Path) -> None:
    env = {"FLUXCORE_MAX_LOGS": "4", "FLUXCORE_SEGMENT_FILE_SIZE": str(MIB)}
    server = ServerProcess(tmp_path / "data", env=env).start()
    try:
        with Client.connect(server.address, token=TOKEN, name="logs") as client:
            for i in range(3):
                client.publish(MessageType.CUSTOM, b"x", topic=f"t{i}")
            client.publish(MessageType.DOCUMENT, b"{}", topic="people")
            with pytest.raises(ProtocolError) as caught:
                client.publish(MessageType.CUSTOM, b"x", topic="one-too-many")
            assert caught.value.code == "bad_request"
            assert "max_logs" in str(caught.value)
            with pytest.raises(ProtocolError) as caught:  # reading would create it too
                client.read_from_index(MessageType.DOCUMENT, 0, topic="others")
            assert "max_logs" in str(caught.value)
            with pytest.raises(ProtocolError, match="max_logs"):
                client.set_retention(MessageType.CUSTOM, 1000, topic="others")
        raw = Raw(server.address)
        raw.hello()
        parked_read(raw, 7, "reader", topic="others", type=12, max_timeout_ms=0)
        error = decode_error(raw.recv_frame())
        assert error["code"] == "bad_request" and "max_logs" in error["message"], error
        raw.close()
        with Client.connect(server.address, token=TOKEN, name="logs") as client:
            # the built-in logs and the existing topics are not affected
            assert client.publish(MessageType.CUSTOM, b"y", topic="t0") is not None
            assert client.publish(MessageType.COMMAND, b"c") is not None
        server.stop()
        server.start()  # the count survives a restart
        with Client.connect(server.address, token=TOKEN, name="logs") as client:
            assert client.publish(MessageType.CUSTOM, b"z", topic="t1") is not None
            with pytest.raises(ProtocolError, match="max_logs"):
                client.publish(MessageType.CUSTOM, b"x", topic="one-too-many")
        logs = tmp_path / "data" / "public" / "logs"
        for refused in ("custom-one-too-many", "custom-others", "document-others"):
            assert not (logs / refused).exists(), refused
    finally:
        server.kill()


def test_a_refused_hello_frame_does_not_disturb_others(server: ServerProcess) -> None:
    talker = Raw(server.address)
    talker.hello()
    conn = announce(server.address, 5000, hello=False)
    try:
        error = decode_error(conn.recv_frame())
        assert "before HELLO" in error["message"]
        talker.send(frame(PING, 1))
        assert talker.recv_frame()[:2] == (PONG, 1)  # type: ignore[index]
    finally:
        talker.close()
        conn.close()


# -- many waiting consumers --------------------------------------------------------------------


def parked_read(conn: Raw, request_id: int, consumer: str, **fields: object) -> None:
    body = {"type": 2, "topic": None, "consumer": consumer, "tracker": f"{consumer}-t",
            "max_size": 100, "max_timeout_ms": 30_000, **fields}
    conn.send(frame(READ, request_id, msgspec.msgpack.encode(body)))


def test_one_append_reaches_every_waiting_consumer_with_its_own_answer(
        server: ServerProcess) -> None:
    """Waiting reads that read the same messages share one read of the log and one frame;
    each still gets its own request id, and reads that differ get what is theirs."""
    with Client.connect(server.address, token=TOKEN, name="setup") as client:
        first = client.publish(MessageType.EVENT, b"before", type="Old")
    assert first is not None
    waiting = []
    for i in range(40):
        conn = Raw(server.address)
        conn.hello()
        kind = i % 4
        if kind == 0:  # the same read: shares a frame
            parked_read(conn, 1000 + i, f"same-{i}", client_index=True, last_index=first)
        elif kind == 1:  # a type filter that matches nothing of this append
            parked_read(conn, 1000 + i, f"filtered-{i}", client_index=True, last_index=first,
                        type_filter="Other")
        elif kind == 2:  # positions kept by the server, starting before the first message
            parked_read(conn, 1000 + i, f"positioned-{i}", last_index=first)
        else:  # a smaller batch
            parked_read(conn, 1000 + i, f"small-{i}", client_index=True, last_index=first,
                        max_size=1)
        waiting.append((kind, conn))
    time.sleep(0.5)
    with Client.connect(server.address, token=TOKEN, name="publisher") as client:
        indexes = client.publish_batch(MessageType.EVENT, [b"one", b"two"], type="New")
    assert indexes is not None
    try:
        for i, (kind, conn) in enumerate(waiting):
            op, request_id, body = conn.recv_frame()  # type: ignore[misc]
            assert (op, request_id) == (BATCH, 1000 + i)
            last_index, count = struct.unpack_from("<QI", body, 8)
            # filtered out: no messages, but the index it may go on from (client_index)
            expected = {0: 2, 1: 0, 2: 2, 3: 1}[kind]
            assert count == expected, (kind, count)
            assert last_index == int(indexes[max(count, 2 if kind == 1 else 1) - 1]), kind
    finally:
        for _kind, conn in waiting:
            conn.close()


def test_shared_batches_beyond_the_socket_buffers_arrive_whole_and_in_order(
        server: ServerProcess) -> None:
    """A frame shared by waiting reads is written straight to each socket; what a socket does
    not take at once (consumers with small receive windows that do not read for six rounds
    of 1 MB batches) follows through the connection's transport, and later frames queue
    behind it: every consumer gets every batch whole, in order, with its own request ids."""
    with Client.connect(server.address, token=TOKEN, name="setup") as client:
        first = client.publish(MessageType.EVENT, b"before")
    assert first is not None
    host, port = server.address.rsplit(":", 1)
    conns = []
    for _ in range(4):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        conn = Raw.__new__(Raw)
        conn.sock, conn.buf = sock, b""
        conn.hello()
        conns.append(conn)
    rounds = 6
    last = first
    published = []
    try:
        with Client.connect(server.address, token=TOKEN, name="publisher") as client:
            for round_ in range(rounds):
                for i, conn in enumerate(conns):
                    parked_read(conn, 100 * round_ + i, f"big-{i}", client_index=True,
                                last_index=last)
                time.sleep(0.3)
                payloads = [bytes([round_, k]) * 100_000 for k in range(5)]  # 1 MB, one batch
                indexes = client.publish_batch(MessageType.EVENT, payloads, type="Big")
                assert indexes is not None
                last = int(indexes[-1])
                published.append((last, payloads))
        for i, conn in enumerate(conns):
            for round_, (last_index, payloads) in enumerate(published):
                reply = conn.recv_frame(30)
                assert reply is not None
                op, request_id, body = reply
                assert (op, request_id) == (BATCH, 100 * round_ + i)
                assert struct.unpack_from("<QI", body, 8) == (last_index, 5)
                for payload in payloads:
                    assert payload in body, (i, round_)
        assert_healthy(server)
    finally:
        for conn in conns:
            conn.close()
