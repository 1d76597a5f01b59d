"""Only the service suite's consume_per_message_typed row, with handler metrics on and off in
alternation against one server: quicker than the whole suite while working on the microclients.

`python bench/typed_consume.py [--messages 300000] [--rounds 5]` fills the log as the suite
does (FluxcoreSystem.fill_typed) and runs the row's consumer (FluxcoreSystem.consume_typed)
`rounds` times each way. Prints JSON rows (medians, msg/s) with every run's rate and the load
average: on a shared machine the spread says more than one figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import make_dataset
from bench.service_fluxcore import FluxcoreSystem


def rows(messages: int, rounds: int) -> list[dict[str, Any]]:
    rates: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as directory:
        system = FluxcoreSystem(Path(directory), make_dataset())
        try:
            system.fill_typed(messages)
            for _ in range(rounds):
                for metrics in (True, False):
                    done = system.consume_typed(messages, metrics=metrics)
                    if done.count != messages:
                        raise RuntimeError(f"consumed {done.count}, expected {messages}")
                    rates[metrics].append(done.count / done.seconds)
        finally:
            system.close()
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return [{"name": "consume_per_message_typed" + ("" if metrics else "_metrics_off"),
             "system": "fluxcore", "unit": "msg/s", "value": round(statistics.median(values)),
             "n": messages, "runs": [round(v) for v in values], "load_average": load}
            for metrics, values in rates.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(rows(args.messages, args.rounds), indent=1))


if __name__ == "__main__":
    main()
