# Type stubs of the compiled wire format (fluxcore/_ext/_proto.pyx).
from array import array
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from fluxcore._ext._log import Batch

Buffer = bytes | bytearray | memoryview
OP_APPEND_CODE: int
OP_BATCH_CODE: int

class FrameError(ValueError): ...

def frame_scan(
    buffer: Buffer, start: int, end: int, max_frame: int
) -> tuple[list[tuple[int, int, int, int, int]], int, int]: ...
def frame_header(op: int, request_id: int, body_size: int) -> bytes: ...
def append_parse(
    buffer: Buffer, start: int, end: int
) -> tuple[int, int, str | None, npt.NDArray[np.int64], npt.NDArray[np.uint8], bytes | None]: ...
def encode_append(
    request_id: int,
    type_code: int,
    guarantee: int,
    topic: str | None,
    payloads: Sequence[bytes],
    payload_type: str | None,
    keys: Sequence[str | bytes] | None,
    source: str | None,
    id_prefix: str | None,
    id_counter: int,
    metadata: bytes | None = None,
    timestamp: int = 0,
    message_request_id: int = -1,
    target: str | None = None,
    flags: int = 0,
    revision: int = 0,
    payload_format: str | None = None,
    segments: Any = None,
    targets: Sequence[str] | None = None,
    request_ids: Any = None,
    payload_types: Sequence[str] | None = None,
    revisions: Sequence[int] | None = None,
) -> tuple[bytes, int]: ...
def stream_records(
    buffer: Any,
    offsets: npt.NDArray[np.int64],
    segments: npt.NDArray[np.uint8],
    start: int,
    stop: int,
    first_number: int,
) -> list[bytes]: ...
def type_hashes(batch: Batch) -> npt.NDArray[np.uint64]: ...
def record_type(batch: Batch, i: int) -> str: ...
def record_targets(batch: Batch) -> list[str]: ...
def find_stored_run(
    batch: Batch, start: int, buffer: Buffer, offsets: npt.NDArray[np.int64], first: int
) -> tuple[int, int]: ...
def batch_frame(
    request_id: int,
    batch: Batch,
    positions: npt.NDArray[np.uint64] | None,
    client_id: str,
    tracker_id: str,
    filter_target: bool,
    type_mask: npt.NDArray[np.bool_] | None,
    seg_start: int,
    seg_end: int,
    last_index: int,
    caught_up: bool,
) -> tuple[bytes, int]: ...
def join_batch_frames(
    frames: list[bytes], request_id: int, seg_start: int, seg_end: int, last_index: int,
    caught_up: bool,
) -> tuple[bytes, int]: ...
def empty_batch_frame(
    request_id: int, seg_start: int, seg_end: int, last_index: int, caught_up: bool
) -> bytes: ...
def set_metadata_decoder(decoder: Any) -> None: ...
SEND_SKIPPED: int

def frame_send_each(
    frame: Buffer, transports: list[Any], fds: array[int], request_ids: array[int],
    sent: npt.NDArray[np.int64],
) -> int: ...
def decode_batch(
    buffer: Buffer, start: int, end: int
) -> tuple[int, int, bool, int, list[Message]]: ...

class Message:
    """A message as read from the service."""

    @property
    def data(self) -> bytes: ...
    @property
    def type(self) -> str: ...
    @property
    def message_id(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def target(self) -> str: ...
    @property
    def format(self) -> str: ...
    @property
    def revision(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def request_id(self) -> int: ...
    @property
    def index(self) -> int: ...
    @property
    def segment(self) -> int: ...
    @property
    def flags(self) -> int: ...
    @property
    def metadata(self) -> dict[str, str]: ...
    @property
    def is_error(self) -> bool: ...
