"""The TestFixture, in memory and against a real server; README's microclient example, run
as README shows it."""

from __future__ import annotations

import json
import re
import sys
import types
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fluxcore.server.demo_orders as demo_orders
import msgspec
import pytest

from fluxcore.app import (
    CAUSATION,
    CORRELATION,
    FunctionalError,
    HandlerError,
    Message,
    Microclient,
    TestFixture,
    WebResponse,
    aggregate,
    apply,
    assert_legal,
    current_message,
    handle_command,
    handle_event,
    handle_query,
    handle_schedule,
    periodic,
)
from fluxcore.client import Client

from .service_harness import TOKEN, ServerProcess

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_blocks() -> list[str]:
    text = README.read_text()
    section = text.split("## A microclient\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def fresh_orders_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """README's orders.py as the module `orders` (a fresh app for each test)."""
    module = types.ModuleType("orders")
    monkeypatch.setitem(sys.modules, "orders", module)
    exec(compile(readme_blocks()[0], "README.md:orders.py", "exec"), module.__dict__)
    return module


def test_readme_service_is_the_demo_module() -> None:
    source = Path(demo_orders.__file__).read_text()
    body = source.split('"""\n\n', 1)[1]
    assert readme_blocks()[0] == "# orders.py: an order service as a microclient\n" + body


def test_readme_fixture_example(monkeypatch: pytest.MonkeyPatch) -> None:
    fresh_orders_module(monkeypatch)
    namespace: dict[str, Any] = {"__name__": "test_orders"}
    exec(compile(readme_blocks()[1], "README.md:test_orders.py", "exec"), namespace)
    namespace["test_order_service"]()


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("app-fixture") / "data").start()
    try:
        yield proc
    finally:
        proc.kill()


def test_readme_example_live(live_server: ServerProcess,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    orders = fresh_orders_module(monkeypatch)
    with TestFixture.live(live_server.address, orders.app, token=TOKEN) as fixture:
        fixture.when_command(orders.PlaceOrder("o-1", ["tea"])) \
            .expect_result("o-1").expect_events(orders.OrderPlaced("o-1", ["tea"]))
        fixture.when_command(orders.ShipOrder("o-1")).expect_events(orders.OrderShipped("o-1"))
        fixture.when_command(orders.ShipOrder("o-1")).expect_error(orders.IllegalCommand) \
            .expect_no_events()
        view = orders.OrderView("o-1", ["tea"], shipped=True)
        # the projection runs in its own consumer: wait for it
        for _ in range(200):
            if fixture.when_query(orders.GetOrder("o-1")).result == view:
                break
        fixture.expect_result(view)
        assert orders.app.client is not None
        assert orders.app.client.get_schedule("periodic:orders:remind") is not None


# -- the fixture's own API ------------------------------------------------------------------

class Register(msgspec.Struct):
    user: str


class Registered(msgspec.Struct):
    user: str


class SendWelcome(msgspec.Struct):
    user: str


class Reminder(msgspec.Struct):
    user: str


class CountUsers(msgspec.Struct):
    pass


class Taken(FunctionalError):
    pass


users: list[str] = []


@handle_command
def register(command: Register) -> None:
    if command.user in users:
        raise Taken(command.user)
    if command.user == "crash":
        raise RuntimeError("boom")
    app_under_test.publish(Registered(command.user))


@handle_event
def welcome(event: Registered) -> None:
    users.append(event.user)
    app_under_test.send_and_forget(SendWelcome(event.user))
    app_under_test.schedule(Reminder(event.user), timedelta(days=1))


@handle_query
def count(query: CountUsers) -> int:
    return len(users)


reminded: list[str] = []


@handle_schedule
def remind(reminder: Reminder) -> None:
    reminded.append(reminder.user)


app_under_test = Microclient("users")


@pytest.fixture
def fixture() -> TestFixture:
    users.clear()
    reminded.clear()
    global app_under_test
    app_under_test = Microclient("users")
    return TestFixture(app_under_test.register(register, welcome, count, remind))


def test_given_when_expect(fixture: TestFixture) -> None:
    fixture.given_commands(Register("ann")).when_command(Register("bo")) \
        .expect_no_error().expect_events(Registered("bo")).expect_events(Registered) \
        .expect_commands(SendWelcome("bo")).expect_schedules(Reminder("bo"))
    fixture.when_query(CountUsers()).expect_result(2).expect_result(int).expect_no_events()
    fixture.when_command(Register("bo")).expect_error(Taken).expect_no_events() \
        .expect_no_commands()
    fixture.when_command(Register("crash")).expect_error(HandlerError)
    assert isinstance(fixture.error, HandlerError)
    assert fixture.error.error_type == "RuntimeError" and fixture.error.message == "boom"
    fixture.given_events(Registered("cy")).when_query(CountUsers()).expect_result(3)
    fixture.when_event(Registered("di")).expect_commands(SendWelcome("di")) \
        .expect_commands(lambda c: isinstance(c, SendWelcome) and c.user == "di")
    fixture.when_applying(lambda app: app.query(CountUsers())).expect_result(4)


def test_time_elapses_fires_schedules_in_order(fixture: TestFixture) -> None:
    fixture.given_commands(Register("ann"))
    fixture.given_time_elapses(timedelta(hours=12)).given_commands(Register("bo"))
    fixture.when_time_elapses(timedelta(hours=13))
    assert reminded == ["ann"]
    fixture.when_time_elapses(timedelta(hours=12))
    assert reminded == ["ann", "bo"]


def test_failed_expectations_say_what_happened(fixture: TestFixture) -> None:
    fixture.when_command(Register("ann"))
    with pytest.raises(AssertionError, match="expected events"):
        fixture.expect_events(Registered("someone else"))
    with pytest.raises(AssertionError, match="expected no events"):
        fixture.expect_no_events()
    with pytest.raises(AssertionError, match="expected Taken, got result"):
        fixture.expect_error(Taken)
    with pytest.raises(AssertionError, match="expected result 5"):
        fixture.expect_result(5)
    fixture.when_command(Register("ann"))
    with pytest.raises(AssertionError, match="the handler raised"):
        fixture.expect_result(None)


def test_fixture_of_loose_handlers() -> None:
    users.clear()
    fixture = TestFixture(count)
    fixture.when_query(CountUsers()).expect_result(0)


# -- periodic jobs, aggregates kept as values, the rest of the app's calls, in memory --------

class Hourly(msgspec.Struct):
    pass


class Nightly(msgspec.Struct):
    pass


def test_periodic_every_and_cron_on_the_fake_clock() -> None:
    runs: list[tuple[str, datetime]] = []
    app = Microclient("jobs")

    @app.handle_schedule
    @periodic(every=timedelta(hours=1), initial_delay=timedelta(minutes=10))
    def hourly(job: Hourly) -> None:
        runs.append(("hourly", app.now()))

    @app.handle_schedule
    @periodic(cron="30 2 * * *", schedule_id="nightly")
    def nightly(job: Nightly) -> None:
        runs.append(("nightly", app.now()))

    start = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    fixture = TestFixture(app, now=start.timestamp())
    fixture.when_time_elapses(timedelta(hours=3)).expect_schedules(Hourly, Nightly)
    assert runs == [("hourly", start + timedelta(minutes=10)),
                    ("hourly", start + timedelta(minutes=70)),
                    ("hourly", start + timedelta(minutes=130)),
                    ("nightly", start + timedelta(hours=2, minutes=30))]
    assert fixture.memory is not None
    assert set(fixture.memory.schedules) == {"nightly", "periodic:jobs:" + hourly.__qualname__}
    # cancelled, it runs no more
    assert app.cancel_schedule("nightly") and not app.cancel_schedule("nightly")
    runs.clear()
    fixture.when_time_elapses(timedelta(days=1))
    assert [name for name, _ in runs] == ["hourly"] * 24


def test_periodic_options_are_checked() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        periodic()
    with pytest.raises(ValueError, match="bad cron"):
        periodic(cron="every tuesday")
    with pytest.raises(ValueError, match="positive"):
        periodic(every=timedelta(0))

    @periodic(every=timedelta(seconds=1))
    def not_a_schedule_handler(job: Hourly) -> None: ...

    with pytest.raises(TypeError, match="goes with @handle_schedule"):
        Microclient("bad").register(handle_event(not_a_schedule_handler))


class Renamed(msgspec.Struct):
    name: str


@aggregate(event_sourced=False)
class Profile(msgspec.Struct):
    name: str

    @apply
    @staticmethod
    def create(event: Renamed) -> Profile:
        return Profile(event.name)

    @apply
    def rename(self, event: Renamed) -> None:
        self.name = event.name


def test_aggregate_kept_as_a_value_and_the_apps_calls() -> None:
    app = Microclient("profiles")
    fixture = TestFixture(app)
    fixture.when_applying(lambda a: a.load(Profile, "p-1").apply(Renamed("ann")).commit()) \
        .expect_no_error().expect_no_events()  # not event sourced: no events, a value
    root = app.load(Profile, "p-1")
    assert (root.state, root.sequence) == (Profile("ann"), 0)
    root.apply(Renamed("bo")).commit()
    assert app.load(Profile, "p-1").state == Profile("bo")
    assert app.get_value("$aggregate_p-1")["state"] == {"name": "bo"}
    app.store_value("k", {"a": 1})
    assert app.get_value("k") == {"a": 1} and app.get_value("k", bytes) == b'{"a":1}'
    assert app.delete_value("k") and app.get_value("k") is None
    sid = app.schedule(Renamed("later"), timedelta(seconds=5), schedule_id="s-1")
    assert sid == "s-1" and app.schedule(Renamed("x"), timedelta(1), schedule_id="s-1",
                                         if_absent=True) is None
    assert app.now().tzinfo is UTC


def test_an_app_that_is_not_started_says_so() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        Microclient("idle").publish(Renamed("x"))
    with pytest.raises(ValueError, match="url"):
        Microclient("no-url").start()


def test_an_app_starts_once(live_server: ServerProcess) -> None:
    app = Microclient("once")
    app.url, app.token = live_server.address, TOKEN
    with app, pytest.raises(RuntimeError, match="running already"):
        app.start()
    app.start().stop()  # and again after a stop


class Limit(msgspec.Struct):
    amount: int


class Count(msgspec.Struct):
    value: int


@aggregate()
class Counter(msgspec.Struct):
    value: int

    @apply
    @staticmethod
    def first(command: Limit) -> Counter:
        return Counter(command.amount)

    @apply
    def more(self, command: Limit) -> Counter:
        return Counter(self.value + command.amount)

    @assert_legal
    def small(self: Counter | None, command: Limit) -> None:
        if command.amount > 10 or (self is not None and self.value + command.amount > 20):
            raise TooMuch(f"{command.amount} is too much")


class TooMuch(FunctionalError):
    pass


def test_assert_and_apply_metadata_and_result_types() -> None:
    app = Microclient("counters")
    seen: list[dict[str, str]] = []

    @app.handle_command
    def add(command: Limit) -> Count:
        counter = app.load(Counter, "c-1").assert_and_apply(command)  # the command is the event
        assert counter.state is not None
        return Count(counter.state.value)

    @app.handle_event
    def watch(event: Limit) -> None:
        message = current_message()
        assert message is not None
        seen.append(dict(message.metadata))

    fixture = TestFixture(app)
    fixture.when_command(Limit(5)).expect_result(Count(5)).expect_events(Limit(5))
    fixture.when_command(Limit(11)).expect_error(TooMuch).expect_no_events()
    fixture.when_command(Limit(9)).expect_result(Count(14))
    fixture.when_command(Limit(7)).expect_error(TooMuch)
    assert app.send(Limit(1), result_type=dict) == {"value": 15}
    # what a handler sends carries the correlation, the causation and the $trace. keys
    app.send(Limit(1), metadata={"$trace.user": "ann", "other": "x"})
    last = seen[-1]
    assert last["$trace.user"] == "ann" and "other" not in last
    assert last[CORRELATION] and last[CAUSATION]


def test_coroutine_handlers_in_memory() -> None:
    import asyncio

    app = Microclient("async-app")

    @app.handle_query
    async def slow_count(query: CountUsers) -> int:
        await asyncio.sleep(0)
        return 42

    fixture = TestFixture(app)
    fixture.when_query(CountUsers()).expect_result(42)
    app.stop()  # closes the event loop the coroutine ran on


# -- failed handlers are logged rate-limited --------------------------------------------------

class Broken(msgspec.Struct):
    n: int


def test_failing_handler_is_logged_once_then_counted(caplog: pytest.LogCaptureFixture) -> None:
    app = Microclient("flaky")

    @app.handle_event
    def always_fails(event: Broken) -> None:
        raise RuntimeError(f"bad {event.n}")

    now = [100.0]
    app.failures.clock = lambda: now[0]
    app.failures.interval_s = 10.0
    fixture = TestFixture(app)
    with caplog.at_level("ERROR", logger="fluxcore.app"):
        fixture.given_events(*[Broken(i) for i in range(500)])
        lines = [r for r in caplog.records if "always_fails" in r.getMessage()]
        assert len(lines) == 1  # the first in full, with its traceback
        assert lines[0].exc_info is not None and "bad 0" in str(lines[0].exc_info[1])
        now[0] += 10.0  # the interval passed: the next failure writes the count
        fixture.given_events(Broken(500), Broken(501))
        lines = [r.getMessage() for r in caplog.records if "always_fails" in r.getMessage()]
        assert len(lines) == 2
        assert "500 more times" in lines[1] and "bad 500" in lines[1]
        app.stop()  # the count not logged yet (Broken(501)) is written when the app stops
        lines = [r.getMessage() for r in caplog.records if "always_fails" in r.getMessage()]
        assert len(lines) == 3 and "1 more times" in lines[2] and "bad 501" in lines[2]
    assert app.handled_errors == 502


# -- web requests in memory -------------------------------------------------------------------

class Item(msgspec.Struct):
    name: str
    price: int


def web_shop() -> Microclient:
    app = Microclient("web-shop")
    stock: dict[int, Item] = {}

    @app.handle_web("GET", "/items/{item_id}")
    def get_item(item_id: int) -> Item | WebResponse:
        found = stock.get(item_id)
        return found if found is not None else WebResponse(b"no such item", 404)

    @app.handle_web("PUT", "/items/{item_id}")
    def put_item(item_id: int, item: Item, message: Message) -> WebResponse:
        stock[item_id] = item
        app.publish(Registered(item.name))
        headers = json.loads(message.metadata["headers"])
        return WebResponse(b"", 201, {"X-Item": str(item_id), "X-By": headers.get("X-By", "")})

    @app.handle_web("DELETE", "/items/{item_id}")
    def delete_item(item_id: int) -> None:
        if item_id not in stock:
            raise KeyError(item_id)
        del stock[item_id]

    return app


def test_web_requests_in_memory() -> None:
    fixture = TestFixture(web_shop())
    fixture.when_web_request("PUT", "/items/7", Item("tea", 3), headers={"X-By": "ann"}) \
        .expect_web_response(status=201, headers={"x-item": "7", "X-By": "ann"}) \
        .expect_events(Registered("tea"))
    fixture.when_web_request("GET", "/items/7?fields=all") \
        .expect_web_response(Item("tea", 3), headers={"Content-Type": "application/json"}) \
        .expect_web_response({"name": "tea", "price": 3}) \
        .expect_web_response(lambda body: b"tea" in body)
    fixture.when_web_request("GET", "/items/8").expect_web_response(b"no such item", status=404)
    fixture.when_web_request("DELETE", "/items/7").expect_web_response(b"", status=204)
    fixture.when_web_request("DELETE", "/items/7") \
        .expect_web_response(lambda body: body.startswith(b"KeyError"), status=500)
    # a body that does not decode into the handler's class fails it, as on the server
    fixture.when_web_request("PUT", "/items/9", '{"name": 1}').expect_web_response(status=500)
    fixture.when_web_request("POST", "/nowhere").expect_error(TimeoutError)
    with pytest.raises(AssertionError, match="expected status 200, got 404"):
        fixture.when_web_request("GET", "/items/8").expect_web_response()
    with pytest.raises(AssertionError, match="expected body"):
        fixture.when_web_request("GET", "/items/7").expect_web_response(b"x", status=404)
    with pytest.raises(AssertionError, match="expected header"):
        fixture.when_web_request("GET", "/items/8").expect_web_response(
            status=404, headers={"X-Item": "8"})


# -- README's asyncio example -----------------------------------------------------------------

def aio_orders_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    fresh_orders_module(monkeypatch)
    module = types.ModuleType("orders_aio")
    monkeypatch.setitem(sys.modules, "orders_aio", module)
    exec(compile(readme_blocks()[2], "README.md:orders_aio.py", "exec"), module.__dict__)
    return module


def test_readme_asyncio_fixture_example(monkeypatch: pytest.MonkeyPatch) -> None:
    aio_orders_module(monkeypatch)
    namespace: dict[str, Any] = {"__name__": "test_orders_aio"}
    exec(compile(readme_blocks()[3], "README.md:test_orders_aio.py", "exec"), namespace)
    namespace["test_asyncio_order_service"]()


def test_readme_asyncio_example_live(live_server: ServerProcess,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    module = aio_orders_module(monkeypatch)
    app = module.app
    app.url, app.token, app.project = live_server.address, TOKEN, "readme-aio"
    asyncio.run(module.main())
    with Client.connect(live_server.address, token=TOKEN, project="readme-aio") as client:
        assert [e.type for e in client.get_events("o-2")] == ["OrderPlaced"]
