"""fluxcore's and NATS's request rows in alternating rounds, both servers up at once.

The service suite runs one system after the other, so on a shared machine each meets a
different load. Here every round times fluxcore and then NATS core request-reply back to back
(one in flight, then 64 in flight), so that their ratio is taken under the same load:

python bench/run.py --suite service --paired-requests [--rounds 4] [--two-process] [--unix]

With `--two-process` each system's responder runs in a process of its own
(bench/request_responder.py), as a real handler service would; with `--unix` fluxcore's
requester and responder connect to its Unix domain socket (NATS stays on TCP).
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import make_dataset
from bench.service_fluxcore import FluxcoreSystem
from bench.service_peers import JetStreamSystem
from bench.service_workloads import IN_FLIGHT, percentile

LATENCY_COUNT = 1_000
RATE_COUNT = 5_000

Timed = tuple[Callable[[int], list[int]], Callable[[int, int], None]]


def _round(latencies: Callable[[int], list[int]], rate: Callable[[int, int], None]
           ) -> tuple[float, float, float]:
    """(p50 µs, p99 µs, requests/s) of one round."""
    gc.collect()
    gc.disable()
    try:
        samples = sorted(latencies(LATENCY_COUNT))
        start = time.perf_counter()
        rate(RATE_COUNT, IN_FLIGHT)
        seconds = time.perf_counter() - start
    finally:
        gc.enable()
    return percentile(samples, 0.5) / 1e3, percentile(samples, 0.99) / 1e3, RATE_COUNT / seconds


def paired_requests(rounds: int = 4, base: str | None = None, two_process: bool = False,
                    unix: bool = False) -> str:
    """`rounds` rounds of Client against NATS, then `rounds` of AsyncClient against NATS; with
    `two_process`, each system's responder runs in a process of its own (the requester's
    client kind in both), so the requester and the handler share no process and no GIL; with
    `unix`, fluxcore's clients connect to its Unix domain socket (NATS's stay on TCP:
    nats-server has no Unix socket listener)."""
    if JetStreamSystem.unavailable() is not None:
        return f"NATS is not available: {JetStreamSystem.unavailable()}"
    data = make_dataset()
    where = ("the responder in its own process" if two_process
             else "requester and responder in one process")
    if unix:
        where += "; fluxcore over its Unix socket, NATS over TCP"
    lines = [f"one in flight ({LATENCY_COUNT} requests) then {IN_FLIGHT} in flight"
             f" ({RATE_COUNT}), per round: p50 µs, p99 µs, requests/s; {where}"]
    results: dict[str, list[tuple[float, float, float]]] = {}
    with tempfile.TemporaryDirectory(dir=base) as one, tempfile.TemporaryDirectory(dir=base) as two:
        fluxcore = FluxcoreSystem(Path(one), data)
        nats = JetStreamSystem(Path(two), data)
        try:
            fluxcore.start_responder()
            if unix:
                fluxcore.use_unix_socket()
            nats.start_responder()
            fluxcore.request_latencies(300)
            nats.request_latencies(300)
            phases: list[tuple[bool, list[tuple[str, Timed]]]] = [
                (False, [
                    ("fluxcore Client", (fluxcore.request_latencies, fluxcore.request_rate)),
                    ("NATS (with Client)", (nats.request_latencies, nats.request_rate)),
                ] * rounds),
                # The asyncio rows come last: their responder replaces the threaded one.
                (True, [
                    ("fluxcore AsyncClient",
                     (fluxcore.request_latencies_async, fluxcore.request_rate_async)),
                    ("NATS (with AsyncClient)", (nats.request_latencies, nats.request_rate)),
                ] * rounds),
            ]
            for asyncio_client, plan in phases:
                if two_process:
                    fluxcore.start_remote_responder(asyncio_client)
                    nats.start_remote_responder(asyncio_client)
                for name, (latencies, rate) in plan:
                    p50, p99, per_second = _round(latencies, rate)
                    results.setdefault(name, []).append((p50, p99, per_second))
                    lines.append(f"  {name:24} {p50:8.0f} {p99:8.0f} {per_second:9.0f}")
        finally:
            fluxcore.close()
            nats.close()
    lines.append("medians over the rounds:")
    for name, rows in results.items():
        lines.append(f"  {name:24} p50 {statistics.median(r[0] for r in rows):.0f} µs,"
                     f" p99 {statistics.median(r[1] for r in rows):.0f} µs,"
                     f" {statistics.median(r[2] for r in rows):.0f} requests/s")
    return "\n".join(lines)
