"""The server's CPU time per 1,000 request/response round trips, a measure that a loaded
machine distorts far less than latency: the server process's user + system CPU
(/proc/PID/stat) over `count` round trips one in flight (sync `Client`, requester and handler
in this process), or, with `in_flight`, that many requests waiting at once.

`python bench/run.py --suite service --server-cpu [--requests N] [--in-flight N]
[--server-profile FILE]`; with `--server-profile` the server runs under cProfile and writes its
statistics to FILE when it stops (CPU figures are then not comparable with runs without it).
"""

from __future__ import annotations

import atexit
import contextlib
import cProfile
import os
import sys
import tempfile
import threading
from pathlib import Path

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.request_profile import WARMUP
from bench.servers import fluxcore_argv, fluxcore_ready, free_port, running_server

TOKEN = "bench"


def _profiled_server(profile_path: str, argv: list[str]) -> int:
    from fluxcore import cli

    profiler = cProfile.Profile()

    def dump() -> None:
        profiler.disable()
        profiler.dump_stats(profile_path)

    atexit.register(dump)
    profiler.enable()
    return cli.main(argv)


def server_cpu(count: int = 3000, base: str | None = None, in_flight: int = 1,
               profile: str | None = None) -> str:
    """Runs `count` round trips; the server's CPU per 1,000 of them, as text."""
    with tempfile.TemporaryDirectory(dir=base, prefix="fluxcore-cpu-") as scratch:
        directory = Path(scratch)
        (directory / "data").mkdir()
        port = free_port()
        argv = fluxcore_argv(port, directory, TOKEN)
        if profile is not None:
            argv = [argv[0], str(Path(__file__).resolve()), "--profiled-server",
                    str(Path(profile).resolve()), *argv[3:]]
        count = count // in_flight * in_flight
        with running_server("fluxcore", argv, port, directory, ready=fluxcore_ready) as server:
            user, system = _run(server.address, server.process.pid, count, in_flight)
    per_trip = (user + system) / count * 1e6
    return (f"server CPU per 1,000 round trips ({count} requests, {in_flight} in flight, sync"
            f" Client, 100-byte payload): {per_trip:.0f} ms, of which user"
            f" {user / count * 1e6:.0f} ms, system {system / count * 1e6:.0f} ms")


def _process_cpu(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _run(address: str, pid: int, count: int, in_flight: int) -> tuple[float, float]:
    from fluxcore.client import Client, MessageType

    payload = bytes(100)
    requester = Client.connect(address, token=TOKEN, name="requester")
    handler_client = Client.connect(address, token=TOKEN, name="handler")
    try:
        handler_client.consume("cpu", MessageType.COMMAND, lambda message: bytes(message.data))
        for _ in range(20):  # the handler starts reading at "now"
            with contextlib.suppress(TimeoutError):
                requester.request(MessageType.COMMAND, payload, timeout=2)
                break
        for _ in range(WARMUP):
            requester.request(MessageType.COMMAND, payload, type="Cpu")

        def requests(n: int) -> None:
            for _ in range(n):
                requester.request(MessageType.COMMAND, payload, type="Cpu")

        user, system = _process_cpu(pid)
        if in_flight == 1:
            requests(count)
        else:
            threads = [threading.Thread(target=requests, args=(count // in_flight,))
                       for _ in range(in_flight)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        user_after, system_after = _process_cpu(pid)
        return user_after - user, system_after - system
    finally:
        handler_client.close()
        requester.close()


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--profiled-server":
        sys.exit(_profiled_server(sys.argv[2], sys.argv[3:]))
    print(server_cpu())
