"""The TestFixture: given some history, when a command (query, event, time passing), expect
these events, commands, schedules, this result or error.

In memory (`TestFixture(app)`) everything happens synchronously in the test's thread, on a
fake clock: what handlers publish is handled before `when_...` returns, and schedules fire when
`when_time_elapses` moves the clock past them. Against a real server
(`TestFixture.live(url, app)`) the app runs as in production and the expectations wait (up to
`timeout`) for what the app's handlers send."""

from __future__ import annotations

import asyncio
import http.client
import inspect
import json
import threading
import time
import typing
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import msgspec

from fluxcore.client import Client, Guarantee, MessageType, WebResponse

from . import aggregates as _aggregates
from .aio import AsyncMicroclient
from .app import AppCore, Backend, LiveBackend, Microclient
from .context import Incoming, LocalMessage, Metadata, current_message
from .dispatch import Answer, Dispatcher
from .serialization import Encoded, Serializer, is_payload_class
from .steps import Steps, run_async, run_sync

__all__ = ["TestFixture"]

T = TypeVar("T")

MAX_CASCADE = 100_000  # messages handled per step before the fixture calls it a loop


@dataclass
class _Sent:
    """What the app sent while the fixture watched."""

    events: list[Any] = field(default_factory=list)
    commands: list[Any] = field(default_factory=list)
    schedules: list[Any] = field(default_factory=list)


# True while the fixture itself sends the message of a when_... step
_test_step: ContextVar[bool] = ContextVar("fluxcore_fixture_step", default=False)


class _Recorder:
    """Keeps what an app sends, decoded, while `watching`."""

    def __init__(self, serializer: Serializer) -> None:
        self.serializer = serializer
        self.sent = _Sent()
        self.watching = False
        self.lock = threading.Lock()

    def record(self, kind: str, payloads: Sequence[Encoded]) -> None:
        if not self.watching or (_test_step.get() and current_message() is None):
            return  # the test's own command, query or event is not among what it expects
        values = [self.serializer.decode(p.data, p.type, p.revision) for p in payloads]
        with self.lock:
            getattr(self.sent, kind).extend(values)


class MemoryBackend:
    """The service in memory, on a fake clock: logs, event streams, values and schedules, with
    each message handled by the app's handlers as it is sent."""

    def __init__(self, app: AppCore, recorder: _Recorder, now_ms: int) -> None:
        self.app = app
        self.serializer = app.serializer
        self.recorder = recorder
        self.clock_ms = now_ms
        self.streams: dict[str, list[LocalMessage]] = {}
        self.values: dict[str, bytes] = {}
        self.schedules: dict[str, tuple[int, Encoded, Metadata | None]] = {}
        self.fired: set[str] = set()  # ids of schedules that fired: kept, as the server does
        self.queue: deque[tuple[MessageType, str | None, LocalMessage]] = deque()
        self.index = 0
        self.dispatchers: dict[tuple[MessageType, str | None], list[Dispatcher]] = {}
        for group in app.groups:
            for dispatcher in group.dispatchers():
                key = (dispatcher.message_type, dispatcher.topic)
                self.dispatchers.setdefault(key, []).append(dispatcher)
        self._delivering = False

    def now_ms(self) -> int:
        return self.clock_ms

    def _message(self, payload: Encoded, metadata: Metadata | None,
                 request_id: int = -1) -> LocalMessage:
        self.index += 1
        return LocalMessage(payload.type, payload.data, payload.revision, dict(metadata or {}),
                            index=(self.clock_ms << 16) + self.index, request_id=request_id,
                            source=self.app.name, timestamp=self.clock_ms)

    # The methods that call handlers are steps (steps.py): the blocking and the asyncio app
    # perform them as they perform their own.

    def _deliver(self, message_type: MessageType, topic: str | None,
                 message: LocalMessage) -> Steps[list[Answer]]:
        answers: list[Answer] = []
        for dispatcher in self.dispatchers.get((message_type, topic), ()):
            answers += yield from dispatcher.handle_batch([message], None)
        if message_type is MessageType.EVENT:
            for dispatcher in self.dispatchers.get((MessageType.NOTIFICATION, None), ()):
                yield from dispatcher.handle_batch([message], None)
        return answers

    def drain(self) -> Steps[None]:
        """Handles what was sent, and what that sent, until nothing is left."""
        if self._delivering:
            return  # the outer drain picks up what this handler sent
        self._delivering = True
        try:
            for _ in range(MAX_CASCADE):
                if not self.queue:
                    return
                message_type, topic, message = self.queue.popleft()
                yield from self._deliver(message_type, topic, message)
            raise RuntimeError(f"more than {MAX_CASCADE} messages from one step: a loop?")
        finally:
            self._delivering = False

    def publish(self, message_type: MessageType, payloads: Sequence[Encoded], *,
                keys: Sequence[str | None], topic: str | None,
                metadata: Metadata | None, guarantee: Guarantee) -> Steps[None]:
        if message_type is MessageType.EVENT:
            self.recorder.record("events", payloads)
        elif message_type is MessageType.COMMAND:
            self.recorder.record("commands", payloads)
        for payload in payloads:
            self.queue.append((message_type, topic, self._message(payload, metadata)))
        yield from self.drain()

    def request(self, message_type: MessageType, payload: Encoded, *, key: str | None,
                topic: str | None, metadata: Metadata | None, timeout: float
                ) -> Steps[Incoming]:
        if message_type is MessageType.COMMAND:
            self.recorder.record("commands", [payload])
        message = self._message(payload, metadata, request_id=self.index + 1)
        answers = yield from self._deliver(message_type, topic, message)
        yield from self.drain()
        if not answers:
            raise TimeoutError(f"no handler of {message_type.name} {payload.type!r}")
        _request, value, exc = answers[0]
        if exc is not None:
            text = f"{type(exc).__name__}: {exc}".encode()
            return LocalMessage(type(exc).__name__, text, is_error=True)
        assert isinstance(value, Encoded)
        return LocalMessage(value.type, value.data, value.revision)

    def web_request(self, method: str, url: str, body: bytes,
                    headers: Mapping[str, str]) -> Steps[WebResponse]:
        """What the service would answer an HTTP request with, from the app's handlers."""
        path = url.split("?", 1)[0]
        self.index += 1
        message = LocalMessage(
            f"{method} {path}", body, metadata={"url": url, "method": method,
                                                "headers": json.dumps(dict(headers))},
            index=(self.clock_ms << 16) + self.index, request_id=self.index,
            source="fixture-web", timestamp=self.clock_ms)
        self._delivering = True  # what the handler sends is handled after it answered
        try:
            answers = yield from self._deliver(MessageType.WEBREQUEST, None, message)
        finally:
            self._delivering = False
        yield from self.drain()
        if not answers:
            raise TimeoutError(f"no web handler of {method} {path}")
        _request, value, exc = answers[0]
        if exc is not None:  # as the service answers a failed handler
            return WebResponse(f"{type(exc).__name__}: {exc}".encode(), 500,
                               {"Content-Type": "text/plain"})
        assert isinstance(value, WebResponse)
        return value

    def schedule(self, payload: Encoded, deadline_ms: int, schedule_id: str, *,
                 metadata: Metadata | None, if_absent: bool) -> bool:
        if if_absent and schedule_id in self.schedules:
            return False
        self.recorder.record("schedules", [payload])
        self.schedules[schedule_id] = (deadline_ms, payload, metadata)
        self.fired.discard(schedule_id)
        return True

    def cancel_schedule(self, schedule_id: str) -> bool:
        """True if it was pending; a fired one goes too."""
        found = self.schedules.pop(schedule_id, None) is not None
        was_fired = schedule_id in self.fired
        self.fired.discard(schedule_id)
        return found and not was_fired

    def fired_deadline(self, schedule_id: str) -> int | None:
        if schedule_id not in self.fired:
            return None
        return self.schedules[schedule_id][0]

    def advance(self, delta_ms: int) -> Steps[None]:
        """Moves the clock, firing each schedule that comes due, in deadline order."""
        until = self.clock_ms + delta_ms
        for _ in range(MAX_CASCADE):
            due = [(d, sid) for sid, (d, _p, _m) in self.schedules.items()
                   if d <= until and sid not in self.fired]
            if not due:
                break
            deadline, sid = min(due)
            _d, payload, metadata = self.schedules[sid]
            self.fired.add(sid)
            self.clock_ms = max(self.clock_ms, deadline)
            yield from self._deliver(MessageType.SCHEDULE, None,
                                     self._message(payload, metadata))
            yield from self.drain()
        self.clock_ms = until

    def get_events(self, aggregate_id: str, after: int) -> Sequence[Incoming]:
        return self.streams.get(aggregate_id, [])[after + 1:]

    def append_events(self, aggregate_id: str, events: Sequence[Encoded],
                      expected_sequence: int | None, metadata: Metadata | None
                      ) -> Steps[int]:
        stream = self.streams.setdefault(aggregate_id, [])
        if expected_sequence is not None and expected_sequence != len(stream) - 1:
            raise _aggregates.ConcurrencyError(
                f"aggregate {aggregate_id!r} is at sequence {len(stream) - 1}, the writer "
                f"expected {expected_sequence}")
        for event in events:
            message = self._message(event, metadata)
            message.index = len(stream)
            stream.append(message)
        yield from self.publish(MessageType.EVENT, events, keys=[aggregate_id] * len(events),
                                topic=None, metadata=metadata, guarantee=Guarantee.STORED)
        return len(stream) - 1

    def get_value(self, key: str) -> bytes | None:
        return self.values.get(key)

    def store_value(self, key: str, value: bytes) -> None:
        self.values[key] = value

    def delete_value(self, key: str) -> bool:
        return self.values.pop(key, None) is not None


class RecordingBackend(LiveBackend):
    """The live backend that also tells the recorder what the app sends."""

    def __init__(self, client: Client, serializer: Serializer, recorder: _Recorder) -> None:
        super().__init__(client, serializer)
        self.recorder = recorder

    def publish(self, message_type: MessageType, payloads: Sequence[Encoded], *,
                keys: Sequence[str | None], topic: str | None,
                metadata: Metadata | None, guarantee: Guarantee) -> None:
        if message_type is MessageType.EVENT:
            self.recorder.record("events", payloads)
        elif message_type is MessageType.COMMAND:
            self.recorder.record("commands", payloads)
        super().publish(message_type, payloads, keys=keys, topic=topic, metadata=metadata,
                        guarantee=guarantee)

    def request(self, message_type: MessageType, payload: Encoded, *, key: str | None,
                topic: str | None, metadata: Metadata | None, timeout: float) -> Incoming:
        if message_type is MessageType.COMMAND:
            self.recorder.record("commands", [payload])
        return super().request(message_type, payload, key=key, topic=topic,
                               metadata=metadata, timeout=timeout)

    def schedule(self, payload: Encoded, deadline_ms: int, schedule_id: str, *,
                 metadata: Metadata | None, if_absent: bool) -> bool:
        stored = super().schedule(payload, deadline_ms, schedule_id, metadata=metadata,
                                  if_absent=if_absent)
        if stored:
            self.recorder.record("schedules", [payload])
        return stored

    def append_events(self, aggregate_id: str, events: Sequence[Encoded],
                      expected_sequence: int | None, metadata: Metadata | None) -> int:
        last = super().append_events(aggregate_id, events, expected_sequence, metadata)
        self.recorder.record("events", events)
        return last


def _matches(expected: Any, actual: Any) -> bool:
    if isinstance(expected, type):
        return isinstance(actual, expected)
    if callable(expected) and not hasattr(expected, "__struct_fields__"):
        return bool(expected(actual))
    return bool(expected == actual)


class TestFixture:
    """Given / when / expect over an app's handlers: in memory (a fake clock, no server), or
    against a real server with `TestFixture.live(url, app)`."""

    __test__ = False  # not a pytest test class

    def __init__(self, *handlers: Any, now: float | None = None) -> None:
        """`handlers`: a Microclient, or handlers, consumer classes, upcasters to put in a
        fresh one. `now`: the fake clock's start (epoch seconds; default: the real time)."""
        self.app: Microclient | AsyncMicroclient
        if len(handlers) == 1 and isinstance(handlers[0], (Microclient, AsyncMicroclient)):
            self.app = handlers[0]
        else:
            self.app = Microclient("test-fixture").register(*handlers)
        self.recorder = _Recorder(self.app.serializer)
        self.live_mode = False
        self._client: Client | None = None
        self.timeout = 0.0
        self._url: str | None = None
        self.memory: MemoryBackend | None = MemoryBackend(
            self.app, self.recorder, int((time.time() if now is None else now) * 1000))
        self.app.backend = self.memory
        if self.app.periodic_handlers():
            self._drive(self.app.create_periodic_steps())
        self._reset()

    def _drive(self, steps: Steps[T]) -> T:
        """Performs steps on the fixture's memory as the app performs its own."""
        app = self.app
        if isinstance(app, Microclient):
            return run_sync(steps, app.backend, app.run_coroutine)
        return asyncio.run(run_async(steps, app.backend))

    @staticmethod
    def _perform(outcome: Any) -> Any:
        """What an app call returned: an AsyncMicroclient's coroutine is run to its end."""
        if inspect.iscoroutine(outcome):
            return asyncio.run(outcome)
        return outcome

    @classmethod
    def live(cls, url: str, app: Microclient, *, token: str = "dev",
             project: str = "public", timeout: float = 10.0) -> TestFixture:
        """The same fixture over a real server: the app runs (its consumers start now), and
        expectations wait up to `timeout` for what the app sends. Call close() at the end (or
        use it as a context manager)."""
        if not isinstance(app, Microclient):
            raise TypeError("TestFixture.live runs a Microclient; run an AsyncMicroclient "
                            "against the server with `async with app:`")
        fixture = cls.__new__(cls)
        fixture.app = app
        fixture.recorder = _Recorder(app.serializer)
        fixture.live_mode = True
        fixture.timeout = timeout
        fixture.memory = None
        fixture._url = url
        client = Client.connect(url, token=token, name=app.name, project=project)
        fixture._client = client
        app.start(client)
        app.backend = RecordingBackend(client, app.serializer, fixture.recorder)
        fixture._reset()
        return fixture

    def close(self) -> None:
        if self.live_mode:
            assert isinstance(self.app, Microclient)
            self.app.stop()
            if self._client is not None:
                self._client.close()

    def __enter__(self) -> TestFixture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _reset(self) -> None:
        self.recorder.sent = _Sent()
        self.result: Any = None
        self.error: BaseException | None = None

    # -- given -----------------------------------------------------------------------------

    def given_commands(self, *commands: Any) -> TestFixture:
        """Commands handled before the test (their results are ignored; an error fails the
        test here, since the history it should have made is not there)."""
        for command in commands:
            self._perform(self.app.send(command, timeout=self.timeout or 30.0))
        return self

    def given_events(self, *events: Any) -> TestFixture:
        """Events published (and handled) before the test."""
        self._perform(self.app.publish(*events))
        return self

    def given_time_elapses(self, delta: timedelta) -> TestFixture:
        self._advance(delta)
        return self

    # -- when ------------------------------------------------------------------------------

    def _when(self, action: Callable[[], Any], own_message: bool = True) -> TestFixture:
        self._reset()
        self.recorder.watching = True
        token = _test_step.set(own_message)
        try:
            self.result = action()
        except Exception as exc:  # noqa: BLE001 - what expect_error looks at
            self.error = exc
        finally:
            _test_step.reset(token)
        return self

    def when_command(self, command: Any) -> TestFixture:
        return self._when(lambda: self._perform(
            self.app.send(command, timeout=self.timeout or 30.0)))

    def when_query(self, query: Any) -> TestFixture:
        return self._when(lambda: self._perform(
            self.app.query(query, timeout=self.timeout or 30.0)))

    def when_event(self, event: Any) -> TestFixture:
        return self._when(lambda: self._perform(self.app.publish(event)))

    def when_web_request(self, method: str, path: str, body: Any = b"", *,
                         headers: Mapping[str, str] | None = None) -> TestFixture:
        """An HTTP request to the app's `@handle_web` handlers (path parameters and a query
        string included): in memory as the service would deliver it, live over HTTP to the
        server. `body`: bytes or str as they are, anything else as JSON. The step's result
        is the WebResponse (a failed handler's: status 500, as the service answers)."""
        all_headers = dict(headers or {})
        if isinstance(body, str):
            data = body.encode()
        elif isinstance(body, (bytes, bytearray, memoryview)):
            data = bytes(body)
        else:
            data = msgspec.json.encode(body)
            all_headers.setdefault("Content-Type", "application/json")
        method = method.upper()
        if self.memory is not None:
            memory = self.memory
            return self._when(
                lambda: self._drive(memory.web_request(method, path, data, all_headers)),
                own_message=False)
        return self._when(lambda: self._http(method, path, data, all_headers),
                          own_message=False)

    def _http(self, method: str, path: str, body: bytes,
              headers: Mapping[str, str]) -> WebResponse:
        assert self._url is not None
        host, port = self._url.rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=self.timeout or 30.0)
        try:
            connection.request(method, path, body=body, headers=dict(headers))
            response = connection.getresponse()
            return WebResponse(response.read(), response.status, dict(response.getheaders()))
        finally:
            connection.close()

    def when_time_elapses(self, delta: timedelta) -> TestFixture:
        """Moves the fake clock; the schedules (and periodic jobs) due meanwhile fire."""
        return self._when(lambda: self._advance(delta), own_message=False)

    def when_applying(self, action: Callable[[Any], Any]) -> TestFixture:
        """Runs `action(app)` as the step under test (load aggregates, send several...); a
        coroutine function for an AsyncMicroclient."""
        return self._when(lambda: self._perform(action(self.app)), own_message=False)

    def _advance(self, delta: timedelta) -> None:
        if self.memory is None:
            time.sleep(delta.total_seconds())
            return
        self._drive(self.memory.advance(int(delta.total_seconds() * 1000)))

    # -- expect ----------------------------------------------------------------------------

    def _wait_for(self, check: Callable[[], str | None]) -> TestFixture:
        deadline = time.monotonic() + self.timeout
        while True:
            problem = check()
            if problem is None:
                return self
            if time.monotonic() >= deadline:
                raise AssertionError(problem)
            time.sleep(0.02)

    def _contains(self, kind: str, expected: Sequence[Any]) -> TestFixture:
        def check() -> str | None:
            with self.recorder.lock:
                actual = list(getattr(self.recorder.sent, kind))
            missing = [e for e in expected if not any(_matches(e, a) for a in actual)]
            if missing:
                return f"expected {kind} {missing!r} among {actual!r}"
            return None

        return self._wait_for(check)

    def expect_events(self, *events: Any) -> TestFixture:
        """Each of these was published (an instance equal to it, or of that class)."""
        return self._contains("events", events)

    def expect_commands(self, *commands: Any) -> TestFixture:
        return self._contains("commands", commands)

    def expect_schedules(self, *schedules: Any) -> TestFixture:
        return self._contains("schedules", schedules)

    def expect_no_events(self) -> TestFixture:
        if self.live_mode:
            time.sleep(min(self.timeout, 0.5))
        if self.recorder.sent.events:
            raise AssertionError(f"expected no events, got {self.recorder.sent.events!r}")
        return self

    def expect_no_commands(self) -> TestFixture:
        if self.live_mode:  # what the handlers send comes after the step returned
            time.sleep(min(self.timeout, 0.5))
        if self.recorder.sent.commands:
            raise AssertionError(f"expected no commands, got {self.recorder.sent.commands!r}")
        return self

    def expect_result(self, expected: Any) -> TestFixture:
        """The step's result equals `expected` (or is an instance of it, if a class)."""
        if self.error is not None:
            raise AssertionError(f"expected result {expected!r}, the handler raised "
                                 f"{self.error!r}") from self.error
        if not _matches(expected, self.result):
            raise AssertionError(f"expected result {expected!r}, got {self.result!r}")
        return self

    def expect_web_response(self, body: Any = None, *, status: int = 200,
                            headers: Mapping[str, str] | None = None) -> TestFixture:
        """The web request was answered with `status`, these headers (among others; names
        in any case) and `body`: bytes or str compared as they are, a predicate called with
        the body, anything else (dicts, payload objects) compared as JSON; None: any body."""
        if self.error is not None:
            raise AssertionError(f"expected a web response, the step raised {self.error!r}"
                                 ) from self.error
        response = self.result
        if not isinstance(response, WebResponse):
            raise AssertionError(f"expected a web response, got {response!r}")
        actual = response.body.encode() if isinstance(response.body, str) else response.body
        if response.status != status:
            raise AssertionError(f"expected status {status}, got {response.status}: "
                                 f"{actual[:200]!r}")
        given = {k.lower(): v for k, v in (response.headers or {}).items()}
        for name, value in (headers or {}).items():
            if given.get(name.lower()) != value:
                raise AssertionError(f"expected header {name}: {value!r}, got {given!r}")
        if body is None:
            return self
        if isinstance(body, (bytes, str)):
            ok = actual == (body.encode() if isinstance(body, str) else body)
        elif callable(body) and not is_payload_class(type(body)):
            ok = bool(body(actual))
        else:
            try:
                ok = msgspec.json.decode(actual) == msgspec.to_builtins(body)
            except msgspec.DecodeError:
                ok = False
        if not ok:
            raise AssertionError(f"expected body {body!r}, got {actual[:500]!r}")
        return self

    def expect_error(self, expected: type[BaseException] = Exception) -> TestFixture:
        """The step failed with this exception class (as the requester sees it)."""
        if self.error is None:
            raise AssertionError(f"expected {expected.__name__}, got result {self.result!r}")
        if not isinstance(self.error, expected):
            raise AssertionError(f"expected {expected.__name__}, got {self.error!r}"
                                 ) from self.error
        return self

    def expect_no_error(self) -> TestFixture:
        if self.error is not None:
            raise AssertionError(f"expected no error, got {self.error!r}") from self.error
        return self

    @property
    def backend(self) -> Backend:
        assert self.app.backend is not None
        return typing.cast(Backend, self.app.backend)
