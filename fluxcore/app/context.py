"""What travels with every message besides its payload: metadata, and in it the correlation
(the first message of a chain) and the causation (the message being handled when this one was
sent). Sending while handling a message fills both in; a contextvar knows that message."""

from __future__ import annotations

import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .aggregates import AggregateRoot

__all__ = [
    "CAUSATION",
    "CORRELATION",
    "TRACE_PREFIX",
    "Incoming",
    "LocalMessage",
    "Metadata",
    "current_message",
    "outgoing_metadata",
]

CORRELATION = "$correlation_id"
CAUSATION = "$causation_id"
TRACE_PREFIX = "$trace."  # metadata keys with this prefix go on to every message caused

Metadata = dict[str, str]


class Incoming(Protocol):
    """A message as handlers get it: the wire client's Message or a LocalMessage."""

    @property
    def type(self) -> str: ...
    @property
    def data(self) -> bytes: ...
    @property
    def revision(self) -> int: ...
    @property
    def metadata(self) -> dict[str, str]: ...
    @property
    def message_id(self) -> str: ...
    @property
    def index(self) -> int: ...
    @property
    def request_id(self) -> int: ...
    @property
    def source(self) -> str: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def is_error(self) -> bool: ...


@dataclass(slots=True)
class LocalMessage:
    """A message that never left the process (the TestFixture's)."""

    type: str
    data: bytes
    revision: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    message_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    index: int = 0
    request_id: int = -1
    source: str = ""
    timestamp: int = field(default_factory=lambda: int(time.time() * 1000))
    is_error: bool = False
    topic: str | None = None


class Handling:
    """The message being handled in this context, and the aggregates loaded meanwhile (they
    are committed when the handler returns). One per handled message: kept small."""

    __slots__ = ("aggregates", "message")

    def __init__(self, message: Incoming) -> None:
        self.message = message
        self.aggregates: list[AggregateRoot[Any]] | None = None

    def loaded(self, root: AggregateRoot[Any]) -> None:
        if self.aggregates is None:
            self.aggregates = []
        self.aggregates.append(root)


_handling: ContextVar[Handling | None] = ContextVar("fluxcore_app_handling", default=None)


def current_handling() -> Handling | None:
    return _handling.get()


def current_message() -> Incoming | None:
    """The message whose handler is running in this context, or None."""
    handling = _handling.get()
    return None if handling is None else handling.message


enter = _handling.set
leave = _handling.reset


def outgoing_metadata(given: Metadata | None) -> Metadata | None:
    """The metadata of a message sent now: what the caller gave, plus the correlation and
    causation of the message being handled (and its `$trace.` keys)."""
    handling = _handling.get()
    if handling is None:
        return dict(given) if given else None
    cause = handling.message
    inherited = cause.metadata
    out = {k: v for k, v in inherited.items() if k.startswith(TRACE_PREFIX)} if inherited else {}
    out[CORRELATION] = (inherited.get(CORRELATION) if inherited else None) or cause.message_id
    out[CAUSATION] = cause.message_id
    if given:
        out.update(given)
    return out
