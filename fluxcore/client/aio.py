"""The asyncio client: the same operations as `Client`, awaitable; each tracker is a task."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import ssl
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeVar

from fluxcore._ext import _proto
from fluxcore._ext._proto import Message
from fluxcore.protocol import (
    DEFAULT_MAX_FRAME,
    ErrorCode,
    FrameError,
    Guarantee,
    MessageType,
    Op,
    ProtocolError,
)

from ._api_aio import AsyncConsumerBase, AsyncOperations, AsyncResultReaderBase, Pending
from ._wire import (
    ConnectionLost,
    ConsumerSpec,
    TrackerCursor,
    raise_for,
    settle_results,
)

__all__ = ["AsyncClient", "AsyncConsumer", "current_batch"]

logger = logging.getLogger("fluxcore.client")

Reply = tuple[int, bytes]
T = TypeVar("T")
AsyncHandler = Callable[[Any], Any | Awaitable[Any]]
AsyncBatchHandler = Callable[[list[Message]], Any | Awaitable[Any]]

# Each tracker is a task with a context of its own: this is its batch, while it handles it.
_current_batch: ContextVar[tuple[str, tuple[int, int]] | None] = ContextVar(
    "fluxcore_current_batch", default=None)


def current_batch() -> tuple[str, tuple[int, int]] | None:
    """In a handler called by a tracker: (tracker id, its segment range [start, end))."""
    return _current_batch.get()


class _Protocol(asyncio.Protocol):
    """Bytes in: frames found many per call and handed to the client."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[None] = loop.create_future()
        # The answer to HELLO: the first frame, or the error if the connection ends first.
        self.welcome: asyncio.Future[Reply] = loop.create_future()
        self.writable = asyncio.Event()  # cleared while the transport's buffer is full
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        pending = self._buf  # the start of a frame that a previous call did not complete
        if pending:
            pending += data
        chunk = pending if pending else data
        try:
            frames, consumed, _needed = _proto.frame_scan(chunk, 0, len(chunk), DEFAULT_MAX_FRAME)
        except FrameError as exc:
            logger.error("bad frame from the server: %s", exc)
            if self.transport is not None:
                self.transport.close()
            return
        if chunk is data:
            # Frames are sliced from the bytes as they came: one copy each, none for the rest.
            self._hand_over(frames, data)
            if consumed < len(data):
                pending += memoryview(data)[consumed:]
            return
        if frames:
            with memoryview(pending) as view:  # released before pending shrinks
                self._hand_over(frames, view)
            del pending[:consumed]

    def _hand_over(self, frames: list[tuple[int, int, int, int, int]],
                   chunk: bytes | memoryview) -> None:
        for op, _flags, request_id, start, end in frames:
            body = bytes(chunk[start:end])  # a bytes slice is already bytes: not copied again
            if not self.welcome.done():
                self.welcome.set_result((op, body))
                continue
            self.client._deliver(op, request_id, body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.writable.set()
        if not self.lost.done():
            self.lost.set_result(None)
        if not self.welcome.done():
            self.welcome.set_exception(
                exc or ConnectionResetError("the server closed the connection during HELLO"))
        self.client._connection_lost(self, exc)

    def abandon(self) -> None:
        """The handshake gave this connection up: closes it; nobody waits for its WELCOME
        any more, so that future ends cancelled (or its error counts as seen)."""
        if not self.welcome.cancel() and not self.welcome.cancelled():
            self.welcome.exception()
        if self.transport is not None:
            self.transport.close()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


class AsyncClient(AsyncOperations):
    """A connection to a fluxcore server for asyncio programs."""

    def __init__(self, address: str, *, token: str, name: str = "fluxcore-client",
                 project: str = "public", client_id: str | None = None,
                 reconnect: bool = True, tls: ssl.SSLContext | None = None,
                 connect_timeout: float = 10.0) -> None:
        self._init_state(address, token, name, project, client_id, reconnect, tls,
                         connect_timeout)
        self._protocol: _Protocol | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._requests: dict[int, asyncio.Future[Message]] = {}

    @classmethod
    async def connect(cls, address: str, **options: Any) -> AsyncClient:
        client = cls(address, **options)
        await client._open()
        return client

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- connection --------------------------------------------------------------------------

    async def _open(self) -> None:
        self._protocol = await self._handshake()

    async def _handshake(self) -> _Protocol:
        """A new connection that said HELLO and got WELCOME, and is still open."""
        loop = asyncio.get_running_loop()
        made: list[_Protocol] = []  # the connection's, as soon as it is made

        def new_protocol() -> _Protocol:
            made.append(_Protocol(self))
            return made[-1]

        if self.unix_path is not None:
            connecting = loop.create_unix_connection(new_protocol, self.unix_path)
        else:
            connecting = loop.create_connection(new_protocol, self.host, self.port,
                                                ssl=self._tls)
        try:
            transport, protocol = await asyncio.wait_for(connecting, self._connect_timeout)
            transport.write(self._codec.hello(0))
            op, body = await asyncio.wait_for(protocol.welcome, self._connect_timeout)
            raise_for(op, body)
            if op != Op.WELCOME:
                raise ProtocolError(ErrorCode.BAD_FRAME, f"expected WELCOME, got op {op}")
            if transport.is_closing():
                # Lost after WELCOME, before we got here: its connection_lost, if it came,
                # was not for the client's connection and went unheeded.
                raise ConnectionResetError("the server closed the connection after WELCOME")
        except BaseException:
            # Failed, timed out or cancelled, also inside create_connection after the
            # connection was made: that connection is given up.
            for given_up in made:
                given_up.abandon()
            raise
        return protocol

    def _answer_ping(self, request_id: int) -> None:
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            protocol.transport.write(_proto.frame_header(Op.PONG, request_id, 0))

    def _connection_lost(self, protocol: _Protocol, exc: Exception | None) -> None:
        if protocol is not self._protocol or self._closed:
            return
        self._protocol = None
        if not self._reconnect:
            self._gone = ConnectionLost(str(exc or "connection closed"))
            self._fail_pending(self._gone)
            return
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.get_running_loop().create_task(self._recover())
            self._reconnecting.add_done_callback(self._recover_done)

    def _recover_done(self, task: asyncio.Task[None]) -> None:
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            # A bug of ours, not a lost connection: nobody would answer the callers any more,
            # so they get the error now and every later call fails at once.
            logger.error("reconnecting to %s failed", self.address, exc_info=exc)
            self._gone = ConnectionLost(f"the client's reconnect failed: {exc!r}")
            self._fail_pending(self._gone)

    async def _recover(self) -> None:
        """Reconnects with backoff and resends what was not answered, however often the new
        connections fail (to connect, during HELLO, during the resend: a connection lost
        after this task made it the client's starts a new one)."""
        logger.warning("connection to %s lost; reconnecting", self.address)
        self._backoff.lost()
        while not self._closed and self._protocol is None:
            await asyncio.sleep(self._backoff.wait())
            if self._closed:
                return
            try:
                protocol = await self._handshake()
            except ProtocolError as exc:
                if exc.code == ErrorCode.AUTH:
                    self._gone = exc
                    self._fail_pending(exc)
                    return
                logger.warning("reconnecting to %s: %s", self.address, exc)
            except (TimeoutError, OSError, FrameError) as exc:
                logger.info("reconnecting to %s: %s", self.address, exc)
            else:
                transport = protocol.transport
                assert transport is not None
                if self._closed:
                    transport.close()
                    return
                # No await from the handshake's check to here: the transport is open.
                self._protocol = protocol
                self._backoff.connected()
                for pending in list(self._pending.values()):
                    transport.write(pending.resend_frame())
                return

    async def _send(self, frame_of: Callable[[int], bytes], *, answer: bool,
                    append: bool = False, prefix: bytes = b"") -> asyncio.Future[Reply] | None:
        """Sends the frame built for a fresh request id; returns the future of its answer.
        `prefix` (ready-made frames, say a handler's results) goes out in the same write,
        first, and is not resent after a reconnect."""
        future = self._write(frame_of, answer, append, prefix)
        if self._paused():
            await self._drain()
        return future

    def _paused(self) -> bool:
        """Whether the socket buffer is full (backpressure): then writers wait (_drain)."""
        protocol = self._protocol
        return protocol is not None and not protocol.writable.is_set()

    async def _drain(self) -> None:
        protocol = self._protocol
        if (protocol is not None and protocol.transport is not None
                and not protocol.transport.is_closing()):
            await protocol.writable.wait()

    def _write(self, frame_of: Callable[[int], bytes], answer: bool, append: bool = False,
               prefix: bytes = b"") -> asyncio.Future[Reply] | None:
        if self._closed or self._gone is not None:
            raise ConnectionLost("the client is closed" if self._closed else str(self._gone))
        request_id = self._codec.next_request_id()
        # The frame first: one that cannot be built (bad input) sends nothing and leaves the
        # owed READ of results owed, not registered and never written.
        frame = frame_of(request_id)
        owed = self._owed_read() if self._owed is not None else b""  # goes last
        future = None
        if answer:
            pending = self._pending[request_id] = Pending(frame, append)
            future = pending.future
        protocol = self._protocol
        # A closing transport is about to be reported lost: what waits for an answer is
        # resent on the next connection (uvloop refuses a write to a closed transport).
        if (protocol is not None and protocol.transport is not None
                and not protocol.transport.is_closing()):
            protocol.transport.write(prefix + frame + owed if prefix or owed else frame)
        elif not self._reconnect:
            raise ConnectionLost("not connected")
        return future

    async def _wait(self, future: asyncio.Future[T], timeout: float | None) -> T:
        """The future's result, or TimeoutError after `timeout` seconds. Unlike wait_for, this
        adds no step between the future's result and the waiting task."""
        if timeout is None:
            return await future
        handle = asyncio.get_running_loop().call_later(timeout, _time_out, future)
        try:
            return await future
        finally:
            handle.cancel()

    def _start_consumer(self, spec: ConsumerSpec,
                        handler: AsyncHandler | AsyncBatchHandler) -> AsyncConsumer:
        consumer = AsyncConsumer(self, spec, handler)
        self._consumers.append(consumer)
        consumer.start()
        return consumer

    async def flush(self, timeout: float | None = 30.0) -> None:
        """Waits until every request sent so far is answered (STORED publishes acknowledged)."""
        futures = [p.future for p in self._pending.values() if p.resend]
        if futures:
            await asyncio.wait(futures, timeout=timeout)

    # -- requests ----------------------------------------------------------------------------

    async def request_nowait(self, message_type: MessageType, payload: bytes, *, type: str = "",
                             key: str | bytes | None = None,
                             metadata: dict[str, str] | None = None,
                             topic: str | None = None,
                             revision: int = 0) -> asyncio.Future[Message]:
        """Sends a command or query (of payload `type` at `revision`); returns the future of
        its result."""
        number, future = self._request(message_type, payload, type, key, metadata, topic,
                                       revision)
        if self._paused():
            await self._drain()
        # However it ends (result, timeout, cancel), the request stops being waited for.
        future.add_done_callback(lambda _f: self._requests.pop(number, None))
        return future

    async def request(self, message_type: MessageType, payload: bytes, *, type: str = "",
                      key: str | bytes | None = None, metadata: dict[str, str] | None = None,
                      topic: str | None = None, timeout: float = 30.0,
                      revision: int = 0) -> Message:
        """Sends a command or query (of payload `type` at `revision`) and waits for its
        result; RequestError if the handler failed, TimeoutError if no result came in time."""
        number, future = self._request(message_type, payload, type, key, metadata, topic,
                                       revision)
        try:
            if self._paused():
                await self._drain()
            return await self._wait(future, timeout)
        finally:
            if not future.done():
                future.cancel()
            self._requests.pop(number, None)

    def _request(self, message_type: MessageType, payload: bytes, payload_type: str,
                 key: str | bytes | None, metadata: dict[str, str] | None, topic: str | None,
                 revision: int) -> tuple[int, asyncio.Future[Message]]:
        """Writes the request (the caller waits in _drain if the socket buffer is full)."""
        if self._results is None:  # its first READ goes out in front of the request
            self._owed = self._results = AsyncResultReader(self)
        codec = self._codec
        number = codec.next_message_request_id()
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._requests[number] = future
        try:
            self._write(lambda rid: codec.append(
                rid, message_type, [payload], payload_type=payload_type,
                guarantee=Guarantee.SENT, keys=None if key is None else [key], topic=topic,
                metadata=metadata, message_request_id=number, revision=revision), False)
        except BaseException:
            self._requests.pop(number, None)
            raise
        return number, future

    # -- closing -----------------------------------------------------------------------------

    async def close(self) -> None:
        if self._closed:
            return
        for consumer in list(self._consumers):
            await consumer.stop()
        if self._results is not None:
            await self._results.stop()
        with contextlib.suppress(asyncio.TimeoutError):
            await self.flush(timeout=5)
        self._closed = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(protocol.lost), 5)
        self._fail_pending(ConnectionLost("the client is closed"))
        for future in self._requests.values():
            future.cancel()


def _time_out(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class AsyncResultReader(AsyncResultReaderBase):
    """Reads the results of this client's requests, as ResultReader of the sync client: the
    protocol hands over each batch as it comes; it settles the waiting requests, and the next
    READ goes out at once if requests still wait, else with the next request."""

    def delivered(self, op: int, body: bytes) -> None:
        reply = self._batch(op, body)
        if reply is None:
            return
        client = self.client
        settle_results(client._requests, reply.messages)
        if not self.stopped and not client.closed:
            # The next READ: now if other requests wait, else in front of the next request.
            client._owed = self
            if client._requests:
                client._write(lambda _rid: b"", False)


class AsyncConsumer(AsyncConsumerBase):
    """The trackers of one consumer in this client: a task each."""

    def __init__(self, client: AsyncClient, spec: ConsumerSpec,
                 handler: AsyncHandler | AsyncBatchHandler) -> None:
        super().__init__(client, spec, handler)
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run(t)) for t in self.tracker_ids]

    async def _call_handler(self, value: Any) -> Any:
        result = self.handler(value)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _run(self, tracker_id: str) -> None:
        client, spec = self.client, self.spec
        cursor = TrackerCursor(spec, client._codec, tracker_id)
        answers = b""  # the results of the last batch: they go out with the next READ
        while not self._stopping:
            try:
                sending, answers = answers, b""
                reply = await client.read(cursor.request(), spec.read_timeout, answers=sending)
            except ConnectionLost:
                return
            except (TimeoutError, ProtocolError, OSError) as exc:
                if self._stopping or client.closed:
                    return
                logger.error("tracker %s: read failed: %s", tracker_id, exc)
                await asyncio.sleep(0.5)
                continue
            if self._stopping:
                break  # as in the sync client: left unhandled, for whoever reads next
            self._handling.add(tracker_id)
            try:
                if reply.messages:
                    _current_batch.set((tracker_id, reply.segment))
                    answers = await self._handle(reply.messages)
                cursor.advance(reply)
            finally:
                self._handling.discard(tracker_id)
        # Store what was handled, then leave: the next owner of the segments starts after it.
        try:
            await client.send_frames(answers)
            if cursor.unstored is not None:
                await client.store_position(spec.name, spec.message_type, *cursor.unstored,
                                            spec.topic)
            await client.disconnect_tracker(spec.name, spec.message_type, tracker_id,
                                            spec.topic)
        except (ProtocolError, ConnectionLost, OSError, TimeoutError) as exc:
            logger.error("tracker %s: storing its position or leaving failed: %s",
                         tracker_id, exc)

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        for tracker_id in self.tracker_ids:
            if tracker_id in self._handling:
                continue  # it stores its position and leaves when its batch is done
            with contextlib.suppress(ProtocolError, ConnectionLost, OSError,
                                     asyncio.TimeoutError):
                await self.client.disconnect_tracker(self.name, self.message_type, tracker_id,
                                                     self.spec.topic)
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        if tasks:
            await asyncio.wait(tasks, timeout=10)
