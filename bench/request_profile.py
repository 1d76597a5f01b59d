"""Where the time of one request/response round trip goes, hop by hop.

`python bench/run.py --suite service --profile-request` starts a fluxcore server whose
sessions record a timestamp at each step of the request path, connects a requester and a
handler (as the service suite does), sends requests one at a time, and prints the median and
p90 of each hop. Timestamps are `time.perf_counter_ns()` (CLOCK_MONOTONIC on Linux, one clock
for every process of the machine), recorded by thin wrappers installed in this process (the
clients) and in the server process (this file run as a script wraps the server's methods
before serving), so the product code carries no profiling hooks.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.servers import fluxcore_argv, fluxcore_ready, free_port, running_server

TOKEN = "bench"
WARMUP = 300

# (name, what ends the hop); each hop starts where the previous one ended.
HOPS = (
    ("client send", "the requester's frame is written (socket send returned)"),
    ("to server", "the server's event loop gets the bytes (kernel, loopback, loop wake-up)"),
    ("server parse + COMMAND append", "the request is in the COMMAND log"),
    ("handler's parked READ wakes", "its batch frame is built and written"),
    ("to handler's client", "the handler's client has the frame (reader thread, protocol)"),
    ("handler client: to the handler", "the handler function is called (thread or task)"),
    ("handler + RESULT frame sent", "the result frame is written"),
    ("to server (result)", "the server's event loop gets the result bytes"),
    ("server parse + RESULT append", "the result is in the RESULT log"),
    ("requester's parked READ wakes", "its batch frame is built and written"),
    ("to requester's client", "the requester's client has the frame (reader thread, protocol)"),
    ("delivery to the caller", "request() returns the result"),
)

Event = tuple[int, str]  # (perf_counter_ns, what)


# -- the server side: run as a script, wraps the server's methods, then serves --------------


def _traced_server(trace_path: str, argv: list[str]) -> int:
    from fluxcore.server import project as project_module
    from fluxcore.server import session as session_module

    from fluxcore import cli
    from fluxcore._ext import _proto

    events: list[Event] = []
    clock = time.perf_counter_ns
    record = events.append
    session_cls = session_module.Session
    project_cls = project_module.Project

    buffer_updated = session_cls.buffer_updated
    delivered = session_cls.delivered
    appended = project_cls.appended

    def traced_buffer_updated(self: Any, nbytes: int) -> None:
        record((clock(), f"server recv {self.client_name}"))
        buffer_updated(self, nbytes)

    def traced_delivered(self: Any, frame: bytes, count: int) -> None:
        record((clock(), f"server batch to {self.client_name}"))
        delivered(self, frame, count)

    send_each = _proto.frame_send_each

    def traced_send_each(frame: bytes, transports: list[Any], *args: Any) -> int:
        # Parked READs answered with their group's frame (server/reads.py), written here;
        # recorded before, as `delivered` is (the frame may arrive before this call returns).
        now = clock()
        for transport in transports:
            record((now, f"server batch to {transport.get_protocol().client_name}"))
        return send_each(frame, transports, *args)

    def traced_appended(self: Any, log: str) -> None:
        record((clock(), f"server appended {log}"))
        appended(self, log)

    session_cls.buffer_updated = traced_buffer_updated  # type: ignore[method-assign]
    session_cls.delivered = traced_delivered  # type: ignore[method-assign]
    project_cls.appended = traced_appended  # type: ignore[method-assign]
    _proto.frame_send_each = traced_send_each  # type: ignore[assignment]

    def dump() -> None:
        Path(trace_path).write_text(json.dumps(events))

    atexit.register(dump)
    return cli.main(argv)


# -- the client side ----------------------------------------------------------------------


def _wrap(obj: Any, name: str, record: Callable[[Event], None], label: str,
          sent: bool = False) -> None:
    """Records `label` when obj.name is called; with `sent`, when obj._send returns for a
    frame that expects no answer (a request's APPEND or a handler's RESULT, not a READ), or
    for a READ that carries a handler's results ahead of it."""
    original = getattr(obj, name)
    clock = time.perf_counter_ns

    def traced(*args: Any, **kwargs: Any) -> Any:
        if not sent:
            record((clock(), label))
        result = original(*args, **kwargs)
        if sent and (result is None or kwargs.get("prefix") or (len(args) > 3 and args[3])):
            record((clock(), label))
        return result

    setattr(obj, name, traced)


def _round_trips(events: list[Event], count: int) -> list[list[int]]:
    """Per round trip, the end time of each hop (ns), found in order in the merged events."""
    steps = (
        "requester sent",
        "server recv requester",
        "server appended command",
        "server batch to handler",
        "handler frame in",
        "handler called",
        "handler sent",
        "server recv handler",
        "server appended result",
        "server batch to requester",
        "requester frame in",
        "request returned",
    )
    starts = [i for i, (_t, what) in enumerate(events) if what == "request start"]
    trips = []
    for first, end in zip(starts, [*starts[1:], len(events)], strict=True):
        times = [events[first][0]]
        position = first
        for step in steps:
            while position < end and events[position][1] != step:
                position += 1
            if position == end:
                break  # a hop of this round trip was not seen (say, an early timeout)
            times.append(events[position][0])
        else:
            trips.append(times)
    return trips[-count:]


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def profile_request(count: int = 2000, base: str | None = None, asynchronous: bool = False
                    ) -> str:
    """Runs `count` requests one in flight against a tracing server; the breakdown as text.
    `asynchronous`: AsyncClient for the requester and the handler, in one event loop."""
    with tempfile.TemporaryDirectory(dir=base, prefix="fluxcore-profile-") as scratch:
        directory = Path(scratch)
        (directory / "data").mkdir()
        trace_path = directory / "server-trace.json"
        port = free_port()
        argv = fluxcore_argv(port, directory, TOKEN)
        argv = [argv[0], str(Path(__file__).resolve()), "--traced-server", str(trace_path),
                *argv[3:]]
        events: list[Event] = []
        with running_server("fluxcore", argv, port, directory, ready=fluxcore_ready) as server:
            run = _run_async if asynchronous else _run_sync
            client_cpu, server_cpu = run(server.address, server.process.pid, count, events)
        server_events = [tuple(e) for e in json.loads(trace_path.read_text())]
    client = "AsyncClient (requester and handler in one event loop)" if asynchronous else (
        "Client (requester and handler in one process, a thread each)")
    merged = sorted([*events, *server_events])  # type: ignore[list-item]
    trips = _round_trips(merged, count)  # type: ignore[arg-type]
    lines = [f"one request/response round trip through {client}: {len(trips)} requests (of"
             f" {count} with every hop seen), one in flight, 100-byte payload; microseconds per"
             " hop", "",
             f"{'hop':34} {'p50':>8} {'p90':>8}  ends when"]
    for index, (name, ends) in enumerate(HOPS):
        spans = [(trip[index + 1] - trip[index]) / 1e3 for trip in trips]
        lines.append(f"{name:34} {_percentile(spans, 0.5):8.1f} "
                     f"{_percentile(spans, 0.9):8.1f}  {ends}")
    totals = [(trip[-1] - trip[0]) / 1e3 for trip in trips]
    lines.append(f"{'round trip (total)':34} {_percentile(totals, 0.5):8.1f} "
                 f"{_percentile(totals, 0.9):8.1f}")
    lines.append("")
    lines.append(f"CPU time per round trip: {client_cpu / count * 1e6:.0f} us in the client"
                 f" process (requester and handler), {server_cpu / count * 1e6:.0f} us in the"
                 " server")
    return "\n".join(lines)


def _run_sync(address: str, pid: int, count: int, events: list[Event]
              ) -> tuple[float, float]:
    from fluxcore.client import Client, MessageType

    payload = bytes(100)
    record = events.append
    clock = time.perf_counter_ns
    requester = Client.connect(address, token=TOKEN, name="requester")
    handler_client = Client.connect(address, token=TOKEN, name="handler")
    try:
        def handle(message: Any) -> bytes:
            record((clock(), "handler called"))
            return bytes(message.data)

        handler_client.consume("profiled", MessageType.COMMAND, handle)
        for _ in range(20):  # the handler starts reading at "now"
            with contextlib.suppress(TimeoutError):
                requester.request(MessageType.COMMAND, payload, timeout=2)
                break
        for _ in range(WARMUP):
            requester.request(MessageType.COMMAND, payload, type="Profiled")
        _wrap(requester, "_send", record, "requester sent", sent=True)
        _wrap(requester, "_deliver", record, "requester frame in")
        _wrap(handler_client, "_send", record, "handler sent", sent=True)
        _wrap(handler_client, "_deliver", record, "handler frame in")
        request = requester.request
        client_cpu, server_cpu = _cpu_seconds(), _process_cpu_seconds(pid)
        for _ in range(count):
            record((clock(), "request start"))
            request(MessageType.COMMAND, payload, type="Profiled")
            record((clock(), "request returned"))
        return _cpu_seconds() - client_cpu, _process_cpu_seconds(pid) - server_cpu
    finally:
        handler_client.close()
        requester.close()


def _run_async(address: str, pid: int, count: int, events: list[Event]
               ) -> tuple[float, float]:
    from bench.common import new_event_loop
    from fluxcore.client import AsyncClient, MessageType

    payload = bytes(100)
    record = events.append
    clock = time.perf_counter_ns

    async def main() -> tuple[float, float]:
        requester = await AsyncClient.connect(address, token=TOKEN, name="requester")
        handler_client = await AsyncClient.connect(address, token=TOKEN, name="handler")
        try:
            def handle(message: Any) -> bytes:
                record((clock(), "handler called"))
                return bytes(message.data)

            await handler_client.consume("profiled", MessageType.COMMAND, handle)
            for _ in range(20):  # the handler starts reading at "now"
                with contextlib.suppress(TimeoutError):
                    await requester.request(MessageType.COMMAND, payload, timeout=2)
                    break
            for _ in range(WARMUP):
                await requester.request(MessageType.COMMAND, payload, type="Profiled")
            _wrap(requester, "_write", record, "requester sent", sent=True)
            _wrap(requester, "_deliver", record, "requester frame in")
            _wrap(handler_client, "_write", record, "handler sent", sent=True)
            _wrap(handler_client, "_deliver", record, "handler frame in")
            request = requester.request
            client_cpu, server_cpu = _cpu_seconds(), _process_cpu_seconds(pid)
            for _ in range(count):
                record((clock(), "request start"))
                await request(MessageType.COMMAND, payload, type="Profiled")
                record((clock(), "request returned"))
            return _cpu_seconds() - client_cpu, _process_cpu_seconds(pid) - server_cpu
        finally:
            await handler_client.close()
            await requester.close()

    loop = new_event_loop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _process_cpu_seconds(pid: int) -> float:
    """User + system CPU of another process (Linux /proc), 0 where there is none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--traced-server":
        sys.exit(_traced_server(sys.argv[2], sys.argv[3:]))
    print(profile_request(asynchronous="--async" in sys.argv))
