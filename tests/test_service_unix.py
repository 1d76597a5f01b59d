"""`fluxcore serve --unix PATH` (config key unix_path): a Unix domain socket listener next to
TCP, and `unix:/path` addresses in both clients: HELLO and its token, requests, a consumer,
and reconnecting after the server restarts (killed: its socket file is left behind)."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fluxcore.client import AsyncClient, Client, Guarantee, MessageType, ProtocolError

from .service_harness import TOKEN, ServerProcess


@pytest.fixture
def socket_path(tmp_path: Path) -> Iterator[str]:
    # AF_UNIX paths are at most 107 bytes: pytest's tmp_path may be longer.
    short = Path(f"/tmp/fluxcore-test-{os.getpid()}-{id(tmp_path):x}.sock")
    yield str(short)
    short.unlink(missing_ok=True)


def _unix_server(tmp_path: Path, socket_path: str) -> ServerProcess:
    return ServerProcess(tmp_path / "data", "--unix", socket_path).start()


def _first_answer(client: Client, payload: bytes) -> bytes:
    """A request's result, once the handler (reading from "now") answers."""
    for _ in range(20):
        try:
            return bytes(client.request(MessageType.COMMAND, payload, timeout=2).data)
        except TimeoutError:
            continue
    raise AssertionError("no handler answered")


def test_requests_over_a_unix_socket(tmp_path: Path, socket_path: str) -> None:
    server = _unix_server(tmp_path, socket_path)
    try:
        with Client.connect(f"unix:{socket_path}", token=TOKEN) as handler, \
                Client.connect(f"unix:{socket_path}", token=TOKEN) as requester:
            handler.consume("upper", MessageType.COMMAND, lambda m: bytes(m.data).upper())
            assert _first_answer(requester, b"probe") == b"PROBE"
            assert [requester.request(MessageType.COMMAND, f"r{i}".encode(), timeout=10).data
                    for i in range(20)] == [f"R{i}".encode() for i in range(20)]
            # The TCP listener serves the same server: a TCP requester, a Unix handler.
            with Client.connect(server.address, token=TOKEN) as over_tcp:
                answer = over_tcp.request(MessageType.COMMAND, b"tcp", timeout=10)
                assert answer.data == b"TCP"
    finally:
        server.stop()
    assert not os.path.exists(socket_path)  # a clean stop removes its socket file


def test_async_client_over_a_unix_socket(tmp_path: Path, socket_path: str) -> None:
    server = _unix_server(tmp_path, socket_path)

    async def run() -> None:
        handler = await AsyncClient.connect(f"unix:{socket_path}", token=TOKEN)
        requester = await AsyncClient.connect(f"unix:{socket_path}", token=TOKEN)
        try:
            await handler.consume("echo", MessageType.COMMAND, lambda m: bytes(m.data) + b"!")
            for _ in range(20):
                try:
                    await requester.request(MessageType.COMMAND, b"probe", timeout=2)
                    break
                except TimeoutError:
                    continue
            answers = await asyncio.gather(*(
                requester.request(MessageType.COMMAND, f"a{i}".encode(), timeout=10)
                for i in range(20)))
            assert [a.data for a in answers] == [f"a{i}!".encode() for i in range(20)]
        finally:
            await requester.close()
            await handler.close()

    try:
        asyncio.run(run())
    finally:
        server.stop()


def test_consumer_over_a_unix_socket(tmp_path: Path, socket_path: str) -> None:
    server = _unix_server(tmp_path, socket_path)
    got: list[bytes] = []
    done = threading.Event()

    def handle(message: object) -> None:
        got.append(bytes(message.data))  # type: ignore[attr-defined]
        if len(got) == 100:
            done.set()

    try:
        with Client.connect(f"unix:{socket_path}", token=TOKEN) as client:
            indexes = client.publish_batch(MessageType.EVENT, [b"e%d" % i for i in range(100)],
                                           guarantee=Guarantee.STORED)
            assert indexes is not None
            consumer = client.consume("events", MessageType.EVENT, handle,
                                      from_index=int(indexes[0]))
            assert done.wait(30)
            consumer.stop()
        assert got == [b"e%d" % i for i in range(100)]
    finally:
        server.stop()


def test_a_wrong_token_is_refused_over_a_unix_socket(tmp_path: Path, socket_path: str) -> None:
    server = _unix_server(tmp_path, socket_path)
    try:
        with pytest.raises(ProtocolError) as refused:
            Client.connect(f"unix:{socket_path}", token="wrong", reconnect=False)
        assert refused.value.code == "auth"

        async def connect() -> None:
            await AsyncClient.connect(f"unix:{socket_path}", token="wrong", reconnect=False)

        with pytest.raises(ProtocolError):
            asyncio.run(connect())
    finally:
        server.stop()


def test_clients_reconnect_over_a_unix_socket_after_a_restart(tmp_path: Path,
                                                              socket_path: str) -> None:
    server = _unix_server(tmp_path, socket_path)
    restarted: ServerProcess | None = None
    try:
        with Client.connect(f"unix:{socket_path}", token=TOKEN) as handler, \
                Client.connect(f"unix:{socket_path}", token=TOKEN) as requester:
            handler.consume("upper", MessageType.COMMAND, lambda m: bytes(m.data).upper())
            assert _first_answer(requester, b"before") == b"BEFORE"
            server.kill()  # no clean stop: the socket file stays behind
            assert os.path.exists(socket_path)
            restarted = _unix_server(tmp_path, socket_path)
            # Both connections come back by themselves; the handler reads on.
            assert _first_answer(requester, b"after") == b"AFTER"
            indexes = requester.publish_batch(MessageType.EVENT, [b"x"],
                                              guarantee=Guarantee.STORED)
            assert indexes is not None and len(indexes) == 1
    finally:
        server.kill()
        if restarted is not None:
            restarted.stop()


def test_unix_addresses_are_checked() -> None:
    with pytest.raises(ValueError, match=r"unix:/run/fluxcore\.sock"):
        Client.connect("unix:", token=TOKEN)
    with pytest.raises(ValueError, match="TLS is for TCP"):
        Client.connect("unix:/tmp/none.sock", token=TOKEN,
                       tls=ssl.create_default_context())
    with pytest.raises(FileNotFoundError):
        Client.connect("unix:/tmp/fluxcore-no-such.sock", token=TOKEN)


def test_unix_path_from_the_environment_or_the_config_file(tmp_path: Path,
                                                            socket_path: str) -> None:
    config = tmp_path / "fluxcore.toml"
    config.write_text(f"unix_path = {socket_path!r}\n".replace("'", '"'))
    for server in (ServerProcess(tmp_path / "data", env={"FLUXCORE_UNIX_PATH": socket_path}),
                   ServerProcess(tmp_path / "data", "--config", str(config))):
        server.start()
        try:
            with Client.connect(f"unix:{socket_path}", token=TOKEN) as client:
                client.ping()
        finally:
            assert server.stop() == 0


def test_a_socket_path_it_cannot_use_stops_serve_naming_it(tmp_path: Path) -> None:
    for path in (tmp_path / "no-such-dir" / "s.sock", tmp_path / "a-file"):
        if path.name == "a-file":
            path.write_text("not a socket")  # replaced only if it is a socket
        done = subprocess.run(
            [sys.executable, "-m", "fluxcore", "serve", "--data", str(tmp_path / "data"),
             "--port", "0", "--token", TOKEN, "--unix", str(path)],
            text=True, capture_output=True, timeout=60)
        assert done.returncode != 0
        assert f"cannot listen on the Unix socket {path}" in done.stderr
