"""The `fluxcore` command: look into, check and feed an embedded log from the shell; run the
service; summarize what is connected to it."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import signal
import sys
from collections.abc import Sequence

from fluxcore.errors import LogError
from fluxcore.log import Log
from fluxcore.protocol import ProtocolError


def _cmd_stats(args: argparse.Namespace) -> int:
    with Log(args.path, readonly=True) as log:
        print(json.dumps(log.stats(), indent=2))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    if args.repair:
        with Log(args.path, repair=True) as log:
            print(json.dumps({"recovery": log.recovery, "records": log.verify()}))
        return 0
    with Log(args.path, readonly=True) as log:
        print(json.dumps({"records": log.verify()}))
    return 0


def _cmd_append(args: argparse.Namespace) -> int:
    with Log(args.path, fsync=args.fsync) as log:
        lines = [line.rstrip(b"\n") for line in sys.stdin.buffer]
        indexes = log.append_batch(lines, keys=[args.key] * len(lines) if args.key else None)
        print(json.dumps({"appended": len(indexes), "last_index": log.last_index}))
    return 0


def _cmd_tail(args: argparse.Namespace) -> int:
    with Log(args.path, readonly=True) as log:
        after = 0
        if args.since_ms is not None:
            first = log.find_time(args.since_ms)
            after = first - 1 if first is not None else log.last_index
        elif args.follow:
            after = log.last_index
        timeout = None if args.follow else 0.0
        out = sys.stdout.buffer
        for batch in log.tail(after, timeout=timeout):
            for index, payload in batch:
                out.write(b"%d %d " % (index, index >> 16) + payload + b"\n")
            out.flush()
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    # The server is a layer above this package; it is looked up only when asked for, so that
    # nothing in fluxcore depends on it.
    server = importlib.import_module("fluxcore.server")
    config = server.ServerConfig.from_sources(
        args.config, data_dir=args.data, host=args.host, port=args.port, token=args.token,
        tokens_file=args.tokens, fsync=args.fsync, tls_cert=args.tls_cert, tls_key=args.tls_key,
        unix_path=args.unix,
    )
    if not config.tokens.by_project and config.tokens.default is None:
        print("fluxcore: no --token or --tokens given: every project accepts the token 'dev'",
              file=sys.stderr)
        config = dataclasses.replace(config, tokens=server.Tokens(default="dev"))
    return int(server.run(config))


def _cmd_metrics(args: argparse.Namespace) -> int:
    # The client is a layer above the log too: imported only for this command.
    client_module = importlib.import_module("fluxcore.client")
    summary = importlib.import_module("fluxcore.client.metrics")
    with client_module.Client.connect(args.address, token=args.token, name="fluxcore-cli",
                                      project=args.project, reconnect=False) as client:
        print(json.dumps(summary.metrics_summary(client, args.since_s), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fluxcore", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the service on its embedded storage")
    p.add_argument("--data", help="data directory (FLUXCORE_DATA_DIR)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default 8765; 0 picks a free one)")
    p.add_argument("--unix", help="also listen on this Unix socket path (FLUXCORE_UNIX_PATH)")
    p.add_argument("--token", help="the token of every project")
    p.add_argument("--tokens", help='JSON file {"project": "token", "*": "default"}')
    p.add_argument("--fsync", choices=["never", "interval", "always"])
    p.add_argument("--tls-cert", help="PEM certificate: serve TLS")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--config", help="TOML file with the same keys (data_dir, port, ...)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("stats", help="print a log's counters and sizes as JSON")
    p.add_argument("path")
    p.set_defaults(func=_cmd_stats)

    p = sub.add_parser("verify", help="CRC-check every record of a log")
    p.add_argument("path")
    p.add_argument("--repair", action="store_true", help="open as writer and truncate damage")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("append", help="append each line of stdin as one record")
    p.add_argument("path")
    p.add_argument("--key", help="routing key of every record")
    p.add_argument("--fsync", default="interval", choices=["never", "interval", "always"])
    p.set_defaults(func=_cmd_append)

    p = sub.add_parser("tail", help="print records as 'index millis payload' lines")
    p.add_argument("path")
    p.add_argument("-f", "--follow", action="store_true", help="wait for new records")
    p.add_argument("--since-ms", type=int, help="start at this time (epoch ms): time travel")
    p.set_defaults(func=_cmd_tail)

    p = sub.add_parser("metrics", help="summarize a project's METRICS log on a server as JSON")
    p.add_argument("address", help="host:port of the server")
    p.add_argument("--token", required=True, help="the project's token")
    p.add_argument("--project", default="public")
    p.add_argument("--since-s", type=float, default=300.0, help="look this far back")
    p.set_defaults(func=_cmd_metrics)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # The reader of our output went away (`fluxcore tail DIR | head`): stop quietly, as
        # other tools do; stdout goes to /dev/null so the interpreter's last flush is quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except (LogError, OSError, ValueError, ProtocolError) as exc:
        print(f"fluxcore: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
