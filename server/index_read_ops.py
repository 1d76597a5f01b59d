"""READ_FROM_INDEX (docs/protocol.md): a log's messages from an index on, read once, with no
tracker, position or consumer; answered with one BATCH of the log's own record bytes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fluxcore._ext import _proto
from fluxcore.errors import CorruptLogError
from fluxcore.protocol import ErrorCode, Op, ProtocolError

from .requests import ControlHandler, field, log_for

if TYPE_CHECKING:
    from .session import Session

__all__ = ["INDEX_READ_HANDLERS", "READ_BYTES"]

READ_BYTES = 16 << 20  # a READ_FROM_INDEX answer ends past this many bytes of records


def _on_read_from_index(session: Session, request_id: int, req: dict[str, Any]) -> bytes:
    assert session.project is not None
    _, name = log_for(req)
    min_index = field(req, "min_index", int)
    max_size = field(req, "max_size", int, 1024)
    if not 0 < max_size <= session.config.max_read_size or min_index < 0:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "bad min_index or max_size")
    log = session.project.log(name)
    after = max(min_index - 1, 0)
    # One read ends at the end of a segment file: read on until max_size, READ_BYTES or
    # the log's end.
    frames: list[bytes] = []
    count = size = 0
    while True:
        try:
            batch = log.read(after, max_count=max_size - count, max_bytes=READ_BYTES - size)
        except CorruptLogError:
            if not count:
                raise
            break  # the records before the damage go; a read from the damaged one fails
        got = len(batch)  # no filter: the frame holds every record of the batch
        count += got
        after = batch.next_after
        caught_up = count < max_size and log.last_index <= after
        # Framed as the whole answer, which it is unless another read follows (then the
        # frames are joined under new headers).
        frame, _ = _proto.batch_frame(request_id, batch, None, "", "", False, None,
                                      0, 128, after, caught_up)
        frames.append(frame)
        size += len(frame)
        if count >= max_size or size >= READ_BYTES or not got or log.last_index <= after:
            break
    if len(frames) == 1:
        return frames[0]
    return _proto.join_batch_frames(frames, request_id, 0, 128, after, caught_up)[0]


INDEX_READ_HANDLERS: dict[int, ControlHandler] = {
    Op.READ_FROM_INDEX: _on_read_from_index,
}
