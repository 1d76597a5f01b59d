"""The Microclient: an app made of decorated handlers, over the wire client.

    app = Microclient("orders", "127.0.0.1:8765", token="...")

    @app.handle_command
    def place(cmd: PlaceOrder) -> OrderPlaced: ...

    app.run()   # or app.start() ... app.stop()

The app groups handlers in consumers, reads each consumer's logs with the wire client
(`consume(..., batch=True)`), decodes each payload into the class its handler asks for, and
answers requests with the handler's return value (or error). What handlers send carries the
correlation of the message they handle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
import typing
import uuid
from collections.abc import Callable, Coroutine, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, Self, TypeVar

from fluxcore.client import Client, ConcurrencyError, Guarantee, MessageType, RequestError
from fluxcore.client._wire import Codec, result_frames
from fluxcore.client.sync import current_batch
from fluxcore.protocol import time_from_index

from . import aggregates as _aggregates
from .aggregates import AggregateRoot
from .context import Incoming, Metadata, outgoing_metadata
from .dispatch import Answer, Dispatcher, web_response
from .failures import FailureLog
from .handlers import (
    ConsumerOptions,
    Handler,
    HandlerKind,
    consumer_options,
    handle_command,
    handle_custom,
    handle_document,
    handle_error,
    handle_event,
    handle_metrics,
    handle_notification,
    handle_query,
    handle_result,
    handle_schedule,
    handle_web,
    handler_kinds,
)
from .metrics import BatchMetrics, Outbox
from .periodic import first_deadline, next_deadline
from .serialization import Encoded, Serializer, is_payload_class
from .steps import Call, Steps, run_sync
from .upcasting import upcaster_key

__all__ = ["AppCore", "Backend", "FunctionalError", "HandlerError", "Microclient",
           "RoutingKey"]

logger = logging.getLogger("fluxcore.app")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
DEADLINE_KEY = "$deadline"  # metadata of a periodic schedule: its deadline (epoch ms)


class RoutingKey:
    """Marks the payload field whose value routes a message: `order_id: Annotated[str,
    RoutingKey]`. Messages with the same key keep their order. Or set `__routing_key__ =
    "field"` on the class."""


_ROUTING_FIELDS: dict[type, str | None] = {}


def routing_key(payload: Any) -> str | None:
    cls = type(payload)
    if cls not in _ROUTING_FIELDS:
        field = getattr(cls, "__routing_key__", None)
        if field is None and is_payload_class(cls):
            with contextlib.suppress(NameError, TypeError):
                for name, hint in typing.get_type_hints(cls, include_extras=True).items():
                    if typing.get_origin(hint) is typing.Annotated and any(
                            a is RoutingKey or isinstance(a, RoutingKey)
                            for a in typing.get_args(hint)[1:]):
                        field = name
                        break
        _ROUTING_FIELDS[cls] = field
    field = _ROUTING_FIELDS[cls]
    if field is None:
        return None
    return str(getattr(payload, field))


class HandlerError(Exception):
    """The handler of a command or query failed: `error_type` is its exception's class name."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message


class FunctionalError(Exception):
    """Base of errors a handler raises on purpose (an illegal command, say). The requester
    gets the same class back (matched by name) instead of a HandlerError."""

    _by_name: typing.ClassVar[dict[str, type[FunctionalError]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        FunctionalError._by_name[cls.__name__] = cls


def error_from(error_type: str, text: str) -> Exception:
    message = text.split(": ", 1)[1] if text.startswith(error_type + ": ") else text
    cls = FunctionalError._by_name.get(error_type)
    if cls is not None:
        return cls(message)
    return HandlerError(error_type, message)


class Backend(Protocol):
    """What the app does with the service: the live client, or the fixture's memory."""

    serializer: Serializer

    def now_ms(self) -> int: ...
    def publish(self, message_type: MessageType, payloads: Sequence[Encoded], *,
                keys: Sequence[str | None], topic: str | None,
                metadata: Metadata | None, guarantee: Guarantee) -> None: ...
    def request(self, message_type: MessageType, payload: Encoded, *, key: str | None,
                topic: str | None, metadata: Metadata | None, timeout: float) -> Incoming: ...
    def schedule(self, payload: Encoded, deadline_ms: int, schedule_id: str, *,
                 metadata: Metadata | None, if_absent: bool) -> bool: ...
    def cancel_schedule(self, schedule_id: str) -> bool: ...
    def fired_deadline(self, schedule_id: str) -> int | None: ...
    def get_events(self, aggregate_id: str, after: int) -> Sequence[Incoming]: ...
    def append_events(self, aggregate_id: str, events: Sequence[Encoded],
                      expected_sequence: int | None, metadata: Metadata | None) -> int: ...
    def get_value(self, key: str) -> bytes | None: ...
    def store_value(self, key: str, value: bytes) -> None: ...
    def delete_value(self, key: str) -> bool: ...
    def answer(self, answers: list[Answer], web: bool) -> None: ...
    def send_metrics(self, payloads: list[tuple[str, bytes]]) -> None: ...


def publish_groups(payloads: Sequence[Encoded], keys: Sequence[str | None]
                   ) -> list[tuple[str, int, list[bytes], list[str] | None]]:
    """(payload type, revision, payloads, keys) per frame: a frame carries one payload type
    and revision."""
    groups: dict[tuple[str, int], list[int]] = {}
    for i, p in enumerate(payloads):
        groups.setdefault((p.type, p.revision), []).append(i)
    out: list[tuple[str, int, list[bytes], list[str] | None]] = []
    for (ptype, revision), members in groups.items():
        member_keys = [keys[i] for i in members]
        out.append((ptype, revision, [payloads[i].data for i in members],
                    # Payloads without a key next to some with one: spread at random.
                    None if all(k is None for k in member_keys) else
                    [k if k is not None else uuid.uuid4().hex for k in member_keys]))
    return out


def answer_frames(codec: Codec, answers: list[Answer], web: bool) -> bytes:
    """The frames answering a batch's requests. A frame carries one revision, so results of
    payload classes at a revision other than 0 go in frames of their own: the requester
    upcasts them from the revision they were written at."""
    done: list[tuple[Any, Any, BaseException | None]] = []
    types: list[str] = []
    revised: dict[int, list[tuple[Incoming, Encoded]]] = {}
    for request, value, exc in answers:
        if isinstance(value, Encoded):
            if value.revision and exc is None and request.request_id >= 0 and request.source:
                revised.setdefault(value.revision, []).append((request, value))
                continue
            done.append((request, value.data, exc))
            types.append(value.type)
        else:
            done.append((request, value, exc))
            types.append("result")
    results, errors = result_frames(codec, done, web, types) if done else (b"", b"")
    frames = [results, errors]
    for revision, members in revised.items():
        frames.append(codec.append(
            0, MessageType.RESULT, [v.data for _r, v in members], payload_type="",
            guarantee=Guarantee.SENT, targets=[r.source for r, _v in members],
            request_ids=[r.request_id for r, _v in members],
            payload_types=[v.type for _r, v in members], revision=revision))
    return b"".join(frames)


class LiveBackend:
    """The service, through the blocking wire client."""

    def __init__(self, client: Client, serializer: Serializer) -> None:
        self.client = client
        self.serializer = serializer

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    def publish(self, message_type: MessageType, payloads: Sequence[Encoded], *,
                keys: Sequence[str | None], topic: str | None,
                metadata: Metadata | None, guarantee: Guarantee) -> None:
        for ptype, revision, data, frame_keys in publish_groups(payloads, keys):
            self.client.publish_batch(message_type, data, type=ptype, keys=frame_keys,
                                      metadata=metadata, topic=topic, guarantee=guarantee,
                                      revision=revision)

    def answer(self, answers: list[Answer], web: bool) -> None:
        self.client.send_frames(answer_frames(self.client._codec, answers, web))

    def send_metrics(self, payloads: list[tuple[str, bytes]]) -> None:
        """Sends the metrics of some batches, in one frame."""
        if payloads:
            self.client.publish_batch(MessageType.METRICS, [data for _, data in payloads],
                                      types=[ptype for ptype, _ in payloads],
                                      guarantee=Guarantee.NONE)

    def request(self, message_type: MessageType, payload: Encoded, *, key: str | None,
                topic: str | None, metadata: Metadata | None, timeout: float) -> Incoming:
        try:
            return self.client.request(message_type, payload.data, type=payload.type, key=key,
                                       metadata=metadata, topic=topic, timeout=timeout,
                                       revision=payload.revision)
        except RequestError as exc:
            return exc.result

    def schedule(self, payload: Encoded, deadline_ms: int, schedule_id: str, *,
                 metadata: Metadata | None, if_absent: bool) -> bool:
        return self.client.schedule(payload.data, deadline_ms / 1000, schedule_id=schedule_id,
                                    type=payload.type, metadata=metadata,
                                    if_absent=if_absent, revision=payload.revision) is not None

    def cancel_schedule(self, schedule_id: str) -> bool:
        return self.client.cancel_schedule(schedule_id)

    def fired_deadline(self, schedule_id: str) -> int | None:
        """The deadline of the schedule with this id if it has fired; None if it is pending
        or there is none."""
        found = self.client.get_schedule(schedule_id)
        return found.deadline_ms if found is not None and found.fired else None

    def get_events(self, aggregate_id: str, after: int) -> Sequence[Incoming]:
        return self.client.get_events(aggregate_id, after_sequence=after)

    def append_events(self, aggregate_id: str, events: Sequence[Encoded],
                      expected_sequence: int | None, metadata: Metadata | None) -> int:
        try:
            return self.client.append_events(
                aggregate_id, [e.data for e in events], types=[e.type for e in events],
                revision=[e.revision for e in events], metadata=metadata,
                expected_sequence=expected_sequence)
        except ConcurrencyError as exc:
            raise _aggregates.ConcurrencyError(exc.message) from exc

    def get_value(self, key: str) -> bytes | None:
        return self.client.get_value(key)

    def store_value(self, key: str, value: bytes) -> None:
        self.client.store_values({key: value})

    def delete_value(self, key: str) -> bool:
        return self.client.delete_value(key)


class HandlerGroup:
    """The handlers of one consumer; decorate functions with its methods."""

    def __init__(self, app: AppCore, options: ConsumerOptions) -> None:
        self.app = app
        self.options = options
        self.handlers: list[Handler] = []

    def add(self, fn: Callable[..., Any], kind: HandlerKind) -> None:
        self.handlers.append(Handler(fn, kind, self.options.name))
        for cls in self.handlers[-1].payload_classes:
            self.app.serializer.register(cls)

    def _decorator(self, marker: Callable[[F], F]) -> Callable[[F], F]:
        def register(fn: F) -> F:
            marker(fn)
            self.add(fn, handler_kinds(fn)[-1])
            return fn

        return register

    def handle_command(self, fn: F) -> F:
        return self._decorator(handle_command)(fn)

    def handle_query(self, fn: F) -> F:
        return self._decorator(handle_query)(fn)

    def handle_event(self, fn: F) -> F:
        return self._decorator(handle_event)(fn)

    def handle_notification(self, fn: F) -> F:
        return self._decorator(handle_notification)(fn)

    def handle_schedule(self, fn: F) -> F:
        return self._decorator(handle_schedule)(fn)

    def handle_error(self, fn: F) -> F:
        return self._decorator(handle_error)(fn)

    def handle_result(self, fn: F) -> F:
        return self._decorator(handle_result)(fn)

    def handle_metrics(self, fn: F) -> F:
        return self._decorator(handle_metrics)(fn)

    def handle_document(self, collection: str) -> Callable[[F], F]:
        return self._decorator(handle_document(collection))

    def handle_custom(self, topic: str) -> Callable[[F], F]:
        return self._decorator(handle_custom(topic))

    def handle_web(self, method: str, path: str) -> Callable[[F], F]:
        return self._decorator(handle_web(method, path))

    def dispatchers(self) -> list[Dispatcher]:
        by_log: dict[tuple[MessageType, str | None], list[Handler]] = {}
        for handler in self.handlers:
            by_log.setdefault((handler.kind.message_type, handler.kind.topic), []).append(handler)
        return [Dispatcher(self.app, self.options, mt, topic, handlers)
                for (mt, topic), handlers in by_log.items()]


class AppCore(HandlerGroup):
    """What the blocking and the asyncio app share, all but I/O: consumers of decorated
    handlers, serialization, and the steps (steps.py) of sending, querying, publishing,
    scheduling, loading aggregates and keeping values, which each app performs its way."""

    def __init__(self, name: str, url: str | None = None, token: str = "dev", *,
                 project: str = "public", metrics: bool = True, trackers: int = 1,
                 max_batch: int = 1024, from_index: int | None = None) -> None:
        self.name = name
        self.url = url
        self.token = token
        self.project = project
        self.serializer = Serializer()
        super().__init__(self, ConsumerOptions(name, trackers, max_batch, None, from_index,
                                               metrics))
        self.groups: list[HandlerGroup] = [self]
        self.backend: Any = None
        self.handled_errors = 0
        # handler failures: the first per handler in full, then a count every 10 s at most
        self.failures = FailureLog(logger)
        self._outbox = Outbox()

    # -- building --------------------------------------------------------------------------

    def consumer(self, name: str, *, trackers: int = 1, max_batch: int = 1024,
                 type_filter: str | None = None, from_index: int | None = None,
                 metrics: bool | None = None) -> HandlerGroup:
        """Another consumer of this app: decorate its handlers with the group's methods. The
        same name again is the same consumer (with the same options)."""
        return self._group(ConsumerOptions(
            name, trackers, max_batch, type_filter, from_index,
            self.options.metrics if metrics is None else metrics))

    def register(self, *objects: Any) -> Self:
        """Adds decorated functions (to the app's consumer), objects or classes whose methods
        are handlers (a class marked with @consumer is a consumer of its own), upcasters,
        and payload classes."""
        for obj in objects:
            key = upcaster_key(obj)
            if key is not None:
                self.serializer.upcasters.register(key[0], key[1], obj)
            elif isinstance(obj, type) and is_payload_class(obj):
                self.serializer.register(obj)
            elif isinstance(obj, type) or not callable(obj) or consumer_options(obj):
                instance = obj() if isinstance(obj, type) else obj
                options = consumer_options(instance)
                group: HandlerGroup = self if options is None else self._group(options)
                for attr in dir(instance):
                    if attr.startswith("__"):
                        continue
                    method = getattr(instance, attr)
                    for kind in handler_kinds(method):
                        group.add(method, kind)
            else:
                kinds = handler_kinds(obj)
                if not kinds:
                    raise TypeError(f"{obj!r} is not a handler, an upcaster or a payload class")
                for kind in kinds:
                    self.add(obj, kind)
        return self

    def _group(self, options: ConsumerOptions) -> HandlerGroup:
        # One name, one consumer: two of one name would split its segments between them,
        # each reading only its own handlers' types.
        for group in self.groups:
            if group.options.name == options.name:
                if group.options != options:
                    raise ValueError(f"the app has a consumer {options.name!r} already, with "
                                     f"other options ({group.options} against {options})")
                return group
        group = HandlerGroup(self, options)
        self.groups.append(group)
        return group

    def _backend(self) -> Any:
        if self.backend is None:
            raise RuntimeError(f"the app {self.name!r} is not started (start() or a "
                               "TestFixture)")
        return self.backend

    # -- handling (called by the dispatchers) ----------------------------------------------

    def batch_steps(self, dispatcher: Dispatcher, messages: list[Any],
                    batch: tuple[str, tuple[int, int]] | None) -> Steps[None]:
        """A tracker's batch: handled, its requests answered, its metrics kept (and sent
        when enough waited)."""
        options = dispatcher.options
        # Handlers of METRICS measure nothing: their metrics would feed them forever.
        measure = options.metrics and dispatcher.message_type is not MessageType.METRICS
        metrics = BatchMetrics(options.name, dispatcher.message_type.name, dispatcher.codes,
                               len(messages)) if measure else None
        answers = yield from dispatcher.handle_batch(messages, metrics)
        if answers:
            yield Call("answer", (answers, dispatcher.web != []))
        if metrics is not None:
            tracker, segment = batch or ("", (0, 0))
            payloads = metrics.payloads(self.name, tracker, segment, len(messages))
            if self._outbox.add(payloads, len(metrics)):
                yield Call("send_metrics", (self._outbox.take(),))

    def handler_failed(self, handler: Handler, message: Incoming, exc: BaseException) -> None:
        """Counts a failure; logs it (rate-limited per handler) unless a requester gets it."""
        self.handled_errors += 1
        if not handler.kind.message_type.is_request:
            self.failures.failed(f"{handler.consumer}/{handler.name}",
                                 f"{message.type} #{message.index}", exc)

    def encode_result(self, value: Any, *, web: bool = False) -> Encoded | Any:
        if web:
            return web_response(value)
        if value is None:
            return Encoded(b"", "", 0)
        return self.serializer.encode(value)

    # -- periodic --------------------------------------------------------------------------

    def periodic_handlers(self) -> list[Handler]:
        return [h for g in self.groups for h in g.handlers if h.periodic is not None]

    @staticmethod
    def periodic_id(handler: Handler) -> str:
        assert handler.periodic is not None
        return handler.periodic.schedule_id or f"periodic:{handler.consumer}:{handler.name}"

    def _periodic_payload(self, handler: Handler) -> Encoded:
        if handler.payload_classes:
            return self.serializer.encode(handler.payload_classes[0]())
        return Encoded(b"", handler.periodic_type, 0)

    def create_periodic_steps(self) -> Steps[None]:
        """The first schedule of each periodic handler, unless one is pending. One that has
        fired and was not followed by the next (no instance ran, or this consumer, new,
        starts past its message) is followed now, on its grid."""
        now = yield Call("now_ms")
        for handler in self.periodic_handlers():
            assert handler.periodic is not None
            sid = self.periodic_id(handler)
            fired = yield Call("fired_deadline", (sid,))
            if fired is None:
                deadline = first_deadline(handler.periodic, now)
            else:
                deadline = next_deadline(handler.periodic, fired, now)
            yield Call("schedule", (self._periodic_payload(handler), deadline, sid),
                       {"metadata": {DEADLINE_KEY: str(deadline)}, "if_absent": fired is None})

    def schedule_next_steps(self, handler: Handler, message: Incoming) -> Steps[None]:
        """After a periodic handler ran: its next schedule, under the same id."""
        assert handler.periodic is not None
        given = message.metadata.get(DEADLINE_KEY) if message.metadata else None
        previous = int(given) if given else time_from_index(message.index)
        deadline = next_deadline(handler.periodic, previous, (yield Call("now_ms")))
        yield Call("schedule", (self._periodic_payload(handler), deadline,
                                self.periodic_id(handler)),
                   {"metadata": {DEADLINE_KEY: str(deadline)}, "if_absent": False})

    # -- sending ---------------------------------------------------------------------------

    def request_steps(self, message_type: MessageType, payload: Any,
                      metadata: Metadata | None, timeout: float,
                      result_type: type[T] | None) -> Steps[Any]:
        encoded = self.serializer.encode(payload)
        result: Incoming = yield Call("request", (message_type, encoded), {
            "key": routing_key(payload), "topic": None,
            "metadata": outgoing_metadata(metadata), "timeout": timeout})
        if result.is_error:
            raise error_from(result.type, result.data.decode(errors="replace"))
        if not result.type and not result.data:
            return None
        return self.serializer.decode(result.data, result.type, result.revision, result_type)

    def publish_steps(self, message_type: MessageType, payloads: Iterable[Any],
                      metadata: Metadata | None, topic: str | None) -> Steps[None]:
        items = list(payloads)
        yield Call("publish", (message_type, [self.serializer.encode(p) for p in items]), {
            "keys": [routing_key(p) for p in items], "topic": topic,
            "metadata": outgoing_metadata(metadata), "guarantee": Guarantee.STORED})

    def schedule_steps(self, payload: Any, deadline: datetime | timedelta,
                       schedule_id: str | None, if_absent: bool,
                       metadata: Metadata | None) -> Steps[str | None]:
        if isinstance(deadline, timedelta):
            at = (yield Call("now_ms")) + int(deadline.total_seconds() * 1000)
        else:
            at = int(deadline.timestamp() * 1000)
        sid = schedule_id or uuid.uuid4().hex
        stored = yield Call("schedule", (self.serializer.encode(payload), at, sid), {
            "metadata": outgoing_metadata(metadata), "if_absent": if_absent})
        return sid if stored else None

    def load_steps(self, cls: type[T], aggregate_id: str,
                   runner: _aggregates.Runner) -> Steps[AggregateRoot[T]]:
        return _aggregates.load_steps(self.serializer, runner, cls, aggregate_id)

    def store_value_steps(self, key: str, value: Any) -> Steps[None]:
        yield Call("store_value", (key, self.serializer.encode(value).data))

    def get_value_steps(self, key: str, cls: type[T] | None) -> Steps[Any]:
        data = yield Call("get_value", (key,))
        if data is None:
            return None
        if cls is bytes:
            return data
        if cls is None:
            return self.serializer.loads(data)
        return self.serializer.decoder(cls)(data)

    def now(self) -> datetime:
        """The app's clock (the fixture's fake one in tests)."""
        return datetime.fromtimestamp(self._backend().now_ms() / 1000, UTC)


class Microclient(AppCore):
    """An app on the blocking client: consumers of decorated handlers (each tracker a
    thread), and the ways to send, query, publish, schedule, load aggregates and keep values.
    `app.handle_command` & co. add to the app's own consumer (named like the app);
    `app.consumer(name, ...)` makes another one. The asyncio twin is AsyncMicroclient."""

    def __init__(self, name: str, url: str | None = None, token: str = "dev", *,
                 project: str = "public", metrics: bool = True, trackers: int = 1,
                 max_batch: int = 1024, from_index: int | None = None) -> None:
        super().__init__(name, url, token, project=project, metrics=metrics,
                         trackers=trackers, max_batch=max_batch, from_index=from_index)
        self.client: Client | None = None
        self._consumers: list[Any] = []
        self._stopped = threading.Event()
        self._loops: list[asyncio.AbstractEventLoop] = []
        self._local = threading.local()
        self._loops_lock = threading.Lock()
        self._own_client = False
        self._flusher: threading.Thread | None = None
        self._flusher_stop = threading.Event()

    def _run(self, steps: Steps[T]) -> T:
        return run_sync(steps, self._backend(), self.run_coroutine)

    # -- running ---------------------------------------------------------------------------

    def start(self, client: Client | None = None) -> Microclient:
        """Connects (unless given a client), starts every consumer's trackers and creates
        the periodic schedules that do not exist yet. Returns at once."""
        if self.client is not None:
            raise RuntimeError(f"the app {self.name!r} is running already")
        if client is None:
            if self.url is None:
                raise ValueError("give the Microclient a url (host:port) or start(client)")
            client = Client.connect(self.url, token=self.token, name=self.name,
                                    project=self.project)
            self._own_client = True
        else:
            self._own_client = False
        self.client = client
        self.backend = LiveBackend(client, self.serializer)
        self._stopped.clear()
        for group in self.groups:
            for dispatcher in group.dispatchers():
                self._consumers.append(client.consume(
                    group.options.name, dispatcher.message_type, self._batch_handler(dispatcher),
                    batch=True, trackers=group.options.trackers,
                    type_filter=dispatcher.type_filter, topic=dispatcher.topic,
                    max_size=group.options.max_batch, from_index=group.options.from_index))
        self.create_periodic_schedules()
        self._flusher_stop.clear()
        self._flusher = threading.Thread(target=self._flush_metrics, daemon=True,
                                         name=f"fluxcore-app-metrics:{self.name}")
        self._flusher.start()
        return self

    def run(self) -> None:
        """start(), then block until stop() (from a handler or another thread), SIGINT or
        SIGTERM; then stop."""
        terminated = threading.Event()  # start() clears _stopped: a SIGTERM during it stays

        def on_sigterm(*_: object) -> None:
            terminated.set()
            self._stopped.set()

        previous = None
        if threading.current_thread() is threading.main_thread():
            # Before start(): a SIGTERM sent once the handlers answer must stop the app, not
            # kill the process.
            previous = signal.signal(signal.SIGTERM, on_sigterm)
        try:
            self.start()
        except BaseException:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            raise
        try:
            while not terminated.is_set() and not self._stopped.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            self.stop()

    def stop(self) -> None:
        """Stops the consumers (each stores its position and leaves), then the client if the
        app opened it."""
        self._stopped.set()
        for consumer in self._consumers:
            consumer.stop()
        self._consumers.clear()
        self._flusher_stop.set()
        if self._flusher is not None:
            self._flusher.join()
            self._flusher = None
        if self.client is not None and not self.client.closed:
            try:
                LiveBackend(self.client, self.serializer).send_metrics(self._outbox.take())
            except (OSError, ConnectionError) as exc:
                logger.error("sending the last handler metrics failed: %s", exc)
        with self._loops_lock:
            loops, self._loops = self._loops, []
        for loop in loops:  # the tracker threads that ran coroutines on them have ended
            loop.close()
        if self.client is not None and self._own_client:
            self.client.close()
        self.client = None
        self.failures.flush()

    def __enter__(self) -> Microclient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _batch_handler(self, dispatcher: Dispatcher) -> Callable[[list[Any]], None]:
        def handle(messages: list[Any]) -> None:
            self._run(self.batch_steps(dispatcher, messages, current_batch()))

        return handle

    def _flush_metrics(self) -> None:
        """The app's metrics sender: what waited a second goes out even when no batch
        comes to send it."""
        while not self._flusher_stop.wait(0.25):
            backend = self.backend
            if backend is not None and self._outbox.due():
                try:
                    backend.send_metrics(self._outbox.take())
                except (OSError, ConnectionError) as exc:
                    logger.error("sending handler metrics failed: %s", exc)

    def run_coroutine(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Runs a coroutine handler on this thread's event loop of the app."""
        loop: asyncio.AbstractEventLoop | None = getattr(self._local, "loop", None)
        if loop is None or loop.is_closed():
            loop = asyncio.new_event_loop()
            self._local.loop = loop
            with self._loops_lock:
                self._loops.append(loop)
        return loop.run_until_complete(coroutine)

    def create_periodic_schedules(self) -> None:
        self._run(self.create_periodic_steps())

    # -- sending ---------------------------------------------------------------------------

    def send(self, command: Any, *, metadata: Metadata | None = None, timeout: float = 30.0,
             result_type: type[T] | None = None) -> Any:
        """Sends a command and waits for its handler's result (decoded into `result_type`, or
        the class of its payload type); the handler's exception comes back raised, as its
        FunctionalError subclass or as HandlerError."""
        return self._run(self.request_steps(MessageType.COMMAND, command, metadata, timeout,
                                            result_type))

    def query(self, query: Any, *, metadata: Metadata | None = None, timeout: float = 30.0,
              result_type: type[T] | None = None) -> Any:
        """Sends a query and returns its handler's result, like send()."""
        return self._run(self.request_steps(MessageType.QUERY, query, metadata, timeout,
                                            result_type))

    def send_and_forget(self, *commands: Any, metadata: Metadata | None = None) -> None:
        """Sends commands without waiting for their results (they are stored)."""
        self._run(self.publish_steps(MessageType.COMMAND, commands, metadata, None))

    def publish(self, *events: Any, metadata: Metadata | None = None) -> None:
        """Publishes events (stored once this returns)."""
        self._run(self.publish_steps(MessageType.EVENT, events, metadata, None))

    def publish_to(self, message_type: MessageType, *payloads: Any, topic: str | None = None,
                   metadata: Metadata | None = None) -> None:
        """Publishes to any log (METRICS, DOCUMENT and CUSTOM topics, ...)."""
        self._run(self.publish_steps(message_type, payloads, metadata, topic))

    def schedule(self, payload: Any, deadline: datetime | timedelta, *,
                 schedule_id: str | None = None, if_absent: bool = False,
                 metadata: Metadata | None = None) -> str | None:
        """Has `payload` delivered to the schedule handlers at `deadline` (a datetime or a
        delay). Returns the schedule id, or None if `if_absent` found one pending."""
        return self._run(self.schedule_steps(payload, deadline, schedule_id, if_absent,
                                             metadata))

    def cancel_schedule(self, schedule_id: str) -> bool:
        return bool(self._backend().cancel_schedule(schedule_id))

    # -- state -----------------------------------------------------------------------------

    def load(self, cls: type[T], aggregate_id: str) -> AggregateRoot[T]:
        """The aggregate from its newest snapshot plus the events after it. Inside a handler
        it is committed when the handler returns; elsewhere call `.commit()`."""
        return self._run(self.load_steps(cls, aggregate_id, self._run))

    def store_value(self, key: str, value: Any) -> None:
        """Stores a payload (or bytes) in the project's key-value store."""
        self._run(self.store_value_steps(key, value))

    @typing.overload
    def get_value(self, key: str, cls: type[T]) -> T | None: ...

    @typing.overload
    def get_value(self, key: str, cls: None = None) -> Any: ...

    def get_value(self, key: str, cls: type[T] | None = None) -> Any:
        """The value under `key` decoded into `cls` (JSON values without it), or None."""
        return self._run(self.get_value_steps(key, cls))

    def delete_value(self, key: str) -> bool:
        return bool(self._backend().delete_value(key))
