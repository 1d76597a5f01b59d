"""README's "The programming model (`fluxcore.app`)", promise by promise: payload kinds and
their types on the wire, upcasters, every handler kind and its parameters, errors routed back
to the requester, routing keys and correlation metadata, aggregates (event-sourced, kept as a
value, snapshots), periodic jobs, the in-memory TestFixture and the asyncio app; in memory and
against a real server."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
import pydantic
import pytest

from fluxcore.app import (
    AsyncMicroclient,
    ConcurrencyError,
    FunctionalError,
    HandlerError,
    Message,
    MessageType,
    Microclient,
    RoutingKey,
    TestFixture,
    Upcast,
    aggregate,
    apply,
    assert_legal,
    consumer,
    handle_command,
    handle_event,
    payload,
    periodic,
    upcaster,
)
from fluxcore.client import Client, RequestError
from fluxcore.client import ConcurrencyError as ClientConcurrencyError

from .service_harness import TOKEN, ServerProcess, module_server


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(tmp_path_factory, "docs-app")


_projects = iter(range(1_000_000))


def project() -> str:
    return f"app{next(_projects)}"


@contextlib.contextmanager
def running(app: Microclient, client: Client) -> Iterator[Microclient]:
    """`app.start(client)` ... `app.stop()` (README: `with app:` starts on the app's url)."""
    app.start(client)
    try:
        yield app
    finally:
        app.stop()


def wait_until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


# -- payloads --------------------------------------------------------------------------------

class Ping(msgspec.Struct):
    n: int


@dataclasses.dataclass
class DataPing:
    n: int


class PydanticPing(pydantic.BaseModel):
    n: int


@payload(type="shop.Renamed", revision=2)
class Renamed(msgspec.Struct):
    n: int


def test_payload_kinds_and_their_types_on_the_wire(live: ServerProcess) -> None:
    app = Microclient("kinds", live.address, token=TOKEN)
    got: list[Any] = []

    @app.handle_event
    def on_struct(event: Ping, message: Message) -> None:
        got.append(("struct", event, message.type, message.revision))

    @app.handle_event
    def on_dataclass(event: DataPing, message: Message) -> None:
        got.append(("dataclass", event, message.type, message.revision))

    @app.handle_event
    def on_pydantic(event: PydanticPing, message: Message) -> None:
        got.append(("pydantic", event, message.type, message.revision))

    @app.handle_event
    def on_renamed(event: Renamed, message: Message) -> None:
        got.append(("renamed", event, message.type, message.revision))

    raw = app.consumer("raw")

    @raw.handle_event
    def on_anything(event: bytes, message: Message, metadata: dict[str, str]) -> None:
        got.append(("bytes", event, message.type, metadata.get("k")))

    name = project()
    with Client.connect(live.address, token=TOKEN, project=name) as client, running(app, client):
        app.publish(Ping(1), DataPing(2), PydanticPing(n=3), Renamed(4), {"a": 5}, [6],
                    b"\x07", metadata={"k": "v"})
        wait_until(lambda: len([g for g in got if g[0] == "bytes"]) == 7
                   and len(got) == 11)
    typed = sorted((g for g in got if g[0] != "bytes"), key=lambda g: g[0])
    assert typed == [("dataclass", DataPing(2), "DataPing", 0),
                     ("pydantic", PydanticPing(n=3), "PydanticPing", 0),
                     ("renamed", Renamed(4), "shop.Renamed", 2),
                     ("struct", Ping(1), "Ping", 0)]
    raw_seen = [(g[2], g[1]) for g in got if g[0] == "bytes"]
    assert raw_seen == [("Ping", b'{"n":1}'), ("DataPing", b'{"n":2}'),
                        ("PydanticPing", b'{"n":3}'), ("shop.Renamed", b'{"n":4}'),
                        ("json", b'{"a":5}'), ("json", b"[6]"), ("bytes", b"\x07")]
    assert all(g[3] == "v" for g in got if g[0] == "bytes")


# -- errors back to the requester ------------------------------------------------------------

class Reserve(msgspec.Struct):
    item: Annotated[str, RoutingKey]
    count: int


class OutOfStock(FunctionalError):
    pass


def stock_app(url: str = "") -> Microclient:
    app = Microclient("stock", url or None, token=TOKEN)

    @app.handle_command
    def reserve(command: Reserve) -> int:
        if command.item == "none":
            raise OutOfStock(f"no {command.item} left")
        if command.item == "bug":
            raise KeyError("oops")
        return command.count

    return app


def test_errors_come_back_to_the_requester_in_memory_and_live(live: ServerProcess) -> None:
    fixture = TestFixture(stock_app())
    fixture.when_command(Reserve("tea", 2)).expect_result(2).expect_no_error()
    fixture.when_command(Reserve("none", 1)).expect_error(OutOfStock)
    assert "no none left" in str(fixture.error)
    fixture.when_command(Reserve("bug", 1)).expect_error(HandlerError)
    assert isinstance(fixture.error, HandlerError)
    assert fixture.error.error_type == "KeyError" and "oops" in fixture.error.message

    app = stock_app(live.address)
    name = project()
    with Client.connect(live.address, token=TOKEN, project=name) as client, running(app, client):
        caller = Microclient("caller", live.address, token=TOKEN)
        with Client.connect(live.address, token=TOKEN, project=name) as other, \
                running(caller, other):
            assert caller.send(Reserve("tea", 2)) == 2
            with pytest.raises(OutOfStock) as out:
                caller.send(Reserve("none", 1))
            assert "no none left" in str(out.value)
            with pytest.raises(HandlerError) as bug:
                caller.send(Reserve("bug", 1))
            assert bug.value.error_type == "KeyError" and "oops" in bug.value.message
            # bytes that do not decode into the class fail the handler: the requester
            # gets the error
            with pytest.raises(RequestError):
                other.request(MessageType.COMMAND, b'{"item": 1}', type="Reserve",
                              timeout=20)


# -- upcasters -------------------------------------------------------------------------------

class Customer(msgspec.Struct):
    full_name: str
    vip: bool


@upcaster("Customer", 0)
def split_name(data: dict[str, Any]) -> dict[str, Any]:
    return {"full_name": data["name"]}


@upcaster("Customer", 1)
def add_vip(data: dict[str, Any]) -> dict[str, Any] | None:
    if data["full_name"] == "spam":
        return None  # dropped
    return {**data, "vip": False}


@upcaster("Client", 0)
def renamed_type(data: dict[str, Any]) -> Upcast:
    return Upcast("Customer", 0, data)


@payload(revision=2)
class CustomerV2(msgspec.Struct):
    full_name: str
    vip: bool


def test_upcaster_chains_renames_and_drops() -> None:
    seen: list[Customer] = []
    app = Microclient("upcasting")

    @app.handle_event
    def on_customer(event: Customer) -> None:
        seen.append(event)

    app.register(split_name, add_vip, renamed_type)
    fixture = TestFixture(app)
    encode = msgspec.json.encode
    for type_, revision, data in [("Customer", 0, {"name": "Ann"}),
                                  ("Customer", 1, {"full_name": "Bob"}),
                                  ("Customer", 2, {"full_name": "Cy", "vip": True}),
                                  ("Client", 0, {"name": "Dee"}),
                                  ("Customer", 0, {"name": "spam"})]:
        assert fixture.memory is not None
        fixture.memory.queue.append((MessageType.EVENT, None, __import__(
            "fluxcore.app.context", fromlist=["LocalMessage"]).LocalMessage(
                type_, encode(data), revision, {})))
        fixture._drive(fixture.memory.drain())
    assert seen == [Customer("Ann", False), Customer("Bob", False), Customer("Cy", True),
                    Customer("Dee", False)]


# -- routing and correlation -----------------------------------------------------------------

class Start(msgspec.Struct):
    key: Annotated[str, RoutingKey]


class Started(msgspec.Struct):
    __routing_key__ = "key"
    key: str


class FollowUp(msgspec.Struct):
    key: Annotated[str, RoutingKey]


def test_routing_keys_and_correlation_metadata(live: ServerProcess) -> None:
    app = Microclient("chain", live.address, token=TOKEN)
    seen: dict[str, Message] = {}

    @app.handle_command
    def start(command: Start) -> None:
        app.publish(Started(command.key))

    @app.handle_event
    def started(event: Started, message: Message) -> None:
        seen["started"] = message
        app.send_and_forget(FollowUp(event.key))

    @app.handle_command
    def follow(command: FollowUp, message: Message) -> None:
        seen["follow"] = message

    name = project()
    with Client.connect(live.address, token=TOKEN, project=name) as client, running(app, client):
        index = client.publish(MessageType.COMMAND, msgspec.json.encode(Start("k-1")),
                               type="Start", key="k-1", metadata={"$trace.user": "ann"})
        wait_until(lambda: "follow" in seen)
        [first] = client.read_from_index(MessageType.COMMAND, index or 0, 1)
    from fluxcore import segment_of
    assert seen["started"].segment == seen["follow"].segment == segment_of("k-1")
    correlation = seen["started"].metadata["$correlation_id"]
    assert correlation == first.message_id
    assert seen["started"].metadata["$causation_id"] == first.message_id
    assert seen["follow"].metadata["$correlation_id"] == correlation
    assert seen["follow"].metadata["$causation_id"] == seen["started"].message_id
    assert seen["started"].metadata["$trace.user"] == seen["follow"].metadata[
        "$trace.user"] == "ann"


# -- aggregates ------------------------------------------------------------------------------

class Deposit(msgspec.Struct):
    account: str
    amount: int


class Deposited(msgspec.Struct):
    account: str
    amount: int


class TooLarge(FunctionalError):
    pass


@aggregate(snapshot_every=2)
class Account(msgspec.Struct):
    account: str
    balance: int = 0

    @apply
    @staticmethod
    def opened(event: Deposited) -> Account:
        return Account(event.account, event.amount)

    @apply
    def deposited(self, event: Deposited) -> Account:
        return Account(self.account, self.balance + event.amount)

    @assert_legal
    def small(self: Account | None, command: Deposit) -> None:
        if command.amount > 100:
            raise TooLarge("at most 100")


def test_aggregates_outside_handlers_commit_and_conflict(live: ServerProcess) -> None:
    app = Microclient("bank", live.address, token=TOKEN)
    name = project()
    with Client.connect(live.address, token=TOKEN, project=name) as client, running(app, client):
        root = app.load(Account, "acc-1")
        assert root.state is None and root.sequence == -1
        root.apply(Deposited("acc-1", 10), Deposited("acc-1", 5))
        root.commit()
        again = app.load(Account, "acc-1")
        assert again.state == Account("acc-1", 15) and again.sequence == 1
        with pytest.raises(TooLarge):
            again.assert_legal(Deposit("acc-1", 500))
        # a second writer loaded at the same sequence: the later commit fails, nothing
        # is written
        late = app.load(Account, "acc-1")
        again.apply(Deposited("acc-1", 1))
        again.commit()
        late.apply(Deposited("acc-1", 1000))
        with pytest.raises((ConcurrencyError, ClientConcurrencyError)):
            late.commit()
        final = app.load(Account, "acc-1")
        assert final.state == Account("acc-1", 16) and final.sequence == 2
        assert [m.index for m in client.get_events("acc-1")] == [0, 1, 2]
        # a snapshot every 2 events, in the key-value store
        assert client.get_value("$snapshot_acc-1") is not None


def test_assert_and_apply_in_a_handler() -> None:
    app = Microclient("bank2")

    @app.handle_command
    def deposit(command: Deposit) -> int:
        root = app.load(Account, command.account)
        root.assert_and_apply(command, Deposited(command.account, command.amount))
        assert root.state is not None
        return root.state.balance

    fixture = TestFixture(app)
    fixture.when_command(Deposit("a", 50)).expect_result(50).expect_events(Deposited("a", 50))
    fixture.when_command(Deposit("a", 500)).expect_error(TooLarge).expect_no_events()
    fixture.when_command(Deposit("a", 25)).expect_result(75)


# -- periodic jobs ---------------------------------------------------------------------------

class Tick(msgspec.Struct):
    pass


class Tock(msgspec.Struct):
    pass


def test_periodic_initial_delay_schedule_id_and_cron_in_memory() -> None:
    start = datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC).timestamp()
    app = Microclient("jobs")
    ticks: list[datetime] = []
    tocks: list[datetime] = []

    @app.handle_schedule
    @periodic(every=timedelta(minutes=10), initial_delay=timedelta(minutes=1),
              schedule_id="tick-job")
    def tick(job: Tick) -> None:
        ticks.append(app.now())

    @app.handle_schedule
    @periodic(cron="*/15 * * * *")
    def tock(job: Tock) -> None:
        tocks.append(app.now())

    fixture = TestFixture(app, now=start)
    assert fixture.memory is not None
    assert "tick-job" in fixture.memory.schedules
    # the default id: periodic:<consumer>:<the function's __qualname__>
    assert f"periodic:jobs:{tock.__qualname__}" in fixture.memory.schedules
    fixture.when_time_elapses(timedelta(minutes=30)).expect_schedules(Tick, Tock)
    assert [t.strftime("%H:%M:%S") for t in ticks] == ["00:01:30", "00:11:30", "00:21:30"]
    assert [t.strftime("%H:%M") for t in tocks] == ["00:15", "00:30"]


# -- the fixture -----------------------------------------------------------------------------

class Order(msgspec.Struct):
    order_id: str


class Placed(msgspec.Struct):
    order_id: str


class Notify(msgspec.Struct):
    order_id: str


def test_fixture_given_when_expect_steps() -> None:
    placed: list[str] = []

    @handle_command
    def place(command: Order) -> str:
        placed.append(command.order_id)
        app.publish(Placed(command.order_id))
        return command.order_id

    @consumer("notifier")
    class Notifier:
        @handle_event
        def on_placed(self, event: Placed) -> None:
            app.send_and_forget(Notify(event.order_id))

    fixture = TestFixture(place, Notifier(), now=1_000_000)
    app = fixture.app
    fixture.given_commands(Order("o-0")).given_events(Placed("o-x"))
    assert placed == ["o-0"]
    # what the given steps sent does not count for the when step
    fixture.when_command(Order("o-1")).expect_result("o-1") \
        .expect_events(Placed("o-1"), lambda e: e.order_id == "o-1", Placed) \
        .expect_commands(Notify("o-1")).expect_no_error()
    with pytest.raises(AssertionError):
        fixture.expect_commands(Notify("o-0"))
    with pytest.raises(AssertionError):
        fixture.expect_no_commands()
    # the test's own event is not among what it expects
    fixture.when_event(Placed("o-2")).expect_no_events().expect_commands(Notify("o-2"))
    fixture.when_applying(lambda a: a.publish(Placed("o-3"))).expect_events(Placed("o-3"))
    fixture.given_time_elapses(timedelta(seconds=5))
    assert fixture.app.now() == datetime.fromtimestamp(1_000_005, UTC)


# -- the asyncio app -------------------------------------------------------------------------

def test_async_app_same_calls_against_the_server(live: ServerProcess) -> None:
    app = AsyncMicroclient("aio-bank", live.address, token=TOKEN)
    projected: list[int] = []

    @app.handle_command
    async def deposit(command: Deposit) -> int:
        root = await app.load(Account, command.account)
        root.assert_and_apply(command, Deposited(command.account, command.amount))
        assert root.state is not None
        return root.state.balance

    @app.handle_event
    def project_it(event: Deposited) -> None:
        projected.append(event.amount)

    name = project()

    async def main() -> None:
        from fluxcore.client import AsyncClient
        client = await AsyncClient.connect(live.address, token=TOKEN, project=name)
        async with client:
            await app.start(client)
            try:
                assert await app.send(Deposit("a", 30)) == 30
                assert await app.send(Deposit("a", 20)) == 50
                with pytest.raises(TooLarge):
                    await app.send(Deposit("a", 500))
                await app.store_value("k", Placed("x"))
                assert await app.get_value("k", Placed) == Placed("x")
                await app.delete_value("k")
                assert await app.get_value("k", Placed) is None
                sid = await app.schedule(Tick(), timedelta(hours=1), schedule_id="later")
                assert sid == "later"
                assert await app.cancel_schedule("later") is True
                root = await app.load(Account, "b")
                root.apply(Deposited("b", 7))
                await root.commit()
                assert (await app.load(Account, "b")).state == Account("b", 7)
                for _ in range(400):
                    if len(projected) == 3:
                        break
                    await asyncio.sleep(0.05)
                assert sorted(projected) == [7, 20, 30]
            finally:
                await app.stop()

    asyncio.run(main())


def test_consumer_options_and_type_filter(live: ServerProcess) -> None:
    app = Microclient("opts", live.address, token=TOKEN)
    seen: list[tuple[str, Any]] = []
    lock = threading.Lock()
    views = app.consumer("views", trackers=2, max_batch=5, from_index=0, metrics=False)

    @views.handle_event
    def only_placed(event: Placed) -> None:
        with lock:
            seen.append(("placed", event.order_id))

    name = project()
    with Client.connect(live.address, token=TOKEN, project=name) as client:
        # before the app starts: from_index=0 reads them too
        client.publish_batch(MessageType.EVENT,
                             [msgspec.json.encode(Placed(f"o{i}")) for i in range(20)],
                             type="Placed", keys=[f"o{i}" for i in range(20)])
        client.publish(MessageType.EVENT, b'{"order_id": "n"}', type="Notify")
        with running(app, client):
            wait_until(lambda: len(seen) == 20)
        assert sorted(o for _, o in seen) == sorted(f"o{i}" for i in range(20))
        # metrics=False: no HandleMessage written
        assert not [m for m in client.read_from_index(MessageType.METRICS, 0, 10_000)
                    if m.type == "HandleMessage"]


class Nightly(msgspec.Struct):
    pass


def nightly_app(url: str, runs: list[int]) -> Microclient:
    app = Microclient("nightly", url, token=TOKEN)

    @app.handle_schedule
    @periodic(every=timedelta(seconds=1), schedule_id="nightly-job")
    def nightly(job: Nightly, message: Message) -> None:
        runs.append(message.index >> 16)

    return app


def test_periodic_job_that_came_due_while_no_instance_ran(live: ServerProcess) -> None:
    # The first instance creates the schedule and stops before it is due (its consumer
    # never had a message, so it stored no position); the schedule fires while nothing
    # runs. The next instance must still run the job: one instance each period, across
    # restarts.
    runs: list[int] = []
    name = project()
    with Client.connect(live.address, token=TOKEN, project=name) as client:
        with running(nightly_app(live.address, runs), client):
            pass
        scheduled = client.get_schedule("nightly-job")
        assert scheduled is not None
        # fired, and more than a second after: a new consumer starts at "now"
        time.sleep(max(scheduled.deadline_ms / 1000 - time.time(), 0) + 1.5)
        assert client.read_from_index(MessageType.SCHEDULE, 0)  # it fired
        with running(nightly_app(live.address, runs), client):
            wait_until(lambda: len(runs) >= 2)
    # the slot missed while nothing ran is skipped; the next ones run, on the same grid
    assert len(runs) == len(set(runs))
    assert all(r > scheduled.deadline_ms and (r - scheduled.deadline_ms) % 1000 == 0
               for r in runs)


class Lookup(msgspec.Struct):
    key: str


class Found(msgspec.Struct):
    key: str
    value: int


def lookup_app(url: str | None = None) -> Microclient:
    app = Microclient("lookup", url, token=TOKEN)

    @app.handle_query
    def lookup(query: Lookup) -> Any:
        if query.key == "unencodable":
            return object()  # not a payload: the requester gets the error
        if query.key == "none":
            return None
        return Found(query.key, 7)

    return app


def test_results_none_typed_and_unencodable_in_memory_and_live(live: ServerProcess) -> None:
    fixture = TestFixture(lookup_app())
    fixture.when_query(Lookup("a")).expect_result(Found("a", 7))
    fixture.when_query(Lookup("none")).expect_result(None)
    fixture.when_query(Lookup("unencodable")).expect_error(HandlerError)
    fixture.when_query(Lookup("b")).expect_result(Found("b", 7))  # the consumer goes on

    app = lookup_app(live.address)
    name = project()
    with Client.connect(live.address, token=TOKEN, project=name) as client, \
            running(app, client):
        assert app.query(Lookup("a")) == Found("a", 7)
        assert app.query(Lookup("a"), result_type=dict) == {"key": "a", "value": 7}
        assert app.query(Lookup("none")) is None
        with pytest.raises(HandlerError) as failed:
            app.query(Lookup("unencodable"), timeout=20)
        assert failed.value.error_type == "SerializationError"
        assert app.query(Lookup("b"), timeout=20) == Found("b", 7)


def test_fixture_schedules_behave_as_the_servers() -> None:
    # Fired schedules stay until cancelled or replaced, as on the server: if_absent keeps a
    # fired one, and cancelling it says it was not pending.
    app = Microclient("sched")
    fired: list[Tick] = []

    @app.handle_schedule
    def on_tick(job: Tick) -> None:
        fired.append(job)

    fixture = TestFixture(app)
    fixture.when_applying(lambda a: a.schedule(Tick(), timedelta(minutes=1),
                                               schedule_id="s")).expect_schedules(Tick)
    assert fixture.result == "s"
    fixture.when_applying(lambda a: a.schedule(Tick(), timedelta(minutes=5), schedule_id="s",
                                               if_absent=True))
    assert fixture.result is None  # pending: kept
    fixture.when_time_elapses(timedelta(minutes=2))
    assert len(fired) == 1
    fixture.when_applying(lambda a: a.schedule(Tick(), timedelta(minutes=1), schedule_id="s",
                                               if_absent=True))
    assert fixture.result is None  # fired: kept too
    fixture.when_applying(lambda a: a.cancel_schedule("s"))
    assert fixture.result is False  # it had fired
    fixture.when_applying(lambda a: a.schedule(Tick(), timedelta(minutes=1), schedule_id="s",
                                               if_absent=True))
    assert fixture.result == "s"  # gone after the cancel: stored again
    fixture.when_applying(lambda a: a.cancel_schedule("s"))
    assert fixture.result is True  # pending


class Item(msgspec.Struct):
    name: str


def test_web_handlers_with_query_strings_and_headers() -> None:
    app = Microclient("web")

    @app.handle_web("GET", "/items/{item_id}")
    def get_item(item_id: int, message: Message) -> Item | Any:
        from fluxcore.app import WebResponse
        if item_id == 0:
            return WebResponse(b"nope", 404, {"X-Reason": "zero"})
        return Item(f"{item_id}:{message.metadata['url']}")

    @app.handle_web("POST", "/items")
    def post_item(item: Item) -> Item:
        return Item(item.name.upper())

    @app.handle_web("GET", "/names/{name}")
    def get_name(name: str) -> str:
        return name

    with pytest.raises(ValueError, match="FETCH"):
        app.handle_web("FETCH", "/items")  # never reaches the service as HTTP
    fixture = TestFixture(app)
    fixture.when_web_request("GET", "/items/3?full=1").expect_web_response(
        {"name": "3:/items/3?full=1"}, headers={"content-type": "application/json"})
    fixture.when_web_request("GET", "/items/0").expect_web_response(
        b"nope", status=404, headers={"x-reason": "zero"})
    fixture.when_web_request("POST", "/items", Item("tea")).expect_web_response(Item("TEA"))
    fixture.when_web_request("POST", "/items", b"not json").expect_web_response(status=500)
    # a path parameter that does not convert fails the handler, as a body that does not
    # decode does: 500, and the consumer goes on
    fixture.when_web_request("GET", "/items/x").expect_web_response(status=500)
    fixture.when_web_request("GET", "/items/4").expect_web_response({"name": "4:/items/4"})
    # path parameters arrive percent-decoded
    fixture.when_web_request("GET", "/names/tea%20cup").expect_web_response(b"tea cup")


class Audit(msgspec.Struct):
    order_id: str


def test_live_fixture_expect_no_commands_waits_as_expect_no_events(
        live: ServerProcess) -> None:
    # Live, what the handlers send comes after the step returned: "no commands" is only
    # known after waiting, as expect_no_events waits.
    app = Microclient("auditor", live.address, token=TOKEN)

    @app.handle_event
    def on_placed(event: Placed) -> None:
        time.sleep(0.1)
        app.send_and_forget(Audit(event.order_id))

    with TestFixture.live(live.address, app, token=TOKEN, project=project(),
                          timeout=5) as fixture:
        fixture.when_event(Placed("o-1"))
        with pytest.raises(AssertionError, match="expected no commands"):
            fixture.expect_no_commands()
        fixture.expect_commands(Audit("o-1"))


def test_async_app_periodic_job_that_came_due_while_no_instance_ran(
        live: ServerProcess) -> None:
    runs: list[int] = []
    name = project()

    def async_nightly() -> AsyncMicroclient:
        app = AsyncMicroclient("nightly", live.address, token=TOKEN, project=name)

        @app.handle_schedule
        @periodic(every=timedelta(seconds=1), schedule_id="nightly-job")
        async def nightly(job: Nightly, message: Message) -> None:
            runs.append(message.index >> 16)

        return app

    async def main() -> None:
        from fluxcore.client import AsyncClient
        async with await AsyncClient.connect(live.address, token=TOKEN,
                                             project=name) as client:
            async with async_nightly():
                pass
            scheduled = await client.get_schedule("nightly-job")
            assert scheduled is not None and not scheduled.fired
            await asyncio.sleep(max(scheduled.deadline_ms / 1000 - time.time(), 0) + 1.5)
            found = await client.get_schedule("nightly-job")
            assert found is not None and found.fired
            async with async_nightly():
                for _ in range(400):
                    if len(runs) >= 2:
                        break
                    await asyncio.sleep(0.05)
            assert len(runs) >= 2 and len(runs) == len(set(runs))
            assert all(r > scheduled.deadline_ms and (r - scheduled.deadline_ms) % 1000 == 0
                       for r in runs)

    asyncio.run(main())


class Shipped(msgspec.Struct):
    order_id: str


def test_one_consumer_name_is_one_consumer(live: ServerProcess) -> None:
    # app.consumer("views") twice is the same consumer: its handlers together get every
    # message (two consumers of one name would split the segments and lose messages)
    app = Microclient("names", live.address, token=TOKEN)
    seen: list[str] = []
    lock = threading.Lock()
    placed_views = app.consumer("views", from_index=0)
    shipped_views = app.consumer("views", from_index=0)
    assert shipped_views is placed_views

    @placed_views.handle_event
    def on_placed(event: Placed) -> None:
        with lock:
            seen.append("placed " + event.order_id)

    @shipped_views.handle_event
    def on_shipped(event: Shipped) -> None:
        with lock:
            seen.append("shipped " + event.order_id)

    with pytest.raises(ValueError, match="views"):
        app.consumer("views", trackers=3)  # the same name with other options
    with pytest.raises(ValueError, match="names"):
        app.consumer("names", trackers=2)  # the app's own consumer has other options

    name = project()
    keys = [f"o{i}" for i in range(40)]
    with Client.connect(live.address, token=TOKEN, project=name) as client:
        client.publish_batch(MessageType.EVENT,
                             [msgspec.json.encode(Placed(k)) for k in keys], type="Placed",
                             keys=keys)
        client.publish_batch(MessageType.EVENT,
                             [msgspec.json.encode(Shipped(k)) for k in keys], type="Shipped",
                             keys=keys)
        with running(app, client):
            wait_until(lambda: len(seen) == 80)
            time.sleep(0.3)
    assert sorted(seen) == sorted([f"placed {k}" for k in keys]
                                  + [f"shipped {k}" for k in keys])
