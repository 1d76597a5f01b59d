"""The event-sourcing operations of a connection (docs/protocol.md: APPEND_EVENTS, GET_EVENTS,
DELETE_EVENTS, UPDATE_RELATIONSHIPS, REPAIR_RELATIONSHIPS, GET_RELATIONSHIPS): requests checked
and turned into calls of the project's EventStore."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from fluxcore._ext import _proto
from fluxcore.protocol import (
    ErrorCode,
    Guarantee,
    MessageType,
    Op,
    ProtocolError,
    batch_body,
    encode_control,
)

from .events import EventBatch
from .requests import MAX_ID, BodyHandler, ControlHandler, control_and_messages, field, identifier

if TYPE_CHECKING:
    from .session import Session

__all__ = ["EVENT_BODY_HANDLERS", "EVENT_HANDLERS"]


def _event_batch(entry: Any) -> EventBatch:
    if not isinstance(entry, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "each batch is a map")
    count = field(entry, "count", int)
    if count < 0:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "a batch's count must not be negative")
    expected = field(entry, "expected_sequence", int, None)
    if expected is not None and expected < -1:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "expected_sequence is a stream's last "
                            "number: -1 (empty) or more")
    return EventBatch(identifier(entry, "aggregate"), count,
                      bool(field(entry, "store_only", bool, False)), expected)


def _relationships(req: dict[str, Any], name: str) -> list[tuple[str, str, str]]:
    """[aggregate id, aggregate type, entity id] triples."""
    out = []
    for item in field(req, name, list, []):
        if not (isinstance(item, list) and len(item) == 3
                and all(isinstance(x, str) and 0 < len(x) <= MAX_ID for x in item)):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"each of {name} is [aggregate id, "
                                "aggregate type, entity id], strings of 1 to "
                                f"{MAX_ID} characters")
        out.append((item[0], item[1], item[2]))
    return out


def _on_append_events(session: Session, request_id: int, start: int, end: int) -> None:
    """APPEND_EVENTS: {"batches": [{aggregate, count, store_only}]} and the events."""
    assert session.project is not None
    control, guarantee, offsets, segments = control_and_messages(
        session, start, end, "APPEND_EVENTS", MessageType.EVENT)
    batches = [_event_batch(entry) for entry in field(control, "batches", list)]
    total = sum(batch.event_count for batch in batches)
    if total != len(offsets) - 1:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"the batches count {total} events, "
                            f"the request carries {len(offsets) - 1}")
    last, index = session.project.events.append(batches, session.buffer, offsets, segments)
    if guarantee != Guarantee.STORED:
        return
    body = encode_control({"last_sequence": last})
    answer = bytes(_proto.frame_header(Op.RESULT, request_id, len(body))) + body
    if session.config.fsync == "always" and index:
        session.send_when_durable(session.project.log("event"), index, request_id, answer)
    else:
        session.send(answer)


def _on_get_events(session: Session, request_id: int, req: dict[str, Any]) -> bytes:
    assert session.project is not None
    aggregate = identifier(req, "aggregate")
    after = field(req, "after", int, -1)
    max_size = field(req, "max_size", int, 1024)
    if not 0 < max_size <= session.config.max_read_size:
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            f"max_size must be 1..{session.config.max_read_size}")
    records = session.project.events.read(aggregate, after, max_size)
    last = struct.unpack_from("<Q", records[-1], 8)[0] if records else 0
    body = batch_body(records, caught_up=len(records) < max_size, last_index=last)
    return bytes(_proto.frame_header(Op.BATCH, request_id, len(body))) + body


def _on_delete_events(session: Session, request_id: int, req: dict[str, Any]) -> dict[str, Any]:
    assert session.project is not None
    return {"deleted": session.project.events.delete(identifier(req, "aggregate"))}


def _on_update_relationships(session: Session, request_id: int,
                             req: dict[str, Any]) -> dict[str, Any]:
    assert session.project is not None
    session.project.events.update_relationships(
        _relationships(req, "associations"), _relationships(req, "dissociations"))
    return {"ok": True}


def _on_repair_relationships(session: Session, request_id: int,
                             req: dict[str, Any]) -> dict[str, Any]:
    assert session.project is not None
    entities = field(req, "entities", list)
    if not all(isinstance(e, str) and 0 < len(e) <= MAX_ID for e in entities):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "entities are ids of 1 to "
                            f"{MAX_ID} characters")
    session.project.events.repair_relationships(
        identifier(req, "aggregate"), field(req, "aggregate_type", str), entities)
    return {"ok": True}


def _on_get_relationships(session: Session, request_id: int,
                          req: dict[str, Any]) -> dict[str, Any]:
    assert session.project is not None
    found = session.project.events.relationships(identifier(req, "entity"))
    return {"relationships": [list(r) for r in found]}


EVENT_BODY_HANDLERS: dict[int, BodyHandler] = {
    Op.APPEND_EVENTS: _on_append_events,
}

EVENT_HANDLERS: dict[int, ControlHandler] = {
    Op.GET_EVENTS: _on_get_events,
    Op.DELETE_EVENTS: _on_delete_events,
    Op.UPDATE_RELATIONSHIPS: _on_update_relationships,
    Op.REPAIR_RELATIONSHIPS: _on_repair_relationships,
    Op.GET_RELATIONSHIPS: _on_get_relationships,
}
