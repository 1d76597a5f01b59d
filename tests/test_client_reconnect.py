"""Both clients against a fake server that breaks every phase of reconnecting, many times in a
row: the client keeps reconnecting with backoff and completes every pending publish.

The fake server is a plain socket server written from docs/protocol.md (frames, HELLO, APPEND,
ACK), not a mock of the client: it holds the first connection's appends unanswered, drops
that connection, then drops the next ones while the client says HELLO, right after WELCOME,
in the middle of a WELCOME, and in the middle of the resend, before it behaves."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import struct
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from fluxcore.client import (
    AsyncClient,
    Client,
    ConnectionLost,
    Guarantee,
    MessageType,
    ProtocolError,
)

FRAME = struct.Struct("<IBBHI")  # length, op, flags, reserved, request id
HELLO, APPEND, WELCOME, ACK, PONG, ERROR = 1, 2, 129, 130, 138, 143
FLOOD = 24 << 20  # more than the socket buffers of both sides hold
FLAG_RESEND = 1

# A connection lost during HELLO must be noticed when it is lost, not after connect_timeout.
CONNECT_TIMEOUT = 120.0
WAIT = 60.0  # for each publish; failing-phase connections cost ~10 s of backoff in all

BATCHES = 4
BATCH_SIZE = 3000
PAYLOAD = 1000  # four batches of 3 MB: a resend far larger than the socket buffers

# What the fake server does on each connection after the first, in order; then it behaves.
FAILURES = [
    "drop_in_resend",  # WELCOME, read part of the resend, reset the connection
    "drop_in_resend",
    "drop_after_welcome",  # WELCOME, then reset at once
    "close_after_welcome",  # WELCOME, then an orderly close (WELCOME and EOF come together)
    "drop_in_hello",  # read the HELLO, reset without answering
    "drop_at_accept",  # reset before reading anything
    "drop_in_resend",
    "half_welcome",  # half a WELCOME frame, then reset
    "drop_after_welcome",
    "drop_in_resend",
]


def _reset(conn: socket.socket) -> None:
    """Closes with a TCP reset (SO_LINGER 0): the client sees ECONNRESET or EPIPE."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def _exactly(conn: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = conn.recv(min(size - len(data), 1 << 20))
        if not chunk:
            raise ConnectionError("client closed")
        data += chunk
    return bytes(data)


def _frame(conn: socket.socket) -> tuple[int, int, int, bytes]:
    length, op, flags, _reserved, request_id = FRAME.unpack(_exactly(conn, 12))
    return op, flags, request_id, _exactly(conn, length - 8)


def _answer(op: int, request_id: int, body: bytes) -> bytes:
    return FRAME.pack(8 + len(body), op, 0, 0, request_id) + body


def _welcome() -> bytes:
    # msgpack {"server": "fake", "protocol": 1}, written out by hand.
    body = b"\x82\xa6server\xa4fake\xa8protocol\x01"
    return _answer(WELCOME, 0, body)


def _message_ids(body: bytes) -> list[bytes]:
    """The message ids of an APPEND body (docs/protocol.md, "APPEND" and "A message")."""
    (topic_len,) = struct.unpack_from("<H", body, 2)
    pos = 4 + topic_len
    (count,) = struct.unpack_from("<I", body, pos)
    sizes = struct.unpack_from(f"<{count}I", body, pos + 4)
    pos += 4 + 5 * count
    ids = []
    for size in sizes:
        type_len, id_len = struct.unpack_from("<HH", body, pos + 2)
        ids.append(body[pos + 40 + type_len : pos + 40 + type_len + id_len])
        pos += size
    return ids


class FakeServer:
    def __init__(self, script: list[str] | None = None) -> None:
        # What it does on each connection, in order; the last one again for any more.
        self.script = script or ["hold", *FAILURES, "behave"]
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.stored: dict[bytes, int] = {}  # message id -> index, as acknowledged
        self.acked: dict[int, list[int]] = {}  # request id -> indexes of its ACK
        self.held = 0  # appends received on the first connection, never answered
        self.behaviours: list[str] = []
        self.accepted_at: list[float] = []  # time.monotonic() of each connection
        self.resent_appends = 0
        self._next_index = 1 << 40
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the thread
        self.listener.close()
        self._thread.join(10)
        assert not self._thread.is_alive()

    def _serve(self) -> None:
        script = self.script
        number = 0
        while not self._stop:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted_at.append(time.monotonic())
            behaviour = script[min(number, len(script) - 1)]
            number += 1
            self.behaviours.append(behaviour)
            try:
                getattr(self, "_" + behaviour)(conn)
            except (ConnectionError, OSError):
                conn.close()

    def _hello(self, conn: socket.socket) -> None:
        op, _flags, _rid, _body = _frame(conn)
        assert op == HELLO
        conn.sendall(_welcome())

    def _hold(self, conn: socket.socket) -> None:
        self._hello(conn)
        while self.held < BATCHES:
            op, _flags, _rid, _body = _frame(conn)
            self.held += op == APPEND
        _reset(conn)

    def _refuse(self, conn: socket.socket) -> None:
        _frame(conn)
        # msgpack {"code": "auth", "message": "no"}
        conn.sendall(_answer(ERROR, 0, b"\x82\xa4code\xa4auth\xa7message\xa2no"))
        conn.close()

    def _drop_at_accept(self, conn: socket.socket) -> None:
        _reset(conn)

    def _drop_in_hello(self, conn: socket.socket) -> None:
        _exactly(conn, 12)
        _reset(conn)

    def _half_welcome(self, conn: socket.socket) -> None:
        _frame(conn)
        conn.sendall(_welcome()[:9])
        _reset(conn)

    def _drop_after_welcome(self, conn: socket.socket) -> None:
        self._hello(conn)
        _reset(conn)

    def _close_after_welcome(self, conn: socket.socket) -> None:
        _frame(conn)
        # Corked: WELCOME and the FIN leave in one segment, so the client reads both at once.
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        conn.sendall(_welcome())
        conn.close()

    def _drop_in_resend(self, conn: socket.socket) -> None:
        self._hello(conn)
        _exactly(conn, 64 * 1024)  # part of the first resent frame; the rest stays unread
        _reset(conn)

    def _flood_first(self, conn: socket.socket) -> None:
        """As a server answering many READs at once after a reconnect: a big answer goes
        out before it reads the resend, so a client that stops reading while it resends
        would never get its resend through."""
        self._hello(conn)
        conn.sendall(_answer(PONG, 0xFFFF_FFF0, bytes(FLOOD)))
        self._take_appends(conn)

    def _behave(self, conn: socket.socket) -> None:
        self._hello(conn)
        self._take_appends(conn)

    def _take_appends(self, conn: socket.socket) -> None:
        while True:
            op, flags, request_id, body = _frame(conn)
            if op != APPEND:
                continue
            self.resent_appends += bool(flags & FLAG_RESEND)
            ids = _message_ids(body)
            if ids[0] not in self.stored:
                for message_id in ids:
                    self.stored[message_id] = self._next_index
                    self._next_index += 1
                self._next_index += 1000  # the next batch's indexes do not follow on
            indexes = [self.stored[i] for i in ids]
            self.acked[request_id] = indexes
            # Two ranges where the batch allows it: the client must take every range.
            half = len(indexes) // 2 or len(indexes)
            ranges = [(indexes[0], half)]
            if half < len(indexes):
                ranges.append((indexes[half], len(indexes) - half))
            ack = b"".join(struct.pack("<QI", first, count) for first, count in ranges)
            conn.sendall(_answer(ACK, request_id, ack))


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer()
    try:
        yield server
    finally:
        server.close()


def _batches() -> list[list[bytes]]:
    return [[b"%d-%05d-" % (b, i) + b"x" * PAYLOAD for i in range(BATCH_SIZE)]
            for b in range(BATCHES)]


def _check(fake: FakeServer, results: list[np.ndarray]) -> None:
    assert fake.behaviours[: len(FAILURES) + 2] == ["hold", *FAILURES, "behave"]
    # With backoff: connections that break at once do not start the waits afresh (0.05 s
    # doubling to 2 s: about 11 s over these failures). A wait is never shorter than asked,
    # and only a connection that lasted a second would start them afresh.
    assert fake.accepted_at[len(FAILURES) + 1] - fake.accepted_at[1] > 2.5
    assert fake.resent_appends == BATCHES
    assert len(fake.stored) == BATCHES * BATCH_SIZE  # every message once
    got = sorted(tuple(int(i) for i in r) for r in results)
    assert got == sorted(tuple(v) for v in fake.acked.values())


@pytest.mark.slow
def test_sync_client_survives_failures_in_every_phase_of_reconnecting(
        fake: FakeServer) -> None:
    with Client.connect(fake.address, token="t", connect_timeout=CONNECT_TIMEOUT) as client:
        futures = [client.publish_batch_async(MessageType.EVENT, batch, type="T",
                                              guarantee=Guarantee.STORED)
                   for batch in _batches()]
        results = [f.result(WAIT) for f in futures if f is not None]
        assert len(results) == BATCHES
        _check(fake, results)


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_async_client_survives_failures_in_every_phase_of_reconnecting(
        fake: FakeServer, loop: str) -> None:
    run = asyncio.run if loop == "asyncio" else pytest.importorskip("uvloop").run

    async def main() -> list[np.ndarray]:
        client = await AsyncClient.connect(fake.address, token="t", connect_timeout=CONNECT_TIMEOUT)
        try:
            futures = [await client.publish_batch_nowait(
                MessageType.EVENT, batch, type="T", guarantee=Guarantee.STORED)
                for batch in _batches()]
            return [await asyncio.wait_for(f, WAIT) for f in futures if f is not None]
        finally:
            await client.close()

    results = run(main())
    assert len(results) == BATCHES
    _check(fake, results)


REFUSED = ["hold", "drop_in_hello", "refuse"]


def test_sync_client_stops_reconnecting_when_its_token_is_refused() -> None:
    fake = FakeServer(REFUSED)
    try:
        with Client.connect(fake.address, token="t") as client:
            futures = [client.publish_batch_async(MessageType.EVENT, [b"x"], type="T")
                       for _ in range(BATCHES)]
            for future in futures:
                assert future is not None
                with pytest.raises(ProtocolError) as info:
                    future.result(WAIT)
                assert info.value.code == "auth"
            with pytest.raises(ConnectionLost):
                client.publish(MessageType.EVENT, b"later", type="T")
    finally:
        fake.close()
    assert fake.behaviours == REFUSED


def test_async_client_stops_reconnecting_when_its_token_is_refused() -> None:
    async def main() -> None:
        client = await AsyncClient.connect(fake.address, token="t")
        try:
            futures = [await client.publish_batch_nowait(MessageType.EVENT, [b"x"], type="T")
                       for _ in range(BATCHES)]
            for future in futures:
                assert future is not None
                with pytest.raises(ProtocolError) as info:
                    await asyncio.wait_for(future, WAIT)
                assert info.value.code == "auth"
            with pytest.raises(ConnectionLost):
                await client.publish(MessageType.EVENT, b"later", type="T")
        finally:
            await client.close()

    fake = FakeServer(REFUSED)
    try:
        asyncio.run(main())
    finally:
        fake.close()
    assert fake.behaviours == REFUSED


FLOODED = ["hold", "flood_first"]


def test_sync_client_reads_while_it_resends() -> None:
    fake = FakeServer(FLOODED)
    try:
        with Client.connect(fake.address, token="t") as client:
            futures = [client.publish_batch_async(MessageType.EVENT, batch, type="T")
                       for batch in _batches()]
            results = [f.result(WAIT) for f in futures if f is not None]
    finally:
        fake.close()
    assert fake.behaviours == FLOODED
    assert len(fake.stored) == BATCHES * BATCH_SIZE and len(results) == BATCHES


def test_async_client_reads_while_it_resends() -> None:
    async def main() -> list[np.ndarray]:
        client = await AsyncClient.connect(fake.address, token="t")
        try:
            futures = [await client.publish_batch_nowait(MessageType.EVENT, batch, type="T")
                       for batch in _batches()]
            return [await asyncio.wait_for(f, WAIT) for f in futures if f is not None]
        finally:
            await client.close()

    fake = FakeServer(FLOODED)
    try:
        results = asyncio.run(main())
    finally:
        fake.close()
    assert fake.behaviours == FLOODED
    assert len(fake.stored) == BATCHES * BATCH_SIZE and len(results) == BATCHES


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_handshake_given_up_leaves_no_future_unretrieved(loop: str) -> None:
    """Connects cancelled at every moment of the handshake (a caller's timeout, or close()
    while the client reconnects), also after the connection is made but before HELLO is
    answered: the loop is never told of a future whose exception nobody retrieved (before,
    the WELCOME future of such a connection got "the server closed the connection" when the
    client closed it, and nobody waited for it any more)."""
    run = asyncio.run if loop == "asyncio" else pytest.importorskip("uvloop").run
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    accepted: list[socket.socket] = []

    def accept() -> None:  # accepts and never answers: every HELLO waits
        with contextlib.suppress(OSError):
            while True:
                accepted.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    unretrieved: list[dict[str, object]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, context: unretrieved.append(context))
        for attempt in range(200):
            # connect_timeout: Python 3.11's wait_for may miss a cancel that comes as the
            # connection is made; the handshake then waits for its WELCOME that long.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    AsyncClient.connect(address, token="t", connect_timeout=0.2),
                    timeout=(attempt % 50) * 10e-6)
        await asyncio.sleep(0.1)  # the connections' ends are reported
        gc.collect()

    try:
        run(main())
        gc.collect()
    finally:
        listener.close()
        for conn in accepted:
            conn.close()
    assert unretrieved == []
