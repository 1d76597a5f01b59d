"""Child-process side of the service tests: a fluxcore client that consumes in its own process,
so that a test can kill it with SIGKILL (or freeze it with SIGSTOP) like a crashed service.

Run as ``python tests/_client_proc.py '<json options>'``. Options: address, token, consumer,
out (a file to append one line per handled message: ``index segment tracker data-hex``),
and optionally type (a MessageType name, default EVENT), trackers (1), purge_timeout_ms
(60000), max_size (1024), delay_ms (0: time spent per batch), from_index (None), project.

Prints ``ready`` once the consumer runs. Stops cleanly (trackers leave, client closes) when
its stdin is closed; exits 0 then.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

from fluxcore.client import Client, Message, MessageType


def main() -> int:
    options = json.loads(sys.argv[1])
    out = open(options["out"], "a", encoding="ascii")  # noqa: SIM115 - lives as long as we do
    lock = threading.Lock()
    delay = options.get("delay_ms", 0) / 1000.0

    def on_batch(messages: list[Message]) -> None:
        tracker = threading.current_thread().name.rsplit("/", 1)[-1]
        lines = "".join(
            f"{m.index} {m.segment} {os.getpid()}:{tracker} {m.data.hex()}\n" for m in messages)
        with lock:
            out.write(lines)
            out.flush()
        if delay:
            time.sleep(delay)

    client = Client.connect(options["address"], token=options["token"],
                            name=options.get("name", "worker"),
                            project=options.get("project", "public"))
    consumer = client.consume(
        options["consumer"], MessageType[options.get("type", "EVENT")], on_batch, batch=True,
        trackers=options.get("trackers", 1), max_size=options.get("max_size", 1024),
        purge_timeout_ms=options.get("purge_timeout_ms", 60_000),
        from_index=options.get("from_index"), max_timeout_ms=1000)
    print("ready", flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    consumer.stop()
    client.close()
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
