"""What consume_per_message_typed costs the consumer process, in instructions per message.

`python bench/typed_consume_instructions.py [--metrics on off]` starts a fluxcore server
(normally), publishes 25,000 BenchOrder JSON events as the service suite's fill does, and runs
the row's consumer (a Microclient, `@handle_event` of a BenchOrder, max_batch=1000) in a
child process under valgrind (callgrind), once for 5,000 messages and once for 25,000: the
difference over 20,000 messages is the consumer's cost per message (reading the batches,
decoding, dispatch, the handler, metrics), which no load on the machine moves. memcpy is
overcounted under valgrind (a `rep movsb` counts per byte), so frame copies weigh more here than
in time. Prints JSON rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import make_dataset
from bench.service_fluxcore import FluxcoreSystem, consume_typed_orders

SMALL, LARGE = 5_000, 25_000
WAIT_S = 900.0


def instructions(address: str, first: int, count: int, metrics: str, name: str) -> int:
    env = dict(os.environ, PYTHONHASHSEED="0", OPENBLAS_NUM_THREADS="1")
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         str(Path(__file__).resolve()), "--consume", address, str(first), str(count), metrics,
         name], capture_output=True, text=True, env=env, check=True)
    for line in done.stderr.splitlines():
        if "Collected :" in line:
            return int(line.split()[-1])
    raise RuntimeError(f"no instruction count from valgrind: {done.stderr[-500:]}")


def rows(metrics_modes: list[str]) -> list[dict[str, Any]]:
    out = []
    with tempfile.TemporaryDirectory() as directory:
        system = FluxcoreSystem(Path(directory), make_dataset())
        try:
            system.fill_typed(LARGE)
            first = system.typed_first
            address = system.address
            assert first is not None
            for metrics in metrics_modes:
                small = instructions(address, first, SMALL, metrics, f"cg-{metrics}-small")
                large = instructions(address, first, LARGE, metrics, f"cg-{metrics}-large")
                out.append({"name": f"consume_per_message_typed_instructions_metrics_{metrics}",
                            "system": "fluxcore", "unit": "instructions/msg",
                            "value": round((large - small) / (LARGE - SMALL)),
                            "n": LARGE - SMALL})
        finally:
            system.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", nargs="+", choices=("on", "off"), default=["on", "off"])
    parser.add_argument("--consume", nargs=5, metavar=("ADDRESS", "FIRST", "COUNT", "METRICS",
                                                       "NAME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.consume:
        address, first, count, metrics, name = args.consume
        consume_typed_orders(name, int(first), int(count), metrics == "on", WAIT_S,
                             address=address)
        return
    print(json.dumps(rows(args.metrics), indent=1))


if __name__ == "__main__":
    main()
