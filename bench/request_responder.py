"""A request handler in a process of its own, for the `_2proc` request rows.

Real requesters and handlers are different services. The in-process rows put the requester
and the handler in one Python process (for the blocking client: four threads and one GIL); the
`_2proc` rows run the handler here instead, the same way for every system:

python bench/request_responder.py KIND ADDRESS

KIND is `fluxcore` (a `Client` consumer), `fluxcore-async` (an `AsyncClient` consumer on
uvloop) or `nats` (nats-py on uvloop, subscribed to the subject the requester uses). The
handler returns the request's payload. "ready" goes to stdout once it is subscribed; it runs
until its stdin is closed (the harness closes it, or dies), then disconnects.
"""

from __future__ import annotations

import asyncio
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import new_event_loop
from bench.servers import _die_with_parent

KINDS = ("fluxcore", "fluxcore-async", "nats")
TOKEN = "bench"
CONSUMER = "bench-responder"  # the in-process responders' consumer: it takes their place
NATS_SUBJECT = "requests"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


class ResponderProcess:
    """The handler process of one system: started ready, stopped by close()."""

    def __init__(self, kind: str, address: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"responder kind is one of {KINDS}, not {kind!r}")
        self.kind = kind
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), kind, address],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, preexec_fn=_die_with_parent)
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _wait_ready(self) -> None:
        assert self.process.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.process.stdout], [], [], left)[0]:
                raise RuntimeError(f"the {self.kind} responder was not ready in"
                                   f" {READY_TIMEOUT_S:.0f} s")
            chunk = os.read(self.process.stdout.fileno(), 64)
            if not chunk:
                raise RuntimeError(f"the {self.kind} responder exited with"
                                   f" {self.process.wait()} before it was ready")
            line += chunk
        if line.strip() != b"ready":
            raise RuntimeError(f"the {self.kind} responder said {line!r}, not ready")

    @property
    def pid(self) -> int:
        return self.process.pid

    def close(self) -> None:
        """Closes its stdin (it disconnects and exits), killing it if it does not."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def _ready() -> None:
    sys.stdout.write("ready\n")
    sys.stdout.flush()


def _serve_fluxcore(address: str) -> None:
    from fluxcore.client import Client, MessageType

    with Client.connect(address, token=TOKEN, name="bench-responder-process") as client:
        consumer = client.consume(CONSUMER, MessageType.COMMAND, lambda m: m.data, trackers=1)
        _ready()
        sys.stdin.buffer.read()  # until EOF
        consumer.stop()


async def _stdin_closed() -> None:
    loop = asyncio.get_running_loop()
    closed = loop.create_future()

    def readable() -> None:
        if not os.read(0, 4096) and not closed.done():
            closed.set_result(None)

    loop.add_reader(0, readable)
    try:
        await closed
    finally:
        loop.remove_reader(0)


async def _serve_fluxcore_async(address: str) -> None:
    from fluxcore.client import AsyncClient, MessageType

    client = await AsyncClient.connect(address, token=TOKEN, name="bench-responder-process")
    try:
        await client.consume(CONSUMER, MessageType.COMMAND, lambda m: m.data, trackers=1)
        _ready()
        await _stdin_closed()
    finally:
        await client.close()


async def _serve_nats(address: str) -> None:
    import nats

    nc = await nats.connect(address, allow_reconnect=False, connect_timeout=5)

    async def respond(message: Any) -> None:
        await message.respond(message.data)

    try:
        await nc.subscribe(NATS_SUBJECT, cb=respond)
        await nc.flush()
        _ready()
        await _stdin_closed()
    finally:
        await nc.close()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in KINDS:
        print(f"usage: request_responder.py {{{'|'.join(KINDS)}}} ADDRESS", file=sys.stderr)
        return 2
    kind, address = argv
    if kind == "fluxcore":
        _serve_fluxcore(address)
        return 0
    loop = new_event_loop()
    try:
        if kind == "nats":
            loop.run_until_complete(_serve_nats(address))
        else:
            loop.run_until_complete(_serve_fluxcore_async(address))
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
