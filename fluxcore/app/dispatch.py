"""Handling a batch of messages of one consumer and log: decode each payload into the class its
handler asks for, call the handler (coroutine functions too), commit the aggregates it loaded,
and collect the answers of requests and the handler metrics. Written once as steps (steps.py):
the blocking app and the asyncio app only perform the I/O differently."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from fluxcore._ext._app import DISPATCH_DONE, DISPATCH_GENERAL, dispatch_plain
from fluxcore.client import WebResponse
from fluxcore.protocol import MessageType

from .context import Handling, Incoming, enter, leave
from .handlers import ConsumerOptions, Handler
from .metrics import BatchMetrics, HandlerCodes
from .serialization import Encoded
from .steps import Await, Steps

if TYPE_CHECKING:
    from .app import AppCore

__all__ = ["Answer", "Dispatcher", "web_response"]

# A request's outcome: (request, encoded result | WebResponse | None, the exception or None)
Answer = tuple[Incoming, Encoded | WebResponse | None, BaseException | None]
# A handler called as function(decode(data)): (metrics code, function, decode, handler)
PlainCall = tuple[int, Callable[[Any], Any], Callable[[bytes], Any], Handler]
_json = msgspec.json.Encoder()


class Dispatcher:
    """The handlers of one consumer for one message type (and topic)."""

    def __init__(self, app: AppCore, options: ConsumerOptions, message_type: MessageType,
                 topic: str | None, handlers: Sequence[Handler]) -> None:
        self.app = app
        self.options = options
        self.message_type = message_type
        self.topic = topic
        self.handlers = list(handlers)
        self.requests = message_type.is_request
        self.web = [h for h in handlers if h.route is not None]
        self.untyped = [h for h in handlers if h.untyped and h.route is None]
        self.by_type: dict[str, list[Handler]] = {}
        for handler in handlers:
            for name in handler.type_names:
                self.by_type.setdefault(name, []).append(handler)
        # type name -> ((metrics code, function, decode, handler), ...) if every handler of
        # the type takes just the payload, is not a coroutine function and not periodic
        self.codes = HandlerCodes()
        self._plain: dict[str, tuple[PlainCall, ...]] = {
            name: tuple((self.codes.code(h.name, name), h.fn,
                         app.serializer.decoder(h.by_type[name]), h) for h in found)
            for name, found in self.by_type.items()
            if all(h.positional and not h.untyped for h in found)}
        # type name -> [(handler, decode)] for the usual case: no upcaster applies
        self._fast: dict[str, list[tuple[Handler, Callable[[bytes], Any]]]] = {
            name: [(h, app.serializer.decoder(h.by_type[name])) for h in found]
            for name, found in self.by_type.items()}

    @property
    def type_filter(self) -> str | None:
        """The payload types this consumer reads (None: all of them)."""
        import re

        if self.options.type_filter is not None:
            return self.options.type_filter
        if self.untyped:
            return None
        parts = [re.escape(name) for name in self.by_type]
        parts += [h.web_filter() for h in self.web]
        return "|".join(parts) if parts else None

    def handle_batch(self, messages: Sequence[Incoming], metrics: BatchMetrics | None
                     ) -> Steps[list[Answer]]:
        answers: list[Answer] = []
        if self.web or self.requests:
            for message in messages:
                yield from self._handle(message, answers, metrics)
            return answers
        # The usual case runs compiled (dispatch_plain): a typed handler of events (or
        # schedules, ...) with only the payload for a parameter and no upcaster for its type.
        # It stops at what needs Python: the general path, or aggregates to commit.
        batch = messages if type(messages) is list else list(messages)
        if not batch:
            return answers
        plain = self._plain
        upcast_types = self.app.serializer.upcasters.types
        timings = metrics.timings if metrics is not None else None
        failed = self.app.handler_failed
        # One Handling for the batch, pointed at each message in turn: what handlers send
        # carries that message's correlation.
        handling = Handling(batch[0])
        position = entry = 0
        token = enter(handling)
        try:
            while True:
                position, entry, stop = dispatch_plain(batch, position, entry, plain,
                                                       upcast_types, handling, timings, failed)
                if stop == DISPATCH_DONE:
                    break
                message = batch[position]
                if stop == DISPATCH_GENERAL:
                    leave(token)
                    yield from self._handle(message, answers, metrics)
                    token = enter(handling)
                    position += 1
                    continue
                yield from self._commit(plain[message.type][entry], handling, message,
                                        metrics)
                entry += 1
        finally:
            leave(token)
        return answers

    def _commit(self, call: PlainCall, handling: Handling, message: Incoming,
                metrics: BatchMetrics | None) -> Steps[None]:
        """Commits the aggregates a plain handler loaded; then its call is measured."""
        code, _fn, _decode, handler = call
        failure: Exception | None = None
        try:
            for root in handling.aggregates or ():
                yield from root.commit_steps()
        except Exception as exc:  # noqa: BLE001 - logged (and counted) by the app
            failure = exc
        if metrics is not None:
            metrics.timings.add(code, message.index, failure is not None)
        if failure is not None:
            self.app.handler_failed(handler, message, failure)

    def _handle(self, message: Incoming, answers: list[Answer],
                metrics: BatchMetrics | None) -> Steps[None]:
        if self.web:
            for handler in self.web:
                try:
                    path = handler.route_match(message.type)
                except ValueError as exc:  # a path parameter that does not convert
                    self._failed(handler, message, message.type, exc, answers, metrics)
                    return
                if path is not None:
                    yield from self._web(handler, message, path, answers, metrics)
                    return
        serializer = self.app.serializer
        fast = self._fast.get(message.type)
        if fast is not None and not serializer.upcasters.applies(message.type, message.revision):
            for handler, decode in fast:
                try:
                    payload = decode(message.data)
                except (msgspec.DecodeError, ValueError) as exc:
                    self._failed(handler, message, message.type, exc, answers, metrics)
                else:
                    yield from self._call(handler, payload, message, message.type, answers,
                                          metrics)
                if self.requests:
                    return
            return
        if fast is None and not serializer.upcasters.applies(message.type, message.revision):
            yield from self._untyped(message, answers, metrics)
            return
        try:
            found = serializer.read(message.data, message.type, message.revision,
                                    self._target_for)
        except (msgspec.DecodeError, ValueError) as exc:
            handlers = self.by_type.get(message.type) or self.untyped
            if handlers:
                self._failed(handlers[0], message, message.type, exc, answers, metrics)
            return
        if found is None:  # dropped by an upcaster
            return
        name, payload = found
        for handler in self.by_type.get(name) or self.untyped:
            arg = message.data if handler.wants_bytes else payload
            yield from self._call(handler, arg, message, name, answers, metrics)
            if self.requests:
                return

    def _untyped(self, message: Incoming, answers: list[Answer],
                 metrics: BatchMetrics | None) -> Steps[None]:
        """A payload type no typed handler asked for: to the handlers of any type, decoded
        (JSON) only for those that do not take the bytes."""
        serializer = self.app.serializer
        for handler in self.untyped:
            payload: Any = message.data
            if not handler.wants_bytes and handler.payload_param is not None:
                try:
                    payload = serializer.loads(message.data) if handler.wants_json else \
                        serializer.decode(message.data, message.type, message.revision)
                except (msgspec.DecodeError, ValueError) as exc:
                    self._failed(handler, message, message.type, exc, answers, metrics)
                    continue
            yield from self._call(handler, payload, message, message.type, answers, metrics)
            if self.requests:
                return

    def _target_for(self, name: str) -> type | None:
        handlers = self.by_type.get(name)
        return handlers[0].by_type[name] if handlers else None

    def _call(self, handler: Handler, payload: Any, message: Incoming, payload_type: str,
              answers: list[Answer], metrics: BatchMetrics | None,
              path: dict[str, Any] | None = None) -> Steps[Any]:
        handling = Handling(message)
        token = enter(handling)
        failed: BaseException | None = None
        value: Any = None
        result: Any = None
        try:
            value = handler.fn(**handler.arguments(payload, message, path))
            if handler.is_async:
                value = yield Await(value)
            if self.requests and message.request_id >= 0:
                # A result that cannot be sent fails the handler: nothing is committed.
                result = self.app.encode_result(value, web=handler.route is not None)
            for root in handling.aggregates or ():
                yield from root.commit_steps()
        except Exception as exc:  # noqa: BLE001 - the requester's error, or logged
            failed = exc
        try:
            if handler.periodic is not None:
                yield from self.app.schedule_next_steps(handler, message)
        finally:
            leave(token)
        if metrics is not None:
            metrics.add(handler.name, payload_type, message.index, failed is not None)
        if failed is not None:
            self._report(handler, message, failed, answers)
        elif self.requests and message.request_id >= 0:
            answers.append((message, result, None))
        return value

    def _web(self, handler: Handler, message: Incoming, path: dict[str, Any],
             answers: list[Answer], metrics: BatchMetrics | None) -> Steps[None]:
        payload: Any = message.data  # the body: bytes unless the handler asks for more
        if handler.payload_param is not None and (handler.payload_classes
                                                  or handler.wants_json):
            try:
                payload = self.app.serializer.loads(message.data) if handler.wants_json else \
                    self.app.serializer.decoder(handler.payload_classes[0])(message.data)
            except (msgspec.DecodeError, ValueError) as exc:
                self._failed(handler, message, message.type, exc, answers, metrics)
                return
        yield from self._call(handler, payload, message, message.type, answers, metrics, path)

    def _failed(self, handler: Handler, message: Incoming, payload_type: str,
                exc: BaseException, answers: list[Answer],
                metrics: BatchMetrics | None) -> None:
        if metrics is not None:
            metrics.add(handler.name, payload_type, message.index, True)
        self._report(handler, message, exc, answers)

    def _report(self, handler: Handler, message: Incoming, exc: BaseException,
                answers: list[Answer]) -> None:
        if self.requests and message.request_id >= 0:
            answers.append((message, None, exc))
        self.app.handler_failed(handler, message, exc)


def web_response(value: Any) -> WebResponse:
    """What a web handler returned, as the HTTP response (objects as JSON)."""
    if isinstance(value, WebResponse):
        return value
    if value is None:
        return WebResponse(b"", 204)
    if isinstance(value, (bytes, str)):
        return WebResponse(value)
    return WebResponse(_json.encode(value), 200, {"Content-Type": "application/json"})

