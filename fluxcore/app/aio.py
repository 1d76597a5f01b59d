"""The asyncio app: the same handlers, consumers and steps as `Microclient`, performed through
the asyncio client, each tracker a task on the caller's event loop.

    app = AsyncMicroclient("orders", "127.0.0.1:8765", token="...")

    @app.handle_command
    async def place(cmd: PlaceOrder) -> str:
        order = await app.load(Order, cmd.order_id)
        ...

    async with app:  # or await app.start() ... await app.stop(); or app.run()
        await app.send(PlaceOrder(...))

Coroutine handlers are awaited on the loop; plain functions are called inline on it, so they
must be quick and use no I/O of the app (its methods are coroutines here): what waits belongs
in an `async def` handler."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import typing
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from fluxcore.client import AsyncClient, ConcurrencyError, Guarantee, MessageType, RequestError
from fluxcore.client.aio import current_batch

from . import aggregates as _aggregates
from .aggregates import AggregateRoot
from .app import AppCore, answer_frames, logger, publish_groups
from .context import Incoming, Metadata
from .dispatch import Answer, Dispatcher
from .serialization import Encoded, Serializer
from .steps import Steps, run_async

__all__ = ["AsyncLiveBackend", "AsyncMicroclient"]

T = TypeVar("T")


class AsyncLiveBackend:
    """The service, through the asyncio client: LiveBackend's methods, awaitable."""

    def __init__(self, client: AsyncClient, serializer: Serializer) -> None:
        self.client = client
        self.serializer = serializer

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    async def publish(self, message_type: MessageType, payloads: Sequence[Encoded], *,
                      keys: Sequence[str | None], topic: str | None,
                      metadata: Metadata | None, guarantee: Guarantee) -> None:
        for ptype, revision, data, frame_keys in publish_groups(payloads, keys):
            await self.client.publish_batch(message_type, data, type=ptype, keys=frame_keys,
                                            metadata=metadata, topic=topic,
                                            guarantee=guarantee, revision=revision)

    async def request(self, message_type: MessageType, payload: Encoded, *, key: str | None,
                      topic: str | None, metadata: Metadata | None,
                      timeout: float) -> Incoming:
        try:
            return await self.client.request(message_type, payload.data, type=payload.type,
                                             key=key, metadata=metadata, topic=topic,
                                             timeout=timeout, revision=payload.revision)
        except RequestError as exc:
            return exc.result

    async def schedule(self, payload: Encoded, deadline_ms: int, schedule_id: str, *,
                       metadata: Metadata | None, if_absent: bool) -> bool:
        return await self.client.schedule(
            payload.data, deadline_ms / 1000, schedule_id=schedule_id, type=payload.type,
            metadata=metadata, if_absent=if_absent, revision=payload.revision) is not None

    async def cancel_schedule(self, schedule_id: str) -> bool:
        return await self.client.cancel_schedule(schedule_id)

    async def fired_deadline(self, schedule_id: str) -> int | None:
        found = await self.client.get_schedule(schedule_id)
        return found.deadline_ms if found is not None and found.fired else None

    async def get_events(self, aggregate_id: str, after: int) -> Sequence[Incoming]:
        return await self.client.get_events(aggregate_id, after_sequence=after)

    async def append_events(self, aggregate_id: str, events: Sequence[Encoded],
                            expected_sequence: int | None, metadata: Metadata | None) -> int:
        try:
            return await self.client.append_events(
                aggregate_id, [e.data for e in events], types=[e.type for e in events],
                revision=[e.revision for e in events], metadata=metadata,
                expected_sequence=expected_sequence)
        except ConcurrencyError as exc:
            raise _aggregates.ConcurrencyError(exc.message) from exc

    async def get_value(self, key: str) -> bytes | None:
        return await self.client.get_value(key)

    async def store_value(self, key: str, value: bytes) -> None:
        await self.client.store_values({key: value})

    async def delete_value(self, key: str) -> bool:
        return await self.client.delete_value(key)

    async def answer(self, answers: list[Answer], web: bool) -> None:
        await self.client.send_frames(answer_frames(self.client._codec, answers, web))

    async def send_metrics(self, payloads: list[tuple[str, bytes]]) -> None:
        if payloads:
            await self.client.publish_batch(
                MessageType.METRICS, [data for _, data in payloads],
                types=[ptype for ptype, _ in payloads], guarantee=Guarantee.NONE)


class AsyncMicroclient(AppCore):
    """An app on the asyncio client: Microclient's handlers, consumers and options, with
    `await app.start()` / `await app.stop()` (or `async with app:`), trackers as tasks of
    the running loop, and the app's I/O awaitable: `await app.send(cmd)`, `await
    app.load(Order, id)`, ... `app.run()` runs it on a loop of its own until SIGINT/SIGTERM."""

    def __init__(self, name: str, url: str | None = None, token: str = "dev", *,
                 project: str = "public", metrics: bool = True, trackers: int = 1,
                 max_batch: int = 1024, from_index: int | None = None) -> None:
        super().__init__(name, url, token, project=project, metrics=metrics,
                         trackers=trackers, max_batch=max_batch, from_index=from_index)
        self.client: AsyncClient | None = None
        self._consumers: list[Any] = []
        self._own_client = False
        self._flusher: asyncio.Task[None] | None = None
        self._stopped: asyncio.Event | None = None

    def _run(self, steps: Steps[T]) -> Awaitable[T]:
        return run_async(steps, self._backend())

    # -- running ---------------------------------------------------------------------------

    async def start(self, client: AsyncClient | None = None) -> AsyncMicroclient:
        """Connects (unless given a client), starts every consumer's trackers as tasks of
        the running loop and creates the periodic schedules that do not exist yet."""
        if self.client is not None:
            raise RuntimeError(f"the app {self.name!r} is running already")
        if client is None:
            if self.url is None:
                raise ValueError("give the AsyncMicroclient a url (host:port) or "
                                 "start(client)")
            client = await AsyncClient.connect(self.url, token=self.token, name=self.name,
                                               project=self.project)
            self._own_client = True
        else:
            self._own_client = False
        self.client = client
        self.backend = AsyncLiveBackend(client, self.serializer)
        self._stopped = asyncio.Event()
        try:
            for group in self.groups:
                for dispatcher in group.dispatchers():
                    self._consumers.append(await client.consume(
                        group.options.name, dispatcher.message_type,
                        self._batch_handler(dispatcher), batch=True,
                        trackers=group.options.trackers, type_filter=dispatcher.type_filter,
                        topic=dispatcher.topic, max_size=group.options.max_batch,
                        from_index=group.options.from_index))
            await self._run(self.create_periodic_steps())
        except BaseException:
            await self.stop()
            raise
        self._flusher = asyncio.get_running_loop().create_task(
            self._flush_metrics(), name=f"fluxcore-app-metrics:{self.name}")
        return self

    async def stop(self) -> None:
        """Stops the consumers (each stores its position and leaves), sends the metrics
        still waiting, then closes the client if the app opened it."""
        if self._stopped is not None:
            self._stopped.set()
        for consumer in self._consumers:
            await consumer.stop()
        self._consumers.clear()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        client = self.client
        if client is not None and not client.closed:
            try:
                await AsyncLiveBackend(client, self.serializer).send_metrics(
                    self._outbox.take())
            except (OSError, ConnectionError) as exc:
                logger.error("sending the last handler metrics failed: %s", exc)
            if self._own_client:
                await client.close()
        self.client = None
        self.failures.flush()

    async def serve(self) -> None:
        """start(), then wait until stop() or SIGINT/SIGTERM; then stop."""
        loop = asyncio.get_running_loop()
        terminated = asyncio.Event()  # a signal during start(), before _stopped exists

        def on_signal() -> None:
            terminated.set()
            if self._stopped is not None:
                self._stopped.set()

        signals = []
        # Before start(): a SIGTERM sent once the handlers answer must stop the app, not
        # kill the process.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, on_signal)
                signals.append(sig)
        try:
            await self.start()
            assert self._stopped is not None
            if not terminated.is_set():
                await self._stopped.wait()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            await self.stop()

    def run(self) -> None:
        """Runs the app on an event loop of its own until SIGINT or SIGTERM."""
        asyncio.run(self.serve())

    async def __aenter__(self) -> AsyncMicroclient:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _batch_handler(self, dispatcher: Dispatcher
                       ) -> Callable[[list[Any]], Awaitable[None]]:
        async def handle(messages: list[Any]) -> None:
            await self._run(self.batch_steps(dispatcher, messages, current_batch()))

        return handle

    async def _flush_metrics(self) -> None:
        """What waited a second goes out even when no batch comes to send it."""
        while True:
            await asyncio.sleep(0.25)
            backend = self.backend
            if isinstance(backend, AsyncLiveBackend) and self._outbox.due():
                try:
                    await backend.send_metrics(self._outbox.take())
                except (OSError, ConnectionError) as exc:
                    logger.error("sending handler metrics failed: %s", exc)

    # -- sending ---------------------------------------------------------------------------

    async def send(self, command: Any, *, metadata: Metadata | None = None,
                   timeout: float = 30.0, result_type: type[T] | None = None) -> Any:
        """Sends a command and waits for its handler's result, as Microclient.send."""
        return await self._run(self.request_steps(MessageType.COMMAND, command, metadata,
                                                  timeout, result_type))

    async def query(self, query: Any, *, metadata: Metadata | None = None,
                    timeout: float = 30.0, result_type: type[T] | None = None) -> Any:
        """Sends a query and returns its handler's result, like send()."""
        return await self._run(self.request_steps(MessageType.QUERY, query, metadata,
                                                  timeout, result_type))

    async def send_and_forget(self, *commands: Any, metadata: Metadata | None = None) -> None:
        await self._run(self.publish_steps(MessageType.COMMAND, commands, metadata, None))

    async def publish(self, *events: Any, metadata: Metadata | None = None) -> None:
        """Publishes events (stored once this returns)."""
        await self._run(self.publish_steps(MessageType.EVENT, events, metadata, None))

    async def publish_to(self, message_type: MessageType, *payloads: Any,
                         topic: str | None = None, metadata: Metadata | None = None) -> None:
        await self._run(self.publish_steps(message_type, payloads, metadata, topic))

    async def schedule(self, payload: Any, deadline: datetime | timedelta, *,
                       schedule_id: str | None = None, if_absent: bool = False,
                       metadata: Metadata | None = None) -> str | None:
        return await self._run(self.schedule_steps(payload, deadline, schedule_id, if_absent,
                                                   metadata))

    async def cancel_schedule(self, schedule_id: str) -> bool:
        return bool(await self._backend().cancel_schedule(schedule_id))

    # -- state -----------------------------------------------------------------------------

    async def load(self, cls: type[T], aggregate_id: str) -> AggregateRoot[T]:
        """The aggregate from its newest snapshot plus the events after it. Inside a handler
        it is committed when the handler returns; elsewhere `await root.commit()`."""
        return await self._run(self.load_steps(cls, aggregate_id, self._run))

    async def store_value(self, key: str, value: Any) -> None:
        await self._run(self.store_value_steps(key, value))

    @typing.overload
    async def get_value(self, key: str, cls: type[T]) -> T | None: ...

    @typing.overload
    async def get_value(self, key: str, cls: None = None) -> Any: ...

    async def get_value(self, key: str, cls: type[T] | None = None) -> Any:
        return await self._run(self.get_value_steps(key, cls))

    async def delete_value(self, key: str) -> bool:
        return bool(await self._backend().delete_value(key))

