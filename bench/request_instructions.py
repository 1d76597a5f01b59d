"""What a request/response round trip costs the client process, in instructions.

`python bench/request_instructions.py [--clients sync async]` starts a fluxcore server
(normally) and runs a requester and a handler (`Client`, or `AsyncClient` in one event loop; a
consumer answering each request with its payload; one process, one request in flight, 100-byte
payload) in a child process under valgrind (callgrind), once for
200 and once for 1,200 round trips: the difference over 1,000 is the client process's cost per
round trip (both clients' sending, reading, decoding and waking), which no load on the machine
moves. The server's and the kernel's parts are not counted. Prints a JSON row.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.servers import fluxcore_argv, fluxcore_ready, free_port, running_server

TOKEN = "bench-token"
SMALL, LARGE = 200, 1_200


def round_trips(address: str, count: int) -> None:
    """`count` requests one in flight, after a warm-up that the handler has answered."""
    from fluxcore.client import Client, MessageType

    payload = bytes(100)
    requester = Client.connect(address, token=TOKEN, name="requester")
    handler_client = Client.connect(address, token=TOKEN, name="handler")
    try:
        def handle(message: Any) -> bytes:
            return bytes(message.data)

        handler_client.consume("counted", MessageType.COMMAND, handle)
        for _ in range(20):  # the handler starts reading at "now"
            with contextlib.suppress(TimeoutError):
                requester.request(MessageType.COMMAND, payload, timeout=5)
                break
        for _ in range(count):
            requester.request(MessageType.COMMAND, payload, type="Counted", timeout=60)
    finally:
        handler_client.close()
        requester.close()


def async_round_trips(address: str, count: int) -> None:
    """round_trips with AsyncClient: requester and handler in one event loop."""
    from bench.common import new_event_loop
    from fluxcore.client import AsyncClient, MessageType

    payload = bytes(100)

    async def main() -> None:
        requester = await AsyncClient.connect(address, token=TOKEN, name="requester")
        handler_client = await AsyncClient.connect(address, token=TOKEN, name="handler")
        try:
            def handle(message: Any) -> bytes:
                return bytes(message.data)

            await handler_client.consume("counted", MessageType.COMMAND, handle)
            for _ in range(20):
                with contextlib.suppress(TimeoutError):
                    await requester.request(MessageType.COMMAND, payload, timeout=5)
                    break
            for _ in range(count):
                await requester.request(MessageType.COMMAND, payload, type="Counted",
                                        timeout=60)
        finally:
            await handler_client.close()
            await requester.close()

    loop = new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def instructions(address: str, count: int, clients: str) -> int:
    env = dict(os.environ, PYTHONHASHSEED="0", OPENBLAS_NUM_THREADS="1")
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         str(Path(__file__).resolve()), "--run", address, str(count), clients],
        capture_output=True, text=True, env=env, check=True)
    for line in done.stderr.splitlines():
        if "Collected :" in line:
            return int(line.split()[-1])
    raise RuntimeError(f"no instruction count from valgrind: {done.stderr[-500:]}")


def rows(modes: list[str]) -> list[dict[str, Any]]:
    out = []
    with tempfile.TemporaryDirectory(prefix="fluxcore-rtt-") as scratch:
        directory = Path(scratch)
        (directory / "data").mkdir()
        port = free_port()
        argv = fluxcore_argv(port, directory, TOKEN)
        with running_server("fluxcore", argv, port, directory, ready=fluxcore_ready) as server:
            for clients in modes:
                small = instructions(server.address, SMALL, clients)
                large = instructions(server.address, LARGE, clients)
                out.append({"name": f"request_round_trip_client_instructions_{clients}",
                            "system": "fluxcore", "unit": "instructions/round trip",
                            "value": round((large - small) / (LARGE - SMALL)),
                            "n": LARGE - SMALL})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", nargs="+", choices=("sync", "async"),
                        default=["sync", "async"])
    parser.add_argument("--run", nargs=3, metavar=("ADDRESS", "COUNT", "CLIENTS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        address, count, clients = args.run
        (async_round_trips if clients == "async" else round_trips)(address, int(count))
        return
    print(json.dumps(rows(args.clients), indent=1))


if __name__ == "__main__":
    main()
