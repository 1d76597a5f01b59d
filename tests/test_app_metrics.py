"""Handler metrics (fluxcore/app/metrics.py over the compiled fluxcore._ext._app): the
HandleMessage encoding, and a live consumer whose batches take every path of the compiled
dispatch loop (plain handlers, failing ones, aggregates to commit, async handlers in between)
with one metric per handled message, right."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest

from fluxcore._ext._app import HandlerTimings, Handling, dispatch_plain
from fluxcore.app import Microclient, aggregate, apply
from fluxcore.app.context import LocalMessage
from fluxcore.client import MessageType

from .service_harness import TOKEN, ServerProcess

BOUNDARIES = [0, 1, 127, 128, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32, 2**63 - 1,
              -1, -32, -33, -128, -129, -32_768, -32_769, -(2**31), -(2**31) - 1, -(2**63)]


def test_handle_message_is_the_msgpack_of_its_columns() -> None:
    timings = HandlerTimings(2)  # grows past its first capacity
    for i, index in enumerate(BOUNDARIES * 60):
        timings.add(i % 3, index, i % 5 == 0)
    codes, indexes, durations, failed = timings.columns()
    assert len(timings) == len(BOUNDARIES) * 60
    assert indexes == BOUNDARIES * 60 and codes == [i % 3 for i in range(len(indexes))]
    assert failed == [i % 5 == 0 for i in range(len(indexes))]
    assert all(us >= 0 for us in durations)
    for handlers, types in (([], []), (["h"] * 16, ["é" * 31]),
                            (["ü" * 40, "x" * 300], ["t" * 70_000])):
        data = timings.encode("orders", "client-1", "EVENT", 1_764_000_000_000, handlers,
                              types)
        expected = {"consumer": "orders", "client": "client-1", "message_type": "EVENT",
                    "timestamp": 1_764_000_000_000, "handlers": handlers,
                    "payload_types": types, "handler": codes, "index": indexes,
                    "duration_us": durations, "exceptional": failed}
        assert data == msgspec.msgpack.encode(expected)
        assert msgspec.msgpack.decode(data) == expected


def test_durations_are_the_time_between_handled_messages() -> None:
    timings = HandlerTimings()
    time.sleep(0.02)
    timings.add(0, 1, False)
    timings.add(0, 2, False)
    _codes, _indexes, durations, _failed = timings.columns()
    assert durations[0] >= 20_000 and 0 <= durations[1] < durations[0]
    assert timings.elapsed_us() >= durations[0]
    empty = HandlerTimings(0)
    assert msgspec.msgpack.decode(empty.encode("c", "", "EVENT", 0, [], []))["index"] == []


def test_dispatch_plain_refuses_a_malformed_table() -> None:
    message = LocalMessage("T", b"{}")
    for table in ({"T": [(0, print, bytes, None)]}, {"T": ((0, print),)}):
        with pytest.raises(TypeError):
            dispatch_plain([message], 0, 0, table, set(), Handling(message), None, print)


# -- live -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("app-metrics") / "data").start()
    try:
        yield proc
    finally:
        proc.kill()


def wait_until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


class Paid(msgspec.Struct):
    amount: int


class Noted(msgspec.Struct):
    text: str


class TillOpened(msgspec.Struct):  # published on commit: no handler here reads it
    amount: int


@aggregate()
class Till(msgspec.Struct):
    total: int

    @apply
    @staticmethod
    def opened(event: TillOpened) -> Till:
        return Till(event.amount)


COUNT = 150


def test_metrics_of_every_dispatch_path(live: ServerProcess) -> None:
    app = Microclient("paths", max_batch=40)
    quiet = app.consumer("paths-quiet", max_batch=40, metrics=False)
    seen: dict[str, list[int]] = {"plain": [], "second": [], "noted": [], "quiet": []}

    @app.handle_event
    def plain(event: Paid) -> None:
        seen["plain"].append(event.amount)
        if event.amount % 7 == 3:
            raise ValueError("a seventh fail")

    @app.handle_event
    def second(event: Paid) -> None:  # the second plain handler of the type
        seen["second"].append(event.amount)
        if event.amount % 11 == 5:  # loads an aggregate: committed before it is measured
            app.load(Till, f"till-{event.amount}").apply(TillOpened(event.amount))

    @app.handle_event
    async def noted(event: Noted) -> None:  # not plain: the general path, in between
        seen["noted"].append(int(event.text))

    @quiet.handle_event
    def unmeasured(event: Paid) -> None:
        seen["quiet"].append(event.amount)

    app.url, app.token = live.address, TOKEN
    app.start()
    try:
        assert app.client is not None
        before = app.client.read_from_index(MessageType.METRICS, 0, 10_000)
        after = before[-1].index + 1 if before else 0
        for i in range(COUNT):
            app.publish(Paid(i), *([Noted(str(i))] if i % 4 == 0 else []))
        notes = len(range(0, COUNT, 4))

        def handled() -> list[dict[str, Any]]:
            assert app.client is not None
            found = app.client.read_from_index(MessageType.METRICS, after, 10_000)
            return [msgspec.msgpack.decode(m.data) | {"$type": m.type} for m in found]

        wait_until(lambda: sum(len(b["index"]) for b in handled()
                               if b["$type"] == "HandleMessage") >= 2 * COUNT + notes
                   and len(seen["quiet"]) == COUNT)
        assert seen["plain"] == seen["second"] == seen["quiet"] == list(range(COUNT))
        assert seen["noted"] == list(range(0, COUNT, 4))
        events = app.client.read_from_index(MessageType.EVENT, 0, 10_000)
        amount = {m.index: int(msgspec.json.decode(m.data)["amount"]) for m in events
                  if m.type == "Paid"}
        # per (handler, payload type): the indexes handled and whether each failed
        entries: dict[tuple[str, str], list[tuple[int, bool]]] = {}
        metrics = handled()
        for b in metrics:
            if b["$type"] != "HandleMessage":
                continue
            assert b["consumer"] == "paths" and b["message_type"] == "EVENT"
            assert len(b["handler"]) == len(b["index"]) == len(b["duration_us"]) \
                == len(b["exceptional"])
            assert all(us >= 0 for us in b["duration_us"])
            for code, index, failed in zip(b["handler"], b["index"], b["exceptional"],
                                           strict=True):
                key = (b["handlers"][code].rsplit(".", 1)[-1], b["payload_types"][code])
                entries.setdefault(key, []).append((index, failed))
        assert set(entries) == {("plain", "Paid"), ("second", "Paid"), ("noted", "Noted")}
        paid = sorted(amount)
        assert sorted(entries[("plain", "Paid")]) == [(i, amount[i] % 7 == 3) for i in paid]
        assert sorted(entries[("second", "Paid")]) == [(i, False) for i in paid]
        assert len(entries[("noted", "Noted")]) == notes
        assert not any(failed for _i, failed in entries[("noted", "Noted")])
        batches = [b for b in metrics if b["$type"] == "ProcessBatch"]
        assert {b["consumer"] for b in batches} == {"paths"}  # none of the quiet consumer
        assert sum(b["batch_size"] for b in batches) == COUNT + notes
        assert all(0 < b["batch_size"] <= 40 for b in batches)
        for i in range(5, COUNT, 11):  # the aggregates were committed
            assert app.load(Till, f"till-{i}").state == Till(i)
    finally:
        app.stop()
