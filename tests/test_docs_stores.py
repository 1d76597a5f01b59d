"""README's Python client and docs/protocol.md, promise by promise, for what is not a plain
log: the key-value store, schedules (deadlines as datetimes, naive or aware, delays and epoch
seconds; cancel; fired ones), event sourcing, `fluxcore metrics`, tracking (positions, reset,
leaving trackers, rebalancing) and requests that time out or fail. Real server, real
clients."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from fluxcore import Log
from fluxcore.client import (
    AsyncClient,
    Client,
    Message,
    MessageType,
    ProtocolError,
    Relationship,
    RequestError,
)
from fluxcore.protocol import Guarantee, time_from_index

from .service_harness import TOKEN, ServerProcess, module_server


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(tmp_path_factory, "docs-stores")


_projects = iter(range(1_000_000))


@pytest.fixture
def client(shared: ServerProcess) -> Iterator[Client]:
    """A client of a project of its own (the module shares one server)."""
    with Client.connect(shared.address, token=TOKEN, name="stores",
                        project=f"p{next(_projects)}") as c:
        yield c


def wait_until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


# -- the key-value store ---------------------------------------------------------------------

def test_values_are_any_bytes_and_keys_1_to_1000_characters(client: Client) -> None:
    client.store_value("empty", b"")
    assert client.get_value("empty") == b""  # an empty value is a value, not None
    assert client.delete_value("empty") is True
    assert client.get_value("empty") is None
    client.store_value("k" * 1000, b"\x00\xff")
    assert client.get_value("k" * 1000) == b"\x00\xff"
    for bad in ("", "k" * 1001):
        with pytest.raises(ProtocolError, match="bad_request"):
            client.store_value(bad, b"x")
    # all in one transaction: a bad key stores nothing of the request
    with pytest.raises(ProtocolError, match="bad_request"):
        client.store_values({"good": b"1", "": b"2"})
    assert client.get_value("good") is None
    client.store_values({"a": b"1", "b": b"2"})
    client.store_values({"a": b"3"})  # the same key again overwrites
    assert (client.get_value("a"), client.get_value("b")) == (b"3", b"2")
    with pytest.raises(TypeError):
        client.store_values({"a": "text"})  # type: ignore[dict-item]


# -- schedules -------------------------------------------------------------------------------

@pytest.fixture
def local_time_five_hours_behind_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "FLX+5")
    time.tzset()
    try:
        yield
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.usefixtures("local_time_five_hours_behind_utc")
def test_deadlines_naive_aware_delay_and_epoch_seconds(client: Client) -> None:
    aware = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    expected = int(aware.timestamp() * 1000)
    naive_local = aware.astimezone().replace(tzinfo=None)  # a naive datetime is local time
    for sid, deadline in [("aware", aware), ("naive", naive_local),
                          ("epoch", aware.timestamp())]:
        assert client.schedule(b"x", deadline, schedule_id=sid) == sid
        scheduled = client.get_schedule(sid)
        assert scheduled is not None and scheduled.deadline_ms == expected, sid
    client.schedule(b"x", timedelta(minutes=30), schedule_id="delay")
    scheduled = client.get_schedule("delay")
    assert scheduled is not None
    assert abs(scheduled.deadline_ms - (time.time() * 1000 + 1_800_000)) < 60_000
    with pytest.raises(TypeError):
        client.schedule(b"x", "tomorrow", schedule_id="bad")  # type: ignore[arg-type]


def test_schedule_replace_if_absent_cancel_and_fired(client: Client) -> None:
    generated = client.schedule(b"a", timedelta(hours=1))
    assert generated and client.get_schedule(generated) is not None  # a new id unless given
    client.schedule(b"first", timedelta(hours=1), schedule_id="s", type="T", revision=3)
    # if_absent keeps the one there and returns None
    assert client.schedule(b"second", timedelta(hours=2), schedule_id="s",
                           if_absent=True) is None
    kept = client.get_schedule("s")
    assert kept is not None and kept.message.data == b"first" and not kept.fired
    assert (kept.message.type, kept.message.revision) == ("T", 3)
    # the same id again replaces message and deadline
    soon = datetime.now(UTC) + timedelta(milliseconds=300)
    assert client.schedule(b"replaced", soon, schedule_id="s", type="T") == "s"
    fired: list[Message] = []
    consumer = client.consume("reminders", MessageType.SCHEDULE, fired.append,
                              from_index=0)
    try:
        wait_until(lambda: len(fired) == 1)
    finally:
        consumer.stop()
    assert fired[0].data == b"replaced"
    assert time_from_index(fired[0].index) == round(soon.timestamp() * 1000)  # its deadline
    # a fired schedule stays findable until cancelled; cancel says it was not pending
    found = client.get_schedule("s")
    assert found is not None and found.message.index == fired[0].index and found.fired
    assert client.schedule(b"again", timedelta(hours=1), schedule_id="s",
                           if_absent=True) is None  # even a fired one stays
    assert client.cancel_schedule("s") is False
    assert client.get_schedule("s") is None
    assert client.cancel_schedule("never") is False


# -- event sourcing --------------------------------------------------------------------------

def test_event_streams_pages_revisions_and_relationships(client: Client) -> None:
    assert client.append_events("cart-1", [b"1", b"2", b"3"], types=["A", "B", "C"],
                                revision=[0, 1, 2], metadata={"who": "me"}) == 2
    events = client.get_events("cart-1")
    assert [(e.index, e.type, e.revision, e.data) for e in events] == [
        (0, "A", 0, b"1"), (1, "B", 1, b"2"), (2, "C", 2, b"3")]
    assert events[0].metadata == {"who": "me"}
    assert [e.index for e in client.get_events("cart-1", after_sequence=0, page_size=1)] == [
        1, 2]
    assert client.append_events("cart-1", [b"4"], types="D", expected_sequence=2) == 3
    assert client.append_events("new", [b"x"], expected_sequence=-1) == 0  # -1: empty
    # also published as EVENTs, routed by the aggregate id
    published = [m for m in client.read_from_index(MessageType.EVENT, 0)
                 if m.type in ("A", "B", "C", "D")]
    assert [m.data for m in published] == [b"1", b"2", b"3", b"4"]
    assert len({m.segment for m in published}) == 1
    assert client.delete_events("cart-1") is True
    assert client.delete_events("cart-1") is False
    assert client.append_events("cart-1", [b"again"]) == 0  # a deleted stream starts at 0
    with pytest.raises(ValueError):
        client.append_events("cart-1", [b"a", b"b"], revision=[1])
    client.update_relationships(associations=[("cart-1", "Cart", "item-1"),
                                              ("cart-2", "Cart", "item-1"),
                                              ("cart-1", "Cart", "item-2")])
    assert client.get_aggregate_ids("item-1") == {"cart-1": "Cart", "cart-2": "Cart"}
    client.update_relationships(dissociations=[("cart-2", "Cart", "item-1")])
    assert client.get_relationships("item-1") == [Relationship("cart-1", "Cart", "item-1")]
    client.repair_relationships("cart-1", "Cart", ["item-3"])  # all the aggregate's entities
    assert client.get_aggregate_ids("item-1") == {}
    assert client.get_aggregate_ids("item-2") == {}
    assert client.get_aggregate_ids("item-3") == {"cart-1": "Cart"}


def test_async_client_stores(shared: ServerProcess) -> None:
    async def main() -> None:
        async with await AsyncClient.connect(shared.address, token=TOKEN,
                                             project="async-stores") as client:
            assert await client.store_value("lock", b"", if_absent=True) is True
            assert await client.get_value("lock") == b""
            assert await client.store_value("lock", b"x", if_absent=True) is False
            sid = await client.schedule(b"x", timedelta(hours=1), schedule_id="a")
            scheduled = await client.get_schedule("a")
            assert sid == "a" and scheduled is not None
            assert await client.cancel_schedule("a") is True
            assert await client.append_events("agg", [b"1"], types="E", revision=4) == 0
            [event] = await client.get_events("agg")
            assert (event.index, event.revision) == (0, 4)

    asyncio.run(main())


# -- `fluxcore metrics` ----------------------------------------------------------------------

def fluxcore(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fluxcore", *args], capture_output=True,
                          text=True, timeout=120)


def handle_message(consumer: str, handler: str, durations: list[int],
                   padding: int = 0) -> bytes:
    """A HandleMessage metric as fluxcore.app writes it (docs/protocol.md)."""
    return msgspec.msgpack.encode({
        "consumer": consumer, "client": "app", "message_type": "EVENT",
        "timestamp": int(time.time() * 1000), "handlers": [handler], "payload_types": ["E"],
        "handler": [0] * len(durations), "index": list(range(len(durations))),
        "duration_us": durations, "exceptional": [False] * len(durations),
        "padding": b"x" * padding})


@pytest.mark.slow
def test_metrics_command_sums_up_every_handler_metric_in_the_window(
        shared: ServerProcess) -> None:
    # More than 16 MiB of METRICS in the window: a READ_FROM_INDEX answer ends near 16 MiB,
    # so the command must read on until the end of the log, not stop at a short page.
    with Client.connect(shared.address, token=TOKEN, name="app", project="big-metrics") as c:
        for _ in range(4):
            c.publish_batch(MessageType.METRICS,
                            [handle_message("c", "h", [10], padding=200_000)] * 25,
                            type="HandleMessage", guarantee=Guarantee.STORED)
        c.publish(MessageType.METRICS, handle_message("c", "h", [30, 50]),
                  type="HandleMessage")
    out = fluxcore("metrics", shared.address, "--token", TOKEN, "--project", "big-metrics")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["handlers"]["c/h"]["count"] == 102
    assert summary["handlers"]["c/h"]["errors"] == 0


def test_metrics_command_clients_consumers_and_errors(shared: ServerProcess) -> None:
    with Client.connect(shared.address, token=TOKEN, name="watched", project="m") as c:
        c.publish(MessageType.METRICS, handle_message("c", "h", [5, 7]), type="HandleMessage")
        c.publish(MessageType.EVENT, b"x")
    out = fluxcore("metrics", shared.address, "--token", TOKEN, "--project", "m",
                   "--since-s", "600")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert {"clients", "consumers", "trackers_gone", "handlers"} <= set(summary)
    assert any(v["client_name"] == "watched" for v in summary["clients"].values())
    assert summary["handlers"]["c/h"]["count"] == 2
    # a wrong token: one clear line, no traceback
    out = fluxcore("metrics", shared.address, "--token", "wrong", "--project", "m")
    assert out.returncode != 0
    assert out.stderr.startswith("fluxcore: ") and "Traceback" not in out.stderr
    assert "auth" in out.stderr


# -- tracking --------------------------------------------------------------------------------

def test_positions_reset_and_get(client: Client) -> None:
    indexes = client.publish_batch(MessageType.EVENT, [b"%d" % i for i in range(10)],
                                   keys=[f"k{i}" for i in range(10)])
    assert indexes is not None
    seen: list[bytes] = []
    consumer = client.consume("proj", MessageType.EVENT, lambda m: seen.append(m.data),
                              from_index=0)
    try:
        wait_until(lambda: len(seen) == 10)
        wait_until(lambda: client.get_position("proj", MessageType.EVENT) == [
            [0, 128], int(indexes[-1])])
    finally:
        consumer.stop()
    # replay from a time: every message at or after it
    client.reset_position("proj", MessageType.EVENT, int(indexes[5]) - 1)
    assert client.get_position("proj", MessageType.EVENT) == [[0, 128], int(indexes[5]) - 1]
    again: list[bytes] = []
    consumer = client.consume("proj", MessageType.EVENT, lambda m: again.append(m.data))
    try:
        wait_until(lambda: len(again) == 5)
        time.sleep(0.3)
        assert sorted(again) == [b"5", b"6", b"7", b"8", b"9"]
    finally:
        consumer.stop()


def test_trackers_share_segments_and_take_over_when_one_leaves(shared: ServerProcess) -> None:
    handled: dict[str, list[bytes]] = {"a": [], "b": []}
    lock = threading.Lock()

    def handler(name: str) -> Callable[[Message], None]:
        def handle(message: Message) -> None:
            with lock:
                handled[name].append(message.data)
        return handle

    with Client.connect(shared.address, token=TOKEN, name="a", project="rebalance") as a, \
            Client.connect(shared.address, token=TOKEN, name="b", project="rebalance") as b:
        first = a.consume("split", MessageType.EVENT, handler("a"), from_index=0,
                          max_timeout_ms=200)
        second = b.consume("split", MessageType.EVENT, handler("b"), from_index=0,
                           max_timeout_ms=200)
        # The trackers start in threads of their own: publish until both have a share.
        published: list[bytes] = []
        deadline = time.monotonic() + 30
        while not (handled["a"] and handled["b"]):
            assert time.monotonic() < deadline, "the two trackers did not share the log"
            keys = [f"key-{len(published) + i}" for i in range(50)]
            a.publish_batch(MessageType.EVENT, [k.encode() for k in keys], keys=keys)
            published += [k.encode() for k in keys]
            time.sleep(0.1)
        wait_until(lambda: len(handled["a"]) + len(handled["b"]) == len(published))
        assert sorted(handled["a"] + handled["b"]) == sorted(published)  # each once
        first.stop()  # a tracker leaves: the other takes every segment
        more = [f"more-{i}" for i in range(100)]
        a.publish_batch(MessageType.EVENT, [k.encode() for k in more], keys=more)
        wait_until(lambda: len(handled["b"]) + len(handled["a"]) == len(published) + 100)
        assert set(handled["b"]) >= {k.encode() for k in more}
        second.stop()


# -- requests --------------------------------------------------------------------------------

def test_request_errors_and_timeouts(shared: ServerProcess) -> None:
    def failing(message: Message) -> bytes:
        raise ValueError("no stock for " + message.data.decode())

    with Client.connect(shared.address, token=TOKEN, name="requester",
                        project="requests") as client, \
            Client.connect(shared.address, token=TOKEN, name="handler",
                           project="requests") as handler_client:
        with pytest.raises(TimeoutError):
            client.request(MessageType.QUERY, b"?", type="Nobody", timeout=0.5)
        consumer = handler_client.consume("stock", MessageType.COMMAND, failing)
        try:
            with pytest.raises(RequestError, match="no stock for tea") as failed:
                client.request(MessageType.COMMAND, b"tea", type="Reserve", timeout=20)
            assert failed.value.result.is_error
            errors = client.read_from_index(MessageType.ERROR, 0)
            assert [m.request_id for m in errors] == [failed.value.result.request_id]
        finally:
            consumer.stop()


# -- the command line ------------------------------------------------------------------------

def test_tail_follow_and_since(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with Log(path) as log:
        log.append_batch([b"old-1", b"old-2"])
        first_ms = log.last_index >> 16
        # -f: what is appended from now on, as it comes
        follow = subprocess.Popen([sys.executable, "-m", "fluxcore", "tail", str(path), "-f"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        since = subprocess.Popen([sys.executable, "-m", "fluxcore", "tail", str(path), "-f",
                                  "--since-ms", str(first_ms)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert since.stdout is not None and follow.stdout is not None
            # with --since-ms: the records from then on, then what comes
            assert since.stdout.readline().split()[2] == b"old-1"
            assert since.stdout.readline().split()[2] == b"old-2"
            time.sleep(1.0)  # the follower has opened the log at its end
            index = log.append(b"new-1")
            line = follow.stdout.readline().split()
            assert line == [str(index).encode(), str(index >> 16).encode(), b"new-1"]
            assert since.stdout.readline().split()[2] == b"new-1"
        finally:
            follow.kill()
            since.kill()
            follow.wait()
            since.wait()


def test_tail_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with Log(path) as log:
        log.append_batch([b"x" * 100] * 200_000)
    # `fluxcore tail DIR | head -1`: the reader goes away; tail stops without an error
    proc = subprocess.Popen([sys.executable, "-m", "fluxcore", "tail", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().endswith(b"x" * 100 + b"\n")
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(60)
    assert err == b"", err
    assert proc.returncode == 141  # 128 + SIGPIPE, as a shell reports it


def test_a_call_refused_for_bad_input_leaves_requests_working(shared: ServerProcess) -> None:
    # After a request got its result, the client's next READ of results goes out with the
    # next frame it writes. A call whose frame cannot be built (bad input) must not lose
    # that READ: the requests after it still get their results.
    def bad_calls(client: Any) -> list[Callable[[], Any]]:
        return [lambda: client.index({"n": 10**20}, collection="c", id="x"),
                lambda: client.publish(MessageType.EVENT, b"x", metadata={"k": 1})]

    with Client.connect(shared.address, token=TOKEN, name="echo",
                        project="bad-input") as handler, \
            Client.connect(shared.address, token=TOKEN, name="asker",
                           project="bad-input") as client:
        consumer = handler.consume("echo", MessageType.QUERY, lambda m: m.data)
        try:
            for i, bad in enumerate(bad_calls(client)):
                assert client.request(MessageType.QUERY, b"%d" % i, timeout=20).data == (
                    b"%d" % i)
                with pytest.raises((ValueError, TypeError)):
                    bad()
                assert client.request(MessageType.QUERY, b"after", timeout=20).data == (
                    b"after")

            async def main() -> None:
                async with await AsyncClient.connect(shared.address, token=TOKEN,
                                                     name="async-asker",
                                                     project="bad-input") as aclient:
                    for bad in bad_calls(aclient):
                        assert (await aclient.request(MessageType.QUERY, b"a",
                                                      timeout=20)).data == b"a"
                        with pytest.raises((ValueError, TypeError)):
                            await bad()
                        assert (await aclient.request(MessageType.QUERY, b"b",
                                                      timeout=20)).data == b"b"

            asyncio.run(main())
        finally:
            consumer.stop()


def test_bad_consumer_and_stream_arguments_are_clear_errors(client: Client) -> None:
    # refused at once, not by a tracker failing in the background
    with pytest.raises(ValueError, match="type_filter"):
        client.consume("c", MessageType.EVENT, print, type_filter="(")
    with pytest.raises(ValueError, match="trackers"):
        client.consume("c", MessageType.EVENT, print, trackers=0)
    # expected_sequence is a stream's last number: -1 (empty) or more; not a conflict
    with pytest.raises(ProtocolError, match="bad_request: expected_sequence"):
        client.append_events("agg", [b"x"], expected_sequence=-2)
    assert client.get_events("agg") == []
