"""What the clients share, written once: this file for `AsyncClient`, and `_api_sync.py`,
generated from it by tools/async_to_sync.py (no async, no await, Async names renamed), for
`Client`: the operations, the bookkeeping of requests waiting for answers, the reader of
request results and the handling of a consumer's batches. Each client brings its own I/O
(a reader thread or an asyncio protocol, reconnecting, threads or tasks): `_send`, `_wait`,
`_answer_ping`, `_start_consumer`, and the rest of its result reader and consumer."""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
from asyncio import Future
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import numpy.typing as npt

from fluxcore._ext import _proto
from fluxcore._ext._proto import Message
from fluxcore.protocol import FrameError, Guarantee, MessageType, Op, ProtocolError, decode_control

from ._futures import AsyncReplyFuture
from ._wire import (
    FLAG_RESEND,
    Answers,
    Backoff,
    BatchReply,
    Codec,
    ConnectionLost,
    ConsumerSpec,
    Deadline,
    Relationship,
    Revisions,
    Scheduled,
    TrackerCursor,
    ack_indexes,
    dispatcher,
    fail_requests,
    log_request,
    new_client_id,
    parse_address,
    raise_for,
    relationship_lists,
    relationships_of,
    results_spec,
    schedule_answer,
    schedule_request,
    scheduled_from,
    unix_path_of,
    value_answer,
    values_request,
)
from .search import AsyncSearchMethods

if TYPE_CHECKING:
    from .aio import AsyncBatchHandler, AsyncClient, AsyncConsumer, AsyncHandler, AsyncResultReader

__all__ = ["AsyncConsumerBase", "AsyncOperations", "AsyncResultReaderBase", "Pending"]

logger = logging.getLogger("fluxcore.client")

Reply = tuple[int, bytes]
T = TypeVar("T")


class Pending:
    """A request waiting for its answer; `frame` is kept for a resend after a reconnect."""

    __slots__ = ("frame", "future", "resend")

    def __init__(self, frame: bytes, resend: bool) -> None:
        self.frame = frame
        self.resend = resend  # an append: resent marked RESEND, the server stores what it lacks
        self.future: AsyncReplyFuture[Reply] = AsyncReplyFuture()

    def resend_frame(self) -> bytes:
        frame = self.frame
        if not self.resend:
            return frame
        return frame[:5] + bytes([frame[5] | FLAG_RESEND]) + frame[6:]


class AsyncOperations(AsyncSearchMethods):
    """What the client does, in terms of sending a frame and waiting for its answer."""

    def _init_state(self, address: str, token: str, name: str, project: str,
                    client_id: str | None, reconnect: bool, tls: ssl.SSLContext | None,
                    connect_timeout: float) -> None:
        self.address = address
        # A Unix domain socket ('unix:/path'), or TCP to host:port.
        self.unix_path = unix_path_of(address)
        if self.unix_path is not None and tls is not None:
            raise ValueError("TLS is for TCP: a unix: address takes no tls context")
        self.host, self.port = ("", 0) if self.unix_path is not None else parse_address(address)
        self.client_id = client_id or new_client_id()
        self.name = name
        self._codec = Codec(self.client_id, name, project, token)
        self._reconnect = reconnect
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._pending: dict[int, Pending] = {}
        self._closed = False
        self._gone: BaseException | None = None  # why the client stopped reconnecting
        self._backoff = Backoff()
        self._consumers: list[AsyncConsumer] = []
        self._results: AsyncResultReader | None = None
        # The next READ of results, when it is not out yet: it goes out in front of the next
        # frame written (see _write and the result reader's `delivered`).
        self._owed: AsyncResultReader | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    def _answer_ping(self, request_id: int) -> None:
        raise NotImplementedError

    def _deliver(self, op: int, request_id: int, body: bytes) -> None:
        """A frame from the server: to whoever waits for it."""
        if op == Op.PING:  # the server checks that we are still there
            self._answer_ping(request_id)
            return
        pending = self._pending.pop(request_id, None)
        if pending is not None:
            results = self._results
            if results is not None and request_id == results.request_id:
                # Results go to the callers waiting for them right here: no hand-off.
                results.delivered(op, body)
                return
            if not pending.future.done():
                pending.future.set_result((op, body))
        elif op == Op.ERROR:
            logger.error("server error for request %d: %s", request_id, decode_control(body))

    def _fail_pending(self, exc: BaseException) -> None:
        for request_id in list(self._pending):
            pending = self._pending.pop(request_id, None)
            if pending is not None and not pending.future.done():
                pending.future.set_exception(exc)

    def _owed_read(self) -> bytes:
        """The owed READ of results, registered for a resend (sync: under the send lock). It
        goes out last in its write: the frames before it (a request, a handler's results) are
        what someone waits for; the READ only has to be there before the result it reads."""
        results, self._owed = self._owed, None
        if results is None or results.stopped:
            return b""
        request_id = self._codec.next_request_id()
        frame = results.frame(request_id)
        pending = self._pending[request_id] = Pending(frame, False)
        pending.future.add_done_callback(results.failed)
        return frame

    async def _send(self, frame_of: Callable[[int], bytes], *, answer: bool,
                    append: bool = False, prefix: bytes = b"") -> AsyncReplyFuture[Reply] | None:
        """Sends the frame built for a fresh request id; returns the future of its answer.
        `prefix` (ready-made frames, say a handler's results) goes out in the same write,
        first, and is not resent after a reconnect."""
        raise NotImplementedError

    async def _wait(self, future: AsyncReplyFuture[T] | Future[T], timeout: float | None) -> T:
        """The future's result, or TimeoutError after `timeout` seconds."""
        raise NotImplementedError

    def _start_consumer(self, spec: ConsumerSpec,
                        handler: AsyncHandler | AsyncBatchHandler) -> AsyncConsumer:
        raise NotImplementedError

    async def _call(self, op: Op, value: dict[str, Any], timeout: float | None = 30.0) -> Reply:
        return await self._exchange(lambda rid: self._codec.control(op, rid, value), timeout)

    async def _exchange(self, frame_of: Callable[[int], bytes], timeout: float | None) -> Reply:
        future = await self._send(frame_of, answer=True)
        assert future is not None
        reply_op, body = await self._wait(future, timeout)
        raise_for(reply_op, body)
        return reply_op, body

    # -- publishing --------------------------------------------------------------------------

    async def publish(
        self,
        message_type: MessageType,
        payload: bytes,
        *,
        type: str = "",
        key: str | bytes | None = None,
        metadata: dict[str, str] | None = None,
        topic: str | None = None,
        guarantee: Guarantee = Guarantee.STORED,
        timeout: float | None = 30.0,
        revision: int = 0,
    ) -> int | None:
        """Publishes one message (of payload `type` at `revision`); returns its index once
        stored (STORED), else None."""
        indexes = await self.publish_batch(
            message_type, [payload], type=type, keys=None if key is None else [key],
            metadata=metadata, topic=topic, guarantee=guarantee, timeout=timeout,
            revision=revision)
        return None if indexes is None else int(indexes[0])

    async def publish_batch(
        self,
        message_type: MessageType,
        payloads: Sequence[bytes],
        *,
        type: str = "",
        keys: Sequence[str | bytes] | None = None,
        metadata: dict[str, str] | None = None,
        topic: str | None = None,
        guarantee: Guarantee = Guarantee.STORED,
        timeout: float | None = 30.0,
        types: Sequence[str] | None = None,
        revision: Revisions = 0,
    ) -> npt.NDArray[np.uint64] | None:
        """Publishes many messages in one frame; returns their indexes (STORED), else None.
        `types`: one payload type per message, instead of `type` for all; `revision`: the
        payload revision of all, or a sequence of one per message."""
        future = await self.publish_batch_nowait(
            message_type, payloads, type=type, keys=keys, metadata=metadata, topic=topic,
            guarantee=guarantee, types=types, revision=revision)
        if future is None:
            return None
        return await self._wait(future, timeout)

    async def publish_batch_nowait(
        self,
        message_type: MessageType,
        payloads: Sequence[bytes],
        *,
        type: str = "",
        keys: Sequence[str | bytes] | None = None,
        metadata: dict[str, str] | None = None,
        topic: str | None = None,
        guarantee: Guarantee = Guarantee.STORED,
        types: Sequence[str] | None = None,
        revision: Revisions = 0,
    ) -> Future[npt.NDArray[np.uint64]] | None:
        """Like publish_batch, without waiting: a future of the indexes (STORED), else None."""
        stored = guarantee == Guarantee.STORED

        def frame_of(request_id: int) -> bytes:
            return self._codec.append(
                request_id, message_type, payloads, payload_type="" if types else type,
                guarantee=guarantee, keys=keys, topic=topic, metadata=metadata,
                payload_types=types or None, revision=revision)

        reply = await self._send(frame_of, answer=stored, append=True)
        if reply is None:
            return None
        out: Future[npt.NDArray[np.uint64]] = Future()

        def done(f: AsyncReplyFuture[Reply]) -> None:
            if out.done():
                return
            if f.cancelled():
                out.cancel()
                return
            try:
                op, body = f.result()
                raise_for(op, body)
                out.set_result(ack_indexes(body))
            except Exception as exc:  # noqa: BLE001 - handed to whoever waits for `out`
                out.set_exception(exc)

        reply.add_done_callback(done)
        return out

    # -- scheduling --------------------------------------------------------------------------

    async def schedule(
        self,
        payload: bytes,
        deadline: Deadline,
        *,
        schedule_id: str | None = None,
        type: str = "",
        key: str | bytes | None = None,
        metadata: dict[str, str] | None = None,
        if_absent: bool = False,
        timeout: float | None = 30.0,
        revision: int = 0,
    ) -> str | None:
        """Has the server append `payload` (of payload `type` at `revision`) to the SCHEDULE
        log at `deadline` (a datetime, a delay from now, or epoch seconds), where consumers of
        SCHEDULE get it. The same id again replaces a pending schedule; with `if_absent` it
        leaves it be and returns None. Returns the schedule id (new unless given) once the
        schedule is stored."""
        sid, frame_of = schedule_request(self._codec, payload, deadline, schedule_id,
                                         payload_type=type, key=key, metadata=metadata,
                                         if_absent=if_absent, revision=revision)
        _op, body = await self._exchange(frame_of, timeout)
        return schedule_answer(sid, body)

    async def cancel_schedule(self, schedule_id: str, timeout: float | None = 30.0) -> bool:
        """Cancels a pending schedule; False if there was none (or it already fired)."""
        _op, body = await self._call(Op.CANCEL_SCHEDULE, {"id": schedule_id}, timeout)
        return bool(decode_control(body)["cancelled"])

    async def get_schedule(self, schedule_id: str,
                           timeout: float | None = 30.0) -> Scheduled | None:
        """The pending schedule with this id, or None."""
        _op, body = await self._call(Op.GET_SCHEDULE, {"id": schedule_id}, timeout)
        return scheduled_from(decode_control(body)["schedule"])

    # -- event sourcing ----------------------------------------------------------------------

    async def append_events(
        self,
        aggregate_id: str,
        payloads: Sequence[bytes],
        *,
        types: str | Sequence[str] = "",
        metadata: dict[str, str] | None = None,
        store_only: bool = False,
        expected_sequence: int | None = None,
        timeout: float | None = 30.0,
        revision: Revisions = 0,
    ) -> int:
        """Appends events to the aggregate's stream (numbered from 0) and, unless
        `store_only`, publishes them to the EVENT log, routed by the aggregate id. `types`:
        one payload type for all, or one per event; `revision` likewise. With
        `expected_sequence` (the stream's last number when the writer read it; -1: empty)
        the append happens only if no one appended since, else ConcurrencyError and nothing
        is stored. Returns the stream's last number."""
        _op, body = await self._exchange(
            lambda rid: self._codec.append_events(
                rid, aggregate_id, payloads, types=types, metadata=metadata,
                store_only=store_only, expected_sequence=expected_sequence,
                revision=revision),
            timeout)
        return int(decode_control(body)["last_sequence"][0])

    async def get_events(self, aggregate_id: str, *, after_sequence: int = -1,
                         page_size: int = 1000, timeout: float | None = 30.0) -> list[Message]:
        """The aggregate's events after `after_sequence` (all by default), in order, read a
        page at a time; a message's `index` is its number in the stream."""
        events: list[Message] = []
        after = after_sequence
        while True:
            _op, body = await self._call(
                Op.GET_EVENTS, {"aggregate": aggregate_id, "after": after, "max_size": page_size},
                timeout)
            page = BatchReply(body)
            events.extend(page.messages)
            if page.caught_up or not page.messages:
                return events
            after = page.last_index

    async def delete_events(self, aggregate_id: str, timeout: float | None = 30.0) -> bool:
        """Deletes the aggregate's stream (the EVENT log keeps what was published)."""
        _op, body = await self._call(Op.DELETE_EVENTS, {"aggregate": aggregate_id}, timeout)
        return bool(decode_control(body)["deleted"])

    async def update_relationships(
        self,
        associations: Iterable[tuple[str, str, str]] = (),
        dissociations: Iterable[tuple[str, str, str]] = (),
        timeout: float | None = 30.0,
    ) -> None:
        """Links to add and to remove, each (aggregate id, aggregate type, entity id)."""
        await self._call(Op.UPDATE_RELATIONSHIPS, {
            "associations": relationship_lists(associations),
            "dissociations": relationship_lists(dissociations)}, timeout)

    async def repair_relationships(self, aggregate_id: str, aggregate_type: str,
                                   entity_ids: Iterable[str],
                                   timeout: float | None = 30.0) -> None:
        """Makes `entity_ids` all the entities of the aggregate."""
        await self._call(Op.REPAIR_RELATIONSHIPS, {
            "aggregate": aggregate_id, "aggregate_type": aggregate_type,
            "entities": list(entity_ids)}, timeout)

    async def get_relationships(self, entity_id: str,
                                timeout: float | None = 30.0) -> list[Relationship]:
        """Every aggregate the entity belongs to."""
        _op, body = await self._call(Op.GET_RELATIONSHIPS, {"entity": entity_id}, timeout)
        return relationships_of(body)

    async def get_aggregate_ids(self, entity_id: str,
                                timeout: float | None = 30.0) -> dict[str, str]:
        """Aggregate id -> aggregate type, of every aggregate the entity belongs to."""
        found = await self.get_relationships(entity_id, timeout)
        return {r.aggregate_id: r.aggregate_type for r in found}

    # -- key-value store ---------------------------------------------------------------------

    async def store_values(self, values: Mapping[str, bytes],
                           timeout: float | None = 30.0) -> None:
        """Stores each value under its key, overwriting, all in one transaction."""
        await self._call(Op.STORE_VALUES, values_request(values, False), timeout)

    async def store_value(self, key: str, value: bytes, *, if_absent: bool = False,
                          timeout: float | None = 30.0) -> bool:
        """Stores one value; with `if_absent` only if the key has none. True if stored."""
        _op, body = await self._call(Op.STORE_VALUES, values_request({key: value}, if_absent),
                                     timeout)
        return bool(decode_control(body)["stored"][0])

    async def get_value(self, key: str, timeout: float | None = 30.0) -> bytes | None:
        """The value stored under `key`, or None."""
        _op, body = await self._call(Op.GET_VALUE, {"key": key}, timeout)
        return value_answer(body)

    async def delete_value(self, key: str, timeout: float | None = 30.0) -> bool:
        """Deletes the value under `key`; False if there was none."""
        _op, body = await self._call(Op.DELETE_VALUE, {"key": key}, timeout)
        return bool(decode_control(body)["deleted"])

    # -- consuming ---------------------------------------------------------------------------

    async def consume(
        self,
        name: str,
        message_type: MessageType,
        handler: AsyncHandler | AsyncBatchHandler | Mapping[str, AsyncHandler],
        *,
        trackers: int = 1,
        batch: bool = False,
        type_filter: str | None = None,
        topic: str | None = None,
        max_size: int = 1024,
        max_timeout_ms: int = 1000,
        from_index: int | None = None,
        purge_timeout_ms: int | None = 60_000,
    ) -> AsyncConsumer:
        """Starts `trackers` trackers (threads of Client, tasks of AsyncClient) that feed
        `handler` (of AsyncClient: a function or a coroutine function) the messages of
        consumer `name`; a mapping of payload type -> handler picks the handler by type (and
        reads only those types). A handler of requests (COMMAND, QUERY, ...) answers with
        what it returns (bytes or str) or raises. Positions are stored after each batch.
        `from_index`: where a consumer with no stored position starts (default: now)."""
        if isinstance(handler, Mapping):
            if batch:
                raise ValueError("a mapping of handlers works per message, not with batch=True")
            handler, types = dispatcher(handler)
            type_filter = type_filter or types
        return self._start_consumer(ConsumerSpec(
            name, message_type, trackers, batch, type_filter, topic, max_size, max_timeout_ms,
            from_index, purge_timeout_ms), handler)

    async def read(self, request: dict[str, Any], timeout: float | None, *,
                   answers: bytes = b"") -> BatchReply:
        """One READ; `answers` (a handler's result frames) go out in the same write, first."""
        future = await self._send(lambda rid: self._codec.control(Op.READ, rid, request),
                                  answer=True, prefix=answers)
        assert future is not None
        op, body = await self._wait(future, timeout)
        raise_for(op, body)
        return BatchReply(body)

    async def store_position(self, consumer: str, message_type: MessageType,
                             segment: tuple[int, int], last_index: int,
                             topic: str | None = None) -> None:
        await self._call(Op.STORE_POSITION, log_request(
            message_type, topic, consumer=consumer, segment=list(segment), last_index=last_index))

    async def reset_position(self, consumer: str, message_type: MessageType, last_index: int,
                             topic: str | None = None) -> None:
        """Moves every segment of a consumer to `last_index`: replay from there ("time
        travel": use `index_from_time`) or skip ahead."""
        await self._call(Op.RESET_POSITION, log_request(
            message_type, topic, consumer=consumer, last_index=last_index))

    async def get_position(self, consumer: str, message_type: MessageType,
                           topic: str | None = None) -> list[Any]:
        _op, body = await self._call(Op.GET_POSITION,
                                     log_request(message_type, topic, consumer=consumer))
        return list(decode_control(body)["position"])

    async def disconnect_tracker(self, consumer: str, message_type: MessageType, tracker: str,
                                 topic: str | None = None) -> None:
        await self._call(Op.DISCONNECT_TRACKER, log_request(
            message_type, topic, consumer=consumer, tracker=tracker, final_empty_batch=True))

    async def read_from_index(self, message_type: MessageType, min_index: int = 0,
                              max_size: int = 1024, topic: str | None = None) -> list[Message]:
        """Messages with index >= min_index, with no consumer state."""
        _op, body = await self._call(Op.READ_FROM_INDEX, log_request(
            message_type, topic, min_index=min_index, max_size=max_size))
        return BatchReply(body).messages

    async def set_retention(self, message_type: MessageType, retention_ms: int | None,
                            topic: str | None = None) -> None:
        await self._call(Op.SET_RETENTION, log_request(
            message_type, topic, retention_ms=retention_ms))

    async def ping(self, timeout: float = 10.0) -> float:
        """Round trip time in seconds."""
        began = time.perf_counter()
        future = await self._send(lambda rid: bytes(_proto.frame_header(Op.PING, rid, 0)),
                                  answer=True)
        assert future is not None
        await self._wait(future, timeout)
        return time.perf_counter() - began

    async def send_frames(self, frames: bytes) -> None:
        """Writes ready-made frames (answers to requests) as one write."""
        if frames:
            await self._send(lambda _rid: frames, answer=False)


class AsyncResultReaderBase:
    """Reads the results of this client's requests: a READ of the RESULT log, filtered to this
    client by the server, waiting there while requests wait. The client's reader hands over
    each batch as it comes (`delivered`); the results settle the waiting requests."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        spec = results_spec(client.name)
        self.tracker_id = spec.tracker_ids(client.client_id)[0]
        self.cursor = TrackerCursor(spec, client._codec, self.tracker_id)
        self.request_id = -1  # of the READ out now (sync: set under the send lock)
        self.stopped = False

    def frame(self, request_id: int) -> bytes:
        self.request_id = request_id
        return self.client._codec.control(Op.READ, request_id, self.cursor.request())

    def delivered(self, op: int, body: bytes) -> None:
        raise NotImplementedError

    def _batch(self, op: int, body: bytes) -> BatchReply | None:
        """The batch the READ got, or None if it failed (its waiting requests then fail)."""
        client = self.client
        self.request_id = -1
        try:
            raise_for(op, body)
            reply = BatchReply(body)
        except (ProtocolError, FrameError) as exc:
            logger.error("reading the results of requests failed: %s", exc)
            self.stopped = True
            client._results = None  # the next request starts a new reader
            fail_requests(client._requests, exc)
            return None
        self.cursor.advance(reply)
        return reply

    def failed(self, future: AsyncReplyFuture[Reply]) -> None:
        # Only ConnectionLost completes the READ's future (answers are taken in _deliver):
        # the client is closed, or gone for good; its waiting callers learn it now.
        exc = None if future.cancelled() else future.exception()
        if exc is not None and not self.client.closed:
            fail_requests(self.client._requests, exc)

    async def stop(self) -> None:
        """Ends the READ that waits at the server (its answer sends no other)."""
        self.stopped = True
        client, spec = self.client, self.cursor.spec
        client._owed = None
        with contextlib.suppress(ProtocolError, ConnectionLost, OSError, TimeoutError):
            await client.disconnect_tracker(spec.name, spec.message_type, self.tracker_id)


class AsyncConsumerBase:
    """The trackers of one consumer in this client, and how they handle a batch."""

    def __init__(self, client: AsyncClient, spec: ConsumerSpec,
                 handler: AsyncHandler | AsyncBatchHandler) -> None:
        self.client = client
        self.spec = spec
        self.name = spec.name
        self.message_type = spec.message_type
        self.handler = handler
        self.tracker_ids = spec.tracker_ids(client.client_id)
        self._handling: set[str] = set()  # trackers handling a batch now
        self.handled = 0
        self.errors = 0

    async def _call_handler(self, value: Any) -> Any:
        """The handler's answer to a message (or a batch)."""
        raise NotImplementedError

    async def _handle(self, messages: list[Message]) -> bytes:
        """Runs the handler; returns the frames owed to requesters."""
        answers = Answers(self.spec)
        if self.spec.batch:
            try:
                await self._call_handler(messages)
            except Exception as exc:  # noqa: BLE001 - logged by Answers; the tracker goes on
                answers.failed(None, exc)
        else:
            for message in messages:
                try:
                    answers.handled(message, await self._call_handler(message))
                except Exception as exc:  # noqa: BLE001 - to the requester, or logged
                    answers.failed(message, exc)
        self.handled += len(messages)
        self.errors += answers.errors
        return answers.frames(self.client._codec)
