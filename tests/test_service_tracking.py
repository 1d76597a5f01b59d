"""Tracking against a real server: consumers, trackers splitting segments, positions, replay,
restart, type filters, read_from_index, get_position. Flux semantics, docs/protocol.md."""

from __future__ import annotations

import asyncio
import collections
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fluxcore.client import Client, Message, MessageType
from fluxcore.protocol import decode_control

from .service_harness import TOKEN, ServerProcess, start_worker


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class Collector:
    """A per-message handler that records what it got, and in which tracker thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[Message] = []
        self.trackers: list[str] = []

    def __call__(self, message: Message) -> None:
        with self.lock:
            self.messages.append(message)
            self.trackers.append(threading.current_thread().name)

    def indexes(self) -> list[int]:
        with self.lock:
            return [m.index for m in self.messages]

    def count(self) -> int:
        with self.lock:
            return len(self.messages)


def publish_numbered(client: Client, count: int, *, start: int = 0, batch: int = 50,
                     keys: int | None = None, type: str = "Numbered",
                     message_type: MessageType = MessageType.EVENT) -> dict[int, bytes]:
    """Publishes `count` messages b"m<n>" (STORED); returns index -> payload."""
    published: dict[int, bytes] = {}
    for first in range(start, start + count, batch):
        numbers = range(first, min(first + batch, start + count))
        payloads = [b"m%d" % n for n in numbers]
        key_list = None if keys is None else [f"key-{n % keys}" for n in numbers]
        indexes = client.publish_batch(message_type, payloads, type=type, keys=key_list)
        assert indexes is not None and len(indexes) == len(payloads)
        published.update(zip((int(i) for i in indexes), payloads, strict=True))
    return published


# -- basics ----------------------------------------------------------------------------------


def test_publish_and_track(client: Client) -> None:
    published = publish_numbered(client, 300, batch=64)
    single = client.publish(MessageType.EVENT, b"single", type="One", key="order-1",
                            metadata={"k": "v"})
    assert isinstance(single, int)
    published[single] = b"single"
    indexes = sorted(published)
    assert len(set(indexes)) == len(indexes)
    got = Collector()
    consumer = client.consume("projector", MessageType.EVENT, got, from_index=0)
    try:
        wait_for(lambda: got.count() >= len(published), 30, "every message")
        time.sleep(0.3)  # nothing more may come
    finally:
        consumer.stop()
    # one tracker: every message once, in index order, as published
    assert got.indexes() == indexes
    by_index = {m.index: m for m in got.messages}
    assert all(by_index[i].data == published[i] for i in indexes)
    last = by_index[single]
    assert (last.type, last.metadata, last.source) == ("One", {"k": "v"}, client.client_id)
    assert last.request_id == -1 and not last.is_error
    assert 0 <= last.segment < 128
    # the position was stored past the last message
    assert client.get_position("projector", MessageType.EVENT) == [[0, 128], indexes[-1]]


def test_new_consumer_starts_at_now(client: Client) -> None:
    publish_numbered(client, 10)
    time.sleep(1.5)  # a consumer without a position starts one second before "now"
    got = Collector()
    consumer = client.consume("late", MessageType.EVENT, got)
    try:
        time.sleep(0.5)
        later = publish_numbered(client, 10, start=100)
        wait_for(lambda: got.count() >= 10, 30, "the later messages")
        time.sleep(0.3)
    finally:
        consumer.stop()
    assert got.indexes() == sorted(later)


def test_two_consumers_each_get_every_message(client: Client) -> None:
    first, second = Collector(), Collector()
    consumers = [client.consume("first", MessageType.EVENT, first, from_index=0),
                 client.consume("second", MessageType.EVENT, second, trackers=2, from_index=0)]
    try:
        published = publish_numbered(client, 500, keys=37)
        wait_for(lambda: first.count() >= 500 and second.count() >= 500, 30, "both consumers")
        time.sleep(0.3)
    finally:
        for consumer in consumers:
            consumer.stop()
    assert first.indexes() == sorted(published)
    assert sorted(second.indexes()) == sorted(published)


def test_notification_trackers_each_see_every_segment(client: Client) -> None:
    got = Collector()
    consumer = client.consume("notified", MessageType.NOTIFICATION, got, trackers=2,
                              from_index=0)
    try:
        time.sleep(0.5)
        published = publish_numbered(client, 200, keys=50)
        wait_for(lambda: got.count() >= 400, 30, "both trackers to see every message")
        time.sleep(0.3)
    finally:
        consumer.stop()
    per_tracker: dict[str, list[int]] = collections.defaultdict(list)
    for name, message in zip(got.trackers, got.messages, strict=True):
        per_tracker[name].append(message.index)
    assert len(per_tracker) == 2
    for indexes in per_tracker.values():
        assert indexes == sorted(published)


# -- trackers of one consumer ----------------------------------------------------------------


def test_three_trackers_in_one_client_handle_each_message_once(client: Client) -> None:
    got = Collector()
    consumer = client.consume("split", MessageType.EVENT, got, trackers=3, max_size=64,
                              from_index=0)
    try:
        published: dict[int, bytes] = {}
        for round_ in range(10):
            published.update(publish_numbered(client, 300, start=round_ * 300, keys=200))
            time.sleep(0.02)
        wait_for(lambda: got.count() >= len(published), 60, "every message")
        time.sleep(0.5)
    finally:
        consumer.stop()
    counts = collections.Counter(got.indexes())
    assert set(counts) == set(published)
    duplicates = {i: c for i, c in counts.items() if c > 1}
    assert not duplicates, f"{len(duplicates)} messages handled more than once"
    assert len(set(got.trackers)) == 3, "the segments were not split between the trackers"


def test_per_routing_key_order(client: Client) -> None:
    got = Collector()
    consumer = client.consume("ordered", MessageType.EVENT, got, trackers=3, max_size=25,
                              from_index=0)
    try:
        time.sleep(1.0)  # every tracker has joined: the split is stable
        keys = 40
        total = 2000
        publish_numbered(client, total, keys=keys, batch=20)
        wait_for(lambda: got.count() >= total, 60, "every message")
        time.sleep(0.3)
    finally:
        consumer.stop()
    assert got.count() == total
    seen: dict[str, list[int]] = collections.defaultdict(list)
    holder: dict[str, set[str]] = collections.defaultdict(set)
    segment_of: dict[str, set[int]] = collections.defaultdict(set)
    for tracker, message in zip(got.trackers, got.messages, strict=True):
        number = int(message.data[1:])
        key = f"key-{number % keys}"
        seen[key].append(number)
        holder[key].add(tracker)
        segment_of[key].add(message.segment)
    for key, numbers in seen.items():
        assert numbers == sorted(numbers), f"{key} arrived out of order"
        assert len(holder[key]) == 1, f"{key} went to {holder[key]} with a stable split"
        assert len(segment_of[key]) == 1, f"{key} is in several segments"
    assert len({t for trackers in holder.values() for t in trackers}) == 3


def _handled(paths: list[Path]) -> list[tuple[int, int, str, bytes]]:
    """(index, segment, tracker, data) of every complete line the workers wrote."""
    out = []
    for path in paths:
        if not path.exists():
            continue
        text = path.read_text(encoding="ascii")
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n"):
                continue  # a torn last line of a killed worker
            index, segment, tracker, data = line.split()
            out.append((int(index), int(segment), tracker, bytes.fromhex(data)))
    return out


class Publisher(threading.Thread):
    """Publishes small keyed batches until stopped; records what was acknowledged."""

    def __init__(self, client: Client) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.published: dict[int, bytes] = {}
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        n = 0
        try:
            while not self.halt.is_set():
                batch = publish_numbered(self.client, 20, start=n, batch=20, keys=300)
                n += 20
                with self.lock:
                    self.published.update(batch)
                time.sleep(0.01)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def snapshot(self) -> dict[int, bytes]:
        with self.lock:
            return dict(self.published)

    def stop(self) -> dict[int, bytes]:
        self.halt.set()
        self.join(30)
        assert self.error is None, f"publishing failed: {self.error!r}"
        return self.snapshot()


@pytest.mark.slow
def test_tracker_processes_exactly_once_then_join_kill_and_freeze(
        server: ServerProcess, client: Client, tmp_path: Path) -> None:
    purge_ms = 3000
    workers: list[subprocess.Popen[str]] = []
    outs: list[Path] = []

    def start(n: int) -> None:
        out = tmp_path / f"worker{n}.txt"
        outs.append(out)
        workers.append(start_worker({
            "address": server.address, "token": TOKEN, "consumer": "workers", "out": str(out),
            "purge_timeout_ms": purge_ms, "max_size": 50, "delay_ms": 20, "from_index": 0,
            "name": f"worker{n}"}))

    def all_handled(expected: dict[int, bytes]) -> Callable[[], bool]:
        return lambda: set(expected) <= {h[0] for h in _handled(outs)}

    publisher = Publisher(client)
    try:
        for n in range(3):
            start(n)
        publisher.start()
        time.sleep(3)
        # 1. three trackers, nobody fails: every message exactly once
        phase1 = publisher.snapshot()
        wait_for(all_handled(phase1), 60, "the three workers to catch up")
        # 2. a fourth joins while messages keep coming: still exactly once
        start(3)
        time.sleep(3)
        phase2 = publisher.snapshot()
        wait_for(all_handled(phase2), 60, "four workers to catch up")
        handled = _handled(outs)
        counts = collections.Counter(h[0] for h in handled)
        twice = [i for i, c in counts.items() if c > 1]
        assert not twice, f"{len(twice)} messages handled twice while no tracker failed"
        # A message can be handled before its publisher has its ack: only those up to the
        # newest acknowledged one must be known here (all of them are checked at the end).
        acked = publisher.snapshot()
        assert {h[0] for h in handled if h[0] <= max(acked)} <= set(acked)
        by_worker = collections.Counter(h[2].split(":")[0] for h in handled
                                        if h[0] > max(phase1))
        assert len(by_worker) == 4, f"the fourth worker got no segments: {by_worker}"
        assert all(phase2[h[0]] == h[3] for h in handled if h[0] in phase2)
        # 3. kill -9 one worker, freeze another (its connection stays: only the purge
        #    timeout frees its segments); the other two take over, nothing is lost
        workers[0].send_signal(signal.SIGKILL)
        workers[1].send_signal(signal.SIGSTOP)
        time.sleep(3)
        final = publisher.stop()
        wait_for(all_handled(final), purge_ms / 1000 + 60,
                 "the surviving workers to handle every message")
        handled = _handled(outs)
        assert {h[0] for h in handled} >= set(final)
        assert all(final[h[0]] == h[3] for h in handled)
    finally:
        publisher.halt.set()
        for proc in workers:
            if proc.poll() is None and proc is not workers[0] and proc is not workers[1]:
                assert proc.stdin is not None
                proc.stdin.close()
        for proc in workers:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(15)


# -- positions -------------------------------------------------------------------------------


def test_replay_from_a_time(client: Client) -> None:
    got = Collector()
    consumer = client.consume("replayer", MessageType.EVENT, got, from_index=0)
    try:
        before = publish_numbered(client, 100, keys=10)
        time.sleep(0.1)
        boundary_ms = int(time.time() * 1000)
        time.sleep(0.1)
        after = publish_numbered(client, 100, start=100, keys=10)
        assert max(before) < boundary_ms << 16 < min(after)  # the index is time-based
        everything = sorted(before | after)
        wait_for(lambda: got.count() >= 200, 30, "the first delivery")
        wait_for(lambda: client.get_position("replayer", MessageType.EVENT)
                 == [[0, 128], everything[-1]], 30, "the position to be stored")
        assert got.indexes() == everything
        client.reset_position("replayer", MessageType.EVENT, boundary_ms << 16)
        wait_for(lambda: got.count() >= 300, 30, "the replay")
        time.sleep(0.5)
    finally:
        consumer.stop()
    replayed = got.indexes()[200:]
    assert replayed == sorted(after)


def test_reset_position_skips_ahead(client: Client) -> None:
    skipped = publish_numbered(client, 50)
    client.reset_position("skipper", MessageType.EVENT, max(skipped))
    got = Collector()
    consumer = client.consume("skipper", MessageType.EVENT, got, from_index=0)
    try:
        later = publish_numbered(client, 50, start=50)
        wait_for(lambda: got.count() >= 50, 30, "the later messages")
        time.sleep(0.3)
    finally:
        consumer.stop()
    assert got.indexes() == sorted(later)


def test_positions_survive_a_server_restart(server: ServerProcess) -> None:
    with Client.connect(server.address, token=TOKEN, name="restart") as c:
        got = Collector()
        consumer = c.consume("durable", MessageType.EVENT, got, trackers=2, from_index=0)
        first = publish_numbered(c, 300, keys=50)
        wait_for(lambda: got.count() >= 300, 30, "the first messages")
        consumer.stop()  # positions are stored after each batch, before the next read
        position = c.get_position("durable", MessageType.EVENT)
        assert position, "no position was stored"
        assert sorted(got.indexes()) == sorted(first)
    assert server.stop() == 0
    server.start()
    with Client.connect(server.address, token=TOKEN, name="restart") as c:
        assert c.get_position("durable", MessageType.EVENT) == position
        second = publish_numbered(c, 200, start=300, keys=50)
        again = Collector()
        consumer = c.consume("durable", MessageType.EVENT, again, trackers=2, from_index=0)
        try:
            wait_for(lambda: again.count() >= 200, 30, "the messages after the restart")
            time.sleep(0.5)
        finally:
            consumer.stop()
        # resumed after the stored position: nothing of before the restart comes again
        assert sorted(again.indexes()) == sorted(second)
        # the log itself survived too
        stored = c.read_from_index(MessageType.EVENT, 0, max_size=1000)
        assert {m.index: m.data for m in stored} == first | second


# -- filters and reads -----------------------------------------------------------------------


def test_type_filter(client: Client) -> None:
    got, exact = Collector(), Collector()
    consumers = [client.consume("orders", MessageType.EVENT, got, type_filter="Order.*",
                                from_index=0),
                 client.consume("exact", MessageType.EVENT, exact, type_filter="Order",
                                from_index=0)]
    try:
        wanted: list[int] = []
        exact_wanted: list[int] = []
        for _ in range(5):
            for name in ("OrderPlaced", "UserCreated", "OrderShipped", "Order", "XOrder"):
                index = client.publish(MessageType.EVENT, name.encode(), type=name)
                assert index is not None
                if name.startswith("Order"):
                    wanted.append(index)
                if name == "Order":
                    exact_wanted.append(index)
        last = client.publish(MessageType.EVENT, b"last", type="UserDeleted")
        wait_for(lambda: got.count() >= len(wanted) and exact.count() >= len(exact_wanted),
                 30, "the filtered messages")
        # the position moves past messages the filter skipped
        wait_for(lambda: client.get_position("orders", MessageType.EVENT) == [[0, 128], last],
                 30, "the position to move past filtered messages")
        time.sleep(0.3)
    finally:
        for consumer in consumers:
            consumer.stop()
    assert got.indexes() == wanted
    assert {m.type for m in got.messages} == {"OrderPlaced", "OrderShipped", "Order"}
    assert exact.indexes() == exact_wanted  # the whole type must match


def test_type_filter_passes_messages_without_a_type(client: Client) -> None:
    # As in the original, a message without a payload type passes any type filter.
    got = Collector()
    consumer = client.consume("typed", MessageType.EVENT, got, type_filter="Order.*",
                              from_index=0)
    try:
        wanted = []
        for name in ("OrderPlaced", "", "UserCreated", "", "Order"):
            index = client.publish(MessageType.EVENT, name.encode() or b"untyped", type=name)
            assert index is not None
            if name != "UserCreated":
                wanted.append(index)
        wait_for(lambda: got.count() >= len(wanted), 30, "the typed and untyped messages")
        time.sleep(0.3)
    finally:
        consumer.stop()
    assert got.indexes() == wanted
    assert [m.type for m in got.messages] == ["OrderPlaced", "", "", "Order"]


def test_handler_mapping_skips_messages_without_a_type(client: Client) -> None:
    # Untyped messages pass the type filter a mapping of handlers sends; they have no handler.
    got = Collector()
    consumer = client.consume("mapped", MessageType.COMMAND, {"Ship": got}, from_index=0)
    try:
        # a request nobody handles gets no answer (not an empty one, nor an error)
        with pytest.raises(TimeoutError):
            client.request(MessageType.COMMAND, b"untyped", timeout=1.0)
        shipped = client.publish(MessageType.COMMAND, b"ship", type="Ship")
        last = client.publish(MessageType.COMMAND, b"other", type="Other")
        wait_for(lambda: got.count() >= 1, 30, "the Ship command")
        wait_for(lambda: client.get_position("mapped", MessageType.COMMAND) == [[0, 128], last],
                 30, "the position past every message")
    finally:
        consumer.stop()
    assert got.indexes() == [shipped]
    assert consumer.errors == 0
    assert client.read_from_index(MessageType.RESULT, 0) == []
    assert client.read_from_index(MessageType.ERROR, 0) == []


def test_client_index_without_last_index_starts_at_the_stored_position(client: Client) -> None:
    indexes = sorted(publish_numbered(client, 10))
    client.store_position("own-index", MessageType.EVENT, (0, 128), indexes[4])
    time.sleep(1.2)  # the stored position is now older than "now - 1 s"
    request = client._codec.read(MessageType.EVENT, "own-index", "t", topic=None, max_size=100,
                                 max_timeout_ms=2000, client_index=True)
    reply = client.read(request, 30)
    assert [m.index for m in reply.messages] == indexes[5:]
    assert reply.last_index == indexes[-1]


def test_tracker_silent_after_an_empty_batch_is_purged(
        server: ServerProcess, client: Client) -> None:
    # A tracker whose long poll ended empty counts as processing until it reads again; if it
    # never does (a hung process, its connection still open), the purge timeout frees its
    # segments for the others.
    with Client.connect(server.address, token=TOKEN, name="silent") as silent:
        request = silent._codec.read(MessageType.EVENT, "purging", "0-silent", topic=None,
                                     max_size=100, max_timeout_ms=200, purge_timeout_ms=1000)
        reply = silent.read(request, 30)
        assert reply.messages == [] and reply.segment == (0, 128)
        got = Collector()
        consumer = client.consume("purging", MessageType.EVENT, got, from_index=0)
        try:
            published = publish_numbered(client, 200, keys=64)
            wait_for(lambda: got.count() >= 200, 20, "the silent tracker's segments too")
            time.sleep(0.3)
        finally:
            consumer.stop()
        assert sorted(got.indexes()) == sorted(published)
        metrics = client.read_from_index(MessageType.METRICS, 0, max_size=1000)
        gone = [decode_control(m.data) for m in metrics if m.type == "disconnect_tracker"]
        assert {"tracker": "0-silent", "reason": "purged"}.items() <= next(
            g for g in gone if g["tracker"] == "0-silent").items()


def test_read_from_index(client: Client) -> None:
    published = publish_numbered(client, 40, batch=7)
    indexes = sorted(published)
    whole = client.read_from_index(MessageType.EVENT, 0)
    assert [m.index for m in whole] == indexes
    assert [m.data for m in whole] == [published[i] for i in indexes]
    # inclusive of min_index
    part = client.read_from_index(MessageType.EVENT, indexes[10], max_size=5)
    assert [m.index for m in part] == indexes[10:15]
    between = client.read_from_index(MessageType.EVENT, indexes[10] + 1, max_size=1000)
    assert [m.index for m in between] == indexes[11:]
    assert client.read_from_index(MessageType.EVENT, indexes[-1] + 1) == []
    assert client.read_from_index(MessageType.COMMAND, 0) == []
    # no consumer state was created or moved
    assert client.get_position("anyone", MessageType.EVENT) == []


def test_custom_topics_are_separate_logs(client: Client) -> None:
    a = client.publish(MessageType.CUSTOM, b"a", type="T", topic="alpha")
    b = client.publish(MessageType.CUSTOM, b"b", type="T", topic="beta")
    assert [m.data for m in client.read_from_index(MessageType.CUSTOM, 0, topic="alpha")] == [b"a"]
    assert [m.data for m in client.read_from_index(MessageType.CUSTOM, 0, topic="beta")] == [b"b"]
    assert a is not None and b is not None


def test_get_position_merging(client: Client) -> None:
    t = MessageType.EVENT
    assert client.get_position("merge", t) == []
    client.store_position("merge", t, (0, 64), 1000)
    client.store_position("merge", t, (64, 128), 1000)
    assert client.get_position("merge", t) == [[0, 128], 1000]
    client.store_position("merge", t, (10, 20), 2000)
    assert client.get_position("merge", t) == [[0, 10], 1000, [10, 20], 2000, [20, 128], 1000]
    client.store_position("merge", t, (0, 128), 1500)  # never back: [10, 20) stays at 2000
    assert client.get_position("merge", t) == [[0, 10], 1500, [10, 20], 2000, [20, 128], 1500]
    client.store_position("merge", t, (20, 128), 2000)
    assert client.get_position("merge", t) == [[0, 10], 1500, [10, 128], 2000]
    client.reset_position("merge", t, 5)  # a reset moves back too
    assert client.get_position("merge", t) == [[0, 128], 5]
    # segments never stored are left out; positions are per consumer and per log
    client.store_position("partial", t, (100, 128), 7)
    assert client.get_position("partial", t) == [[100, 128], 7]
    assert client.get_position("partial", MessageType.COMMAND) == []
    assert client.get_position("merge", t) == [[0, 128], 5]


def test_stored_position_is_per_message_type(client: Client) -> None:
    got = Collector()
    consumer = client.consume("same-name", MessageType.COMMAND, got, from_index=0)
    try:
        publish_numbered(client, 10, message_type=MessageType.EVENT)
        commands = publish_numbered(client, 5, start=10, message_type=MessageType.COMMAND)
        wait_for(lambda: got.count() >= 5, 30, "the commands")
        time.sleep(0.3)
    finally:
        consumer.stop()
    assert got.indexes() == sorted(commands)
    assert client.get_position("same-name", MessageType.EVENT) == []


def _keys_in(lo: int, hi: int, count: int) -> list[str]:
    from fluxcore import segment_of

    keys = (f"key-{i}" for i in range(1_000_000))
    return [k for k in keys if lo <= segment_of(k) < hi][:count]


def test_stop_hands_over_without_redelivery(client: Client) -> None:
    # Every message goes to the first tracker's half. When the consumer stops while that
    # tracker still handles its last batch, the other tracker, waiting in a READ, must not
    # get the range (and that batch again) before the position of the batch is stored.
    keys = _keys_in(0, 64, 50)
    start = client.publish_batch(MessageType.EVENT, [b"m%d" % i for i in range(500)],
                                 type="T", keys=[keys[i % 50] for i in range(500)])
    assert start is not None
    for round_ in range(3):
        name = f"handover-{round_}"
        seen: list[int] = []
        done = threading.Event()

        def handle(message: Message, seen: list[int] = seen, done: threading.Event = done
                   ) -> None:
            seen.append(message.index)
            if len(seen) == 500:
                done.set()
                time.sleep(0.3)  # still handling when stop() comes

        consumer = client.consume(name, MessageType.EVENT, handle, trackers=2, max_size=100,
                                  from_index=int(start[0]))
        assert done.wait(30)
        consumer.stop()
        time.sleep(0.3)
        assert len(seen) == len(set(seen)) == 500, f"{len(seen) - len(set(seen))} handled twice"
        # The position of the last batch is stored: a new run of the consumer gets nothing.
        again: list[Message] = []
        consumer = client.consume(name, MessageType.EVENT, again.append, trackers=2)
        time.sleep(0.5)
        consumer.stop()
        assert again == []


def test_async_stop_hands_over_without_redelivery(server: ServerProcess) -> None:
    from fluxcore.client import AsyncClient

    keys = _keys_in(0, 64, 50)

    async def main() -> None:
        async with await AsyncClient.connect(server.address, token=TOKEN, name="a") as client:
            start = await client.publish_batch(
                MessageType.EVENT, [b"m%d" % i for i in range(500)], type="T",
                keys=[keys[i % 50] for i in range(500)])
            assert start is not None
            seen: list[int] = []
            done = asyncio.Event()

            async def handle(message: Message) -> None:
                seen.append(message.index)
                if len(seen) == 500:
                    done.set()
                    await asyncio.sleep(0.3)  # still handling when stop() comes

            consumer = await client.consume("handover", MessageType.EVENT, handle, trackers=2,
                                            max_size=100, from_index=int(start[0]))
            await asyncio.wait_for(done.wait(), 30)
            await consumer.stop()
            await asyncio.sleep(0.3)
            assert len(seen) == len(set(seen)) == 500
            again: list[Message] = []
            consumer = await client.consume("handover", MessageType.EVENT, again.append,
                                            trackers=2)
            await asyncio.sleep(0.5)
            await consumer.stop()
            assert again == []

    asyncio.run(main())
