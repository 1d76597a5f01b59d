"""The constants and control-message codec of the wire protocol (docs/protocol.md), shared by
the client and the server. The per-message work (frames, appends, batches) is in
fluxcore._ext._proto."""

from __future__ import annotations

import enum
import re
import struct
from typing import Any

import msgspec

from fluxcore._ext import _proto

__all__ = [
    "FLAG_RESEND",
    "PROTOCOL_VERSION",
    "ErrorCode",
    "FrameError",
    "Guarantee",
    "MessageType",
    "Op",
    "ProtocolError",
    "batch_body",
    "check_name",
    "decode_control",
    "decode_record",
    "encode_control",
    "encode_metadata",
    "index_from_time",
    "log_name",
    "time_from_index",
]

PROTOCOL_VERSION = 1
FLAG_RESEND = 1  # frame flag: an APPEND sent before, on a connection lost before its answer
DEFAULT_PORT = 8765
DEFAULT_MAX_FRAME = 64 * 1024 * 1024
FrameError = _proto.FrameError


class Op(enum.IntEnum):
    HELLO = 1
    APPEND = 2
    READ = 3
    STORE_POSITION = 4
    RESET_POSITION = 5
    GET_POSITION = 6
    DISCONNECT_TRACKER = 7
    READ_FROM_INDEX = 8
    SET_RETENTION = 9
    PING = 10
    SCHEDULE = 11
    CANCEL_SCHEDULE = 12
    GET_SCHEDULE = 13
    STORE_VALUES = 14
    GET_VALUE = 15
    DELETE_VALUE = 16
    APPEND_EVENTS = 17
    GET_EVENTS = 18
    DELETE_EVENTS = 19
    UPDATE_RELATIONSHIPS = 20
    REPAIR_RELATIONSHIPS = 21
    GET_RELATIONSHIPS = 22
    INDEX_DOCUMENTS = 30
    BULK_UPDATE_DOCUMENTS = 31
    GET_DOCUMENTS = 32
    HAS_DOCUMENT = 33
    DELETE_DOCUMENT = 34
    DELETE_DOCUMENTS = 35
    DELETE_COLLECTION = 36
    SEARCH = 37
    COUNT_DOCUMENTS = 38
    DOCUMENT_STATS = 39
    FACET_STATS = 40
    SEARCH_HISTOGRAM = 41
    WELCOME = 129
    ACK = 130
    BATCH = 131
    RESULT = 132
    PONG = 138
    ERROR = 143


class MessageType(enum.IntEnum):
    COMMAND = 1
    EVENT = 2
    NOTIFICATION = 3
    QUERY = 4
    RESULT = 5
    ERROR = 6
    SCHEDULE = 7
    METRICS = 8
    WEBREQUEST = 9
    WEBRESPONSE = 10
    DOCUMENT = 11
    CUSTOM = 12

    @property
    def is_request(self) -> bool:
        return self in _REQUEST_TYPES


_REQUEST_TYPES = frozenset({MessageType.COMMAND, MessageType.QUERY, MessageType.WEBREQUEST,
                            MessageType.CUSTOM})


class Guarantee(enum.IntEnum):
    NONE = 0  # fire and forget
    SENT = 1  # written to the socket
    STORED = 2  # acknowledged once in the log (and on disk under the `always` fsync policy)


class ErrorCode(enum.StrEnum):
    BAD_FRAME = "bad_frame"
    UNKNOWN_OP = "unknown_op"
    BAD_REQUEST = "bad_request"
    AUTH = "auth"
    TOO_LARGE = "too_large"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"
    CONFLICT = "conflict"  # APPEND_EVENTS: the stream is not at the expected sequence
    IDLE = "idle"


class ProtocolError(Exception):
    """An ERROR frame from the other side, or a request the protocol does not allow."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")


def check_name(kind: str, value: object) -> str:
    """A project or topic name: 1 to 100 of A-Z a-z 0-9 . _ -"""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{kind} must be 1-100 of [A-Za-z0-9._-], "
                            f"not {value!r}")
    return value


def index_from_time(ms: int) -> int:
    """The smallest index of a message stored at or after `ms` (epoch milliseconds)."""
    return ms << 16


def time_from_index(index: int) -> int:
    """The epoch milliseconds at which the message with this index was stored."""
    return index >> 16


def log_name(message_type: MessageType, topic: str | None) -> str:
    """The name of the log that holds (or, for NOTIFICATION, is read for) a message type."""
    if message_type is MessageType.NOTIFICATION:
        return "event"
    if message_type in (MessageType.DOCUMENT, MessageType.CUSTOM):
        if topic is None:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"{message_type.name} needs a topic")
        return f"{message_type.name.lower()}-{check_name('topic', topic)}"
    return message_type.name.lower()


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()
_metadata_decoder = msgspec.msgpack.Decoder(dict[str, str])


def encode_control(value: Any) -> bytes:
    try:
        return _encoder.encode(value)
    except OverflowError as exc:  # msgpack carries integers of 64 bits (JSON has no bound)
        raise ValueError(f"an integer of the request is out of range: {exc}") from None


def decode_control(body: bytes | memoryview) -> dict[str, Any]:
    try:
        value = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"body is not msgpack: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "body must be a msgpack map")
    return value


def encode_metadata(metadata: dict[str, str] | None) -> bytes | None:
    if not metadata:
        return None
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError("metadata must map str to str")
    return _encoder.encode(metadata)


def _decode_metadata(raw: bytes) -> dict[str, str]:
    return _metadata_decoder.decode(raw)


_proto.set_metadata_decoder(_decode_metadata)


# The BATCH body's header (docs/protocol.md): segment range, caught up, last index, count.
_BATCH_HEADER = struct.Struct("<HHB3xQI4x")


def batch_body(records: list[bytes], *, caught_up: bool = True, last_index: int = 0) -> bytes:
    """A BATCH body of records already in the log's layout (each padded to 8 bytes)."""
    return _BATCH_HEADER.pack(0, 0, caught_up, last_index, len(records)) + b"".join(records)


def decode_record(record: bytes) -> _proto.Message:
    """One record in the log's layout as the Message a consumer would get for it."""
    body = batch_body([record + bytes(-len(record) % 8)])
    return _proto.decode_batch(body, 0, len(body))[4][0]
