"""The TestFixture, in memory and against a real server; README's microclient example, run
as README shows it."""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import fluxcore.server.demo_orders as demo_orders
import msgspec
import pytest

from fluxcore.app import (
    FunctionalError,
    HandlerError,
    Microclient,
    TestFixture,
    handle_command,
    handle_event,
    handle_query,
    handle_schedule,
)

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
    fixture.when_event(Registered("di")).expect_commands(SendWelcome("di"))
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
