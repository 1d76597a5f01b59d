"""What the handler metrics cost the typed dispatch loop, in instructions (no server).

`python bench/metrics_overhead.py [--batches N] [--metrics on|off]` runs a Microclient's
batch steps (the loop of consume_per_message_typed: a `@handle_event` handler of a msgspec
Struct, ~100-byte JSON payloads, batches of 1,000) over real decoded Messages in this process,
with handler metrics on or off; sending them is a no-op. Timing on a shared machine is noise, so
compare instruction counts instead, under valgrind (a run of 0 batches gives the start-up to
subtract):

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python bench/metrics_overhead.py --metrics on --batches 20

`--callgrind` does exactly that (0 batches, then N with metrics on and off, each under
valgrind with a fixed hash seed) and prints the rows: instructions per message with metrics on
and off, and what the metrics add, in % of the loop without them (the target is < 5 %).
Without valgrind it prints the wall-clock rate as a JSON row (a hint only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec

from bench.service_fluxcore import BenchOrder
from fluxcore._ext import _proto
from fluxcore.app import Microclient
from fluxcore.app.steps import run_sync
from fluxcore.client._wire import BatchReply
from fluxcore.protocol import batch_body

BATCH = 1000


class NoBackend:
    """The backend calls a batch of events makes: sending metrics, dropped here."""

    def send_metrics(self, payloads: list[tuple[str, bytes]]) -> None:
        pass


def messages(count: int) -> list[Any]:
    """`count` EVENT messages of BenchOrder JSON, decoded as a consumer gets them."""
    encoder = msgspec.json.Encoder()
    payloads = [encoder.encode(BenchOrder(f"order-{i:08d}", f"customer-{i % 977}", i % 10_000,
                                          "EUR", 1 + i % 9, "leave at the door"))
                for i in range(count)]
    frame, _ = _proto.encode_append(1, 2, 2, None, payloads, "BenchOrder", None, "bench",
                                    "0123456789ab-", 0)
    _type, _guarantee, _topic, offsets, segments, _first_id = _proto.append_parse(
        frame, 12, len(frame))
    body = bytes(frame)
    records = _proto.stream_records(body, offsets, segments, 0, count, 1 << 16)
    return BatchReply(batch_body(records)).messages


def instructions(batches: int, metrics: str) -> int:
    """Instructions of one run of this script under callgrind (every thread)."""
    env = dict(os.environ, PYTHONHASHSEED="0", OPENBLAS_NUM_THREADS="1")
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         str(Path(__file__).resolve()), "--batches", str(batches), "--metrics", metrics],
        capture_output=True, text=True, env=env, check=True)
    for line in done.stderr.splitlines():
        if "Collected :" in line:
            return int(line.split()[-1])
    raise RuntimeError(f"no instruction count from valgrind: {done.stderr[-500:]}")


def callgrind_rows(batches: int) -> list[dict[str, Any]]:
    start_up = instructions(0, "on")
    handled = batches * BATCH
    per_message = {metrics: (instructions(batches, metrics) - start_up) / handled
                   for metrics in ("on", "off")}
    cost = per_message["on"] - per_message["off"]
    rows: list[dict[str, Any]] = [
        {"name": f"typed_dispatch_instructions_metrics_{metrics}", "system": "fluxcore",
         "unit": "instructions/msg", "value": round(value), "n": handled}
        for metrics, value in per_message.items()]
    rows.append({"name": "typed_dispatch_metrics_cost", "system": "fluxcore", "unit": "%",
                 "value": round(100 * cost / per_message["off"], 1), "n": handled})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--metrics", choices=("on", "off"), default="on")
    parser.add_argument("--callgrind", action="store_true",
                        help="count instructions under valgrind: on, off and the cost in %%")
    args = parser.parse_args()
    if args.callgrind:
        print(json.dumps(callgrind_rows(args.batches), indent=1))
        return
    app = Microclient("bench-typed")
    events = app.consumer("bench-typed", max_batch=BATCH, metrics=args.metrics == "on")

    got = touched = 0

    @events.handle_event
    def handler(order: BenchOrder) -> None:  # as the service row's handler
        nonlocal got, touched
        got += 1
        touched += order.items

    (dispatcher,) = events.dispatchers()
    batch = messages(BATCH)
    backend = NoBackend()
    began = time.perf_counter()
    for _ in range(args.batches):
        run_sync(app.batch_steps(dispatcher, batch, ("tracker", (0, 128))), backend,
                 app.run_coroutine)
    seconds = time.perf_counter() - began
    handled = args.batches * BATCH
    if got != handled:
        raise RuntimeError(f"handled {got} of {handled} messages")
    print(json.dumps({"name": f"typed_dispatch_metrics_{args.metrics}", "system": "fluxcore",
                      "unit": "msg/s", "value": round(handled / seconds) if seconds else 0,
                      "n": handled}))


if __name__ == "__main__":
    main()
