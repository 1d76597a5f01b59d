"""Event-sourced aggregates: a class whose `@apply` methods say how each event changes it, whose
`@assert_legal` methods say which commands are allowed. `app.load(Order, "order-1")` rebuilds
one from its newest snapshot plus the events after it; applying events records them; commit
appends them to the aggregate's stream only if no one else appended since it was loaded (else
ConcurrencyError, nothing written), and the server publishes them as EVENTs."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

import msgspec

from .context import current_handling, outgoing_metadata
from .handlers import _strip, _union_members, type_hints
from .serialization import DROPPED, Serializer, is_payload_class, type_name
from .steps import Call, Steps

__all__ = [
    "AggregateRoot",
    "ConcurrencyError",
    "aggregate",
    "apply",
    "assert_legal",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
SNAPSHOT_PREFIX = "$snapshot_"  # the key of an aggregate's snapshot (docs/protocol.md)
VALUE_PREFIX = "$aggregate_"  # the key of an aggregate that is not event sourced


class ConcurrencyError(Exception):
    """Another writer committed events to the aggregate after it was loaded here; nothing of
    this commit was stored. Load it again and retry."""


def apply(fn: F) -> F:
    """Marks an aggregate method that applies an event (its annotated parameter): it returns
    the new state, or None after changing `self`. A staticmethod creates the aggregate."""
    target = fn.__func__ if isinstance(fn, (staticmethod, classmethod)) else fn
    setattr(target, "__fluxcore_apply__", True)  # noqa: B010
    return fn


def assert_legal(fn: F) -> F:
    """Marks an aggregate method that checks a command (its annotated parameter) before it is
    applied, raising if it is not allowed; `self` is None while the aggregate is empty."""
    target = fn.__func__ if isinstance(fn, (staticmethod, classmethod)) else fn
    setattr(target, "__fluxcore_assert_legal__", True)  # noqa: B010
    return fn


@dataclasses.dataclass(frozen=True)
class AggregateOptions:
    snapshot_every: int | None = None
    event_sourced: bool = True


def aggregate(*, snapshot_every: int | None = None,
              event_sourced: bool = True) -> Callable[[type[T]], type[T]]:
    """Class options of an aggregate: a snapshot every N events (kept in the key-value
    store), or not event sourced at all (the state is stored as a value on commit)."""
    if snapshot_every is not None and snapshot_every < 1:
        raise ValueError("snapshot_every must be at least 1")

    def mark(cls: type[T]) -> type[T]:
        cls.__fluxcore_aggregate__ = AggregateOptions(  # type: ignore[attr-defined]
            snapshot_every, event_sourced)
        return cls

    return mark


class _Step(typing.NamedTuple):
    fn: Callable[..., Any]
    static: bool  # called without the state


class AggregateModel:
    """What an aggregate class says: its appliers and checks by payload type name."""

    _cache: typing.ClassVar[dict[type, AggregateModel]] = {}

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.type = type_name(cls) if is_payload_class(cls) else cls.__name__
        found = getattr(cls, "__fluxcore_aggregate__", None)
        self.options = found if isinstance(found, AggregateOptions) else AggregateOptions()
        self.appliers: dict[str, _Step] = {}  # change a state
        self.creators: dict[str, _Step] = {}  # make one from nothing (staticmethods)
        self.checks: dict[str, list[_Step]] = {}
        self.classes: dict[str, type] = {}
        for klass in reversed(cls.__mro__):
            for attr in vars(klass).values():
                raw = attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr
                static = isinstance(attr, staticmethod)
                if getattr(raw, "__fluxcore_apply__", False):
                    for name, payload_cls in self._payload_types(raw, static, cls):
                        (self.creators if static else self.appliers)[name] = _Step(raw, static)
                        self.classes[name] = payload_cls
                if getattr(raw, "__fluxcore_assert_legal__", False):
                    for name, payload_cls in self._payload_types(raw, static, cls):
                        self.checks.setdefault(name, []).append(_Step(raw, static))
                        self.classes.setdefault(name, payload_cls)

    @staticmethod
    def _payload_types(fn: Callable[..., Any], static: bool, cls: type
                       ) -> list[tuple[str, type]]:
        hints = type_hints(fn, {cls.__name__: cls})
        params = [n for n in fn.__code__.co_varnames[: fn.__code__.co_argcount]]
        payload = params[0] if static else params[1] if len(params) > 1 else None
        if payload is None or payload not in hints:
            raise TypeError(f"{fn.__qualname__}: annotate the payload parameter")
        members = _union_members(_strip(hints[payload]))
        if not all(is_payload_class(m) for m in members):
            raise TypeError(f"{fn.__qualname__}: the payload annotation must be payload classes")
        return [(type_name(m), m) for m in members]

    @classmethod
    def of(cls, aggregate_class: type) -> AggregateModel:
        model = cls._cache.get(aggregate_class)
        if model is None:
            model = cls._cache[aggregate_class] = AggregateModel(aggregate_class)
        return model


class Runner(Protocol):
    """Performs steps: the blocking app returns their value, the asyncio app an awaitable."""

    def __call__(self, steps: Steps[Any], /) -> Any: ...


class _Snapshot(msgspec.Struct):
    sequence: int
    type: str
    revision: int
    state: msgspec.Raw


class AggregateRoot(Generic[T]):
    """One aggregate as loaded: its state (None while it has no events), the sequence number
    of its last stored event (-1: none), and the events applied since it was loaded."""

    def __init__(self, serializer: Serializer, runner: Runner, cls: type[T],
                 aggregate_id: str) -> None:
        self.id = aggregate_id
        self.model = AggregateModel.of(cls)
        self.state: T | None = None
        self.sequence = -1
        self.pending: list[Any] = []
        self._serializer = serializer
        self._runner = runner

    # -- loading -------------------------------------------------------------------------------

    def load_steps(self) -> Steps[AggregateRoot[T]]:
        serializer = self._serializer
        model = self.model
        if not model.options.event_sourced:
            value = yield Call("get_value", (VALUE_PREFIX + self.id,))
            if value is not None:
                snap = msgspec.json.decode(value, type=_Snapshot)
                self.sequence = snap.sequence
                self.state = self._decode_state(snap)
            return self
        if model.options.snapshot_every is not None:
            value = yield Call("get_value", (SNAPSHOT_PREFIX + self.id,))
            if value is not None:
                snap = msgspec.json.decode(value, type=_Snapshot)
                self.sequence = snap.sequence
                self.state = self._decode_state(snap)
        for message in (yield Call("get_events", (self.id, self.sequence))):
            found = serializer.read(message.data, message.type, message.revision,
                                    model.classes.get)
            self.sequence = message.index
            if found is not None:
                self._apply_one(*found)
        return self

    def _decode_state(self, snap: _Snapshot) -> T:
        state = self._serializer.decode(bytes(snap.state), snap.type, snap.revision,
                                              self.model.cls)
        if state is DROPPED:
            raise ValueError(f"an upcaster dropped the snapshot of {self.id!r}")
        return typing.cast(T, state)

    # -- changing ------------------------------------------------------------------------------

    def assert_legal(self, *payloads: Any) -> AggregateRoot[T]:
        """Runs the `@assert_legal` checks of each payload against the current state."""
        for payload in payloads:
            for step in self.model.checks.get(type_name(type(payload)), ()):
                if step.static:
                    step.fn(payload)
                else:
                    step.fn(self.state, payload)
        return self

    def apply(self, *events: Any) -> AggregateRoot[T]:
        """Applies events to the state and records them for the commit."""
        for event in events:
            self._apply_one(type_name(type(event)), event)
            self.pending.append(event)
        return self

    def assert_and_apply(self, *payloads: Any) -> AggregateRoot[T]:
        """assert_legal, then apply: the command (or event) becomes the aggregate's event."""
        return self.assert_legal(*payloads).apply(*payloads)

    def _apply_one(self, name: str, event: Any) -> None:
        model = self.model
        step = model.appliers.get(name) if self.state is not None else None
        if step is None:
            step = model.creators.get(name)
        if step is None:
            if name in model.appliers:
                raise TypeError(f"{model.appliers[name].fn.__qualname__} needs a state, but "
                                f"{self.id!r} is empty; create it with a staticmethod @apply")
            return  # an event the aggregate keeps but that does not change its state
        if step.static:
            out = step.fn(event)
            if out is None:
                raise TypeError(f"{step.fn.__qualname__} creates the aggregate: it must return it")
            self.state = out
            return
        out = step.fn(self.state, event)
        if out is not None:
            self.state = out

    # -- storing -------------------------------------------------------------------------------

    def commit(self) -> Any:
        """Stores the pending events (conditional on the sequence it was loaded at) and, every
        `snapshot_every` events, a snapshot. ConcurrencyError if another writer came first.
        Of an AsyncMicroclient's aggregate: `await root.commit()`."""
        return self._runner(self.commit_steps())

    def commit_steps(self) -> Steps[None]:
        if not self.pending:
            return
        serializer = self._serializer
        if not self.model.options.event_sourced:
            sequence = self.sequence + len(self.pending)
            yield Call("store_value", (VALUE_PREFIX + self.id, self._snapshot(sequence)))
            self.sequence = sequence
            self.pending.clear()
            return
        encoded = [serializer.encode(e) for e in self.pending]
        before = self.sequence
        self.sequence = yield Call("append_events", (self.id, encoded, before,
                                                     outgoing_metadata(None)))
        self.pending.clear()
        every = self.model.options.snapshot_every
        if every is not None and (self.sequence + 1) // every > (before + 1) // every:
            yield Call("store_value", (SNAPSHOT_PREFIX + self.id, self._snapshot(self.sequence)))

    def _snapshot(self, sequence: int) -> bytes:
        if self.state is None:
            raise ValueError(f"aggregate {self.id!r} has no state to store")
        state = self._serializer.encode(self.state)
        head = msgspec.json.encode({"sequence": sequence, "type": state.type,
                                    "revision": state.revision})
        return head[:-1] + b',"state":' + state.data + b"}"

    def __repr__(self) -> str:
        return f"<AggregateRoot {self.id!r} at {self.sequence}: {self.state!r}>"


def load_steps(serializer: Serializer, runner: Runner, cls: type[T], aggregate_id: str
               ) -> Steps[AggregateRoot[T]]:
    """Loads an aggregate; inside a handler it is committed when the handler returns."""
    handling = current_handling()  # before any I/O: the handler's context
    root = yield from AggregateRoot(serializer, runner, cls, aggregate_id).load_steps()
    if handling is not None:
        handling.loaded(root)
    return root
