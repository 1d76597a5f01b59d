"""The retention operation of a connection (docs/protocol.md: SET_RETENTION): how long a log
of the project keeps its messages."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fluxcore.protocol import ErrorCode, Op, ProtocolError

from .requests import ControlHandler, field, log_for

if TYPE_CHECKING:
    from .session import Session

__all__ = ["RETENTION_HANDLERS"]


def _on_set_retention(session: Session, request_id: int, req: dict[str, Any]) -> dict[str, Any]:
    assert session.project is not None
    _, name = log_for(req)
    retention = field(req, "retention_ms", int, None)
    if retention is not None and retention <= 0:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "retention_ms must be positive or nil")
    session.project.set_retention(name, retention)
    return {"ok": True}


RETENTION_HANDLERS: dict[int, ControlHandler] = {
    Op.SET_RETENTION: _on_set_retention,
}
