"""The schedule operations of a connection (docs/protocol.md: SCHEDULE, CANCEL_SCHEDULE,
GET_SCHEDULE): requests checked and turned into calls of the project's ScheduleStore."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fluxcore.protocol import ErrorCode, Guarantee, MessageType, Op, ProtocolError

from .requests import BodyHandler, ControlHandler, control_and_messages, field, identifier
from .schedules import Schedule

if TYPE_CHECKING:
    from .session import Session

__all__ = ["MAX_DEADLINE_MS", "MAX_SCHEDULE_ID", "SCHEDULE_BODY_HANDLERS", "SCHEDULE_HANDLERS"]

MAX_SCHEDULE_ID = 200
MAX_DEADLINE_MS = 1 << 47  # an index is milliseconds << 16 in 64 bits


def _schedule_entry(entry: Any) -> Schedule:
    if not isinstance(entry, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "each schedule is a map")
    deadline = field(entry, "deadline", int)
    if not 0 <= deadline < MAX_DEADLINE_MS:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"deadline {deadline} is not epoch "
                            "milliseconds an index can hold")
    return Schedule(identifier(entry, "id", MAX_SCHEDULE_ID), deadline,
                    bool(field(entry, "if_absent", bool, False)))


def _on_schedule(session: Session, request_id: int, start: int, end: int) -> None:
    """SCHEDULE: {"schedules": [{id, deadline, if_absent}]} and one message each."""
    assert session.project is not None
    control, guarantee, offsets, segments = control_and_messages(
        session, start, end, "SCHEDULE", MessageType.SCHEDULE)
    entries = field(control, "schedules", list)
    if len(entries) != len(offsets) - 1:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{len(entries)} schedules for "
                            f"{len(offsets) - 1} messages")
    schedules = [_schedule_entry(entry) for entry in entries]
    stored = session.project.schedules.schedule(schedules, session.buffer, offsets, segments)
    if guarantee == Guarantee.STORED:
        session.send_control(Op.RESULT, request_id, {"stored": stored})


def _on_cancel_schedule(session: Session, request_id: int, req: dict[str, Any]) -> dict[str, Any]:
    assert session.project is not None
    schedule_id = identifier(req, "id", MAX_SCHEDULE_ID)
    return {"cancelled": session.project.schedules.cancel(schedule_id)}


def _on_get_schedule(session: Session, request_id: int, req: dict[str, Any]) -> dict[str, Any]:
    assert session.project is not None
    schedule_id = identifier(req, "id", MAX_SCHEDULE_ID)
    found = session.project.schedules.get(schedule_id)
    if found is None:
        return {"schedule": None}
    deadline, segment, message, index = found
    return {"schedule": {"id": schedule_id, "deadline": deadline, "segment": segment,
                         "message": message, "index": index}}


SCHEDULE_BODY_HANDLERS: dict[int, BodyHandler] = {
    Op.SCHEDULE: _on_schedule,
}

SCHEDULE_HANDLERS: dict[int, ControlHandler] = {
    Op.CANCEL_SCHEDULE: _on_cancel_schedule,
    Op.GET_SCHEDULE: _on_get_schedule,
}
