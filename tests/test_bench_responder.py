"""The benchmark's responder process (bench/request_responder.py, the `_2proc` rows): it answers
requests from another process against a real server, and close() ends it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.request_responder import ResponderProcess
from fluxcore.client import AsyncClient, Client, MessageType

from .service_harness import ServerProcess

BENCH_TOKEN = "bench"


@pytest.fixture
def bench_server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data", token=BENCH_TOKEN).start()
    try:
        yield proc
    finally:
        proc.kill()


@pytest.mark.parametrize("kind", ["fluxcore", "fluxcore-async"])
def test_responder_process_answers_requests(bench_server: ServerProcess, kind: str) -> None:
    responder = ResponderProcess(kind, bench_server.address)
    try:
        with Client.connect(bench_server.address, token=BENCH_TOKEN) as client:
            # It consumes from "now": the first requests may come before its READ does.
            for _ in range(20):
                try:
                    client.request(MessageType.COMMAND, b"probe", timeout=2)
                    break
                except TimeoutError:
                    continue
            answers = [client.request(MessageType.COMMAND, f"r{i}".encode(), timeout=10).data
                       for i in range(50)]
        assert answers == [f"r{i}".encode() for i in range(50)]
        assert responder.process.poll() is None
    finally:
        responder.close()
    assert responder.process.returncode == 0


def test_responder_process_answers_an_async_client(bench_server: ServerProcess) -> None:
    responder = ResponderProcess("fluxcore", bench_server.address)
    try:
        asyncio.run(_requests(bench_server.address))
    finally:
        responder.close()
    assert responder.process.returncode == 0


async def _requests(address: str) -> None:
    client = await AsyncClient.connect(address, token=BENCH_TOKEN)
    try:
        for _ in range(20):
            try:
                await client.request(MessageType.COMMAND, b"probe", timeout=2)
                break
            except TimeoutError:
                continue
        answer = await client.request(MessageType.COMMAND, b"hello", timeout=10)
        assert answer.data == b"hello"
    finally:
        await client.close()


def test_responder_kind_is_checked() -> None:
    with pytest.raises(ValueError, match="responder kind"):
        ResponderProcess("redis", "127.0.0.1:1")
