"""The constants the compiled wire format uses agree with fluxcore.protocol."""

from __future__ import annotations

from fluxcore._ext import _proto
from fluxcore.protocol import Op, index_from_time, time_from_index


def test_compiled_op_codes_match_the_protocol() -> None:
    assert _proto.OP_APPEND_CODE == Op.APPEND
    assert _proto.OP_BATCH_CODE == Op.BATCH
    header = _proto.frame_header(Op.PING, 7, 0)
    assert header == bytes([8, 0, 0, 0, Op.PING, 0, 0, 0, 7, 0, 0, 0])


def test_index_and_time() -> None:
    # IndexUtilsTest vector of the original service: 2024-01-01T00:00:00Z
    assert index_from_time(1704067200000) == 111677748019200000
    assert time_from_index(111677748019200000 + 65535) == 1704067200000
