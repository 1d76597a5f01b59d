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


def test_service_suite_two_process_rows(tmp_path: Path) -> None:
    """The suite's `_2proc` rows for fluxcore: Client and AsyncClient requesters against a
    responder process (small counts)."""
    from bench.common import Results, make_dataset
    from bench.service_fluxcore import FluxcoreSystem
    from bench.service_workloads import ServiceSizes, _two_process_rows, _unix_rows

    system = FluxcoreSystem(tmp_path, make_dataset())
    results = Results()
    sizes = ServiceSizes(publish=0, consume=0, request=200, latency=100, repeats=1)
    try:
        system.start_responder()
        _two_process_rows(system, sizes, results)
        _unix_rows(system, sizes, results)
    finally:
        system.close()
    assert not results.skipped
    assert sorted(row.name for row in results.rows) == sorted(
        [f"request_{kind}{suffix}_2proc" for kind in ("rate", "p50", "p99")
         for suffix in ("", "_async")]
        + [f"request_{kind}_unix" for kind in ("rate", "p50", "p99")])
    for row in results.rows:
        assert row.value > 0
        assert ("process of its own" if row.name.endswith("_2proc") else "Unix domain socket") \
            in str(row.extra["how"])


def test_paired_requests_two_process_over_unix(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import request_pairs
    from bench.service_peers import JetStreamSystem

    if JetStreamSystem.unavailable() is not None:
        pytest.skip(str(JetStreamSystem.unavailable()))
    monkeypatch.setattr(request_pairs, "LATENCY_COUNT", 50)
    monkeypatch.setattr(request_pairs, "RATE_COUNT", 200)
    text = request_pairs.paired_requests(1, str(tmp_path), two_process=True, unix=True)
    assert "the responder in its own process; fluxcore over its Unix socket" in text
    for name in ("fluxcore Client", "NATS (with Client)", "fluxcore AsyncClient",
                 "NATS (with AsyncClient)"):
        assert f"  {name}" in text.split("medians over the rounds:")[1]
