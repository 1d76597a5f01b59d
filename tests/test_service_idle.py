"""The server's idle check against a real server: a connection that said HELLO and goes quiet
is pinged, and closed if it stays quiet (a half-open connection, a hung client); clients that
answer PING, or that take their answers, stay. docs/protocol.md, "Idle connections"."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fluxcore.client import AsyncClient, Client, MessageType
from fluxcore.protocol import ErrorCode, Op, decode_control, encode_control

from ._raw import connect, read_frame
from .service_harness import TOKEN, ServerProcess

IDLE_S = 3.0  # short for the tests; long enough for a loaded machine to answer a ping


@pytest.fixture
def idle_server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data", env={
        "FLUXCORE_IDLE_TIMEOUT_S": str(IDLE_S),
        "FLUXCORE_CONNECTION_BUFFER": str(256 * 1024),
    }).start()
    try:
        yield proc
    finally:
        proc.kill()


def connections(client: Client, client_id: str) -> list[str]:
    """The connect and disconnect records of `client_id` in the METRICS log, in order."""
    found = []
    for message in client.read_from_index(MessageType.METRICS, 0, max_size=10_000):
        if (message.type in ("connect", "disconnect")
                and decode_control(message.data)["client_id"] == client_id):
            found.append(message.type)
    return found


def test_quiet_connection_is_pinged_then_closed(idle_server: ServerProcess) -> None:
    sock = connect(idle_server, "quiet")
    started = time.monotonic()
    with sock:
        # Answering the pings keeps the connection for several idle timeouts.
        answered = 0
        while time.monotonic() - started < 2 * IDLE_S:
            op, request_id, body = read_frame(sock)
            assert (op, request_id, body) == (Op.PING, 0, b"")
            sock.sendall(struct.pack("<IBBHI", 8, Op.PONG, 0, 0, 0))
            answered += 1
        assert answered >= 2
        # Then it goes quiet: more pings, then an ERROR and the end of the connection.
        quiet_since = time.monotonic()
        pings = 0
        while True:
            op, request_id, body = read_frame(sock)
            if op != Op.PING:
                break
            pings += 1
        assert op == Op.ERROR and request_id == 0
        assert decode_control(body)["code"] == ErrorCode.IDLE
        closed_after = time.monotonic() - quiet_since
        with pytest.raises(ConnectionResetError):
            read_frame(sock)
    assert pings >= 1
    assert closed_after >= IDLE_S * 0.9  # not before the idle timeout (loose: no tight timing)
    assert closed_after < IDLE_S + 20  # and within it plus the check's period, with slack


def test_idle_clients_answer_pings_and_keep_their_connection(
        idle_server: ServerProcess) -> None:
    got: list[bytes] = []
    aio_got: list[bytes] = []

    async def aio_side(done: asyncio.Event) -> str:
        async with await AsyncClient.connect(idle_server.address, token=TOKEN,
                                             name="aio") as aio:
            await aio.consume("aio-idle", MessageType.EVENT, lambda m: aio_got.append(m.data),
                              max_timeout_ms=10_000)
            await done.wait()
            for _ in range(100):
                if aio_got:
                    break
                await asyncio.sleep(0.1)
            assert await aio.ping() >= 0
            return aio.client_id

    with Client.connect(idle_server.address, token=TOKEN, name="sync") as client:
        # Long polls far longer than the idle timeout: nothing but PONGs goes to the server.
        consumer = client.consume("idle", MessageType.EVENT, lambda m: got.append(m.data),
                                  max_timeout_ms=10_000)

        async def main() -> str:
            done = asyncio.Event()
            task = asyncio.create_task(aio_side(done))
            await asyncio.sleep(2.5 * IDLE_S)
            await asyncio.to_thread(client.publish, MessageType.EVENT, b"still here")
            done.set()
            return await task

        aio_id = asyncio.run(main())
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        consumer.stop()
        assert got == [b"still here"] and aio_got == [b"still here"]
        assert client.ping() >= 0  # the request/response path is unchanged
        # one connection each, never dropped
        assert connections(client, client.client_id) == ["connect"]
        assert connections(client, aio_id) == ["connect", "disconnect"]


def test_client_that_takes_no_answers_is_closed(idle_server: ServerProcess) -> None:
    with Client.connect(idle_server.address, token=TOKEN, name="publisher") as client:
        # A log's first files are small (1 and 4 MiB) and a READ answers from one file: these
        # fill them, so that each READ below is answered with all 5,000 messages.
        for _ in range(2):
            client.publish_batch(MessageType.EVENT, [b"f" * 1000] * 3000)
        indexes = client.publish_batch(MessageType.EVENT, [b"x" * 1000] * 5000)
        assert indexes is not None
        stuck = connect(idle_server, "stuck")
        slow = connect(idle_server, "slow")
        with stuck, slow:
            request = encode_control({"type": int(MessageType.EVENT),
                                      "min_index": int(indexes[0]), "max_size": 5000})
            for sock in (stuck, slow):
                for request_id in range(2, 10):  # ~40 MB of answers, far past every buffer
                    sock.sendall(struct.pack("<IBBHI", 8 + len(request), Op.READ_FROM_INDEX,
                                             0, 0, request_id) + request)
            # `slow` reads a little at a time and sends nothing: it stays. `stuck` reads
            # nothing: the server's buffer for it does not move, so it is closed.
            slow.settimeout(30)
            started = time.monotonic()
            taken = 0
            while time.monotonic() - started < 3 * IDLE_S:
                taken += len(slow.recv(64 * 1024))
                time.sleep(0.05)
            assert taken > 0
            assert connections(client, "stuck") == ["connect", "disconnect"]
            assert connections(client, "slow") == ["connect"]



def test_a_stopped_server_does_not_drop_its_clients(idle_server: ServerProcess) -> None:
    # While the server's process is stopped it reads nothing and sends no PING; once it runs
    # again, its clients must not count as silent for that time.
    pong = struct.pack("<IBBHI", 8, Op.PONG, 0, 0, 0)
    with connect(idle_server, "patient") as sock:
        assert read_frame(sock) == (Op.PING, 0, b"")
        sock.sendall(pong)
        # The server's next idle check (every IDLE_S / 6) sees the PONG; its next PING comes a
        # third of IDLE_S after that: stop it in between, with nothing on its way to it.
        time.sleep(IDLE_S / 4)
        os.kill(idle_server.pid, signal.SIGSTOP)
        try:
            time.sleep(1.5 * IDLE_S)
        finally:
            os.kill(idle_server.pid, signal.SIGCONT)
        started = time.monotonic()
        while time.monotonic() - started < 1.2 * IDLE_S:
            op, _request_id, body = read_frame(sock)
            assert op == Op.PING, decode_control(body)
            sock.sendall(pong)
