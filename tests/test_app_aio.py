"""The asyncio app (AsyncMicroclient) against a real server: async and plain handlers on the
caller's loop, awaitable send/query/publish, aggregates loaded and committed through the
asyncio client, periodic jobs, handler metrics; and results' revisions on the wire (both
apps)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import msgspec
import pytest

from fluxcore.app import (
    CORRELATION,
    AsyncMicroclient,
    ConcurrencyError,
    FunctionalError,
    Microclient,
    TestFixture,
    aggregate,
    apply,
    assert_legal,
    current_message,
    payload,
    periodic,
    upcaster,
)
from fluxcore.client import AsyncClient, Message, MessageType

from .service_harness import TOKEN, ServerProcess, stopped_by_sigterm


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("app-aio") / "data").start()
    try:
        yield proc
    finally:
        proc.kill()


async def wait_for(check: Callable[[], Any], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check() if asyncio.iscoroutinefunction(check) else not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


class Open(msgspec.Struct):
    account: str


class Deposit(msgspec.Struct):
    account: str
    amount: int


class Opened(msgspec.Struct):
    account: str


class Deposited(msgspec.Struct):
    account: str
    amount: int


class Balance(msgspec.Struct):
    account: str


class Nightly(msgspec.Struct):
    pass


class NoAccount(FunctionalError):
    pass


@aggregate(snapshot_every=2)
class Account(msgspec.Struct):
    account: str
    balance: int = 0

    @apply
    @staticmethod
    def opened(event: Opened) -> Account:
        return Account(event.account)

    @apply
    def deposited(self, event: Deposited) -> Account:
        return msgspec.structs.replace(self, balance=self.balance + event.amount)

    @assert_legal
    def exists(self: Account | None, command: Deposit) -> None:
        if self is None:
            raise NoAccount(f"no account {command.account}")


nightly_runs: list[str] = []


def bank_app(loop_seen: list[asyncio.AbstractEventLoop]) -> AsyncMicroclient:
    app = AsyncMicroclient("bank", max_batch=20)
    views = app.consumer("bank-views")
    balances: dict[str, int] = {}

    @app.handle_command
    async def open_account(command: Open) -> str:
        loop_seen.append(asyncio.get_running_loop())
        account = await app.load(Account, command.account)
        account.apply(Opened(command.account))  # committed when the handler returns
        return command.account

    @app.handle_command
    async def deposit(command: Deposit) -> int:
        account = await app.load(Account, command.account)
        account.assert_legal(command).apply(Deposited(command.account, command.amount))
        assert account.state is not None
        return account.state.balance

    @views.handle_event
    def project(event: Deposited) -> None:  # plain: called inline on the loop, no I/O
        balances[event.account] = balances.get(event.account, 0) + event.amount

    @app.handle_query
    async def balance(query: Balance) -> int | None:
        return balances.get(query.account)

    @app.handle_schedule
    @periodic(every=timedelta(hours=1), schedule_id="bank-nightly")
    async def nightly(job: Nightly) -> None:
        await asyncio.sleep(0)
        nightly_runs.append(app.now().isoformat())

    return app


def test_async_app_against_the_server(live: ServerProcess) -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    async def main() -> None:
        app = bank_app(loops)
        app.url, app.token, app.project = live.address, TOKEN, "aio-bank"
        async with app:
            assert await app.send(Open("a-1")) == "a-1"
            assert loops == [asyncio.get_running_loop()]  # trackers are tasks of this loop
            assert await app.send(Deposit("a-1", 5)) == 5
            assert await app.send(Deposit("a-1", 7)) == 12
            with pytest.raises(NoAccount):
                await app.send(Deposit("nobody", 1))
            # the aggregate went through the asyncio client: its stream and its snapshot
            assert app.client is not None
            events = await app.client.get_events("a-1")
            assert [e.type for e in events] == ["Opened", "Deposited", "Deposited"]
            assert await app.client.get_value("$snapshot_a-1") is not None
            reloaded = await app.load(Account, "a-1")
            assert reloaded.state == Account("a-1", 12) and reloaded.sequence == 2
            # a stale copy cannot commit over a newer one
            stale = await app.load(Account, "a-1")
            await app.send(Deposit("a-1", 1))
            stale.apply(Deposited("a-1", 100))
            with pytest.raises(ConcurrencyError):
                await stale.commit()
            # the plain event handler projected the events (another consumer)

            async def projected() -> bool:
                return bool(await app.query(Balance("a-1")) == 13)

            await wait_for(projected)
            # events published by the app reach the projection too
            await app.publish(Deposited("b-2", 3))

            async def published() -> bool:
                return bool(await app.query(Balance("b-2")) == 3)

            await wait_for(published)
            # the periodic job's first schedule exists
            assert await app.client.get_schedule("bank-nightly") is not None
        assert app.client is None

    asyncio.run(main())


def test_async_app_handler_metrics_and_correlation(live: ServerProcess) -> None:
    async def main() -> None:
        app = AsyncMicroclient("measured-aio", max_batch=25)
        seen: list[dict[str, str]] = []
        count = 60

        @app.handle_event
        async def on_deposit(event: Deposited) -> None:
            if event.amount == 0:
                message = current_message()
                assert message is not None
                await app.publish(Opened(f"from-{event.account}"))

        @app.handle_event
        async def on_opened(event: Opened, message: Message) -> None:
            seen.append(dict(message.metadata))

        reader = await AsyncClient.connect(live.address, token=TOKEN, project="aio-metrics")
        async with reader:
            before = await reader.read_from_index(MessageType.METRICS, 0, 10_000)
            after = before[-1].index + 1 if before else 0
            app.url, app.token, app.project = live.address, TOKEN, "aio-metrics"
            await app.start()
            try:
                await app.publish(*[Deposited("x", i) for i in range(count)])
                await wait_for(lambda: len(seen) >= 1)

                async def measured() -> list[dict[str, Any]]:
                    found = await reader.read_from_index(MessageType.METRICS, after, 10_000)
                    return [msgspec.msgpack.decode(m.data) | {"$type": m.type} for m in found]

                async def all_measured() -> bool:
                    return sum(len(b["index"]) for b in await measured()
                               if b["$type"] == "HandleMessage") >= count + 1

                await wait_for(all_measured)
            finally:
                await app.stop()
            found = await measured()
            handled = [b for b in found if b["$type"] == "HandleMessage"]
            names = {h.rsplit(".", 1)[-1] for b in handled for h in b["handlers"]}
            assert names == {"on_deposit", "on_opened"}
            batches = [b for b in found if b["$type"] == "ProcessBatch"]
            assert batches and all(b["tracker"].endswith("/measured-aio/0")
                                   and b["batch_size"] <= 25 for b in batches)
        # what a handler published carries the correlation of what it handled
        assert seen[0][CORRELATION]

    asyncio.run(main())


def test_async_app_starts_once_and_needs_a_url(live: ServerProcess) -> None:
    async def main() -> None:
        app = AsyncMicroclient("nowhere")
        with pytest.raises(ValueError, match="url"):
            await app.start()
        with pytest.raises(RuntimeError, match="not started"):
            await app.send(Open("x"))
        app.url, app.token = live.address, TOKEN
        async with app:
            with pytest.raises(RuntimeError, match="running already"):
                await app.start()
        # serve() runs until stop() (from a handler, another task, or a signal)
        serving = asyncio.get_running_loop().create_task(app.serve())
        await wait_for(lambda: app._flusher is not None)  # started
        await app.stop()
        await asyncio.wait_for(serving, 30)
        assert app.client is None

    asyncio.run(main())


def test_async_app_in_the_fixture() -> None:
    fixture = TestFixture(bank_app([]))
    fixture.when_command(Open("a-1")).expect_result("a-1").expect_events(Opened("a-1"))
    fixture.when_command(Deposit("a-1", 5)).expect_result(5) \
        .expect_events(Deposited("a-1", 5))
    fixture.when_command(Deposit("zz", 5)).expect_error(NoAccount).expect_no_events()
    fixture.when_query(Balance("a-1")).expect_result(5)  # the plain projection ran inline
    before = len(nightly_runs)
    fixture.when_time_elapses(timedelta(hours=2)).expect_schedules(Nightly)
    assert len(nightly_runs) == before + 2

    async def deposit_twice(app: AsyncMicroclient) -> int:
        account = await app.load(Account, "a-1")
        account.apply(Deposited("a-1", 1), Deposited("a-1", 2))
        await account.commit()
        return account.sequence

    fixture.when_applying(deposit_twice).expect_result(3) \
        .expect_events(Deposited("a-1", 1), Deposited("a-1", 2))
    fixture.when_query(Balance("a-1")).expect_result(8)
    with pytest.raises(TypeError, match="AsyncMicroclient"):
        TestFixture.live("127.0.0.1:1", bank_app([]))


# -- results keep their revision --------------------------------------------------------------

@payload(type="Quote", revision=1)
class Quote(msgspec.Struct):
    cents: int


@payload(type="Quote", revision=0)
class OldQuote(msgspec.Struct):
    euros: int


class AskQuote(msgspec.Struct):
    old: bool


@upcaster("Quote", 0)
def quote_in_cents(data: dict[str, Any]) -> dict[str, Any]:
    return {"cents": data["euros"] * 100}


def quote_handlers(app: Microclient | AsyncMicroclient) -> None:
    app.register(quote_in_cents)

    @app.handle_query
    def quote(query: AskQuote) -> Quote | OldQuote:
        return OldQuote(3) if query.old else Quote(250)


def test_results_are_upcast_from_their_revision(live: ServerProcess) -> None:
    app = Microclient("quotes")
    quote_handlers(app)
    app.url, app.token, app.project = live.address, TOKEN, "quotes"
    with app:
        # revision 1 goes as revision 1: not upcast again (it was upcast as revision 0)
        assert app.query(AskQuote(False), result_type=Quote) == Quote(250)
        # an old revision is upcast on the way in
        assert app.query(AskQuote(True), result_type=Quote) == Quote(300)
        assert app.client is not None
        found = app.client.read_from_index(MessageType.RESULT, 0, 100)
        assert sorted(m.revision for m in found if m.type == "Quote") == [0, 1]

    async def main() -> None:
        aio = AsyncMicroclient("quotes-aio")
        quote_handlers(aio)
        aio.url, aio.token, aio.project = live.address, TOKEN, "quotes-aio"
        async with aio:
            assert await aio.query(AskQuote(False), result_type=Quote) == Quote(250)
            assert await aio.query(AskQuote(True), result_type=Quote) == Quote(300)

    asyncio.run(main())





# -- the other calls, a client of one's own, run() until SIGTERM ------------------------------

class Note(msgspec.Struct):
    text: str


def test_async_app_calls_on_a_client_of_ones_own(live: ServerProcess) -> None:
    async def main() -> None:
        app = AsyncMicroclient("notes")
        notes: list[str] = []
        audit: list[str] = []
        arrived = asyncio.Event()

        @app.handle_command
        async def take(note: Note) -> None:
            notes.append(note.text)
            arrived.set()

        @app.handle_custom("audit")
        def audited(note: Note) -> None:
            audit.append(note.text)

        @app.handle_schedule
        async def remind(note: Note) -> None:
            await app.store_value(f"reminded/{note.text}", note)

        client = await AsyncClient.connect(live.address, token=TOKEN, project="aio-notes")
        async with client:
            await app.start(client)
            try:
                await app.send_and_forget(Note("a"))
                await arrived.wait()
                await app.publish_to(MessageType.CUSTOM, Note("b"), topic="audit")
                await app.store_value("k", Note("c"))
                assert await app.get_value("k", Note) == Note("c")
                assert await app.get_value("k") == {"text": "c"}
                assert await app.get_value("k", bytes) == b'{"text":"c"}'
                assert await app.delete_value("k") and await app.get_value("k") is None
                sid = await app.schedule(Note("later"), timedelta(hours=1))
                assert sid is not None and await app.cancel_schedule(sid)
                assert await app.schedule(Note("soon"), timedelta(milliseconds=50),
                                          schedule_id="s-1") == "s-1"
                assert await app.schedule(Note("soon"), timedelta(milliseconds=50),
                                          schedule_id="s-1", if_absent=True) is None

                async def reminded() -> bool:
                    return await app.get_value("reminded/soon", Note) == Note("soon")

                await wait_for(reminded)
                await wait_for(lambda: audit == ["b"])
            finally:
                await app.stop()
            assert not client.closed  # the app leaves a client it was given open
            assert notes == ["a"]

    asyncio.run(main())


def test_async_app_run_until_sigterm(live: ServerProcess) -> None:
    import subprocess
    import sys

    script = (
        "import msgspec\nfrom fluxcore.app import AsyncMicroclient\n"
        "class Ping(msgspec.Struct):\n    n: int\n"
        f"app = AsyncMicroclient('pinger', {live.address!r}, {TOKEN!r}, project='aio-run')\n"
        "@app.handle_query\nasync def ping(query: Ping) -> int:\n    return query.n + 1\n"
        "print('running', flush=True)\napp.run()\nprint('stopped', flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "running\n"

        class Ping(msgspec.Struct):
            n: int

        caller = Microclient("ping-caller")
        caller.url, caller.token, caller.project = live.address, TOKEN, "aio-run"
        with caller:
            assert caller.query(Ping(1), timeout=30) == 2
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    assert stopped_by_sigterm(proc) == "stopped\n"
