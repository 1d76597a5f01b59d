"""Microclients: typed messages, handler decorators, aggregates, periodic jobs and a test
fixture, over the wire client (`fluxcore.client`)."""

from fluxcore.client import Message, MessageType, WebResponse

from .aggregates import AggregateRoot, ConcurrencyError, aggregate, apply, assert_legal
from .aio import AsyncMicroclient
from .app import FunctionalError, HandlerError, Microclient, RoutingKey
from .context import CAUSATION, CORRELATION, LocalMessage, Metadata, current_message
from .handlers import (
    consumer,
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
    periodic,
)
from .serialization import SerializationError, Serializer, payload
from .testing import TestFixture
from .upcasting import Upcast, upcaster

__all__ = [
    "CAUSATION",
    "CORRELATION",
    "AggregateRoot",
    "AsyncMicroclient",
    "ConcurrencyError",
    "FunctionalError",
    "HandlerError",
    "LocalMessage",
    "Message",
    "MessageType",
    "Metadata",
    "Microclient",
    "RoutingKey",
    "SerializationError",
    "Serializer",
    "TestFixture",
    "Upcast",
    "WebResponse",
    "aggregate",
    "apply",
    "assert_legal",
    "consumer",
    "current_message",
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
    "payload",
    "periodic",
    "upcaster",
]
