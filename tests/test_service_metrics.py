"""The METRICS log: every connection's traffic, how far each consumer is behind, connects,
disconnects and trackers leaving, all written by the server, read from one place."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from fluxcore.client import Client, Message, MessageType
from fluxcore.protocol import encode_control

from .service_harness import TOKEN, ServerProcess
from .test_service_robustness import READ, Raw, frame


def metrics(client: Client, kind: str) -> list[dict[str, Any]]:
    found = client.read_from_index(MessageType.METRICS, 0, 10_000)
    return [msgspec.msgpack.decode(m.data) for m in found if m.type == kind]


def wait_for_metric(client: Client, kind: str, match: Any, timeout: float = 10) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [m for m in metrics(client, kind) if match(m)]
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no {kind} metric matched; got {metrics(client, kind)}")


def test_traffic_lag_and_tracker_metrics(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", env={"FLUXCORE_METRICS_INTERVAL_S": "0.2",
                                                  "FLUXCORE_PURGE_INTERVAL_S": "0.1"})
    server.start()
    try:
        with Client.connect(server.address, token=TOKEN, name="shop") as client, \
                Client.connect(server.address, token=TOKEN, name="watcher") as watcher:
            first = client.publish_batch(MessageType.EVENT, [b"x" * 100] * 300, type="T")
            assert first is not None
            got: list[Message] = []
            done = threading.Event()

            def handle(message: Message) -> None:
                got.append(message)
                if len(got) == 300:
                    done.set()

            consumer = client.consume("billing", MessageType.EVENT, handle, trackers=2,
                                      from_index=int(first[0]))
            assert done.wait(10)
            mine = client.client_id

            def totals() -> dict[str, int]:
                sums: dict[str, int] = {}
                for m in metrics(watcher, "client_stats"):
                    if m["client_id"] == mine:
                        for key, value in m.items():
                            if isinstance(value, int) and key != "timestamp":
                                sums[key] = sums.get(key, 0) + value
                return sums

            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and totals().get("messages_out", 0) < 300:
                time.sleep(0.05)
            sums = totals()
            assert sums["messages_in"] == 300 and sums["appends"] == 1
            assert sums["bytes_in"] > 300 * 100
            assert sums["messages_out"] == 300 and sums["reads"] >= 2
            assert sums["bytes_out"] > 300 * 100
            # The consumer caught up: 0 ms behind (its positions are stored as it reads on).
            wait_for_metric(watcher, "consumer_stats",
                            lambda m: m["consumer"] == "billing" and m["trackers"] == 2
                            and m["log"] == "event" and m["behind_ms"] == 0)
            consumer.stop()
            left = wait_for_metric(watcher, "disconnect_tracker",
                                   lambda m: m["consumer"] == "billing")
            assert {m["reason"] for m in left} == {"left"} and len(left) == 2
            release = threading.Event()
            client.consume("stalled", MessageType.EVENT, lambda m: release.wait(10),
                           from_index=0, purge_timeout_ms=300)
            # Still on its first batch: it has stored no position yet ...
            wait_for_metric(watcher, "consumer_stats",
                            lambda m: m["consumer"] == "stalled" and m["behind_ms"] is None)
            # ... and past its purge timeout: the server purges it.
            wait_for_metric(watcher, "disconnect_tracker",
                            lambda m: m["consumer"] == "stalled" and m["reason"] == "purged")
            release.set()
            # A tracker whose connection just closes goes as "disconnected".
            raw = Raw(server.address)
            raw.hello()
            raw.send(frame(READ, 1, encode_control({
                "type": 2, "consumer": "raw", "tracker": "raw-1", "max_size": 10,
                "max_timeout_ms": 5000, "last_index": 2**63})))
            wait_for_metric(watcher, "consumer_stats", lambda m: m["consumer"] == "raw")
            raw.close()
        with Client.connect(server.address, token=TOKEN, name="after") as after:
            gone = wait_for_metric(after, "disconnect_tracker",
                                   lambda m: m["consumer"] == "raw")
            assert gone[0]["reason"] == "disconnected"
            kinds = {m.type for m in after.read_from_index(MessageType.METRICS, 0, 10_000)}
            assert {"connect", "disconnect", "client_stats", "consumer_stats",
                    "disconnect_tracker"} <= kinds
    finally:
        server.kill()


def test_metrics_command_summarizes_the_project(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    server = ServerProcess(tmp_path / "data", env={"FLUXCORE_METRICS_INTERVAL_S": "0.2"})
    server.start()
    try:
        with Client.connect(server.address, token=TOKEN, name="shop") as client:
            first = client.publish_batch(MessageType.EVENT, [b"x"] * 50, type="T")
            assert first is not None
            got: list[Message] = []
            consumer = client.consume("billing", MessageType.EVENT, got.append,
                                      from_index=int(first[0]))
            wait_for_metric(client, "consumer_stats",
                            lambda m: m["consumer"] == "billing" and m["behind_ms"] == 0)
            out = subprocess.run(
                [sys.executable, "-m", "fluxcore", "metrics", server.address, "--token", TOKEN],
                capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            summary = json.loads(out.stdout)
            mine = summary["clients"][client.client_id]
            assert mine["client_name"] == "shop" and mine["connected"]
            assert mine["messages_in"] == 50 and mine["messages_out"] == 50
            assert summary["consumers"]["event/billing"]["behind_ms"] == 0
            consumer.stop()
        bad = subprocess.run(
            [sys.executable, "-m", "fluxcore", "metrics", server.address, "--token", "wrong"],
            capture_output=True, text=True, timeout=60)
        assert bad.returncode == 1 and "token" in bad.stderr
    finally:
        server.kill()
