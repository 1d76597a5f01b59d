"""Run a benchmark suite, print the table and write the JSON rows.

python bench/run.py --suite embedded --json FILE [--quick] [--dir DIR]
python bench/run.py --suite service --json FILE [--quick] [--dir DIR]
python bench/run.py --suite scale --json FILE [--quick] [--dir DIR] [--only ROW]
python bench/run.py --suite search --json FILE [--quick] [--documents N] [--dir DIR]
python bench/run.py --suite service --profile-request [--async] [--requests N]
python bench/run.py --suite service --paired-requests [--rounds N] [--two-process] [--unix]
python bench/run.py --suite service --server-cpu [--requests N] [--in-flight N] [--server-profile F]
python bench/run.py --suite service --read-path [--requests N]
python -m bench.run ...
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

if not __package__:
    # Run as a script: make the repository root importable so `bench.*` resolves.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    from bench import report

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--suite", choices=["embedded", "service", "scale", "search"],
                        default="embedded")
    parser.add_argument("--documents", type=int, default=None,
                        help="search suite: how many documents (default 1,000,000; quick 10,000)")
    parser.add_argument("--json", type=Path, help="where to write the rows (required)")
    parser.add_argument("--quick", action="store_true", help="small sizes: under a minute")
    parser.add_argument(
        "--dir",
        default=None,
        help="parent of the scratch directories "
        "(default: the system temp dir); put it on the disk you care about",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per row")
    parser.add_argument("--only", action="append", default=None,
                        help="scale suite: run only this measurement (connection_rows, "
                        "connection_100k_row, log_rows, wake_row, fanout_row, restart_row); "
                        "may repeat")
    parser.add_argument(
        "--profile-request",
        action="store_true",
        help="service suite: instead of the rows, time each hop of one request/response",
    )
    parser.add_argument("--requests", type=int, default=2000, help="with --profile-request")
    parser.add_argument(
        "--async",
        dest="asynchronous",
        action="store_true",
        help="with --profile-request: through AsyncClient instead of Client",
    )
    parser.add_argument(
        "--paired-requests",
        action="store_true",
        help="service suite: fluxcore's and NATS's request rows in alternating rounds",
    )
    parser.add_argument("--rounds", type=int, default=4, help="with --paired-requests")
    parser.add_argument(
        "--two-process",
        action="store_true",
        help="with --paired-requests: each system's responder in a process of its own",
    )
    parser.add_argument(
        "--unix",
        action="store_true",
        help="with --paired-requests: fluxcore over its Unix domain socket (NATS on TCP)",
    )
    parser.add_argument(
        "--server-cpu",
        action="store_true",
        help="service suite: the server's CPU time per 1,000 request/response round trips",
    )
    parser.add_argument("--in-flight", type=int, default=1, help="with --server-cpu")
    parser.add_argument(
        "--read-path",
        action="store_true",
        help="service suite: the server's CPU per step of a round trip, in-process, no sockets",
    )
    parser.add_argument("--server-profile", default=None,
                        help="with --server-cpu: run the server under cProfile, stats to this file")
    args = parser.parse_args(argv)
    if args.suite == "service" and args.paired_requests:
        from bench.request_pairs import paired_requests

        print(paired_requests(args.rounds, args.dir, args.two_process, args.unix))
        return 0
    if args.suite == "service" and args.read_path:
        from bench.read_path import read_path

        print(read_path(args.requests, args.dir))
        return 0
    if args.suite == "service" and args.server_cpu:
        from bench.server_cpu import server_cpu

        print(server_cpu(args.requests, args.dir, args.in_flight, args.server_profile))
        return 0
    if args.suite == "service" and args.profile_request:
        from bench.request_profile import profile_request

        print(profile_request(args.requests, args.dir, args.asynchronous))
        return 0
    if args.json is None:
        parser.error("--json FILE is required")
    suites = {"service": _service, "scale": _scale, "search": _search}
    results, columns = suites.get(args.suite, _embedded)(args)
    print(report.render(results, columns))
    report.write_json(results, args.json)
    print(f"\nwrote {len(results.rows)} rows to {args.json}")
    return 0


def _embedded(args: argparse.Namespace) -> tuple[Any, tuple[str, ...]]:
    from bench import report
    from bench.common import FULL, QUICK
    from bench.suite import run_embedded

    sizes = QUICK if args.quick else FULL
    if args.repeats is not None:
        sizes = dataclasses.replace(sizes, repeats=args.repeats)
    results = run_embedded(sizes, args.dir)
    report.add_machine_ratios(results)
    return results, report.COLUMNS


def _service(args: argparse.Namespace) -> tuple[Any, tuple[str, ...]]:
    from bench.service import SERVICE_COLUMNS, run_service
    from bench.service_workloads import SERVICE_FULL, SERVICE_QUICK

    sizes = SERVICE_QUICK if args.quick else SERVICE_FULL
    if args.repeats is not None:
        sizes = dataclasses.replace(sizes, repeats=args.repeats)
    return run_service(sizes, args.dir), SERVICE_COLUMNS


def _scale(args: argparse.Namespace) -> tuple[Any, tuple[str, ...]]:
    from bench.scale import SCALE_FULL, SCALE_QUICK, run_scale

    return run_scale(SCALE_QUICK if args.quick else SCALE_FULL, args.dir, args.quick,
                     args.only), ("fluxcore",)


def _search(args: argparse.Namespace) -> tuple[Any, tuple[str, ...]]:
    from bench.search import SEARCH_COLUMNS, SEARCH_FULL, SEARCH_QUICK, run_search

    sizes = SEARCH_QUICK if args.quick else SEARCH_FULL
    if args.documents is not None:
        sizes = dataclasses.replace(sizes, documents=args.documents)
    if args.repeats is not None:
        sizes = dataclasses.replace(sizes, repeats=args.repeats)
    return run_search(sizes, args.dir), SEARCH_COLUMNS


if __name__ == "__main__":
    sys.exit(main())
