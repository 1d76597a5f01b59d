"""fluxcore as a service: `fluxcore serve` started by the harness, driven by fluxcore.client."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import msgspec

from bench.common import Dataset, new_event_loop
from bench.request_responder import ResponderProcess
from bench.servers import fluxcore_argv, fluxcore_ready, free_port, running_server
from bench.service_workloads import (
    CONSUME_BATCH,
    CONSUME_TIMEOUT_S,
    REQUEST_TIMEOUT_S,
    AsyncRequests,
    Consumed,
    RemoteResponder,
    ServiceSystem,
    UnixRequests,
    check_reply,
    chunks,
)

T = TypeVar("T")
TOKEN = "bench"
PAYLOAD_TYPE = "Bench"
PROBE_TIMEOUT_S = 2.0
PROBE_TRIES = 10


class BenchOrder(msgspec.Struct):
    """The typed payload of consume_per_message_typed (about 100 bytes of JSON)."""

    order_id: str
    customer: str
    amount: int
    currency: str
    items: int
    note: str


def consume_typed_orders(name: str, first: int | None, count: int, metrics: bool,
                         timeout: float, *, client: Any = None,
                         address: str | None = None) -> Consumed:
    """The consumer of consume_per_message_typed: a Microclient called `name` whose
    `@handle_event` handler takes a BenchOrder, from index `first` until `count` messages came;
    on `client`, or on a connection of its own to `address`."""
    from fluxcore.app import Microclient

    done = threading.Event()
    got = touched = 0
    app = Microclient(name, address, TOKEN, max_batch=CONSUME_BATCH, from_index=first,
                      metrics=metrics)

    @app.handle_event
    def on_order(order: BenchOrder) -> None:
        nonlocal got, touched
        got += 1
        touched += order.items
        if got >= count:
            done.set()

    start = time.perf_counter_ns()
    app.start(client)
    return consumed(done, timeout, start, lambda: (got, touched), app.stop)


def consumed(done: threading.Event, timeout: float, start_ns: int,
             progress: Callable[[], tuple[int, int]], stop: Callable[[], None]) -> Consumed:
    """Waits up to `timeout` s for a consumer started at `start_ns` to set `done`, stops it,
    and says what it got: `progress()` is (messages, payload bytes) so far."""
    try:
        if not done.wait(timeout):
            raise RuntimeError(f"consumer got {progress()[0]} messages in {timeout:.0f} s")
        seconds = (time.perf_counter_ns() - start_ns) / 1e9
    finally:
        stop()
    got, touched = progress()
    return Consumed(got, touched, seconds)


class FluxcoreSystem(ServiceSystem, AsyncRequests, RemoteResponder, UnixRequests):
    system = "fluxcore"
    setup = (
        "fluxcore serve --fsync interval: a STORED publish is acked once appended to the"
        " log (page cache), group fdatasync every 100 ms"
    )
    how: ClassVar[dict[str, str]] = {
        "publish": (
            "client.publish_batch(EVENT, 1,000 payloads, guarantee=STORED): one frame and"
            " one ACK per 1,000"
        ),
        "consume_batch": (
            "client.consume(new consumer, EVENT, handler, batch=True, trackers=1,"
            " max_size=1000, from_index=first of the fill); positions stored per batch"
        ),
        "consume_per_message": "as consume_batch, handler(msg) once per message",
        "consume_per_message_typed": (
            "fluxcore.app.Microclient, @handle_event def handler(order: BenchOrder) once per"
            " message: ~100-byte JSON decoded into a msgspec Struct, handler metrics on"
            " (HandleMessage + ProcessBatch per batch); max_batch=1000, from the fill's first"
        ),
        "request_rate": (
            "client.request_async(COMMAND) futures, 64 in flight; the responder is a"
            " COMMAND consumer on a second connection whose handler returns the payload"
            " (request and result both stored in their logs)"
        ),
        "request_p50": "client.request(COMMAND), one in flight",
        "request_p99": "client.request(COMMAND), one in flight",
        "request_rate_async": (
            "await AsyncClient.request(COMMAND) in 64 tasks, each one request at a time, on"
            " uvloop; the responder is an AsyncClient COMMAND consumer on a second connection"
            " in the same event loop (as NATS's responder), returning the payload"
        ),
        "request_p50_async": "await AsyncClient.request(COMMAND), one in flight",
        "request_p99_async": "await AsyncClient.request(COMMAND), one in flight",
        "request_rate_2proc": (
            "as request_rate; the responder (a Client COMMAND consumer returning the payload)"
            " runs in a process of its own (bench/request_responder.py)"
        ),
        "request_p50_2proc": "as request_p50, the responder in a process of its own",
        "request_p99_2proc": "as request_p99, the responder in a process of its own",
        "request_rate_async_2proc": (
            "as request_rate_async; the responder (an AsyncClient COMMAND consumer on uvloop)"
            " runs in a process of its own"
        ),
        "request_p50_async_2proc": "as request_p50_async, the responder in a process of its own",
        "request_p99_async_2proc": "as request_p99_async, the responder in a process of its own",
        "request_rate_unix": (
            "as request_rate (responder in this process), requester and responder connected to"
            " the server's Unix domain socket (fluxcore serve --unix); the peers' rows are TCP"
        ),
        "request_p50_unix": "as request_p50, over the Unix domain socket",
        "request_p99_unix": "as request_p99, over the Unix domain socket",
    }

    @classmethod
    def unavailable(cls) -> str | None:
        try:
            from fluxcore.client import Client, Guarantee, MessageType  # noqa: F401
        except ImportError as exc:
            return f"fluxcore.client not importable ({type(exc).__name__}: {exc})"
        return None

    @classmethod
    def versions(cls) -> str:
        try:
            version = importlib.metadata.version("fluxcore")
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        return f"fluxcore: {version} (server and client)"

    def __init__(self, directory: Path, data: Dataset) -> None:
        from fluxcore.client import Client

        self._data = data
        self._stack = contextlib.ExitStack()
        self._client: Any = None
        self._responder_client: Any = None
        self._responder: Any = None
        self._fill_first: int | None = None
        self._typed_first: int | None = None
        self._consumers = 0
        self._loop: asyncio.AbstractEventLoop | None = None  # of the asyncio clients
        self._async_client: Any = None
        self._async_responder: Any = None
        self._remote: ResponderProcess | None = None  # the responder of the _2proc rows
        self._tcp_clients: list[Any] = []  # replaced by Unix socket ones (use_unix_socket)
        try:
            port = free_port()
            (directory / "data").mkdir()
            self._unix_path = _socket_path(directory, port)
            server = self._stack.enter_context(
                running_server(
                    "fluxcore",
                    [*fluxcore_argv(port, directory, TOKEN), "--unix", self._unix_path],
                    port,
                    directory,
                    ready=fluxcore_ready,
                )
            )
            self._server = server
            self._address = server.address  # where requesters and responders connect
            self._client = Client.connect(server.address, token=TOKEN, name="bench")
        except BaseException:
            self.close()
            raise

    def _publish_all(self, count: int) -> int | None:
        from fluxcore.client import Guarantee, MessageType

        publish_batch = self._client.publish_batch
        first = None
        for chunk in chunks(self._data, count):
            indexes = publish_batch(
                MessageType.EVENT, chunk, type=PAYLOAD_TYPE, guarantee=Guarantee.STORED
            )
            if indexes is None or len(indexes) != len(chunk):
                raise RuntimeError(f"publish_batch of {len(chunk)} returned {indexes!r}")
            if first is None:
                first = int(indexes[0])
        return first

    def publish(self, count: int) -> None:
        self._publish_all(count)

    def fill(self, count: int) -> None:
        # The consumers start at the fill's first index; nothing is appended to
        # the EVENT log after it, so each reads exactly `count` messages.
        self._fill_first = self._publish_all(count)

    def consume(self, count: int, per_message: bool) -> Consumed:
        from fluxcore.client import MessageType

        self._consumers += 1
        done = threading.Event()
        got = touched = 0

        def on_batch(messages: list[Any]) -> None:
            nonlocal got, touched
            got += len(messages)
            touched += sum(len(message.data) for message in messages)
            if got >= count:
                done.set()

        def on_message(message: Any) -> None:
            nonlocal got, touched
            got += 1
            touched += len(message.data)
            if got >= count:
                done.set()

        start = time.perf_counter_ns()
        consumer = self._client.consume(
            f"bench-consumer-{self._consumers}",
            MessageType.EVENT,
            on_message if per_message else on_batch,
            trackers=1,
            batch=not per_message,
            max_size=CONSUME_BATCH,
            from_index=self._fill_first,
        )
        return consumed(done, CONSUME_TIMEOUT_S, start, lambda: (got, touched), consumer.stop)

    def fill_typed(self, count: int) -> None:
        """Publishes `count` JSON orders of about 100 bytes for consume_typed (untimed)."""
        import msgspec

        from fluxcore.client import Guarantee, MessageType

        encode = msgspec.json.Encoder().encode
        orders = [encode(BenchOrder(f"order-{i:09d}", f"user-{i * 7919 % 10**9:09d}",
                                    i % 100_000, "EUR", i % 7, "gift wrap"))
                  for i in range(min(count, 10_000))]
        self._typed_first = None
        for start in range(0, count, 1000):
            chunk = [orders[(start + j) % len(orders)] for j in range(min(1000, count - start))]
            indexes = self._client.publish_batch(MessageType.EVENT, chunk, type="BenchOrder",
                                                 guarantee=Guarantee.STORED)
            if self._typed_first is None:
                self._typed_first = int(indexes[0])

    @property
    def address(self) -> str:
        """host:port of the server."""
        return str(self._server.address)

    @property
    def typed_first(self) -> int | None:
        """The index of the first message of the last `fill_typed`."""
        return self._typed_first

    def consume_typed(self, count: int, metrics: bool = True) -> Consumed:
        """A Microclient's typed handler reads the `fill_typed` messages, metrics on."""
        self._consumers += 1
        return consume_typed_orders(f"bench-typed-{self._consumers}", self._typed_first, count,
                                    metrics, CONSUME_TIMEOUT_S, client=self._client)

    def start_responder(self) -> None:
        from fluxcore.client import Client, MessageType

        self._responder_client = Client.connect(
            self._address, token=TOKEN, name="bench-responder"
        )
        self._responder = self._responder_client.consume(
            "bench-responder", MessageType.COMMAND, lambda message: message.data, trackers=1
        )
        # The responder starts reading at "now": wait until it answers.
        for _ in range(PROBE_TRIES):
            future = self._request_async(b"probe")
            with contextlib.suppress(TimeoutError):
                check_reply(b"probe", future.result(PROBE_TIMEOUT_S).data)
                return
        raise RuntimeError(f"the responder answered no probe in {PROBE_TRIES} tries")

    def _request_async(self, payload: bytes) -> Future[Any]:
        from fluxcore.client import MessageType

        future: Future[Any] = self._client.request_async(
            MessageType.COMMAND, payload, type=PAYLOAD_TYPE
        )
        return future

    def request_rate(self, count: int, in_flight: int) -> None:
        from fluxcore.client import MessageType

        payloads = self._data.payloads
        request_async = self._client.request_async
        pending: deque[tuple[bytes, Future[Any]]] = deque()
        for i in range(count):
            if len(pending) >= in_flight:
                payload, future = pending.popleft()
                check_reply(payload, future.result(REQUEST_TIMEOUT_S).data)
            payload = payloads[i % len(payloads)]
            pending.append(
                (payload, request_async(MessageType.COMMAND, payload, type=PAYLOAD_TYPE))
            )
        while pending:
            payload, future = pending.popleft()
            check_reply(payload, future.result(REQUEST_TIMEOUT_S).data)

    def request_latencies(self, count: int) -> list[int]:
        from fluxcore.client import MessageType

        payloads = self._data.payloads
        request = self._client.request
        clock = time.perf_counter_ns
        samples = []
        for i in range(count):
            payload = payloads[i % len(payloads)]
            start = clock()
            answer = request(
                MessageType.COMMAND, payload, type=PAYLOAD_TYPE, timeout=REQUEST_TIMEOUT_S
            )
            samples.append(clock() - start)
            check_reply(payload, answer.data)
        return samples

    def _run_async(self, work: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
        """Runs `work(async_client)` on this system's event loop (uvloop where installed)."""
        from fluxcore.client import AsyncClient

        if self._loop is None:
            self._loop = new_event_loop()
        loop = self._loop
        if self._async_client is None:
            self._async_client = loop.run_until_complete(
                AsyncClient.connect(self._address, token=TOKEN, name="bench-async"))
            if self._remote is None:
                loop.run_until_complete(self._start_async_responder())
        return loop.run_until_complete(work(self._async_client))

    async def _start_async_responder(self) -> None:
        """The threaded responder hands over to one in this event loop (same consumer)."""
        from fluxcore.client import AsyncClient, MessageType

        if self._responder is not None:
            self._responder.stop()
        self._async_responder = await AsyncClient.connect(
            self._address, token=TOKEN, name="bench-responder-async")
        await self._async_responder.consume(
            "bench-responder", MessageType.COMMAND, lambda message: message.data, trackers=1)
        for _ in range(PROBE_TRIES):
            with contextlib.suppress(TimeoutError):
                answer = await self._async_client.request(
                    MessageType.COMMAND, b"probe", timeout=PROBE_TIMEOUT_S)
                check_reply(b"probe", answer.data)
                return
        raise RuntimeError(f"the asyncio responder answered no probe in {PROBE_TRIES} tries")

    def start_remote_responder(self, asyncio_client: bool) -> None:
        """The responder moves to a process of its own (a Client consumer, or an AsyncClient
        one): the in-process responders stop first, so only it answers."""
        from fluxcore.client import MessageType

        if self._responder is not None:
            self._responder.stop()
        if self._async_responder is not None and self._loop is not None:
            self._loop.run_until_complete(self._async_responder.close())
            self._async_responder = None
        if self._remote is not None:
            self._remote.close()
            self._remote = None
        self._remote = ResponderProcess(
            "fluxcore-async" if asyncio_client else "fluxcore", self._address)
        for _ in range(PROBE_TRIES):
            with contextlib.suppress(TimeoutError):
                answer = self._client.request(MessageType.COMMAND, b"probe",
                                              timeout=PROBE_TIMEOUT_S)
                check_reply(b"probe", answer.data)
                return
        raise RuntimeError(f"the responder process answered no probe in {PROBE_TRIES} tries")

    def use_unix_socket(self) -> None:
        """From now on requesters and responders connect to the Unix domain socket: the
        requester's Client and a responder in this process, as for request_rate (any other
        responder stops first)."""
        from fluxcore.client import Client

        if self._remote is not None:
            self._remote.close()
            self._remote = None
        if self._async_responder is not None and self._loop is not None:
            self._loop.run_until_complete(self._async_responder.close())
            self._async_responder = None
        if self._responder is not None:
            self._responder.stop()
        if self._async_client is not None and self._loop is not None:
            self._loop.run_until_complete(self._async_client.close())
            self._async_client = None  # the next asyncio row connects over the socket
        self._tcp_clients += [self._client, self._responder_client]
        self._address = f"unix:{self._unix_path}"
        self._client = Client.connect(self._address, token=TOKEN, name="bench-unix")
        self.start_responder()

    def request_rate_async(self, count: int, in_flight: int) -> None:
        from fluxcore.client import MessageType

        payloads = self._data.payloads

        async def rate(client: Any) -> None:
            async def worker(first: int, number: int) -> None:
                for i in range(first, first + number):
                    payload = payloads[i % len(payloads)]
                    answer = await client.request(MessageType.COMMAND, payload,
                                                  type=PAYLOAD_TYPE, timeout=REQUEST_TIMEOUT_S)
                    check_reply(payload, answer.data)

            share, rest = divmod(count, in_flight)
            shares = [share + (1 if k < rest else 0) for k in range(in_flight)]
            firsts = [sum(shares[:k]) for k in range(in_flight)]
            await asyncio.gather(*(worker(f, s) for f, s in zip(firsts, shares, strict=True)))

        self._run_async(rate)

    def request_latencies_async(self, count: int) -> list[int]:
        from fluxcore.client import MessageType

        payloads = self._data.payloads
        clock = time.perf_counter_ns

        async def latencies(client: Any) -> list[int]:
            samples = []
            for i in range(count):
                payload = payloads[i % len(payloads)]
                start = clock()
                answer = await client.request(MessageType.COMMAND, payload, type=PAYLOAD_TYPE,
                                              timeout=REQUEST_TIMEOUT_S)
                samples.append(clock() - start)
                check_reply(payload, answer.data)
            return samples

        return self._run_async(latencies)

    def close(self) -> None:
        try:
            if self._remote is not None:
                self._remote.close()
            if self._loop is not None:
                for client in (self._async_responder, self._async_client):
                    if client is not None:
                        with contextlib.suppress(Exception):
                            self._loop.run_until_complete(client.close())
                self._loop.close()
            for closing in (
                getattr(self._responder, "stop", None),
                getattr(self._responder_client, "close", None),
                getattr(self._client, "close", None),
                *(client.close for client in self._tcp_clients if client is not None),
            ):
                if closing is not None:
                    with contextlib.suppress(Exception):
                        closing()
        finally:
            self._stack.close()


def _socket_path(directory: Path, port: int) -> str:
    """The server's Unix socket: in its directory unless that path is too long for AF_UNIX
    (107 bytes), then in the temporary directory."""
    path = directory / "fluxcore.sock"
    if len(str(path)) > 100:
        path = Path(tempfile.gettempdir()) / f"fluxcore-bench-{port}.sock"
    return str(path)
