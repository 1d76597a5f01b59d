"""What the operation handlers of a connection share: reading fields of a request map, the
body of the ops that carry messages after their control map, and the shapes of the handler
tables merged into the session's dispatch table (server/session.py)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from fluxcore._ext import _proto
from fluxcore._ext._log import max_payload_for
from fluxcore.errors import RecordTooLargeError
from fluxcore.protocol import (
    ErrorCode,
    Guarantee,
    MessageType,
    ProtocolError,
    decode_control,
    log_name,
)

if TYPE_CHECKING:
    from .session import Session

__all__ = [
    "MAX_ID", "MAX_INDEX", "REQUIRED", "BodyHandler", "ControlHandler", "control_and_messages",
    "field", "identifier", "log_for", "message_type",
]

REQUIRED: Any = object()
MAX_ID = 1000  # keys, aggregate and entity ids
MAX_INDEX = (1 << 64) - 1  # 2**64 - 1 itself marks a segment without a position

# A handler of an op whose body is a control map: (session, request id, the map) -> the answer
# map, a ready frame (bytes), or None for no answer.
ControlHandler = Callable[["Session", int, dict[str, Any]], Any]
# A handler of an op whose body is binary: (session, request id, body start, body end) in the
# session's receive buffer; it sends its answer itself.
BodyHandler = Callable[["Session", int, int, int], None]


def field(
    req: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = REQUIRED
) -> Any:
    value = req.get(name, default)
    if value is REQUIRED:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"missing field {name!r}")
    if value is None and default is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"field {name!r} has the wrong type "
                            f"({type(value).__name__})")
    return value


def identifier(req: dict[str, Any], name: str, limit: int = MAX_ID) -> str:
    """A required string field of 1 to `limit` characters (ids, keys)."""
    value = field(req, name, str)
    if not 0 < len(value) <= limit:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{name} must be 1 to {limit} characters")
    return cast(str, value)


def message_type(code: int) -> MessageType:
    try:
        return MessageType(code)
    except ValueError:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"unknown message type {code!r}") from None


def log_for(req: dict[str, Any]) -> tuple[MessageType, str]:
    """The message type and log name a request's `type` and `topic` fields name."""
    kind = message_type(field(req, "type", int))
    return kind, log_name(kind, field(req, "topic", str, None))


def control_and_messages(
    session: Session, start: int, end: int, name: str, kind: MessageType
) -> tuple[dict[str, Any], int, Any, Any]:
    """The body of SCHEDULE and APPEND_EVENTS: u32 control length, the msgpack control, then an
    APPEND body of `kind` messages. Returns (control, guarantee, offsets, segments); message i
    is session.buffer[offsets[i]:offsets[i + 1]]."""
    buf = session.buffer
    if end - start < 4:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{name} body shorter than 4 bytes")
    (control_len,) = struct.unpack_from("<I", buf, start)
    body = start + 4 + control_len
    if body > end:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{name} control runs past the frame")
    control = decode_control(bytes(buf[start + 4 : body]))
    type_code, guarantee, _topic, offsets, segments, _first = _proto.append_parse(buf, body, end)
    if type_code != kind:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{name} carries messages of type "
                            f"{kind.name} ({int(kind)}), not {type_code}")
    if guarantee > Guarantee.STORED:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"unknown guarantee {guarantee}")
    if len(offsets) > 1:
        largest = int((offsets[1:] - offsets[:-1]).max())
        limit = max_payload_for(session.config.segment_file_size)
        if largest > limit:
            raise RecordTooLargeError(f"a message of {largest} bytes is over the log's "
                                      f"limit of {limit}")
    return control, guarantee, offsets, segments
