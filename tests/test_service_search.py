"""Search against a real server, through both clients: index, get, has, delete, bulk,
queries, stats; every (re)index on the DOCUMENT log; clear errors with nothing half-indexed;
lastHit paging under concurrent indexing; bulks all-or-nothing across a kill -9."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from fluxcore.client import AsyncClient, Client, ConnectionLost, MessageType, ProtocolError
from fluxcore.client.search import any_of, index_entry, match
from fluxcore.protocol import Guarantee, Op

from .service_harness import TOKEN, ServerProcess


@dataclasses.dataclass
class User:
    name: str
    age: int
    tags: list[str]


class Order(msgspec.Struct):
    id: str
    total: float


def test_index_get_has_delete(client: Client) -> None:
    assert client.index(User("Alice Smith", 30, ["a", "b"]), collection="users", id="u1",
                        timestamp=1000, facets=["tags"], sortables=["age"])
    assert client.index({"name": "Bob", "age": 70, "tags": []}, collection="users", id="u2",
                        timestamp=2000, end=5000, sortables={"age": 70})
    found = client.get_document("users", "u1", type=User)
    assert found is not None and found.document == User("Alice Smith", 30, ["a", "b"])
    assert found.timestamp == found.end == 1000 and found.collection == "users"
    assert found.type.endswith("User")
    assert client.get_document("users", "u2") is not None
    assert [d.id for d in client.get_documents("users", ["u2", "nope", "u1"])] == ["u2", "u1"]
    assert client.has_document("users", "u1") and not client.has_document("users", "x")
    assert not client.index({"name": "Carl"}, collection="users", id="u1", if_not_exists=True)
    assert client.get_document("users", "u1") is not None
    assert client.search("users").count() == 2
    assert client.delete_document("users", "u1")
    assert not client.delete_document("users", "u1")
    assert client.get_document("users", "u1") is None
    assert client.delete_collection("users") == 1
    assert client.search("users").count() == 0


def test_builder_queries_and_stats(client: Client) -> None:
    entries = [index_entry({"name": name, "age": age, "city": city}, collection="people",
                           id=name, timestamp=ts, facets=["city"], sortables=["age"])
               for name, age, city, ts in [("ann", 17, "Zürich", 100), ("ben", 30, "Bern", 200),
                                           ("cas", 65, "Zürich", 300), ("dan", 44, "Genève", 400)]]
    assert client.index_many(entries) == [True] * 4
    people = client.search("people")
    assert [d.id for d in people.fetch()] == ["dan", "cas", "ben", "ann"]  # newest first
    assert [d.id for d in client.search("people").between(18, 65, "age").sort("-age")
            .fetch(20)] == ["dan", "ben"]
    assert [d.id for d in client.search("people").match("zurich", "city").fetch()] == [
        "cas", "ann"]
    assert [d.id for d in client.search("people").query("gen* | bern").sort("age")
            .fetch()] == ["ben", "dan"]
    assert [d.id for d in client.search("people").constraint(
        any_of(match("ann"), match("ben"))).sort("timestamp").fetch()] == ["ann", "ben"]
    assert [d.id for d in client.search("people").since(250).fetch()] == ["dan", "cas"]
    assert [d.id for d in client.search("people").before(250).fetch()] == ["ben", "ann"]
    assert [d.id for d in client.search("people").sort("age").skip(1).fetch(2)] == [
        "ben", "dan"]
    assert [d.document for d in client.search("people").include("name").sort("age")
            .fetch(1)] == [{"name": "ann"}]
    assert [d.document for d in client.search("people").exclude("age", "city").sort("age")
            .fetch(1)] == [{"name": "ann"}]
    assert client.search("people").facet_stats() == [
        {"name": "city", "value": "Zürich", "count": 2},
        {"name": "city", "value": "Bern", "count": 1},
        {"name": "city", "value": "Genève", "count": 1}]
    (stats,) = client.search("people").stats(["age"])
    assert stats["fieldStats"]["age"] == {"count": 4, "min": 17, "max": 65, "sum": 156,
                                          "average": 39}
    grouped = client.search("people").stats(["age"], ["city"])
    assert {g["group"]["city"]: g["fieldStats"]["age"]["sum"] for g in grouped} == {
        "Zürich": 82, "Bern": 30, "Genève": 44}
    histogram = client.search("people").since(100).before(500).histogram(4)
    assert histogram == {"since": 100, "before": 500, "counts": [1, 1, 1, 1]}
    assert [d.id for d in client.search("people").sort("age").stream(page_size=1)] == [
        "ann", "ben", "dan", "cas"]
    assert client.search("people").match("ann").delete() == 1
    assert client.search("people").count() == 3


def test_bulk_update_and_none_guarantee(client: Client) -> None:
    updates = [{"type": "index", **index_entry({"v": 1}, collection="b", id="1")},
               {"type": "index_if_not_exists", **index_entry({"v": 2}, collection="b",
                                                             id="1")},
               {"type": "index", **index_entry({"v": 3}, collection="b", id="2")},
               {"type": "delete", "collection": "b", "id": "2"},
               {"type": "delete", "collection": "b", "id": "never"}]
    assert client.bulk_update(updates) == [True, False, True, True, False]
    assert [(d.id, d.document) for d in client.search("b").fetch()] == [("1", {"v": 1})]
    assert client.index({"v": 9}, collection="b", id="3", guarantee=Guarantee.NONE)
    assert client.has_document("b", "3")  # requests of a connection are answered in order


def test_every_index_goes_to_the_document_log(client: Client) -> None:
    client.index({"v": 1}, collection="logged", id="d1", timestamp=1000, end=2000)
    client.index({"v": 2}, collection="logged", id="d1", timestamp=3000)
    client.index({"v": 3}, collection="other", id="d2")
    messages = client.read_from_index(MessageType.DOCUMENT, 0, topic="logged")
    assert [m.message_id for m in messages] == ["d1", "d1"]
    assert [msgspec.msgpack.decode(m.data) for m in messages] == [{"v": 1}, {"v": 2}]
    assert messages[0].metadata == {"$start": "1000", "$end": "2000"}
    assert messages[1].metadata == {"$start": "3000", "$end": "3000"}
    seen: list[str] = []
    done = threading.Event()

    def handler(message: Any) -> None:
        seen.append(message.message_id)
        done.set()

    consumer = client.consume("doc-tracker", MessageType.DOCUMENT, handler, topic="other",
                              from_index=0)
    try:
        assert done.wait(20)
        assert seen == ["d2"]
    finally:
        consumer.stop()


@pytest.mark.parametrize("request_, message", [
    ({"query": {"collection": "", "constraints": []}}, "collection must be a non-empty"),
    ({"query": {"collection": "c", "constraints": [{"foo": 1}]}},
     "query/constraints/0: unknown constraint"),
    ({"query": {"collection": "c", "constraints": [{"query": "(a b"}]}},
     "unbalanced parentheses: '\\(' at position 0"),
    ({"query": {"collection": "c", "constraints": [{"match": {"x": 1}}]}},
     "query/constraints/0/match: a string, not dict"),
    ({"query": {"collection": "c", "constraints": [{"match": "x", "paths": ["a{b"]}]}},
     "query/constraints/0/paths/0: the path glob 'a\\{b' has an unclosed"),
    ({"query": {"collection": "c"}, "path_filters": ["a[b"]}, "path_filters/0: the path glob"),
    ({"query": {"collection": "c"}, "sort": [""]}, "sort/0"),
    ({"query": {"collection": "c"}, "max_size": "x"}, "max_size has the wrong type"),
])
def test_bad_queries_get_clear_errors(client: Client, request_: dict[str, Any],
                                      message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        client._call(Op.SEARCH, request_)
    assert client.search("c").count() == 0  # the connection goes on


def test_bad_documents_index_nothing(client: Client) -> None:
    good = index_entry({"v": 1}, collection="e", id="ok")
    with pytest.raises(ProtocolError, match="documents/1/document: a bytes at a/0 is not JSON"):
        client._call(Op.INDEX_DOCUMENTS, {"documents": [
            good, {**good, "id": "bad", "document": {"a": [b"x"]}}]})
    with pytest.raises(ProtocolError, match="documents/1/collection must be a non-empty"):
        client._call(Op.INDEX_DOCUMENTS, {"documents": [good, {**good, "collection": ""}]})
    with pytest.raises(ProtocolError, match="updates/1/type must be index"):
        client._call(Op.BULK_UPDATE_DOCUMENTS, {"updates": [
            {"type": "index", **good}, {"type": "upsert"}]})
    with pytest.raises(TypeError, match="not JSON-able"):
        client.index(object(), collection="e", id="x")
    with pytest.raises(ProtocolError, match="id must be a string of 1 to 1000"):
        client.index({}, collection="e", id="")
    assert client.search("e").count() == 0 and not client.has_document("e", "ok")


def test_async_client(server: ServerProcess) -> None:
    async def main() -> None:
        async with await AsyncClient.connect(server.address, token=TOKEN) as client:
            assert await client.index(Order(id="o1", total=9.5), collection="orders", id="o1",
                                      timestamp=10, sortables=["total"])
            await client.index_many([index_entry({"id": f"o{i}", "total": i},
                                                 collection="orders", id=f"o{i}",
                                                 timestamp=10 + i, sortables=["total"])
                                     for i in range(2, 6)])
            found = await client.get_document("orders", "o1", type=Order)
            assert found is not None and found.document == Order(id="o1", total=9.5)
            assert await client.has_document("orders", "o2")
            query = client.search("orders").between(3, 10, "total").sort("-total")
            assert [d.id for d in await query.fetch()] == ["o1", "o5", "o4", "o3"]
            assert [d.id async for d in client.search("orders").sort("total")
                    .stream(page_size=2)] == ["o2", "o3", "o4", "o5", "o1"]
            assert await client.search("orders").count() == 5
            (stats,) = await client.search("orders").stats(["total"])
            assert stats["fieldStats"]["total"]["sum"] == 23.5
            assert await client.search("orders").facet_stats() == []
            assert (await client.search("orders").since(10).before(20).histogram(2))[
                "counts"] == [4, 1]
            assert await client.bulk_update([{"type": "delete", "collection": "orders",
                                              "id": "o2"}]) == [True]
            assert await client.delete_document("orders", "o3")
            assert await client.search("orders").match(4).delete() == 1
            assert await client.delete_collection("orders") == 2

    asyncio.run(main())


def test_last_hit_paging_under_concurrent_indexing(client: Client,
                                                   server: ServerProcess) -> None:
    client.index_many([index_entry({"n": i}, collection="p", id=f"old-{i}", timestamp=i)
                       for i in range(600)])
    stop = threading.Event()

    def writer() -> None:
        with Client.connect(server.address, token=TOKEN) as other:
            n = 0
            while not stop.is_set():
                other.index_many([index_entry({"n": -1}, collection="p", id=f"new-{n}-{k}")
                                  for k in range(20)])
                n += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        seen = [d.id for d in client.search("p").match(-1).not_(match(-1)).fetch()]
        assert seen == []
        seen = [d.id for d in client.search("p").sort("timestamp").stream(page_size=37)]
        streamed_old = [i for i in seen if i.startswith("old-")]
        assert streamed_old == [f"old-{i}" for i in range(600)]  # none skipped or repeated
        assert len(seen) == len(set(seen))
        newest_first = [d.id for d in client.search("p").match("0", "n").stream(page_size=1)]
        assert newest_first == ["old-0"]
    finally:
        stop.set()
        thread.join()


@pytest.mark.slow
@pytest.mark.parametrize("fsync", ["never", "interval", "always"])
def test_bulks_are_all_or_nothing_across_kill_9(tmp_path: Path, fsync: str) -> None:
    # Whatever the fsync policy: an acknowledged bulk is there after a kill -9.
    server = ServerProcess(tmp_path / "data", "--fsync", fsync).start()
    acknowledged: list[int] = []
    size = 300
    try:
        for _round in range(3):
            client = Client.connect(server.address, token=TOKEN, reconnect=False)
            stop = threading.Event()
            start = len(acknowledged) and max(acknowledged) + 1000

            def work(client: Client = client, start: int = start,
                     stop: threading.Event = stop) -> None:
                bulk = start
                while not stop.is_set():
                    entries = [index_entry({"bulk": bulk, "i": i, "text": "x" * 50},
                                           collection="k", id=f"{bulk}-{i}")
                               for i in range(size)]
                    try:
                        client.index_many(entries, timeout=30)
                    except (ConnectionLost, OSError, ProtocolError):
                        return
                    acknowledged.append(bulk)
                    bulk += 1

            thread = threading.Thread(target=work, daemon=True)
            thread.start()
            time.sleep(1.5)
            server.kill()
            stop.set()
            thread.join(30)
            client.close()
            server.start()
        assert acknowledged
        with Client.connect(server.address, token=TOKEN) as client:
            stats = client.search("k").stats(["i"], ["bulk"])
            counts = {int(s["group"]["bulk"]): s["fieldStats"]["i"]["count"] for s in stats}
            for bulk in acknowledged:
                assert counts.pop(bulk) == size
            assert all(n == size for n in counts.values())  # an unacknowledged bulk: all or none
            assert client.search("k").count() == size * (len(acknowledged) + len(counts))
            logged: set[str] = set()
            after = 0
            while page := client.read_from_index(MessageType.DOCUMENT, after, 10_000,
                                                 topic="k"):
                logged.update(m.message_id for m in page)
                after = page[-1].index + 1
            stored = {f"{b}-{i}" for b in [*acknowledged, *counts] for i in range(size)}
            assert stored <= logged  # every stored document is on the log (at least once)
    finally:
        server.kill()


_CRASH_AFTER_COMMIT = """
import os, signal, sys
import msgspec
from fluxcore.server.search.store import IndexedDocument, SearchStore

def crash(collection, items):  # the process dies between the commit and the log append
    os.kill(os.getpid(), signal.SIGKILL)

store = SearchStore(sys.argv[1], durable=False, publish=crash, open_log=lambda c: None)
store.update([("index", IndexedDocument("people", f"p{i}", 1000 + i, 1000 + i, "T",
                                        msgspec.msgpack.encode({"v": i}),
                                        [(1, str(i), "v", "v")], [], []))
              for i in range(3)])
"""


def test_documents_committed_before_a_kill_9_reach_the_document_log(tmp_path: Path) -> None:
    project = tmp_path / "data" / "public"
    project.mkdir(parents=True)
    crashed = subprocess.run([sys.executable, "-c", _CRASH_AFTER_COMMIT,
                              str(project / "search.sqlite")], capture_output=True, timeout=60)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    server = ServerProcess(tmp_path / "data").start()
    try:
        with Client.connect(server.address, token=TOKEN) as client:
            assert client.search("people").count() == 3
            messages = client.read_from_index(MessageType.DOCUMENT, 0, topic="people")
            assert [m.message_id for m in messages] == ["p0", "p1", "p2"]
            assert [msgspec.msgpack.decode(m.data) for m in messages] == [
                {"v": 0}, {"v": 1}, {"v": 2}]
            assert messages[1].metadata == {"$start": "1001", "$end": "1001"}
            client.index({"v": 3}, collection="people", id="p3")
        server.stop()
        server.start()  # published once: a clean restart publishes nothing again
        with Client.connect(server.address, token=TOKEN) as client:
            messages = client.read_from_index(MessageType.DOCUMENT, 0, topic="people")
            assert [m.message_id for m in messages] == ["p0", "p1", "p2", "p3"]
    finally:
        server.kill()


def test_no_document_is_stored_when_its_collection_log_cannot_be_created(
        tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", env={"FLUXCORE_MAX_LOGS": "2"}).start()
    try:
        with Client.connect(server.address, token=TOKEN) as client:
            assert client.index({"v": 1}, collection="old", id="a")
            client.publish(MessageType.CUSTOM, b"x", topic="t")  # the second and last log
            with pytest.raises(ProtocolError, match="max_logs") as caught:
                client.index_many([index_entry({"v": 2}, collection="old", id="b"),
                                   index_entry({"v": 3}, collection="new", id="c")])
            assert caught.value.code == "bad_request"
            with pytest.raises(ProtocolError, match="max_logs"):
                client.bulk_update([{"type": "index", "collection": "new", "id": "d",
                                     "document": {"v": 4}}])
            assert not client.has_document("old", "b") and client.search("new").count() == 0
            assert client.search("old").count() == 1
            assert client.index({"v": 5}, collection="old", id="e")  # an existing log is fine
            assert [m.message_id for m in client.read_from_index(
                MessageType.DOCUMENT, 0, topic="old")] == ["a", "e"]
        assert not (tmp_path / "data" / "public" / "logs" / "document-new").exists()
    finally:
        server.kill()
