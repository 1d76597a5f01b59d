"""fluxcore.app against a real server: every handler decorator and consumer option, typed
requests and answers, metadata propagation, aggregates with the expected-sequence check (two
concurrent writers), periodic jobs across a restart and with two instances, handler metrics
and `fluxcore metrics`."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import msgspec
import pytest

from fluxcore._ext._log import segment_of
from fluxcore.app import (
    CAUSATION,
    CORRELATION,
    ConcurrencyError,
    FunctionalError,
    HandlerError,
    Microclient,
    RoutingKey,
    aggregate,
    apply,
    consumer,
    handle_command,
    handle_web,
    periodic,
)
from fluxcore.client import Client, Message, MessageType, ProtocolError, WebResponse
from fluxcore.client import ConcurrencyError as WireConcurrencyError

from .service_harness import TOKEN, ServerProcess, stopped_by_sigterm
from .test_service_web import http


def wait_until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("app-live") / "data",
                         env={"FLUXCORE_WEB_PROJECT": "web-app"}).start()
    try:
        yield proc
    finally:
        proc.kill()


def start(app: Microclient, server: ServerProcess, project: str = "public") -> Microclient:
    app.url, app.token, app.project = server.address, TOKEN, project
    return app.start()


# -- expected sequence (the server change) --------------------------------------------------

def test_expected_sequence_refuses_a_late_writer(live: ServerProcess) -> None:
    with Client.connect(live.address, token=TOKEN, name="w1") as first, \
            Client.connect(live.address, token=TOKEN, name="w2") as second:
        since = first.read_from_index(MessageType.EVENT, 0, 10_000)
        start_index = since[-1].index + 1 if since else 0
        # both read the empty stream (-1); the first appends, the second is refused
        assert first.append_events("acct-1", [b'{"n": 1}'], types="Deposited",
                                   expected_sequence=-1) == 0
        with pytest.raises(WireConcurrencyError) as refused:
            second.append_events("acct-1", [b'{"n": 2}', b'{"n": 3}'], types="Deposited",
                                 expected_sequence=-1)
        assert refused.value.code == "conflict"
        assert "at sequence 0" in refused.value.message
        assert [e.data for e in second.get_events("acct-1")] == [b'{"n": 1}']
        published = first.read_from_index(MessageType.EVENT, start_index, 100)
        assert [m.data for m in published if m.type == "Deposited"] == [b'{"n": 1}']
        # at the right sequence it goes in; without the field nothing changed
        assert second.append_events("acct-1", [b'{"n": 2}'], types="Deposited",
                                    expected_sequence=0) == 1
        assert second.append_events("acct-1", [b'{"n": 3}'], types="Deposited") == 2
        with pytest.raises(ProtocolError, match="bad_request"):
            second._call(_op("APPEND_EVENTS"), {})  # not even a frame of the right shape
        with pytest.raises(ProtocolError, match="expected_sequence"):
            second._exchange(lambda rid: _bad_expected(second, rid), 10)


def _op(name: str) -> Any:
    from fluxcore.protocol import Op

    return Op[name]


def _bad_expected(client: Client, request_id: int) -> bytes:
    from fluxcore.client._wire import _with_control
    from fluxcore.protocol import Guarantee, Op, encode_control

    append = client._codec.append(0, MessageType.EVENT, [b"{}"], payload_type="X",
                                  guarantee=Guarantee.STORED)
    control = encode_control({"batches": [{"aggregate": "a", "count": 1,
                                           "expected_sequence": "zero"}]})
    return _with_control(Op.APPEND_EVENTS, request_id, control, append)


class Deposited(msgspec.Struct):
    amount: int


@aggregate(snapshot_every=5)
class Account(msgspec.Struct):
    balance: int
    deposits: int

    @apply
    @staticmethod
    def opened(event: Deposited) -> Account:
        return Account(event.amount, 1)

    @apply
    def deposited(self, event: Deposited) -> None:
        self.balance += event.amount
        self.deposits += 1


def test_two_concurrent_writers_of_one_aggregate(live: ServerProcess) -> None:
    writers = [Microclient(f"writer-{i}") for i in range(2)]
    for app in writers:
        start(app, live)
    conflicts = [0, 0]
    rounds = 15

    def write(i: int) -> None:
        app = writers[i]
        for _ in range(rounds):
            while True:
                account = app.load(Account, "acct-race")
                account.apply(Deposited(1))
                try:
                    account.commit()
                    break
                except ConcurrencyError:
                    conflicts[i] += 1

    try:
        threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        loaded = writers[0].load(Account, "acct-race")
        assert loaded.state == Account(2 * rounds, 2 * rounds)
        assert loaded.sequence == 2 * rounds - 1
        assert writers[0].client is not None
        numbers = [e.index for e in writers[0].client.get_events("acct-race")]
        assert numbers == list(range(2 * rounds))  # nothing lost, nothing twice
        assert writers[0].get_value("$snapshot_acct-race", bytes) is not None
        # a stale aggregate is refused with nothing written
        stale = writers[0].load(Account, "acct-race")
        writers[1].load(Account, "acct-race").apply(Deposited(5)).commit()
        with pytest.raises(ConcurrencyError, match="another writer"):
            stale.apply(Deposited(7)).commit()
        assert writers[1].load(Account, "acct-race").state == Account(2 * rounds + 5,
                                                                      2 * rounds + 1)
    finally:
        for app in writers:
            app.stop()


def test_snapshot_then_events_after_it(live: ServerProcess) -> None:
    app = start(Microclient("snapshots"), live)
    try:
        account = app.load(Account, "acct-snap")
        for _ in range(7):
            account.apply(Deposited(2))
        account.commit()
        raw = app.get_value("$snapshot_acct-snap")
        assert raw["sequence"] == 6 and raw["state"] == {"balance": 14, "deposits": 7}
        app.load(Account, "acct-snap").apply(Deposited(1)).commit()
        assert app.client is not None
        # the snapshot is the state: loading reads it plus the one event after it
        app.store_value("$snapshot_acct-snap", {**raw, "state": {"balance": 100,
                                                                 "deposits": 7}})
        assert app.load(Account, "acct-snap").state == Account(101, 8)
    finally:
        app.stop()


# -- handlers of every kind -----------------------------------------------------------------

class Greet(msgspec.Struct):
    name: Annotated[str, RoutingKey]


class Greeting(msgspec.Struct):
    text: str


class Farewell(msgspec.Struct):
    name: str


class Shout(msgspec.Struct):
    __routing_key__ = "who"
    who: str


class Refused(FunctionalError):
    pass


class Seen:
    def __init__(self) -> None:
        self.items: list[tuple[str, Any]] = []
        self.lock = threading.Lock()

    def add(self, kind: str, value: Any) -> None:
        with self.lock:
            self.items.append((kind, value))

    def of(self, kind: str) -> list[Any]:
        with self.lock:
            return [v for k, v in self.items if k == kind]


def test_every_decorator_against_the_server(live: ServerProcess) -> None:
    seen = Seen()
    app = Microclient("greeter")

    @app.handle_command
    def greet(command: Greet, message: Message, metadata: dict[str, str]) -> Greeting:
        seen.add("command", (command, message.type, metadata.get("who")))
        if command.name == "nobody":
            raise Refused("no one to greet")
        if command.name == "bug":
            raise KeyError("oops")
        app.publish(Farewell(command.name))
        return Greeting(f"hello {command.name}")

    @app.handle_query
    async def lookup(query: Greet | Shout) -> str:
        await asyncio.sleep(0)
        return f"async {type(query).__name__}"

    events = app.consumer("greeter-events", trackers=2, max_batch=10)

    @events.handle_event
    def on_farewell(event: Farewell, message: Message) -> None:
        seen.add("event", (event, message.metadata))

    @app.handle_notification  # every tracker gets every notification: one tracker here
    def notified(event: Farewell) -> None:
        seen.add("notification", event)

    @app.handle_error
    def on_error(error: bytes, message: Message) -> None:
        seen.add("error", message.type)

    @app.handle_result
    def on_result(result: bytes, message: Message) -> None:
        seen.add("result", message.type)

    @app.handle_metrics
    def on_metrics(metric: bytes, message: Message) -> None:
        if message.type == "connect":
            seen.add("metrics", message.type)

    @app.handle_custom("audit")
    def audit(entry: dict[str, Any]) -> str:
        seen.add("custom", entry)
        return "logged"

    @app.handle_document("profiles")
    def profile(document: Greeting) -> None:
        seen.add("document", document)

    start(app, live)
    try:
        assert app.send(Greet("ann"), metadata={"who": "test"}) == Greeting("hello ann")
        assert seen.of("command")[0] == (Greet("ann"), "Greet", "test")
        with pytest.raises(Refused, match="no one to greet"):
            app.send(Greet("nobody"))
        with pytest.raises(HandlerError) as failed:
            app.send(Greet("bug"))
        assert failed.value.error_type == "KeyError"
        assert app.query(Shout("x")) == "async Shout"
        assert app.query(Greet("y")) == "async Greet"
        wait_until(lambda: len(seen.of("event")) == 1 and len(seen.of("notification")) == 1)
        event, metadata = seen.of("event")[0]
        assert event == Farewell("ann")
        assert metadata[CORRELATION] and metadata[CAUSATION]  # from the command it came of
        app.publish_to(MessageType.CUSTOM, {"who": "ann"}, topic="audit")
        app.publish_to(MessageType.DOCUMENT, Greeting("doc"), topic="profiles")
        wait_until(lambda: seen.of("custom") == [{"who": "ann"}]
                   and seen.of("document") == [Greeting("doc")])
        wait_until(lambda: {"Refused", "KeyError"} <= set(seen.of("error")))
        wait_until(lambda: "Greeting" in seen.of("result") and "json" in seen.of("result"))
        assert app.client is not None
        with Client.connect(live.address, token=TOKEN, name="peer") as peer:
            peer.publish(MessageType.METRICS, b"{}", type="other")
            # routing keys: an annotated field, or the class's __routing_key__
            app.send_and_forget(Greet("key-1"))
            app.publish(Shout("key-2"))
            commands = peer.read_from_index(MessageType.COMMAND, 0, 1000)
            assert [m.segment for m in commands if m.data == b'{"name":"key-1"}'] == \
                [segment_of("key-1")]
            events_log = peer.read_from_index(MessageType.EVENT, 0, 10_000)
            assert [m.segment for m in events_log if m.type == "Shout"] == [segment_of("key-2")]
    finally:
        app.stop()


class Order(msgspec.Struct):
    item: str


def test_consumer_class_options_and_web(live: ServerProcess) -> None:
    seen = Seen()

    @consumer("shop-web", trackers=2, max_batch=5, from_index=0)
    class Shop:
        @handle_command
        def never(self, command: Greet) -> None:
            seen.add("never", command)

        @handle_web("GET", "/orders/{order_id}")
        def get_order(self, order_id: int) -> dict[str, Any]:
            return {"order": order_id, "double": order_id * 2}

        @handle_web("POST", "/orders")
        def post_order(self, order: Order) -> Greeting:
            seen.add("posted", order)
            return Greeting(f"ordered {order.item}")

        @handle_web("DELETE", "/orders/{order_id}")
        def delete_order(self, order_id: int) -> WebResponse:
            return WebResponse(b"gone", 202, {"X-Order": str(order_id)})

        @handle_web("PUT", "/notes/{name}")
        def put_note(self, name: str, note: dict[str, Any]) -> bytes:
            return f"{name}={note['text']}".encode()

    app = Microclient("shop").register(Shop, Order)
    start(app, live, project="web-app")
    try:
        status, headers, body = http(live.address,
                                     b"GET /orders/21 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (status, json.loads(body)) == (200, {"order": 21, "double": 42})
        assert headers["content-type"] == "application/json"
        payload = b'{"item": "tea"}'
        status, _headers, body = http(
            live.address, b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
            % (len(payload), payload))
        assert (status, json.loads(body)) == (200, {"text": "ordered tea"})
        status, _headers, body = http(
            live.address, b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        assert status == 500 and b"ValidationError" in body  # the body did not decode
        assert seen.of("posted") == [Order("tea")]
        note = b'{"text": "hi"}'
        status, _headers, body = http(
            live.address, b"PUT /notes/todo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
            % (len(note), note))
        assert (status, body) == (200, b"todo=hi")
        status, headers, body = http(live.address,
                                     b"DELETE /orders/5 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (status, headers["x-order"], body) == (202, "5", b"gone")
    finally:
        app.stop()


def test_type_filter_and_metrics_off(live: ServerProcess) -> None:
    seen = Seen()
    app = Microclient("filtered")
    quiet = app.consumer("filtered-quiet", type_filter="Farewell", metrics=False)

    @quiet.handle_event
    def anything(event: dict[str, Any], message: Message) -> None:
        seen.add("event", (message.type, event))

    start(app, live)
    try:
        app.publish(Greeting("no"), Farewell("yes"))
        wait_until(lambda: ("Farewell", {"name": "yes"}) in seen.of("event"))
        time.sleep(0.3)
        assert {t for t, _ in seen.of("event")} == {"Farewell"}  # only what the filter lets in
        assert app.client is not None
        metrics = app.client.read_from_index(MessageType.METRICS, 0, 10_000)
        assert not [m for m in metrics if m.type in ("HandleMessage", "ProcessBatch")
                    and msgspec.msgpack.decode(m.data)["consumer"] == "filtered-quiet"]
    finally:
        app.stop()


# -- periodic jobs --------------------------------------------------------------------------

class Tick(msgspec.Struct):
    pass


def periodic_app(runs: Seen, name: str) -> Microclient:
    app = Microclient("ticker", trackers=1)

    @app.handle_schedule
    @periodic(every=timedelta(milliseconds=700), schedule_id="tick-job")
    def tick(job: Tick, message: Message) -> None:
        runs.add(name, int(message.metadata["$deadline"]))

    return app


@pytest.mark.slow
def test_periodic_once_per_period_with_two_instances_and_a_restart(
        live: ServerProcess) -> None:
    runs = Seen()
    first = start(periodic_app(runs, "a"), live)
    second = start(periodic_app(runs, "b"), live)
    try:
        wait_until(lambda: len(runs.items) >= 4)
    finally:
        first.stop()
        second.stop()
    deadlines = sorted(v for _k, v in runs.items)
    assert len(deadlines) == len(set(deadlines))  # each period ran once, on one instance
    steps = {b - a for a, b in itertools.pairwise(deadlines)}
    # no drift: each deadline is the previous one plus the period (or a multiple of it if
    # a loaded machine ran one so late that the next slot had passed too)
    assert steps and all(step % 700 == 0 for step in steps)
    # A restart (of the app) goes on from the pending schedule (or, if it fired meanwhile,
    # from its message, waiting in the schedule log for the consumer): same grid, no repeats.
    before = len(runs.items)
    again = start(periodic_app(runs, "c"), live)
    try:
        wait_until(lambda: len(runs.of("c")) >= 2)
    finally:
        again.stop()
    later = sorted(v for _k, v in runs.items)
    assert len(later) == len(set(later)) and len(later) >= before + 2
    assert min(runs.of("c")) > deadlines[-1]
    assert all((d - deadlines[0]) % 700 == 0 for d in later)


def test_periodic_survives_a_server_restart(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    runs = Seen()
    try:
        app = start(periodic_app(runs, "a"), server)
        wait_until(lambda: len(runs.items) >= 1)
        app.stop()
        server.stop()
        server.start()
        app = start(periodic_app(runs, "b"), server)
        wait_until(lambda: len(runs.of("b")) >= 1)
        app.stop()
    finally:
        server.kill()
    deadlines = [v for _k, v in runs.items]
    assert len(deadlines) == len(set(deadlines))


# -- handler metrics ------------------------------------------------------------------------

def test_handler_metrics_and_the_metrics_command(live: ServerProcess) -> None:
    app = Microclient("measured", max_batch=50)
    count = 120

    @app.handle_event
    def measured(event: Deposited) -> None:
        if event.amount % 10 == 0:
            raise ValueError("a tenth fail")

    start(app, live)
    try:
        assert app.client is not None
        since = app.client.read_from_index(MessageType.METRICS, 0, 10_000)
        after = since[-1].index + 1 if since else 0
        app.publish(*[Deposited(i) for i in range(count)])

        def handle_messages() -> list[dict[str, Any]]:
            assert app.client is not None
            found = app.client.read_from_index(MessageType.METRICS, after, 10_000)
            return [msgspec.msgpack.decode(m.data) for m in found
                    if m.type == "HandleMessage"]

        wait_until(lambda: sum(len(b["index"]) for b in handle_messages()) >= count)
        entries = handle_messages()
        assert {b["consumer"] for b in entries} == {"measured"}
        assert all(b["message_type"] == "EVENT" and b["client"] == "measured" for b in entries)
        for b in entries:
            assert b["handlers"] == ["test_handler_metrics_and_the_metrics_command.<locals>."
                                     "measured"]
            assert b["payload_types"] == ["Deposited"]
            assert b["handler"] == [0] * len(b["index"]) == [0] * len(b["duration_us"])
        assert sum(sum(b["exceptional"]) for b in entries) == count // 10
        assert all(us >= 0 for b in entries for us in b["duration_us"])
        indexes = sorted(i for b in entries for i in b["index"])
        assert len(indexes) == len(set(indexes)) == count
        batches = [msgspec.msgpack.decode(m.data) for m in app.client.read_from_index(
            MessageType.METRICS, after, 10_000) if m.type == "ProcessBatch"]
        assert sum(b["batch_size"] for b in batches) >= count
        assert all(b["batch_size"] <= 50 and b["tracker"].endswith("/measured/0")
                   and len(b["segment"]) == 2 for b in batches)
    finally:
        app.stop()
    out = subprocess.run(
        [sys.executable, "-m", "fluxcore", "metrics", live.address, "--token", TOKEN],
        capture_output=True, text=True, timeout=60, check=True)
    summary = json.loads(out.stdout)["handlers"]
    key = "measured/test_handler_metrics_and_the_metrics_command.<locals>.measured"
    assert summary[key]["count"] == count
    assert summary[key]["errors"] == count // 10
    assert 0 <= summary[key]["p50_us"] <= summary[key]["p99_us"]


def test_run_until_sigterm_and_with_statement(live: ServerProcess) -> None:
    # README's orders.py run as a program: app.run() serves until SIGTERM, then stops cleanly.
    script = ("import sys\nfrom fluxcore.server import demo_orders as orders\n"
              f"orders.app.url, orders.app.token = {live.address!r}, {TOKEN!r}\n"
              "orders.app.project = 'run-test'\nprint('running', flush=True)\n"
              "orders.app.run()\nprint('stopped', flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "running\n"
        from fluxcore.server import demo_orders as orders

        caller = Microclient("caller")
        caller.url, caller.token, caller.project = live.address, TOKEN, "run-test"
        with caller:
            assert caller.send(orders.PlaceOrder("r-1", ["x"]), timeout=30) == "r-1"
        assert caller.client is None  # stopped by the with statement
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    assert stopped_by_sigterm(proc) == "stopped\n"


def test_publish_batch_with_a_type_per_message(live: ServerProcess) -> None:
    from fluxcore.client import AsyncClient

    async def publish() -> list[int]:
        client = await AsyncClient.connect(live.address, token=TOKEN, name="types")
        try:
            indexes = await client.publish_batch(MessageType.CUSTOM, [b"1", b"2"],
                                                 types=["A", "B"], topic="typed")
            assert indexes is not None
            return [int(i) for i in indexes]
        finally:
            await client.close()

    first = asyncio.run(publish())
    with Client.connect(live.address, token=TOKEN, name="types-sync") as client:
        client.publish_batch(MessageType.CUSTOM, [b"3"], types=["C"], topic="typed")
        got = client.read_from_index(MessageType.CUSTOM, first[0], 10, topic="typed")
    assert [(m.type, m.data) for m in got] == [("A", b"1"), ("B", b"2"), ("C", b"3")]


def test_one_conflicting_batch_fails_the_whole_request(live: ServerProcess) -> None:
    from fluxcore.client._wire import _with_control
    from fluxcore.protocol import Guarantee, Op, encode_control

    with Client.connect(live.address, token=TOKEN, name="batches") as client:
        client.append_events("multi-b", [b"{}"], types="Made")  # now at sequence 0

        def frame(request_id: int) -> bytes:
            append = client._codec.append(0, MessageType.EVENT, [b"{}", b"{}"],
                                          payload_type="Made", guarantee=Guarantee.STORED)
            control = encode_control({"batches": [
                {"aggregate": "multi-a", "count": 1, "expected_sequence": -1},
                {"aggregate": "multi-b", "count": 1, "expected_sequence": -1}]})
            return _with_control(Op.APPEND_EVENTS, request_id, control, append)

        with pytest.raises(WireConcurrencyError, match="multi-b"):
            client._exchange(frame, 10)
        assert client.get_events("multi-a") == []  # the first batch was not stored either
        assert len(client.get_events("multi-b")) == 1
        # after a delete the stream is empty again: -1 is right once more
        assert client.delete_events("multi-b")
        assert client.append_events("multi-b", [b"{}"], types="Made",
                                    expected_sequence=-1) == 0


def test_fixture_web_requests_live(live: ServerProcess) -> None:
    from fluxcore.app import TestFixture

    from .test_app_fixture import Item, Registered, web_shop

    app = web_shop()
    with TestFixture.live(live.address, app, token=TOKEN, project="web-app") as fixture:
        fixture.when_web_request("PUT", "/items/7", Item("tea", 3), headers={"X-By": "ann"}) \
            .expect_web_response(status=201, headers={"x-item": "7", "X-By": "ann"}) \
            .expect_events(Registered("tea"))
        fixture.when_web_request("GET", "/items/7?fields=all") \
            .expect_web_response(Item("tea", 3), headers={"Content-Type": "application/json"})
        fixture.when_web_request("GET", "/items/8").expect_web_response(b"no such item",
                                                                          status=404)
        fixture.when_web_request("DELETE", "/items/7").expect_web_response(b"", status=204)
