"""docs/protocol.md, checked by a client written from that page alone (tests/_raw.py) against a
real server: what no other test shows (DISCONNECT_TRACKER's waiting READ, the deadline range,
positions that never move back)."""

from __future__ import annotations

import struct
import time

from fluxcore.client import Guarantee, MessageType
from fluxcore.client._wire import Codec
from fluxcore.protocol import Op, decode_control

from ._raw import ask, connect, control, error_code, read_frame, records
from .service_harness import TOKEN, ServerProcess

EVENT = int(MessageType.EVENT)


def test_disconnect_tracker_answers_its_waiting_read(server: ServerProcess) -> None:
    with connect(server, "tracker-side") as sock:
        for final_empty_batch in (True, False):
            consumer = f"leaving-{final_empty_batch}"
            # One connection's frames are taken in order: the READ waits (60 s) when the
            # DISCONNECT_TRACKER behind it comes.
            sock.sendall(control(Op.READ, 5, {"type": EVENT, "consumer": consumer,
                                              "tracker": "t1", "max_timeout_ms": 60_000})
                         + control(Op.DISCONNECT_TRACKER, 6, {
                             "type": EVENT, "consumer": consumer, "tracker": "t1",
                             "final_empty_batch": final_empty_batch}))
            answers = {request_id: (op, body) for op, request_id, body in
                       (read_frame(sock), read_frame(sock))}
            op, body = answers[6]
            assert (op, decode_control(body)) == (Op.RESULT, {"ok": True})
            op, body = answers[5]
            assert op == Op.BATCH
            (start, end, _caught_up, _last_index), messages = records(body)
            assert (start, end, messages) == (0, 0, [])
            # the same tracker id joins again with its next READ
            sock.sendall(control(Op.READ, 7, {"type": EVENT, "consumer": consumer,
                                              "tracker": "t1", "max_timeout_ms": 0}))
            op, request_id, body = read_frame(sock)
            assert (op, request_id) == (Op.BATCH, 7) and records(body)[0][:2] == (0, 128)
        op, body = ask(sock, Op.DISCONNECT_TRACKER, 8, {
            "type": EVENT, "consumer": "leaving-True", "tracker": "nobody",
            "final_empty_batch": True})
        assert (op, decode_control(body)) == (Op.RESULT, {"ok": False})


def test_schedule_deadlines_from_0_to_2_pow_47_minus_1(server: ServerProcess) -> None:
    codec = Codec("scheduler", "raw", "public", TOKEN)
    with connect(server, "scheduler") as sock:
        for request_id, deadline, accepted in [(1, (1 << 47) - 1, True), (2, 1 << 47, False),
                                               (3, -1, False)]:
            sock.sendall(codec.schedule(request_id, [(f"s{request_id}", deadline, False)],
                                        [b"payload"], payload_type="T"))
            op, answered, body = read_frame(sock)
            assert answered == request_id
            if accepted:
                assert (op, decode_control(body)) == (Op.RESULT, {"stored": [True]})
            else:
                assert error_code(op, body) == "bad_request"
        _op, body = ask(sock, Op.GET_SCHEDULE, 4, {"id": "s1"})
        assert decode_control(body)["schedule"]["deadline"] == (1 << 47) - 1
        _op, body = ask(sock, Op.GET_SCHEDULE, 5, {"id": "s2"})
        assert decode_control(body) == {"schedule": None}  # nothing stored by a refused one


def test_store_position_never_moves_back_but_reset_does(server: ServerProcess) -> None:
    with connect(server, "positions") as sock:
        for request_id, (segment, index) in enumerate([((0, 128), 100), ((0, 64), 50),
                                                       ((64, 128), 200)], start=1):
            _op, body = ask(sock, Op.STORE_POSITION, request_id, {
                "type": EVENT, "consumer": "c", "segment": list(segment), "last_index": index})
            assert decode_control(body) == {"ok": True}
        _op, body = ask(sock, Op.GET_POSITION, 10, {"type": EVENT, "consumer": "c"})
        assert decode_control(body) == {"position": [[0, 64], 100, [64, 128], 200]}
        _op, body = ask(sock, Op.RESET_POSITION, 11, {"type": EVENT, "consumer": "c",
                                                     "last_index": 7})
        assert decode_control(body) == {"ok": True}
        _op, body = ask(sock, Op.GET_POSITION, 12, {"type": EVENT, "consumer": "c"})
        assert decode_control(body) == {"position": [[0, 128], 7]}


def test_a_new_consumer_starts_one_second_before_its_first_read(server: ServerProcess) -> None:
    """A READ of a consumer with no position and no last_index reads after "now" minus one
    second at the server: a message stored in that second is delivered, an older one is not."""
    codec = Codec("newcomer", "raw", "public", TOKEN)
    with connect(server, "newcomer") as sock:
        sock.sendall(codec.append(1, MessageType.EVENT, [b"old"], payload_type="T",
                                  guarantee=Guarantee.STORED))
        assert read_frame(sock)[:2] == (Op.ACK, 1)
        time.sleep(1.5)  # "old" is now more than a second old
        # The APPEND and the READ in one write: the READ comes well within a second of it.
        sock.sendall(codec.append(2, MessageType.EVENT, [b"new"], payload_type="T",
                                  guarantee=Guarantee.STORED)
                     + control(Op.READ, 3, {"type": EVENT, "consumer": "newcomer",
                                            "tracker": "t1", "max_timeout_ms": 10_000}))
        answers = {request_id: (op, body) for op, request_id, body in
                   (read_frame(sock), read_frame(sock))}
        op, ack = answers[2]
        assert op == Op.ACK
        (new_index,) = struct.unpack_from("<Q", ack)
        op, body = answers[3]
        assert op == Op.BATCH
        _header, messages = records(body)
        assert [index for _length, _crc, index, _segment, _message, _record in messages] == [
            new_index]
