"""The tracking operations of a connection (docs/protocol.md: STORE_POSITION, RESET_POSITION,
GET_POSITION, DISCONNECT_TRACKER): requests checked and turned into calls of the project's
PositionStore and its tracker clusters. READ, the hot one, stays with the session."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fluxcore.protocol import ErrorCode, Op, ProtocolError

from .positions import merged_ranges
from .requests import MAX_INDEX, ControlHandler, field, log_for

if TYPE_CHECKING:
    from .project import Project
    from .session import Session

__all__ = ["TRACKING_HANDLERS", "store_position"]


def store_position(project: Project, log: str, consumer: str, segment: list[Any],
                   index: object) -> None:
    """Stores `index` as the position of `consumer` on `log` for the segments
    [segment[0], segment[1]) (a STORE_POSITION, or the store_position of a READ)."""
    if len(segment) != 2 or type(segment[0]) is not int or type(segment[1]) is not int or (
            not 0 <= segment[0] <= segment[1] <= 128):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "segment must be [start, end] in 0..128")
    if type(index) is not int or not 0 <= index < MAX_INDEX:
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            f"last_index must be an int from 0 to {MAX_INDEX - 1}")
    project.positions.store(log, consumer, segment[0], segment[1], index)


def _cluster_of(req: dict[str, Any]) -> tuple[str, str]:
    """The (log name, consumer) a request names."""
    _, name = log_for(req)
    return name, field(req, "consumer", str)


def _on_store_position(session: Session, request_id: int, req: dict[str, Any]) -> dict[str, Any]:
    assert session.project is not None
    name, consumer = _cluster_of(req)
    store_position(session.project, name, consumer, field(req, "segment", list),
                   field(req, "last_index", int))
    return {"ok": True}


def _on_reset_position(session: Session, request_id: int, req: dict[str, Any]) -> dict[str, Any]:
    assert session.project is not None
    name, consumer = _cluster_of(req)
    index = field(req, "last_index", int)
    if index < 0:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "last_index must not be negative")
    session.project.positions.reset(name, consumer, index)
    cluster = session.project.find_cluster(name, consumer)
    if cluster is not None:
        cluster.wake()  # waiting trackers read again from the new position
    return {"ok": True}


def _on_get_position(session: Session, request_id: int, req: dict[str, Any]) -> dict[str, Any]:
    assert session.project is not None
    name, consumer = _cluster_of(req)
    return {"position": merged_ranges(session.project.positions.get(name, consumer))}


def _on_disconnect_tracker(session: Session, request_id: int,
                           req: dict[str, Any]) -> dict[str, Any]:
    assert session.project is not None
    name, consumer = _cluster_of(req)
    tracker_id = field(req, "tracker", str)
    cluster = session.project.find_cluster(name, consumer)
    left = bool(cluster is not None and cluster.leave(tracker_id))
    if left:
        session.server.tracker_gone(session.project, name, consumer, tracker_id, "left", session)
    return {"ok": left}


TRACKING_HANDLERS: dict[int, ControlHandler] = {
    Op.STORE_POSITION: _on_store_position,
    Op.RESET_POSITION: _on_reset_position,
    Op.GET_POSITION: _on_get_position,
    Op.DISCONNECT_TRACKER: _on_disconnect_tracker,
}
