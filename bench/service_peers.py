"""The message services a user would pick instead of a fluxcore server.

Redis Streams (redis-server + redis-py with hiredis) and NATS JetStream
(nats-server + nats-py), each started by the harness on 127.0.0.1 and used the
way their docs advise: pipelines for Redis, async publishes and pull consumers
for JetStream.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import importlib.util
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from bench.common import Dataset, new_event_loop
from bench.request_responder import NATS_SUBJECT, ResponderProcess
from bench.servers import (
    find_binary,
    free_port,
    nats_argv,
    redis_argv,
    running_server,
)
from bench.service_workloads import (
    CONSUME_BATCH,
    REQUEST_TIMEOUT_S,
    Consumed,
    RemoteResponder,
    ServiceSystem,
    check_reply,
    chunks,
)

T = TypeVar("T")
BLOCK_MS = 100  # how long a blocked XREAD waits before looking at the stop flag


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def _binary_version(binary: str | None) -> str:
    if binary is None:
        return "-"
    try:
        done = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return "?"
    return done.stdout.strip().splitlines()[0] if done.stdout.strip() else "?"


class RedisSystem(ServiceSystem):
    system = "redis"
    setup = (
        "redis-server with AOF, appendfsync everysec: a reply goes out once the command is"
        " in the AOF (page cache), fsync every 1 s; no RDB"
    )
    how: ClassVar[dict[str, str]] = {
        "publish": "XADD pipelined, 1,000 per round trip (transaction=False), one stream",
        "consume_batch": (
            "new consumer group at 0, XREADGROUP COUNT 1000; the XACK of a batch pipelined"
            " with the next read; handler(list of entries)"
        ),
        "consume_per_message": "as consume_batch, handler(entry) once per entry",
        "request_rate": (
            "request XADD to a stream, a responder thread XREAD BLOCKs it and XADDs replies"
            " (pipelined per read) to a reply stream that a reader thread XREAD BLOCKs and"
            " matches to futures; new requests pipelined to refill the window"
        ),
        "request_p50": "as request_rate, one request in flight",
        "request_p99": "as request_rate, one request in flight",
    }
    _PUBLISH = "publish"
    _CONSUME = "consume"
    _REQUESTS = "requests"
    _REPLIES = "replies"

    @classmethod
    def unavailable(cls) -> str | None:
        if find_binary("redis-server") is None:
            return "redis-server not found (apt-get install redis-server)"
        try:
            import redis  # noqa: F401
        except ImportError as exc:
            return f"redis-py not installed ({exc})"
        return None

    @classmethod
    def versions(cls) -> str:
        from redis.utils import HIREDIS_AVAILABLE

        server = _binary_version(find_binary("redis-server"))
        return (
            f"redis: {server}; redis-py {_package_version('redis')},"
            f" hiredis {_package_version('hiredis') if HIREDIS_AVAILABLE else 'not used'}"
        )

    def __init__(self, directory: Path, data: Dataset) -> None:
        import redis

        self._data = data
        self._stack = contextlib.ExitStack()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._futures: dict[bytes, Future[bytes]] = {}
        self._next_request = 0
        self._groups = 0
        try:
            binary = find_binary("redis-server")
            assert binary is not None
            port = free_port()
            self._server = self._stack.enter_context(
                running_server("redis", redis_argv(binary, port, directory), port, directory)
            )
            # Any: redis-py types its replies as unions of every RESP shape.
            self._connect: Callable[[], Any] = lambda: redis.Redis(host="127.0.0.1", port=port)
            self._redis: Any = self._connect()
            self._redis.ping()
        except BaseException:
            self._stack.close()
            raise

    def _xadd_all(self, stream: str, count: int) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for chunk in chunks(self._data, count):
            for payload in chunk:
                pipe.xadd(stream, {"d": payload})
            ids = pipe.execute()
            if len(ids) != len(chunk):
                raise RuntimeError(f"XADD pipeline answered {len(ids)} of {len(chunk)}")

    def publish(self, count: int) -> None:
        self._xadd_all(self._PUBLISH, count)

    def fill(self, count: int) -> None:
        self._xadd_all(self._CONSUME, count)

    def consume(self, count: int, per_message: bool) -> Consumed:
        self._groups += 1
        group = f"g{self._groups}"
        stream = self._CONSUME
        got = touched = 0

        def on_batch(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
            nonlocal got, touched
            got += len(entries)
            touched += sum(len(fields[b"d"]) for _, fields in entries)

        def on_entry(entry: tuple[bytes, dict[bytes, bytes]]) -> None:
            nonlocal got, touched
            got += 1
            touched += len(entry[1][b"d"])

        start = time.perf_counter_ns()
        r = self._redis
        r.xgroup_create(stream, group, id="0")
        pipe = r.pipeline(transaction=False)
        reply = r.xreadgroup(group, "c1", {stream: ">"}, count=CONSUME_BATCH)
        while True:
            entries = reply[0][1] if reply else []
            if not entries:
                raise RuntimeError(f"stream {stream} ended after {got} of {count} entries")
            if per_message:
                for entry in entries:
                    on_entry(entry)
            else:
                on_batch(entries)
            ids = [entry_id for entry_id, _ in entries]
            if got >= count:
                r.xack(stream, group, *ids)
                break
            pipe.xack(stream, group, *ids)
            pipe.xreadgroup(group, "c1", {stream: ">"}, count=CONSUME_BATCH)
            acked, reply = pipe.execute()
            if acked != len(ids):
                raise RuntimeError(f"XACK acked {acked} of {len(ids)}")
        seconds = (time.perf_counter_ns() - start) / 1e9
        return Consumed(got, touched, seconds)

    def start_responder(self) -> None:
        # Fresh, dedicated streams: both loops can start reading at 0-0.
        for target in (self._respond, self._read_replies):
            thread = threading.Thread(target=target, name=f"redis-{target.__name__}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _respond(self) -> None:
        r = self._connect()
        pipe = r.pipeline(transaction=False)
        last = b"0-0"
        try:
            while not self._stop.is_set():
                reply = r.xread({self._REQUESTS: last}, count=CONSUME_BATCH, block=BLOCK_MS)
                if not reply:
                    continue
                entries = reply[0][1]
                for _, fields in entries:
                    pipe.xadd(self._REPLIES, {"id": fields[b"id"], "d": fields[b"d"]})
                pipe.execute()
                last = entries[-1][0]
        finally:
            r.close()

    def _read_replies(self) -> None:
        r = self._connect()
        last = b"0-0"
        futures = self._futures
        try:
            while not self._stop.is_set():
                reply = r.xread({self._REPLIES: last}, count=CONSUME_BATCH, block=BLOCK_MS)
                if not reply:
                    continue
                entries = reply[0][1]
                for _, fields in entries:
                    future = futures.pop(fields[b"id"], None)
                    if future is not None:
                        future.set_result(fields[b"d"])
                last = entries[-1][0]
        finally:
            r.close()

    def _send(self, pipe: Any, payloads: list[bytes]) -> list[tuple[bytes, Future[bytes]]]:
        sent = []
        for payload in payloads:
            self._next_request += 1
            request_id = b"%d" % self._next_request
            future: Future[bytes] = Future()
            self._futures[request_id] = future  # before the XADD: the reply may be quick
            pipe.xadd(self._REQUESTS, {"id": request_id, "d": payload})
            sent.append((payload, future))
        pipe.execute()
        return sent

    def request_rate(self, count: int, in_flight: int) -> None:
        payloads = self._data.payloads
        pipe = self._redis.pipeline(transaction=False)
        pending: deque[tuple[bytes, Future[bytes]]] = deque()
        sent = 0
        while sent < count or pending:
            free = min(in_flight - len(pending), count - sent)
            if free > 0:
                batch = [payloads[(sent + i) % len(payloads)] for i in range(free)]
                pending.extend(self._send(pipe, batch))
                sent += free
            payload, future = pending.popleft()
            check_reply(payload, future.result(REQUEST_TIMEOUT_S))
            while pending and pending[0][1].done():
                payload, future = pending.popleft()
                check_reply(payload, future.result())

    def request_latencies(self, count: int) -> list[int]:
        payloads = self._data.payloads
        pipe = self._redis.pipeline(transaction=False)
        samples = []
        clock = time.perf_counter_ns
        for i in range(count):
            payload = payloads[i % len(payloads)]
            start = clock()
            ((_, future),) = self._send(pipe, [payload])
            answer = future.result(REQUEST_TIMEOUT_S)
            samples.append(clock() - start)
            check_reply(payload, answer)
        return samples

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        with contextlib.suppress(Exception):
            self._redis.close()
        self._stack.close()


class JetStreamSystem(ServiceSystem, RemoteResponder):
    system = "jetstream"
    setup = (
        "nats-server -js, file storage: a publish is acked once written to the store"
        " file (page cache); fsync on the server's sync_interval (2 min)"
    )
    how: ClassVar[dict[str, str]] = {
        "publish": "js.publish_async x 1,000, then gather the 1,000 PubAcks; one stream",
        "consume_batch": (
            "new durable pull consumer (AckPolicy.ALL), fetch(1000); ack of the last message"
            " of each batch; handler(list of messages)"
        ),
        "consume_per_message": "as consume_batch, handler(msg) once per message",
        "request_rate": (
            "core NATS request-reply (not stored): nc.request, 64 coroutines each one request"
            " at a time; the responder subscribes on a second connection and msg.respond()s"
        ),
        "request_p50": "as request_rate, one request in flight",
        "request_p99": "as request_rate, one request in flight",
        "request_rate_2proc": (
            "as request_rate; the responder (nats-py on uvloop, msg.respond) runs in a process"
            " of its own (bench/request_responder.py)"
        ),
        "request_p50_2proc": "as request_p50, the responder in a process of its own",
        "request_p99_2proc": "as request_p99, the responder in a process of its own",
    }
    _SUBJECT = NATS_SUBJECT

    @classmethod
    def unavailable(cls) -> str | None:
        if find_binary("nats-server") is None:
            return "nats-server not found (apt-get install nats-server)"
        try:
            import nats  # noqa: F401
        except ImportError as exc:
            return f"nats-py not installed ({exc})"
        return None

    @classmethod
    def versions(cls) -> str:
        server = _binary_version(find_binary("nats-server"))
        loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
        return f"jetstream: {server}; nats-py {_package_version('nats-py')} on {loop}"

    def __init__(self, directory: Path, data: Dataset) -> None:
        self._data = data
        self._stack = contextlib.ExitStack()
        self._loop = new_event_loop()
        self._consumers = 0
        self._nc: Any = None
        self._responder_nc: Any = None
        self._remote: ResponderProcess | None = None  # the responder of the _2proc rows
        try:
            binary = find_binary("nats-server")
            assert binary is not None
            port = free_port()
            store = directory / "store"
            store.mkdir()
            self._server = self._stack.enter_context(
                running_server("nats", nats_argv(binary, port, store), port, directory)
            )
            self._url = f"nats://127.0.0.1:{port}"
            self._run(self._connect())
        except BaseException:
            self.close()
            raise

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(coroutine)

    async def _connect(self) -> None:
        import nats

        self._nc = await nats.connect(self._url, allow_reconnect=False, connect_timeout=5)
        self._js = self._nc.jetstream()
        await self._js.add_stream(name="PUBLISH", subjects=["publish"])
        await self._js.add_stream(name="CONSUME", subjects=["consume"])

    async def _publish_all(self, subject: str, count: int) -> None:
        publish_async = self._js.publish_async
        for chunk in chunks(self._data, count):
            futures = [await publish_async(subject, payload) for payload in chunk]
            acks = await asyncio.gather(*futures)
            if len(acks) != len(chunk):
                raise RuntimeError(f"{len(acks)} PubAcks for {len(chunk)} publishes")

    def publish(self, count: int) -> None:
        self._run(self._publish_all("publish", count))

    def fill(self, count: int) -> None:
        self._run(self._publish_all("consume", count))

    def consume(self, count: int, per_message: bool) -> Consumed:
        self._consumers += 1
        return self._run(self._consume(f"c{self._consumers}", count, per_message))

    async def _consume(self, durable: str, count: int, per_message: bool) -> Consumed:
        from nats.js.api import AckPolicy, ConsumerConfig

        got = touched = 0

        def on_batch(messages: list[Any]) -> None:
            nonlocal got, touched
            got += len(messages)
            touched += sum(len(message.data) for message in messages)

        def on_message(message: Any) -> None:
            nonlocal got, touched
            got += 1
            touched += len(message.data)

        start = time.perf_counter_ns()
        config = ConsumerConfig(ack_policy=AckPolicy.ALL)
        subscription = await self._js.pull_subscribe(
            "consume", durable=durable, stream="CONSUME", config=config
        )
        while got < count:
            messages = await subscription.fetch(min(CONSUME_BATCH, count - got), timeout=10)
            if per_message:
                for message in messages:
                    on_message(message)
            else:
                on_batch(messages)
            await messages[-1].ack()
        seconds = (time.perf_counter_ns() - start) / 1e9
        await subscription.unsubscribe()
        await self._js.delete_consumer("CONSUME", durable)
        return Consumed(got, touched, seconds)

    def start_responder(self) -> None:
        self._run(self._start_responder())

    async def _start_responder(self) -> None:
        import nats

        self._responder_nc = await nats.connect(self._url, allow_reconnect=False, connect_timeout=5)

        async def respond(message: Any) -> None:
            await message.respond(message.data)

        await self._responder_nc.subscribe(self._SUBJECT, cb=respond)
        await self._responder_nc.flush()

    def start_remote_responder(self, asyncio_client: bool) -> None:
        """The responder moves to a process of its own (nats-py either way)."""
        if self._responder_nc is not None:
            self._run(self._responder_nc.close())
            self._responder_nc = None
        if self._remote is None:
            self._remote = ResponderProcess("nats", self._url)
        self._run(self._nc.request(self._SUBJECT, b"probe", timeout=REQUEST_TIMEOUT_S))

    def request_rate(self, count: int, in_flight: int) -> None:
        self._run(self._request_rate(count, in_flight))

    async def _request_rate(self, count: int, in_flight: int) -> None:
        payloads = self._data.payloads
        request = self._nc.request

        async def worker(first: int, number: int) -> None:
            for i in range(first, first + number):
                payload = payloads[i % len(payloads)]
                answer = await request(self._SUBJECT, payload, timeout=REQUEST_TIMEOUT_S)
                check_reply(payload, answer.data)

        share, rest = divmod(count, in_flight)
        shares = [share + (1 if k < rest else 0) for k in range(in_flight)]
        firsts = [sum(shares[:k]) for k in range(in_flight)]
        await asyncio.gather(*(worker(f, s) for f, s in zip(firsts, shares, strict=True)))

    def request_latencies(self, count: int) -> list[int]:
        return self._run(self._request_latencies(count))

    async def _request_latencies(self, count: int) -> list[int]:
        payloads = self._data.payloads
        request = self._nc.request
        clock = time.perf_counter_ns
        samples = []
        for i in range(count):
            payload = payloads[i % len(payloads)]
            start = clock()
            answer = await request(self._SUBJECT, payload, timeout=REQUEST_TIMEOUT_S)
            samples.append(clock() - start)
            check_reply(payload, answer.data)
        return samples

    async def _close_connections(self) -> None:
        for nc in (self._responder_nc, self._nc):
            if nc is not None:
                with contextlib.suppress(Exception):
                    await nc.close()

    def close(self) -> None:
        try:
            if self._remote is not None:
                self._remote.close()
            if not self._loop.is_closed():
                with contextlib.suppress(Exception):
                    self._run(self._close_connections())
                self._loop.close()
        finally:
            self._stack.close()
