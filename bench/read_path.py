"""The server's own CPU cost of each step of a request/response round trip, without sockets:
the frames a requester and a handler send are fed to two server sessions in this process (a
real Server, Project and logs in a scratch directory; a transport that keeps what the server
writes), one round trip at a time, and the thread CPU time of each step is summed. On a
loaded machine this moves far less than wall-clock latency. Instruction counts of the
server's part alone, which no load moves: run
`valgrind --tool=callgrind --toggle-collect=_operator_call python bench/read_path.py N` for two
values of N; the difference of the totals over the difference of N is per round trip.

`python bench/run.py --suite service --read-path [--requests N]`
"""

from __future__ import annotations

import operator
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STEPS = (
    ("request APPEND", "the COMMAND is stored, the handler's parked READ answers"),
    ("result APPEND", "the RESULT is stored, the requester's parked READ answers"),
    ("handler READ", "its position stored, its cluster entered, the READ parks"),
    ("requester READ", "the results READ parks"),
)


class _KeptWrites:
    """The transport side of a session: keeps the frames the server writes."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.frames.append(bytes(data))

    def take(self) -> list[bytes]:
        frames, self.frames = self.frames, []
        return frames

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _feed(session: Any, frame: bytes) -> None:
    # Through operator.call (C: _operator_call) so that callgrind can count this and only
    # this: --toggle-collect=_operator_call.
    operator.call(_received, session, frame)


def _received(session: Any, frame: bytes) -> None:
    view = session.get_buffer(len(frame))
    view[: len(frame)] = frame
    session.buffer_updated(len(frame))


def _batch(frames: list[bytes]) -> Any:
    from fluxcore.client._wire import BatchReply
    from fluxcore.protocol import Op

    if len(frames) != 1 or frames[0][4] != Op.BATCH:
        raise RuntimeError(f"expected one BATCH, got {len(frames)} frames")
    return BatchReply(frames[0][12:])


async def _trips(directory: Path, count: int) -> dict[str, float]:
    from fluxcore.client._wire import Codec, ConsumerSpec, TrackerCursor, results_spec
    from fluxcore.protocol import Guarantee, MessageType, Op
    from server.app import Server
    from server.config import ServerConfig, Tokens
    from server.session import Session

    server = Server(ServerConfig(data_dir=str(directory), fsync="interval",
                                 tokens=Tokens(default="bench")))
    codecs = {name: Codec(f"{name}-id", name, "public", "bench")
              for name in ("requester", "handler")}
    sessions, wires = {}, {}
    for name, codec in codecs.items():
        wires[name] = _KeptWrites()
        sessions[name] = Session(server)
        sessions[name].connection_made(wires[name])  # type: ignore[arg-type]
        _feed(sessions[name], codec.hello(1))
        welcome = wires[name].take()
        if not welcome or welcome[0][4] != Op.WELCOME:
            raise RuntimeError(f"no WELCOME: {welcome!r}")
    requester, handler = codecs["requester"], codecs["handler"]
    spec = ConsumerSpec("handler", MessageType.COMMAND, 1, False, None, None, 1024, 10_000,
                        None, None)
    handling = TrackerCursor(spec, handler, spec.tracker_ids(handler.client_id)[0])
    results = results_spec("requester")
    waiting = TrackerCursor(results, requester, results.tracker_ids(requester.client_id)[0])
    _feed(sessions["handler"], handler.control(Op.READ, 2, handling.request()))
    _feed(sessions["requester"], requester.control(Op.READ, 2, waiting.request()))
    payload = bytes(100)
    spent = dict.fromkeys((name for name, _ in STEPS), 0)
    clock = time.thread_time_ns
    warmup = 200
    for trip in range(count + warmup):
        number = requester.next_message_request_id()
        request = requester.append(0, MessageType.COMMAND, [payload], payload_type="Cpu",
                                   guarantee=Guarantee.SENT, message_request_id=number)
        t0 = clock()
        _feed(sessions["requester"], request)
        t1 = clock()
        reply = _batch(wires["handler"].take())
        handling.advance(reply)
        message = reply.messages[0]
        answer = handler.append(0, MessageType.RESULT, [bytes(message.data)],
                                payload_type="result", guarantee=Guarantee.SENT,
                                targets=[message.source], request_ids=[message.request_id])
        next_read = handler.control(Op.READ, 3 + trip, handling.request())
        t2 = clock()
        _feed(sessions["handler"], answer)
        t3 = clock()
        _feed(sessions["handler"], next_read)
        t4 = clock()
        result = _batch(wires["requester"].take())
        if result.messages[0].request_id != number:
            raise RuntimeError("the result went to the wrong request")
        waiting.advance(result)
        result_read = requester.control(Op.READ, 3 + trip, waiting.request())
        t5 = clock()
        _feed(sessions["requester"], result_read)
        t6 = clock()
        if wires["handler"].frames or wires["requester"].frames:
            raise RuntimeError("a READ answered when it should have parked")
        if trip >= warmup:
            spent["request APPEND"] += t1 - t0
            spent["result APPEND"] += t3 - t2
            spent["handler READ"] += t4 - t3
            spent["requester READ"] += t6 - t5
    for session in sessions.values():
        session.connection_lost(None)
    await server.stop()
    return {name: ns / count / 1e3 for name, ns in spent.items()}


def read_path(count: int = 5000, base: str | None = None) -> str:
    from bench.common import new_event_loop

    with tempfile.TemporaryDirectory(dir=base, prefix="fluxcore-read-path-") as scratch:
        loop = new_event_loop()
        try:
            costs = loop.run_until_complete(_trips(Path(scratch), count))
        finally:
            loop.close()
    lines = [f"server CPU (thread time) per step of a round trip, no sockets, {count} round"
             " trips, 100-byte payload; microseconds", ""]
    for name, ends in STEPS:
        lines.append(f"{name:16} {costs[name]:7.1f}  {ends}")
    lines.append(f"{'round trip':16} {sum(costs.values()):7.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(read_path(int(sys.argv[1]) if len(sys.argv) > 1 else 5000))
