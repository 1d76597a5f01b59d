"""The service workloads, written once and run unchanged over every message service.

A system plugs in as a `ServiceSystem`: it starts its own server on loopback
(in `__init__`, stopped again by `close`) and offers publish, consume and
request/response the way a user of that system would write them. This module
decides what is timed, what is warm-up and what is checked.
"""

from __future__ import annotations

import abc
import gc
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from bench.common import (
    PAYLOAD_SIZE,
    Dataset,
    JsonValue,
    Results,
    Row,
    Timing,
    progress,
    scratch_dir,
)

PUBLISH_BATCH = 1_000  # messages per publish call / pipeline / ack window
CONSUME_BATCH = 1_000  # messages per read
IN_FLIGHT = 64  # concurrent requests of request_rate
CONSUME_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ServiceSizes:
    """How much work one run does; message counts are per timed repeat."""

    publish: int
    consume: int
    request: int  # requests per repeat of request_rate
    latency: int  # requests per repeat of request_p50 / request_p99 (one in flight)
    repeats: int


SERVICE_QUICK = ServiceSizes(
    publish=100_000, consume=100_000, request=10_000, latency=2_000, repeats=3
)
SERVICE_FULL = ServiceSizes(
    publish=300_000, consume=300_000, request=30_000, latency=10_000, repeats=5
)


@dataclass(frozen=True)
class Consumed:
    count: int
    payload_bytes: int
    seconds: float  # from creating the consumer to handling the last message


class ServiceSystem(abc.ABC):
    """One running server of a system and the client connections that talk to it."""

    system: ClassVar[str]
    setup: ClassVar[str]  # durability of an acknowledged publish: the note of every row
    how: ClassVar[dict[str, str]]  # per row name: which API calls the row times

    @classmethod
    @abc.abstractmethod
    def unavailable(cls) -> str | None:
        """Why this system cannot run here (a missing binary or package), or None."""

    @classmethod
    @abc.abstractmethod
    def versions(cls) -> str:
        """Server and client versions, for the context lines."""

    @abc.abstractmethod
    def __init__(self, directory: Path, data: Dataset) -> None:
        """Start the server with its data in `directory` and connect to it."""

    @abc.abstractmethod
    def publish(self, count: int) -> None:
        """Publish `count` messages in batches of PUBLISH_BATCH, each batch acked as stored."""

    @abc.abstractmethod
    def fill(self, count: int) -> None:
        """Publish `count` messages for the consumers to read (untimed)."""

    @abc.abstractmethod
    def consume(self, count: int, per_message: bool) -> Consumed:
        """Read the `count` messages of `fill` with a new consumer, from the first one.

        The handler gets a batch, or (per_message) one message per call.
        """

    @abc.abstractmethod
    def start_responder(self) -> None:
        """Start a handler that answers each request with its payload."""

    @abc.abstractmethod
    def request_rate(self, count: int, in_flight: int) -> None:
        """Send `count` requests, `in_flight` awaiting an answer at any time."""

    @abc.abstractmethod
    def request_latencies(self, count: int) -> list[int]:
        """Send `count` requests one after the other; return each round trip in ns."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connections and stop the server (also after a failed __init__)."""


class AsyncRequests(abc.ABC):
    """A system whose asyncio client is measured apart (rows `request_*_async`)."""

    @abc.abstractmethod
    def request_rate_async(self, count: int, in_flight: int) -> None:
        """As request_rate, through the asyncio client: `in_flight` tasks."""

    @abc.abstractmethod
    def request_latencies_async(self, count: int) -> list[int]:
        """As request_latencies, through the asyncio client."""


class RemoteResponder(abc.ABC):
    """A system whose responder can run in a process of its own (rows `request_*_2proc`)."""

    @abc.abstractmethod
    def start_remote_responder(self, asyncio_client: bool) -> None:
        """Stops the in-process responder and starts one in another process (written with the
        asyncio client if `asyncio_client` and the system has both), answering when this
        returns."""


class UnixRequests(abc.ABC):
    """A system that also serves a Unix domain socket (rows `request_*_unix`)."""

    @abc.abstractmethod
    def use_unix_socket(self) -> None:
        """The requester and an in-process responder connect over the Unix socket from now
        on; request_rate and request_latencies then go through it."""


def time_repeats(work: Callable[[], tuple[int, float]], repeats: int) -> Timing:
    """Like common.time_runs, for work that times itself: it returns (messages, seconds).

    So starting and stopping a consumer (a long-poll read may take its timeout
    to end) stays outside the timed part.
    """
    expected, _ = work()
    seconds: list[float] = []
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            n, elapsed = work()
        finally:
            gc.enable()
        if n != expected:
            raise RuntimeError(f"work did {n} messages in a repeat, {expected} in warm-up")
        seconds.append(elapsed)
    return Timing(expected, seconds)


def _timed(action: Callable[[], None], count: int) -> Callable[[], tuple[int, float]]:
    def work() -> tuple[int, float]:
        start = time.perf_counter_ns()
        action()
        return count, (time.perf_counter_ns() - start) / 1e9

    return work


def chunks(data: Dataset, count: int) -> Iterator[list[bytes]]:
    """`count` payloads of the data set, in publish batches."""
    payloads = data.payloads
    for start in range(0, count, PUBLISH_BATCH):
        offset = start % len(payloads)
        size = min(PUBLISH_BATCH, count - start)
        chunk = payloads[offset : offset + size]
        if len(chunk) < size:
            chunk = [payloads[(start + i) % len(payloads)] for i in range(size)]
        yield chunk


def check_reply(sent: bytes, answer: bytes) -> None:
    if answer != sent:
        raise RuntimeError(f"request answered {answer[:20]!r}..., sent {sent[:20]!r}...")


def percentile(sorted_values: list[int], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values)) - 1))
    return float(sorted_values[rank])


def run_service_system(
    system_type: type[ServiceSystem],
    data: Dataset,
    sizes: ServiceSizes,
    base: str | None,
    results: Results,
) -> None:
    """Every row of one system against one fresh server."""
    name = system_type.system
    reason = system_type.unavailable()
    if reason is not None:
        results.skip(name, reason)
        return
    results.context.append(system_type.versions())
    with results.attempt(f"server of {name}"), scratch_dir(base, f"service-{name}") as path:
        progress(f"{name}: starting the server")
        system = system_type(path, data)
        try:
            _run_rows(system, sizes, results)
        finally:
            system.close()


def _row(system: ServiceSystem, row: Row) -> Row:
    how = type(system).how.get(row.name)
    if how:
        row.extra["how"] = how
    return row


def _run_rows(system: ServiceSystem, sizes: ServiceSizes, results: Results) -> None:
    name, note = system.system, system.setup

    with results.attempt(f"publish on {name}"):
        progress(f"{name}: publish")
        work = _timed(lambda: system.publish(sizes.publish), sizes.publish)
        timing = time_repeats(work, sizes.repeats)
        results.rows.append(_row(system, Row.throughput("publish", name, timing, note)))

    with results.attempt(f"consume on {name}"):
        progress(f"{name}: fill {sizes.consume} messages for the consumers")
        system.fill(sizes.consume)
        for row_name, per_message in (("consume_batch", False), ("consume_per_message", True)):
            with results.attempt(f"{row_name} on {name}"):
                progress(f"{name}: {row_name}")

                def consume(per_message: bool = per_message) -> tuple[int, float]:
                    done = system.consume(sizes.consume, per_message)
                    if done.count != sizes.consume or done.payload_bytes != done.count * (
                        PAYLOAD_SIZE
                    ):
                        raise RuntimeError(
                            f"consumed {done.count} messages of {done.payload_bytes} bytes,"
                            f" expected {sizes.consume} of {PAYLOAD_SIZE}"
                        )
                    return done.count, done.seconds

                timing = time_repeats(consume, sizes.repeats)
                results.rows.append(_row(system, Row.throughput(row_name, name, timing, note)))

    consume_typed = getattr(system, "consume_typed", None)  # fluxcore.app only
    if consume_typed is not None:
        with results.attempt(f"consume_per_message_typed on {name}"):
            progress(f"{name}: fill {sizes.consume} JSON messages; consume_per_message_typed")
            system.fill_typed(sizes.consume)  # type: ignore[attr-defined]

            def typed() -> tuple[int, float]:
                done = consume_typed(sizes.consume)
                if done.count != sizes.consume:
                    raise RuntimeError(f"consumed {done.count}, expected {sizes.consume}")
                return done.count, done.seconds

            timing = time_repeats(typed, sizes.repeats)
            results.rows.append(_row(system, Row.throughput(
                "consume_per_message_typed", name, timing, note)))

    with results.attempt(f"requests on {name}"):
        system.start_responder()
        with results.attempt(f"request_rate on {name}"):
            progress(f"{name}: request_rate ({IN_FLIGHT} in flight)")
            work = _timed(lambda: system.request_rate(sizes.request, IN_FLIGHT), sizes.request)
            timing = time_repeats(work, sizes.repeats)
            row = Row.throughput("request_rate", name, timing, note)
            row.extra["in_flight"] = IN_FLIGHT
            results.rows.append(_row(system, row))
        with results.attempt(f"request latency on {name}"):
            progress(f"{name}: request latency (1 in flight)")
            results.rows.extend(_row(system, r) for r in _latency_rows(
                system, system.request_latencies, "", sizes, note))
        if isinstance(system, AsyncRequests):
            _async_request_rows(system, sizes, results)
        if isinstance(system, RemoteResponder):
            _two_process_rows(system, sizes, results)
        if isinstance(system, UnixRequests):
            _unix_rows(system, sizes, results)


def _async_request_rows(system: AsyncRequests, sizes: ServiceSizes, results: Results) -> None:
    assert isinstance(system, ServiceSystem)
    name, note = system.system, system.setup
    with results.attempt(f"request_rate_async on {name}"):
        progress(f"{name}: request_rate_async ({IN_FLIGHT} in flight)")
        work = _timed(lambda: system.request_rate_async(sizes.request, IN_FLIGHT), sizes.request)
        timing = time_repeats(work, sizes.repeats)
        row = Row.throughput("request_rate_async", name, timing, note)
        row.extra["in_flight"] = IN_FLIGHT
        results.rows.append(_row(system, row))
    with results.attempt(f"async request latency on {name}"):
        progress(f"{name}: async request latency (1 in flight)")
        results.rows.extend(_row(system, r) for r in _latency_rows(
            system, system.request_latencies_async, "_async", sizes, note))


def _two_process_rows(system: RemoteResponder, sizes: ServiceSizes, results: Results) -> None:
    """The request rows again with the responder in a process of its own (`_2proc`): with the
    blocking client, then (a system with AsyncRequests) with the asyncio client."""
    assert isinstance(system, ServiceSystem)
    name, note = system.system, system.setup
    runs: list[tuple[str, bool, Callable[[int, int], None], Callable[[int], list[int]]]] = [
        ("", False, system.request_rate, system.request_latencies)]
    if isinstance(system, AsyncRequests):
        runs.append(("_async", True, system.request_rate_async, system.request_latencies_async))
    for suffix, asyncio_client, rate, latencies in runs:
        with results.attempt(f"request rows{suffix}_2proc on {name}"):
            progress(f"{name}: the responder in a process of its own{suffix}")
            system.start_remote_responder(asyncio_client)

            def timed_rate(rate: Callable[[int, int], None] = rate) -> None:
                rate(sizes.request, IN_FLIGHT)

            timing = time_repeats(_timed(timed_rate, sizes.request), sizes.repeats)
            row = Row.throughput(f"request_rate{suffix}_2proc", name, timing, note)
            row.extra["in_flight"] = IN_FLIGHT
            results.rows.append(_row(system, row))
            for row in _latency_rows(system, latencies, suffix, sizes, note):
                row.name += "_2proc"
                results.rows.append(_row(system, row))


def _unix_rows(system: UnixRequests, sizes: ServiceSizes, results: Results) -> None:
    """request_rate and request_p50/p99 again over the Unix socket (`_unix`), requester and
    responder in one process as in the TCP rows."""
    assert isinstance(system, ServiceSystem)
    name, note = system.system, system.setup
    with results.attempt(f"request rows_unix on {name}"):
        progress(f"{name}: request rows over the Unix domain socket")
        system.use_unix_socket()
        work = _timed(lambda: system.request_rate(sizes.request, IN_FLIGHT), sizes.request)
        timing = time_repeats(work, sizes.repeats)
        row = Row.throughput("request_rate_unix", name, timing, note)
        row.extra["in_flight"] = IN_FLIGHT
        results.rows.append(_row(system, row))
        for row in _latency_rows(system, system.request_latencies, "", sizes, note):
            row.name += "_unix"
            results.rows.append(_row(system, row))


def _latency_rows(system: ServiceSystem, latencies: Callable[[int], list[int]], suffix: str,
                  sizes: ServiceSizes, note: str) -> list[Row]:
    latencies(max(100, sizes.latency // 5))  # warm-up
    samples: list[int] = []
    for _ in range(sizes.repeats):
        gc.collect()
        gc.disable()
        try:
            samples.extend(latencies(sizes.latency))
        finally:
            gc.enable()
    samples.sort()
    extra: dict[str, JsonValue] = {
        "repeats": sizes.repeats,
        "in_flight": 1,
        "min_us": samples[0] / 1e3,
        "mean_us": statistics.fmean(samples) / 1e3,
        "max_us": samples[-1] / 1e3,
    }
    rows = []
    for row_name, fraction in (("request_p50", 0.50), ("request_p99", 0.99)):
        value = percentile(samples, fraction) / 1e3
        rows.append(Row(row_name + suffix, system.system, "us", value, len(samples), note,
                        dict(extra)))
    return rows
