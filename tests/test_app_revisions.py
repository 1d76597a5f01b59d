"""Payload revisions on the wire, against a real server: the clients' publish, publish_batch,
request, schedule and append_events carry a revision (one, or one per message) that consumers,
get_schedule and get_events read back; and the microclients (sync and asyncio) send their
payload classes' revisions on every path (publish, send, query, send_and_forget, schedule,
aggregate events), so an upcaster of an older revision does not run on them."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import msgspec
import pytest

from fluxcore.app import AsyncMicroclient, Microclient, aggregate, apply, payload, upcaster
from fluxcore.client import AsyncClient, Client, Message, MessageType

from .service_harness import TOKEN, ServerProcess


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("app-revisions") / "data").start()
    try:
        yield proc
    finally:
        proc.kill()


def wait_until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


# -- the wire clients ---------------------------------------------------------------------------

def revisions_of(client: Client, message_type: MessageType, ptype: str) -> list[int]:
    return [m.revision for m in client.read_from_index(message_type, 0, 10_000)
            if m.type == ptype]


def test_client_methods_carry_a_revision(live: ServerProcess) -> None:
    with Client.connect(live.address, token=TOKEN, project="wire-rev", name="w") as client:
        client.publish(MessageType.EVENT, b"{}", type="One", revision=2)
        client.publish_batch(MessageType.EVENT, [b"1", b"2", b"3"], type="Many", revision=7)
        client.publish_batch(MessageType.EVENT, [b"1", b"2", b"3"], types=["Each"] * 3,
                             revision=[0, 1, 4_294_967_295])
        assert revisions_of(client, MessageType.EVENT, "One") == [2]
        assert revisions_of(client, MessageType.EVENT, "Many") == [7, 7, 7]
        assert revisions_of(client, MessageType.EVENT, "Each") == [0, 1, 4_294_967_295]
        # a request (nobody answers it here): its message in the COMMAND log
        pending = client.request_async(MessageType.COMMAND, b"{}", type="Ask", revision=3)
        wait_until(lambda: revisions_of(client, MessageType.COMMAND, "Ask") == [3])
        pending.cancel()
        # a schedule: pending, then fired into the SCHEDULE log
        sid = client.schedule(b"{}", timedelta(hours=1), type="Later", revision=5)
        assert sid is not None
        scheduled = client.get_schedule(sid)
        assert scheduled is not None and scheduled.message.revision == 5
        client.schedule(b"{}", timedelta(0), type="Now", revision=6)
        wait_until(lambda: revisions_of(client, MessageType.SCHEDULE, "Now") == [6])
        # aggregate events: one revision for all, or one per event; stored and published
        client.append_events("agg-1", [b"a", b"b"], types="Happened", revision=2)
        client.append_events("agg-1", [b"c", b"d"], types=["Happened", "Other"],
                             revision=[3, 0])
        assert [m.revision for m in client.get_events("agg-1")] == [2, 2, 3, 0]
        assert revisions_of(client, MessageType.EVENT, "Happened") == [2, 2, 3]


def test_async_client_methods_carry_a_revision(live: ServerProcess) -> None:
    async def main() -> None:
        client = await AsyncClient.connect(live.address, token=TOKEN, project="wire-rev-aio",
                                           name="a")
        try:
            await client.publish(MessageType.EVENT, b"{}", type="One", revision=2)
            await client.publish_batch(MessageType.EVENT, [b"1", b"2"], types=["A", "B"],
                                       revision=[1, 9])
            found = {m.type: m.revision
                     for m in await client.read_from_index(MessageType.EVENT, 0, 100)}
            assert found == {"One": 2, "A": 1, "B": 9}
            pending = await client.request_nowait(MessageType.QUERY, b"{}", type="Ask",
                                                  revision=3)
            for _ in range(1000):
                queries = await client.read_from_index(MessageType.QUERY, 0, 100)
                if queries:
                    break
                await asyncio.sleep(0.02)
            assert [(m.type, m.revision) for m in queries] == [("Ask", 3)]
            pending.cancel()
            sid = await client.schedule(b"{}", timedelta(hours=1), type="Later", revision=5)
            assert sid is not None
            scheduled = await client.get_schedule(sid)
            assert scheduled is not None and scheduled.message.revision == 5
            await client.append_events("agg-2", [b"a", b"b"], types="Happened",
                                       revision=[2, 4])
            assert [m.revision for m in await client.get_events("agg-2")] == [2, 4]
        finally:
            await client.close()

    asyncio.run(main())


def test_bad_revisions_are_refused_and_nothing_is_sent(live: ServerProcess) -> None:
    with Client.connect(live.address, token=TOKEN, project="wire-rev-bad", name="b") as client:
        with pytest.raises(ValueError, match="revision"):
            client.publish(MessageType.EVENT, b"{}", type="X", revision=-1)
        with pytest.raises(ValueError, match="revision"):
            client.publish(MessageType.EVENT, b"{}", type="X", revision=2**32)
        with pytest.raises(ValueError, match="2 revisions for 3 messages"):
            client.publish_batch(MessageType.EVENT, [b"1", b"2", b"3"], type="X",
                                 revision=[1, 2])
        with pytest.raises(TypeError, match="revision"):
            client.publish_batch(MessageType.EVENT, [b"1"], type="X",
                                 revision=["1"])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="revision"):
            client.append_events("agg-bad", [b"1"], types="X",
                                 revision=1.0)  # type: ignore[arg-type]
        assert client.read_from_index(MessageType.EVENT, 0, 100) == []
        assert client.get_events("agg-bad") == []


def test_a_sync_consumer_handles_each_batch_once(live: ServerProcess) -> None:
    # (a merge once left Consumer._run calling the handler twice per batch)
    with Client.connect(live.address, token=TOKEN, project="wire-once", name="c") as client:
        client.publish_batch(MessageType.EVENT, [b"%d" % i for i in range(20)], type="N")
        handled: list[bytes] = []
        batches: list[int] = []
        lock = threading.Lock()

        def each(message: Message) -> None:
            with lock:
                handled.append(message.data)

        def batch(messages: list[Message]) -> None:
            with lock:
                batches.extend(m.index for m in messages)

        one = client.consume("once", MessageType.EVENT, each, from_index=0)
        many = client.consume("once-batch", MessageType.EVENT, batch, batch=True, from_index=0)
        try:
            wait_until(lambda: len(handled) >= 20 and len(batches) >= 20)
            time.sleep(0.3)  # a second call would come right after the first
            with lock:
                assert sorted(handled) == sorted(b"%d" % i for i in range(20))
                assert len(batches) == len(set(batches)) == 20
        finally:
            one.stop()
            many.stop()


# -- the microclients -----------------------------------------------------------------------------
# Every payload class is at revision 2; the upcasters of revision 0 must never run on them.

@payload(revision=2)
class Record(msgspec.Struct):
    value: int


@payload(revision=2)
class Lookup(msgspec.Struct):
    value: int


@payload(revision=2)
class Noted(msgspec.Struct):
    value: int


@payload(revision=2)
class Remind(msgspec.Struct):
    value: int


@payload(revision=2)
class Changed(msgspec.Struct):
    value: int


@aggregate()
class Counter(msgspec.Struct):
    total: int

    @apply
    @staticmethod
    def started(event: Changed) -> Counter:
        return Counter(event.value)

    @apply
    def changed(self, event: Changed) -> None:
        self.total += event.value


class Seen:
    def __init__(self) -> None:
        self.items: list[tuple[str, int, int]] = []  # (handler, value, revision on the wire)
        self.upcast: list[str] = []
        self.lock = threading.Lock()

    def add(self, kind: str, value: int, message: Message) -> None:
        with self.lock:
            self.items.append((kind, value, message.revision))

    def of(self, kind: str) -> list[tuple[int, int]]:
        with self.lock:
            return [(v, r) for k, v, r in self.items if k == kind]


def revision_app(app: Microclient | AsyncMicroclient, seen: Seen) -> None:
    """Handlers of every path, and an upcaster of revision 0 of each type that marks what
    it touched (and would make the value wrong)."""
    for name in ("Record", "Lookup", "Noted", "Remind", "Changed"):
        def old(data: dict[str, Any], name: str = name) -> dict[str, Any]:
            seen.upcast.append(name)
            return {"value": data["value"] + 1000}
        app.register(upcaster(name, 0)(old))

    @app.handle_command
    def record(command: Record, message: Message) -> int:
        seen.add("command", command.value, message)
        return command.value

    @app.handle_query
    def lookup(query: Lookup, message: Message) -> int:
        seen.add("query", query.value, message)
        return query.value * 10

    @app.handle_event
    def noted(event: Noted, message: Message) -> None:
        seen.add("event", event.value, message)

    @app.handle_event
    def changed(event: Changed, message: Message) -> None:
        seen.add("aggregate event", event.value, message)

    @app.handle_schedule
    def remind(reminder: Remind, message: Message) -> None:
        seen.add("schedule", reminder.value, message)


def check_the_wire(address: str, project: str, aggregate_id: str) -> None:
    """What the server stored: every message of our types at revision 2."""
    with Client.connect(address, token=TOKEN, project=project, name="reader") as reader:
        logs = (MessageType.COMMAND, MessageType.QUERY, MessageType.EVENT, MessageType.SCHEDULE)
        stored = [(m.type, m.revision) for t in logs
                  for m in reader.read_from_index(t, 0, 10_000)
                  if m.type in {"Record", "Lookup", "Noted", "Remind", "Changed"}]
        assert {t for t, _ in stored} == {"Record", "Lookup", "Noted", "Remind", "Changed"}
        assert {r for _, r in stored} == {2}
        assert [m.revision for m in reader.get_events(aggregate_id)] == [2, 2]


def test_microclient_sends_its_payload_revisions(live: ServerProcess) -> None:
    seen = Seen()
    app = Microclient("revised")
    revision_app(app, seen)
    app.url, app.token, app.project = live.address, TOKEN, "app-rev"
    with app:
        assert app.send(Record(1)) == 1
        assert app.query(Lookup(2)) == 20
        app.send_and_forget(Record(3))
        app.publish(Noted(4))
        app.schedule(Remind(5), timedelta(0))
        app.load(Counter, "counter-1").apply(Changed(6)).apply(Changed(7)).commit()
        wait_until(lambda: len(seen.of("command")) == 2 and len(seen.of("event")) == 1
                   and len(seen.of("schedule")) == 1 and len(seen.of("aggregate event")) == 2)
        assert sorted(seen.of("command")) == [(1, 2), (3, 2)]
        assert seen.of("query") == [(2, 2)]
        assert seen.of("event") == [(4, 2)]
        assert seen.of("schedule") == [(5, 2)]
        assert seen.of("aggregate event") == [(6, 2), (7, 2)]
        # loading reads the stream back (get_events): no upcasting either
        assert app.load(Counter, "counter-1").state == Counter(13)
        assert seen.upcast == []
    check_the_wire(live.address, "app-rev", "counter-1")


def test_async_microclient_sends_its_payload_revisions(live: ServerProcess) -> None:
    seen = Seen()

    async def main() -> None:
        app = AsyncMicroclient("revised-aio")
        revision_app(app, seen)
        app.url, app.token, app.project = live.address, TOKEN, "app-rev-aio"
        async with app:
            assert await app.send(Record(1)) == 1
            assert await app.query(Lookup(2)) == 20
            await app.send_and_forget(Record(3))
            await app.publish(Noted(4))
            await app.schedule(Remind(5), timedelta(0))
            counter = await app.load(Counter, "counter-2")
            await counter.apply(Changed(6)).apply(Changed(7)).commit()
            for _ in range(1000):
                if (len(seen.of("command")) == 2 and len(seen.of("event")) == 1
                        and len(seen.of("schedule")) == 1
                        and len(seen.of("aggregate event")) == 2):
                    break
                await asyncio.sleep(0.02)
            assert sorted(seen.of("command")) == [(1, 2), (3, 2)]
            assert seen.of("query") == [(2, 2)]
            assert seen.of("event") == [(4, 2)]
            assert seen.of("schedule") == [(5, 2)]
            assert seen.of("aggregate event") == [(6, 2), (7, 2)]
            assert (await app.load(Counter, "counter-2")).state == Counter(13)
            assert seen.upcast == []

    asyncio.run(main())
    check_the_wire(live.address, "app-rev-aio", "counter-2")
