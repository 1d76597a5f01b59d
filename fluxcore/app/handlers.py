"""Handler decorators, and what a decorated function says about itself: which message type it
handles (the decorator), which payload types (its payload parameter's annotation; a Union
handles several), whether it wants the raw message or the metadata too, and whether it is a
coroutine function."""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import unquote

from fluxcore.protocol import MessageType, check_name

from .context import Incoming, LocalMessage
from .serialization import BYTES_TYPE, is_payload_class, type_name

__all__ = [
    "ConsumerOptions",
    "Handler",
    "HandlerKind",
    "Periodic",
    "consumer",
    "handle_command",
    "handle_custom",
    "handle_document",
    "handle_error",
    "handle_event",
    "handle_metrics",
    "handle_notification",
    "handle_query",
    "handle_result",
    "handle_schedule",
    "handle_web",
    "periodic",
]

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=type)


@dataclasses.dataclass(frozen=True)
class HandlerKind:
    """What a decorator says: the message type, its topic (DOCUMENT, CUSTOM), a web route."""

    message_type: MessageType
    topic: str | None = None
    web_method: str | None = None
    web_path: str | None = None


@dataclasses.dataclass(frozen=True)
class Periodic:
    """When a periodic schedule handler runs: every `every`, or at each time of `cron`."""

    every: timedelta | None
    cron: str | None
    schedule_id: str | None
    initial_delay: timedelta | None


@dataclasses.dataclass(frozen=True)
class ConsumerOptions:
    """How a group of handlers is consumed: one consumer per message type it handles, all
    with this name. `from_index` applies to a consumer with no stored position (default:
    now); `type_filter` overrides the filter made of the handlers' payload types."""

    name: str
    trackers: int = 1
    max_batch: int = 1024
    type_filter: str | None = None
    from_index: int | None = None
    metrics: bool = True

    def __post_init__(self) -> None:
        if self.trackers < 1:
            raise ValueError("trackers must be at least 1")
        if not 0 < self.max_batch <= 100_000:
            raise ValueError("max_batch must be 1 to 100,000")


def _marker(kind: HandlerKind) -> Callable[[F], F]:
    def mark(fn: F) -> F:
        target = fn.__func__ if isinstance(fn, (staticmethod, classmethod)) else fn
        kinds = getattr(target, "__fluxcore_handler__", ())
        setattr(target, "__fluxcore_handler__", (*kinds, kind))  # noqa: B010
        return fn

    return mark


handle_command = _marker(HandlerKind(MessageType.COMMAND))
handle_query = _marker(HandlerKind(MessageType.QUERY))
handle_event = _marker(HandlerKind(MessageType.EVENT))
handle_notification = _marker(HandlerKind(MessageType.NOTIFICATION))
handle_schedule = _marker(HandlerKind(MessageType.SCHEDULE))
handle_error = _marker(HandlerKind(MessageType.ERROR))
handle_result = _marker(HandlerKind(MessageType.RESULT))
handle_metrics = _marker(HandlerKind(MessageType.METRICS))


def handle_document(collection: str) -> Callable[[F], F]:
    """Handles the DOCUMENT messages of a collection."""
    check_name("collection", collection)
    return _marker(HandlerKind(MessageType.DOCUMENT, topic=collection))


def handle_custom(topic: str) -> Callable[[F], F]:
    """Handles the messages of a custom topic (requests: a return value answers them)."""
    check_name("topic", topic)
    return _marker(HandlerKind(MessageType.CUSTOM, topic=topic))


# The methods the service recognizes as HTTP (docs/protocol.md, "HTTP").
WEB_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")


def handle_web(method: str, path: str) -> Callable[[F], F]:
    """Handles the web requests (WEBREQUEST) of `method` on `path`; `{name}` in the path is a
    path parameter, passed to the parameter of that name (converted to its annotation)."""
    if not path.startswith("/"):
        raise ValueError(f"a web path starts with '/', not {path!r}")
    if method.upper() not in WEB_METHODS:
        raise ValueError(f"the service takes web requests of {', '.join(WEB_METHODS)}, not "
                         f"{method!r}")
    return _marker(HandlerKind(MessageType.WEBREQUEST, web_method=method.upper(),
                               web_path=path))


def periodic(every: timedelta | None = None, *, cron: str | None = None,
             schedule_id: str | None = None,
             initial_delay: timedelta | None = None) -> Callable[[F], F]:
    """Runs a schedule handler every `every` or on a cron expression (5 fields, UTC). The
    first schedule is created when the app starts, unless it exists; after each run the next
    is scheduled under the same id (one instance of the consumer runs it, across restarts)."""
    if (every is None) == (cron is None):
        raise ValueError("give exactly one of every= and cron=")
    if every is not None and every.total_seconds() <= 0:
        raise ValueError("every must be positive")
    if cron is not None:
        from .periodic import check_cron

        check_cron(cron)

    def mark(fn: F) -> F:
        target = fn.__func__ if isinstance(fn, (staticmethod, classmethod)) else fn
        setattr(target, "__fluxcore_periodic__",  # noqa: B010
                Periodic(every, cron, schedule_id, initial_delay))
        return fn

    return mark


def consumer(name: str, *, trackers: int = 1, max_batch: int = 1024,
             type_filter: str | None = None, from_index: int | None = None,
             metrics: bool = True) -> Callable[[C], C]:
    """Class decorator: the handler methods of the class form a consumer of this name."""
    options = ConsumerOptions(name, trackers, max_batch, type_filter, from_index, metrics)

    def mark(cls: C) -> C:
        setattr(cls, "__fluxcore_consumer__", options)  # noqa: B010
        return cls

    return mark


def consumer_options(obj: Any) -> ConsumerOptions | None:
    found = getattr(obj, "__fluxcore_consumer__", None)
    return found if isinstance(found, ConsumerOptions) else None


def handler_kinds(fn: Any) -> tuple[HandlerKind, ...]:
    target = getattr(fn, "__func__", fn)
    kinds = getattr(target, "__fluxcore_handler__", ())
    return kinds if isinstance(kinds, tuple) else ()


_MESSAGE_CLASSES: tuple[type, ...] = (LocalMessage,)


def _is_message_annotation(hint: Any) -> bool:
    if hint is Incoming:
        return True
    from fluxcore._ext._proto import Message

    return hint is Message or hint in _MESSAGE_CLASSES


def type_hints(fn: Any, localns: dict[str, Any] | None = None) -> dict[str, Any]:
    """The annotations of `fn`, evaluated; a return annotation that names something not in
    scope (the class being defined, say) is left out rather than failing all of them."""
    try:
        return typing.get_type_hints(fn, localns=localns, include_extras=True)
    except NameError:
        pass
    out: dict[str, Any] = {}
    scope = dict(getattr(fn, "__globals__", {}))
    scope.update(localns or {})
    for name, hint in getattr(fn, "__annotations__", {}).items():
        if isinstance(hint, str):
            try:
                hint = eval(hint, scope)  # what get_type_hints does, one name at a time
            except NameError as exc:
                if name == "return":
                    continue
                raise TypeError(f"{getattr(fn, '__qualname__', fn)}: the annotation of "
                                f"{name!r} names something not in scope ({exc}); define "
                                "payload classes at module level") from exc
        out[name] = hint
    return out


def _strip(hint: Any) -> Any:
    if typing.get_origin(hint) is typing.Annotated:
        return typing.get_args(hint)[0]
    return hint


def _union_members(hint: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return tuple(_strip(a) for a in typing.get_args(hint))
    return (hint,)


class Handler:
    """A decorated function, resolved: what to call, with what, for which payload types."""

    def __init__(self, fn: Callable[..., Any], kind: HandlerKind, consumer_name: str) -> None:
        self.fn = fn
        self.kind = kind
        self.consumer = consumer_name
        self.name = getattr(fn, "__qualname__", getattr(fn, "__name__", repr(fn)))
        target = getattr(fn, "__func__", fn)
        self.periodic: Periodic | None = getattr(target, "__fluxcore_periodic__", None)
        if self.periodic is not None and kind.message_type is not MessageType.SCHEDULE:
            raise TypeError(f"{self.name}: @periodic goes with @handle_schedule")
        self.is_async = inspect.iscoroutinefunction(fn)
        hints = type_hints(fn)
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        self.path_params: dict[str, Any] = {}
        self.route: re.Pattern[str] | None = None
        if kind.web_path is not None:
            names = re.findall(r"\{(\w+)\}", kind.web_path)
            pattern = re.sub(r"\\\{(\w+)\\\}", lambda m: f"(?P<{m.group(1)}>[^/?]+)",
                             re.escape(kind.web_path))
            self.route = re.compile(pattern + r"(?:\?.*)?")
            for name in names:
                if name not in {p.name for p in params}:
                    raise TypeError(f"{self.name}: no parameter for path parameter {name!r}")
                self.path_params[name] = _strip(hints.get(name, str))
        self.message_param: str | None = None
        self.metadata_param: str | None = None
        self.payload_param: str | None = None
        self.payload_classes: tuple[type, ...] = ()
        self.wants_bytes = False
        self.wants_json = False  # a dict or list annotation: the JSON as it is
        self.untyped = True  # takes any payload type (bytes, dict, Any, no annotation)
        for param in params:
            if param.name in self.path_params:
                continue
            hint = _strip(hints.get(param.name, Any))
            if _is_message_annotation(hint):
                self.message_param = param.name
            elif param.name == "metadata" and hint in (dict, Any, dict[str, str]):
                self.metadata_param = param.name
            elif self.payload_param is None:
                self.payload_param = param.name
                members = _union_members(hint)
                classes = tuple(m for m in members if is_payload_class(m))
                if classes and len(classes) == len(members):
                    self.payload_classes = classes
                    self.untyped = False
                elif classes:
                    raise TypeError(f"{self.name}: a payload Union mixes payload classes with "
                                    f"{hint!r}")
                self.wants_bytes = hint is bytes
                self.wants_json = (typing.get_origin(hint) or hint) in (dict, list)
            else:
                raise TypeError(f"{self.name}: parameter {param.name!r} is neither the payload, "
                                "a Message nor metadata")
        # Called as fn(payload): nothing else to pass, nothing to await or reschedule.
        self.positional = (self.message_param is None and self.metadata_param is None
                           and not self.path_params and not self.is_async
                           and self.periodic is None and self.payload_param is not None)
        self.type_names: tuple[str, ...] = tuple(type_name(c) for c in self.payload_classes)
        self.by_type: dict[str, type] = dict(zip(self.type_names, self.payload_classes,
                                                 strict=True))
        if self.periodic is not None and len(self.payload_classes) > 1:
            raise TypeError(f"{self.name}: a periodic handler has one payload class (or none)")

    @property
    def periodic_type(self) -> str:
        """The payload type of this periodic handler's schedules."""
        if self.payload_classes:
            return self.type_names[0]
        return f"periodic:{self.consumer}:{self.name}" if self.untyped else BYTES_TYPE

    def target_class(self, payload_type: str) -> type | None:
        return self.by_type.get(payload_type)

    def matches(self, payload_type: str) -> bool:
        return self.untyped or payload_type in self.by_type

    def arguments(self, payload: Any, message: Incoming,
                  path: dict[str, Any] | None = None) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if self.payload_param is not None:
            args[self.payload_param] = payload
        if self.message_param is not None:
            args[self.message_param] = message
        if self.metadata_param is not None:
            args[self.metadata_param] = message.metadata
        if path:
            args.update(path)
        return args

    def route_match(self, request_type: str) -> dict[str, Any] | None:
        """The path parameters if a web request's "METHOD /path" is this handler's route."""
        if self.route is None:
            return None
        method, _, path = request_type.partition(" ")
        if method != self.kind.web_method:
            return None
        found = self.route.fullmatch(path)
        if found is None:
            return None
        # Raises ValueError (TypeError from a converter, too) when a value does not convert.
        try:
            return {name: convert(unquote(found.group(name)))
                    for name, convert in self.path_params.items()}
        except TypeError as exc:
            raise ValueError(str(exc)) from exc

    def web_filter(self) -> str:
        """The type filter (a regex over "METHOD /path") that brings this route's requests."""
        assert self.kind.web_path is not None and self.kind.web_method is not None
        path = re.sub(r"\\\{\w+\\\}", "[^/?]+", re.escape(self.kind.web_path))
        return f"{re.escape(self.kind.web_method)} {path}(?:\\?.*)?"

    def __repr__(self) -> str:
        return f"<Handler {self.name} of {self.kind.message_type.name}>"
