"""The Python client of the fluxcore service: blocking (`Client`) and asyncio (`AsyncClient`)."""

from fluxcore._ext._proto import Message
from fluxcore.protocol import Guarantee, MessageType, ProtocolError

from ._wire import ConnectionLost, RequestError
from .sync import Client, Consumer

__all__ = [
    "Client",
    "ConnectionLost",
    "Consumer",
    "Guarantee",
    "Message",
    "MessageType",
    "ProtocolError",
    "RequestError",
]
