"""What travels with every message besides its payload: metadata, and in it the correlation
(the first message of a chain) and the causation (the message being handled when this one was
sent). Sending while handling a message fills both in; a contextvar knows that message."""

from __future__ import annotations

import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol

# The message being handled and the aggregates it loaded: compiled, as the dispatch loop
# (fluxcore._ext._app) sets it for every message.
from fluxcore._ext._app import Handling

__all__ = [
    "CAUSATION",
    "CORRELATION",
    "Handling",
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
