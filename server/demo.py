"""A short tour of the service: `python -m fluxcore.server.demo [--data DIR] [--keep]`.

Starts `fluxcore serve` on a free loopback port over a fresh data directory, then, as a client:
publishes events, consumes them with two trackers of one consumer, answers a command (request and
response), replays a consumer from a point in time, keeps an aggregate's event stream with a
snapshot in the key-value store, has a message delivered at a deadline, shows the metrics log,
runs README's order service (a microclient: fluxcore/server/demo_orders.py) against the server,
and stops the server with SIGTERM (a clean shutdown).
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

import msgspec

from fluxcore.client import Client, Message, MessageType

TOKEN = "demo-token"


def start_server(data: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fluxcore", "serve", "--data", data, "--port", "0",
         "--token", TOKEN],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"listening on ([\d.]+:\d+)", line)
    if match is None:
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return proc, match.group(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="data directory (default: a fresh temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args(argv)
    data = args.data or tempfile.mkdtemp(prefix="fluxcore-demo-")
    proc, address = start_server(data)
    print(f"1. server started: fluxcore serve --data {data}  ->  {address}")
    try:
        with Client.connect(address, token=TOKEN, name="demo") as client:
            run_demo(client)
        run_microclient(address)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        print(f"10. server stopped cleanly (SIGTERM, exit code {code})")
        if not args.keep and not args.data:
            shutil.rmtree(data, ignore_errors=True)
    return 0


def run_demo(client: Client) -> None:
    orders = [f"order-{i % 10}" for i in range(10_000)]
    payloads = [f'{{"order": "{key}", "n": {i}}}'.encode() for i, key in enumerate(orders)]
    began = time.perf_counter()
    indexes = client.publish_batch(MessageType.EVENT, payloads, type="OrderPlaced", keys=orders)
    assert indexes is not None
    took = time.perf_counter() - began
    print(f"2. published {len(indexes):,} events in one batch, stored, in {took * 1000:.1f} ms; "
          f"indexes {indexes[0]} .. {indexes[-1]}")

    seen: Counter[str] = Counter()
    lock = threading.Lock()
    done = threading.Event()

    def project(message: Message) -> None:
        with lock:
            seen[threading.current_thread().name.rsplit("/", 1)[-1]] += 1
            if sum(seen.values()) >= len(payloads):
                done.set()

    consumer = client.consume("order-projection", MessageType.EVENT, project, trackers=2,
                              from_index=int(indexes[0]))
    done.wait(30)
    consumer.stop()
    print(f"3. consumer 'order-projection', 2 trackers splitting the 128 segments: "
          f"{sum(seen.values()):,} events handled, per tracker {dict(sorted(seen.items()))}")

    client.consume("order-service", MessageType.COMMAND,
                   lambda m: b"accepted " + m.data)
    result = client.request(MessageType.COMMAND, b"ship order-7", type="ShipOrder", timeout=10)
    print(f"4. request/response: command 'ship order-7' -> result {result.data.decode()!r} "
          f"(routed back to this client by target {result.target[:8]}...)")

    middle = int(indexes[len(indexes) // 2])
    client.reset_position("order-projection", MessageType.EVENT, middle)
    replayed = threading.Event()
    count = [0]

    def replay(batch: list[Message]) -> None:
        count[0] += len(batch)
        if count[0] >= len(payloads) - len(payloads) // 2 - 1:
            replayed.set()

    consumer = client.consume("order-projection", MessageType.EVENT, replay, batch=True)
    replayed.wait(30)
    consumer.stop()
    print(f"5. time travel: consumer reset to index {middle} (t={middle >> 16} ms); "
          f"{count[0]:,} events replayed from there")

    last = client.append_events("cart-42", [b'{"sku": "tea"}', b'{"sku": "cups"}'],
                                types=["ItemAdded", "ItemAdded"])
    client.store_values({"$snapshot_cart-42": b'{"items": 2, "sequence": %d}' % last})
    client.append_events("cart-42", [b'{"sku": "tea"}'], types="ItemRemoved")
    history = client.get_events("cart-42")
    snapshot = client.get_value("$snapshot_cart-42")
    print(f"6. event sourcing: aggregate cart-42 has events "
          f"{[(e.index, e.type) for e in history]} (also published as EVENTs); "
          f"snapshot in the key-value store: {snapshot!r}")

    delivered: list[tuple[float, Message]] = []
    arrived = threading.Event()

    def remind(message: Message) -> None:
        delivered.append((time.time(), message))
        arrived.set()

    client.consume("reminders", MessageType.SCHEDULE, remind, from_index=0)
    deadline = time.time() + 0.5
    client.schedule(b'{"cart": "cart-42"}', deadline, type="CartAbandoned",
                    schedule_id="cart-42-abandoned")
    arrived.wait(10)
    at, message = delivered[0]
    print(f"7. scheduled message {message.type!r} delivered {(at - deadline) * 1000:+.0f} ms "
          f"from its deadline")

    metrics = client.read_from_index(MessageType.METRICS, 0, 100)
    kinds = Counter(m.type for m in metrics)
    print(f"8. metrics log: {dict(kinds)} (every connect and disconnect is recorded)")


def run_microclient(address: str) -> None:
    from fluxcore.app import HandlerError
    from fluxcore.client.metrics import summarize_handlers

    from . import demo_orders as orders

    app = orders.app
    app.url, app.token, app.project = address, TOKEN, "orders"  # a project of its own
    app.start()
    client = app.client
    assert client is not None
    try:
        placed = app.send(orders.PlaceOrder("order-1", ["tea", "cups"]))
        app.send(orders.ShipOrder("order-1"))
        try:
            app.send(orders.ShipOrder("order-1"))
            refused = "accepted?!"
        except (orders.IllegalCommand, HandlerError) as exc:
            refused = f"{type(exc).__name__}({exc})"
        view = None
        for _ in range(500):  # the projection is another consumer: it catches up shortly
            view = app.query(orders.GetOrder("order-1"))
            if view is not None and view.shipped:
                break
            time.sleep(0.01)
        stream = [e.type for e in client.get_events("order-1")]
        job = client.get_schedule("periodic:orders:remind")
        assert job is not None
        due = time.strftime("%H:%M:%S", time.localtime(job.deadline_ms / 1000))
    finally:
        app.stop()  # also sends the handler metrics it still holds
    handlers: dict[str, int] = {}
    with Client.connect(address, token=TOKEN, name="demo", project="orders") as reader:
        for _ in range(500):  # the last of them are on their way
            metrics = [msgspec.msgpack.decode(m.data)
                       for m in reader.read_from_index(MessageType.METRICS, 0, 10_000)
                       if m.type == "HandleMessage"]
            handlers = {key.rsplit(".", 1)[-1]: value["count"]
                        for key, value in summarize_handlers(metrics).items()}
            if handlers.get("orders/ship") == 2 and handlers.get("order-views/project") == 2:
                break
            time.sleep(0.02)
    print(f"9. microclient 'orders' (README's example): PlaceOrder -> {placed!r}, ShipOrder -> "
          f"stream {stream}, ShipOrder again -> {refused}; query -> {view}; periodic job "
          f"'remind' due at {due}; handler metrics (messages per handler): {handlers}")


if __name__ == "__main__":
    sys.exit(main())
