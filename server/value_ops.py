"""The key-value operations of a connection (docs/protocol.md: STORE_VALUES, GET_VALUE,
DELETE_VALUE): requests checked and turned into calls of the project's ValueStore."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fluxcore.protocol import ErrorCode, Op, ProtocolError

from .requests import ControlHandler, field, identifier

if TYPE_CHECKING:
    from .session import Session

__all__ = ["VALUE_HANDLERS"]


def _on_store_values(session: Session, request_id: int, req: dict[str, Any]) -> dict[str, Any]:
    assert session.project is not None
    entries = field(req, "values", list)
    pairs = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "each value is a map")
        pairs.append((identifier(entry, "key"), bytes(field(entry, "value", bytes))))
    if_absent = bool(field(req, "if_absent", bool, False))
    return {"stored": session.project.values.store(pairs, if_absent)}


def _on_get_value(session: Session, request_id: int, req: dict[str, Any]) -> dict[str, Any]:
    assert session.project is not None
    return {"value": session.project.values.get(identifier(req, "key"))}


def _on_delete_value(session: Session, request_id: int, req: dict[str, Any]) -> dict[str, Any]:
    assert session.project is not None
    return {"deleted": session.project.values.delete(identifier(req, "key"))}


VALUE_HANDLERS: dict[int, ControlHandler] = {
    Op.STORE_VALUES: _on_store_values,
    Op.GET_VALUE: _on_get_value,
    Op.DELETE_VALUE: _on_delete_value,
}
