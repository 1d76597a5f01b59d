"""The Python client of the fluxcore service: blocking (`Client`) and asyncio (`AsyncClient`)."""

from fluxcore._ext._proto import Message
from fluxcore.protocol import Guarantee, MessageType, ProtocolError

from ._wire import (
    ConcurrencyError,
    ConnectionLost,
    Relationship,
    RequestError,
    Scheduled,
    WebResponse,
)
from .aio import AsyncClient, AsyncConsumer
from .search import AsyncSearch, Document, Search
from .sync import Client, Consumer

__all__ = [
    "AsyncClient",
    "AsyncConsumer",
    "AsyncSearch",
    "Client",
    "ConcurrencyError",
    "ConnectionLost",
    "Consumer",
    "Document",
    "Guarantee",
    "Message",
    "MessageType",
    "ProtocolError",
    "Relationship",
    "RequestError",
    "Scheduled",
    "Search",
    "WebResponse",
]
