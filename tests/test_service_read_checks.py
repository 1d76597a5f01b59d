"""A tracker's READs one after the other: each is checked and honoured as a whole, even when
it repeats the last one but for a field (the server reuses what it checked of a tracker's
previous READ only while the next one carries the same fields, values and types)."""

from __future__ import annotations

import select

from fluxcore.client import Client, MessageType
from fluxcore.protocol import Op, decode_control

from ._raw import ask, connect, control, error_code, read_frame, records
from .service_harness import TOKEN, ServerProcess

EVENT = int(MessageType.EVENT)


def test_each_read_of_a_tracker_is_checked_and_honoured(server: ServerProcess) -> None:
    with Client.connect(server.address, token=TOKEN, name="publisher") as client:
        published = client.publish_batch(MessageType.EVENT, [b"m%d" % i for i in range(6)],
                                         type="T")
        assert published is not None
        indexes = [int(i) for i in published]
    base = {"type": EVENT, "consumer": "checks", "tracker": "t", "max_size": 2,
            "client_index": True, "last_index": 0, "max_timeout_ms": 100}
    with connect(server, "read-checks") as sock:
        op, body = ask(sock, Op.READ, 2, base)
        assert [r[2] for r in records(body)[1]] == indexes[:2]
        # The same READ but for max_size and last_index: both count.
        op, body = ask(sock, Op.READ, 3, {**base, "max_size": 3, "last_index": indexes[1]})
        assert [r[2] for r in records(body)[1]] == indexes[2:5]
        # Equal values of the wrong type are refused, as in a first READ.
        for request_id, wrong in enumerate([
                {"max_size": 3.0}, {"client_index": 1}, {"last_index": True},
                {"last_index": "0"}, {"store_position": "0"}, {"tracker": b"t"}], 4):
            op, body = ask(sock, Op.READ, request_id, {**base, "max_size": 3, **wrong})
            assert error_code(op, body) == "bad_request", wrong
        # And the READ that was fine still is.
        op, body = ask(sock, Op.READ, 20, {**base, "max_size": 3, "last_index": indexes[1]})
        assert [r[2] for r in records(body)[1]] == indexes[2:5]


def test_a_position_stored_by_a_read_only_moves_forward(server: ServerProcess) -> None:
    with Client.connect(server.address, token=TOKEN, name="publisher") as client:
        published = client.publish_batch(MessageType.EVENT, [b"m%d" % i for i in range(4)],
                                         type="T")
        assert published is not None
        indexes = [int(i) for i in published]
    read = {"type": EVENT, "consumer": "forward", "tracker": "t", "last_index": 0,
            "max_timeout_ms": 100}
    position = {"type": EVENT, "consumer": "forward"}
    with connect(server, "positions") as sock:
        op, body = ask(sock, Op.READ, 2, {**read, "store_position": [0, 128, indexes[2]]})
        assert [r[2] for r in records(body)[1]] == indexes[3:]
        op, body = ask(sock, Op.READ, 3, {**read, "store_position": [0, 128, indexes[0]]})
        # Not back to indexes[0]: what comes is what follows indexes[2] (still not stored past)
        assert [r[2] for r in records(body)[1]] == indexes[3:]
        op, body = ask(sock, Op.GET_POSITION, 4, position)
        assert decode_control(body) == {"position": [[0, 128], indexes[2]]}
        # 2**64 - 1 marks a segment without a position: no index can be stored as it
        op, body = ask(sock, Op.STORE_POSITION, 5, {
            **position, "segment": [0, 128], "last_index": 2**64 - 1})
        assert error_code(op, body) == "bad_request"
        op, body = ask(sock, Op.GET_POSITION, 6, position)
        assert decode_control(body) == {"position": [[0, 128], indexes[2]]}


def test_parked_reads_of_a_connection_each_end_at_their_own_deadline(
        server: ServerProcess) -> None:
    """Reads of one connection share one timer: a later READ with a nearer deadline still
    ends first, a read answered before its deadline gets nothing more, and the reads answered
    at once (many) do not hold up the next one's empty batch."""
    with Client.connect(server.address, token=TOKEN, name="publisher") as client:
        index = client.publish(MessageType.EVENT, b"one", type="T")
        assert isinstance(index, int)
    with connect(server, "deadlines") as sock:
        for request_id in range(2, 202):  # answered at once: their deadlines never fire
            op, body = ask(sock, Op.READ, request_id, {
                "type": EVENT, "consumer": f"c{request_id}", "tracker": "t",
                "last_index": 0, "client_index": True, "max_timeout_ms": 100})
            assert len(records(body)[1]) == 1
        caught_up = {"type": EVENT, "tracker": "t", "client_index": True, "last_index": index}
        sock.sendall(control(Op.READ, 300, {**caught_up, "consumer": "far",
                                            "max_timeout_ms": 5000}))
        sock.sendall(control(Op.READ, 301, {**caught_up, "consumer": "near",
                                            "max_timeout_ms": 100}))
        op, request_id, body = read_frame(sock)
        assert (op, request_id, records(body)[1]) == (Op.BATCH, 301, [])
        assert select.select([sock], [], [], 0)[0] == []  # "far" is still waiting
        op, request_id, body = read_frame(sock)
        assert (op, request_id, records(body)[1]) == (Op.BATCH, 300, [])
        assert select.select([sock], [], [], 0.3)[0] == []  # nothing else comes


def test_a_last_index_out_of_range_is_refused_naming_the_field(server: ServerProcess) -> None:
    base = {"type": EVENT, "consumer": "range", "tracker": "t", "max_timeout_ms": 0}
    with connect(server, "read-range") as sock:
        for request_id, last_index in enumerate([-1, -(1 << 40), (1 << 64) - 1], 2):
            op, body = ask(sock, Op.READ, request_id, {**base, "last_index": last_index})
            assert error_code(op, body) == "bad_request"
            assert "last_index" in decode_control(body)["message"]
        op, body = ask(sock, Op.READ, 9, {**base, "last_index": 0})
        assert op == Op.BATCH
