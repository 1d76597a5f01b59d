"""README "Search" and docs/protocol.md "Search", promise by promise, through both clients
against a real server: README's block as written, every builder method, the constraints and
their options, paging with lastHit, stats, facets, the histogram, bulk updates, get/has/delete,
typed documents, and the errors a bad request gets (nothing indexed by one that fails)."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from fluxcore.client import AsyncClient, Client, ProtocolError
from fluxcore.client.search import (
    all_of,
    any_of,
    between,
    contains,
    exists,
    facet,
    index_entry,
    lookahead,
    match,
    not_,
    query,
)

from .service_harness import TOKEN, ServerProcess, module_server

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture(scope="module")
def search_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(tmp_path_factory, "docs-search")


_projects = iter(range(1_000_000))


@pytest.fixture
def client(search_server: ServerProcess) -> Iterator[Client]:
    """A client of a project of its own (the module shares one server)."""
    with Client.connect(search_server.address, token=TOKEN, name="search",
                        project=f"p{next(_projects)}") as c:
        yield c


@dataclasses.dataclass
class User:
    id: str
    name: str
    age: int
    status: str
    address: dict[str, str]
    email: str | None = None
    password: str = "secret"


USERS = [
    User("u1", "Alice Smith", 34, "active", {"city": "Zürich"}, "alice@example.com"),
    User("u2", "Bob Smith", 70, "inactive", {"city": "Bern"}),
    User("u3", "Alina Admin", 17, "active", {"city": "Zurichberg"}, "alina@example.com"),
    User("u4", "Carl Jones", 44, "inactive", {"city": "Genève"}),
]


def readme_search_block() -> str:
    section = README.read_text().split("### Search\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    return str(blocks[0])


def test_readme_search_block_runs_as_written(client: Client) -> None:
    block = readme_search_block()
    user = USERS[0]
    docs = [dataclasses.asdict(u) for u in USERS[1:]]
    t0 = datetime.now(UTC) - timedelta(hours=1)
    namespace: dict[str, Any] = {"client": client, "user": user, "docs": docs, "doc": docs[0],
                                 "datetime": datetime, "User": User, "t": t0, "t0": t0,
                                 "t1": datetime.now(UTC) + timedelta(hours=1)}
    exec(compile(block, "README.md:search", "exec"), namespace)
    # What the block did, checked: u2 was re-indexed then u3 deleted by the bulk, u1
    # deleted, then the collection; the last line deleted nothing more.
    assert client.search("users").count() == 0
    assert not client.has_document("users", "u1")


def index_users(client: Client, collection: str = "users") -> None:
    assert client.index_many([
        index_entry(u, collection=collection, id=u.id, timestamp=1000 * (i + 1),
                    facets=["address.city", "status"], sortables=["age"])
        for i, u in enumerate(USERS)]) == [True] * len(USERS)


def ids(found: list[Any]) -> list[str]:
    return [d.id for d in found]


def test_every_builder_method(client: Client) -> None:
    index_users(client)
    users = client.search
    assert ids(users("users").fetch()) == ["u4", "u3", "u2", "u1"]  # -timestamp by default
    assert ids(users("users").match("alice smith", "name").fetch()) == ["u1"]
    assert ids(users("users").match("ALICE SMITH", "name").fetch()) == ["u1"]  # case
    assert ids(users("users").match("zurich", "address.city").fetch()) == ["u1"]  # accents
    assert ids(users("users").match("Zürich", "address.city", strict=True).fetch()) == ["u1"]
    assert ids(users("users").match("zurich", "address.city", strict=True).fetch()) == []
    assert ids(users("users").match(34).fetch()) == ["u1"]
    assert ids(users("users").contains("smith").sort("age").fetch()) == ["u1", "u2"]
    assert ids(users("users").contains("smi").fetch()) == []  # whole words only
    assert ids(users("users").contains("smi", postfix_search=True).sort("age")
               .fetch()) == ["u1", "u2"]
    assert ids(users("users").contains("mith", prefix_search=True).sort("age")
               .fetch()) == ["u1", "u2"]
    assert ids(users("users").contains("zur", "address.city", postfix_search=True)
               .sort("age").fetch()) == ["u3", "u1"]
    assert users("users").contains("zur", "address.city", postfix_search=True).count() == 2
    assert ids(users("users").lookahead("ali sm").fetch()) == ["u1"]
    assert ids(users("users").lookahead("al").sort("age").fetch()) == ["u3", "u1"]
    assert ids(users("users").query("ali* | bob").sort("age").fetch()) == ["u3", "u1", "u2"]
    assert ids(users("users").query('"bob smith"').fetch()) == ["u2"]
    assert ids(users("users").query('smith !bob').fetch()) == ["u1"]
    assert ids(users("users").query("sm", look_ahead_for_all_terms=True).sort("age")
               .fetch()) == ["u1", "u2"]
    assert ids(users("users").between(18, 65, "age").sort("-age").fetch()) == ["u4", "u1"]
    assert ids(users("users").at_least(65, "age").fetch()) == ["u2"]
    assert ids(users("users").below(18, "age").fetch()) == ["u3"]
    assert ids(users("users").between("b", "c", "name").fetch()) == ["u2"]  # text bounds
    assert ids(users("users").exists("email").sort("age").fetch()) == ["u3", "u1"]
    assert ids(users("users").facet("status", "inactive").sort("age").fetch()) == ["u4", "u2"]
    assert ids(users("users").facet("address.city", "Genève").fetch()) == ["u4"]
    assert ids(users("users").any_of(match("bob smith"), match(44)).sort("age")
               .fetch()) == ["u4", "u2"]
    assert ids(users("users").not_(match("active", "status")).sort("age")
               .fetch()) == ["u4", "u2"]
    assert ids(users("users").constraint(all_of(match("active", "status"),
                                                between(18, None, "age"))).fetch()) == ["u1"]
    assert ids(users("users").constraint(any_of(match("a"), {"exists": "email"}))
               .sort("age").fetch()) == ["u3", "u1"]
    assert ids(users("users").since(3000).fetch()) == ["u4", "u3"]
    assert ids(users("users").since(3000, exclusive=True).fetch()) == ["u4"]
    assert ids(users("users").before(2000).fetch()) == ["u1"]
    assert ids(users("users").before(2000, inclusive=True).fetch()) == ["u2", "u1"]
    assert ids(users("users").since(datetime.fromtimestamp(3, UTC)).fetch()) == ["u4", "u3"]
    assert ids(users("users").sort("age").skip(1).fetch(2)) == ["u1", "u4"]
    assert ids(users("users").sort("timestamp").fetch()) == ["u1", "u2", "u3", "u4"]
    assert ids(users("users").sort("-end").fetch()) == ["u4", "u3", "u2", "u1"]
    first = users("users").sort("age").fetch_first()
    assert first is not None and first.id == "u3"
    assert users("users").match("nobody").fetch_first() is None
    typed = users("users").match("u2", "id").fetch(type=User)
    assert typed[0].document == USERS[1]
    [doc] = users("users").match("u1", "id").exclude("password").fetch()
    assert "password" not in doc.document and doc.document["name"] == "Alice Smith"
    [doc] = users("users").match("u1", "id").include("name", "address").fetch()
    assert doc.document == {"name": "Alice Smith", "address": {"city": "Zürich"}}
    [doc] = users("users").match("u1", "id").include("address").exclude("address.city").fetch()
    assert doc.document == {}  # drop wins
    assert users("users").in_last(timedelta(days=1)).count() == 0  # timestamps of 1970
    assert users("users").match("inactive", "status").delete() == 2
    assert ids(users("users").fetch()) == ["u3", "u1"]


def test_module_constraints_are_the_json_of_docs_protocol() -> None:
    assert match("a", "x", strict=True) == {"match": "a", "paths": ["x"], "strict": True}
    assert contains("t", prefix_search=True, postfix_search=True) == {
        "contains": "t", "prefixSearch": True, "postfixSearch": True}
    assert lookahead("ab c") == {"lookAhead": "ab c"}
    assert query("a", look_ahead_for_all_terms=True) == {"query": "a",
                                                         "lookAheadForAllTerms": True}
    assert between(1, None, "n") == {"min": 1, "max": None, "paths": ["n"]}
    assert exists("a", "b") == {"exists": ["a", "b"]}
    assert facet("f", 1) == {"facet": {"name": "f", "value": 1}}
    assert not_(match(1)) == {"not": {"match": 1}}


def test_sortables_sort_as_documented(client: Client) -> None:
    client.index_many([
        index_entry({"n": "a"}, collection="s", id="a", timestamp=1, sortables={"score": 9}),
        index_entry({"n": "b"}, collection="s", id="b", timestamp=2,
                    sortables={"score": [100, -5]}),
        index_entry({"n": "c"}, collection="s", id="c", timestamp=3),  # no score
        index_entry({"n": "d"}, collection="s", id="d", timestamp=4, sortables={"score": 9}),
        index_entry({"n": "e"}, collection="s", id="e", timestamp=5,
                    sortables={"score": 10.5}),
    ])
    # numbers as numbers; several values: the smallest ascending, the largest descending;
    # no value: last; ties: indexing order, the last indexed first when descending
    assert ids(client.search("s").sort("score").fetch()) == ["b", "a", "d", "e", "c"]
    assert ids(client.search("s").sort("-score").fetch()) == ["b", "e", "d", "a", "c"]
    assert ids(client.search("s").sort("-score").fetch(3)) == ["b", "e", "d"]
    assert ids(client.search("s").sort("score").fetch(3)) == ["b", "a", "d"]
    assert ids(list(client.search("s").sort("-score").stream(page_size=2))) == [
        "b", "e", "d", "a", "c"]
    client.index_many([
        index_entry({"v": 1}, collection="n", id="x", timestamp=1,
                    sortables={"a.b": "Zoë"}),
        index_entry({"v": 2}, collection="n", id="y", timestamp=2,
                    sortables={"a.b": "anna"}),
    ])
    # a sortable name with `.` means `/`; strings compare normalized
    assert ids(client.search("n").sort("a/b").fetch()) == ["y", "x"]
    assert ids(client.search("n").sort("-a.b").fetch()) == ["x", "y"]


def test_datetime_sortables_order_as_the_times_do(client: Client) -> None:
    later_aware = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    earlier_aware_other_zone = datetime(2026, 1, 1, 13, 0, tzinfo=UTC).astimezone(
        __import__("datetime").timezone(timedelta(hours=5)))
    client.index_many([
        index_entry({}, collection="t", id="late", sortables={"when": later_aware + timedelta(
            hours=2)}),
        index_entry({}, collection="t", id="early", sortables={"when": later_aware}),
        index_entry({}, collection="t", id="mid", sortables={"when": earlier_aware_other_zone}),
    ])
    assert ids(client.search("t").sort("when").fetch()) == ["early", "mid", "late"]


def test_paging_with_last_hit(client: Client) -> None:
    client.index_many([index_entry({"n": i}, collection="pg", id=f"d{i}", timestamp=i,
                                   sortables={"n": i % 3})
                       for i in range(25)])
    expected = ids(client.search("pg").sort("n", "timestamp").fetch())
    assert len(expected) == 25
    assert ids(list(client.search("pg").sort("n", "timestamp").stream(page_size=4))) == expected
    assert ids(list(client.search("pg").sort("n", "timestamp").skip(3)
                    .stream(page_size=5))) == expected[3:]
    # docs/protocol.md: last_hit of a document that is gone: nothing
    assert ids(client.search("pg").fetch(5)) == ["d24", "d23", "d22", "d21", "d20"]


def test_stats_facets_and_histogram(client: Client) -> None:
    index_users(client)
    assert client.search("users").facet_stats() == [
        {"name": "status", "value": "active", "count": 2},
        {"name": "status", "value": "inactive", "count": 2},
        {"name": "address.city", "value": "Bern", "count": 1},
        {"name": "address.city", "value": "Genève", "count": 1},
        {"name": "address.city", "value": "Zurichberg", "count": 1},
        {"name": "address.city", "value": "Zürich", "count": 1},
    ]
    stats = client.search("users").stats(["age"], group_by=["status"])
    by_group = {s["group"]["status"]: s["fieldStats"]["age"] for s in stats}
    assert by_group == {
        "active": {"count": 2, "min": 17, "max": 34, "sum": 51, "average": 25.5},
        "inactive": {"count": 2, "min": 44, "max": 70, "sum": 114, "average": 57},
    }
    # no value at the group path: the group is nil
    stats = client.search("users").stats(["age"], group_by=["email"])
    assert sorted((s["group"]["email"] or "", s["fieldStats"]["age"]["count"])
                  for s in stats) == [("", 2), ("alice@example.com", 1),
                                      ("alina@example.com", 1)]
    histogram = client.search("users").since(1000).before(5000).histogram(resolution=4)
    assert histogram == {"since": 1000, "before": 5000, "counts": [1, 1, 1, 1]}
    # max_size counts only the newest documents
    assert client.search("users").since(1000).before(5000).histogram(
        resolution=4, max_size=2)["counts"] == [0, 0, 1, 1]
    # without since every count is 0; before defaults to now
    without = client.search("users").histogram(resolution=3)
    assert without["counts"] == [0, 0, 0]
    assert abs(without["before"] - time.time() * 1000) < 60_000


def test_bulk_update_is_all_or_none_and_get_has_delete(client: Client) -> None:
    client.index({"v": 0}, collection="b", id="keep")
    with pytest.raises(ProtocolError):
        client.bulk_update([
            {"type": "index", **index_entry({"v": 1}, collection="b", id="new")},
            {"type": "delete", "collection": "b", "id": "keep"},
            {"type": "index", **index_entry({"v": float("nan")}, collection="b", id="nan")},
        ])
    assert client.has_document("b", "keep") and not client.has_document("b", "new")
    assert client.bulk_update([
        {"type": "index", **index_entry({"v": 1}, collection="b", id="new")},
        {"type": "index", **index_entry({"v": 2}, collection="b", id="new")},
        {"type": "delete", "collection": "b", "id": "keep"},
    ]) == [True, True, True]
    got = client.get_document("b", "new")
    assert got is not None and got.document == {"v": 2}  # the same id twice: the last wins
    assert not client.has_document("b", "keep")
    assert client.delete_collection("b") == 1
    assert client.delete_collection("b") == 0


def test_index_options_and_documents(client: Client) -> None:
    when = datetime(2026, 3, 1, tzinfo=UTC)
    client.index({"city": "Bern", "tags": ["x", "y"]}, collection="o", id="i1", timestamp=when,
                 end=when + timedelta(minutes=1), facets={"kind": "shop"})
    got = client.get_document("o", "i1")
    assert got is not None
    assert (got.timestamp, got.end) == (int(when.timestamp() * 1000),
                                        int(when.timestamp() * 1000) + 60_000)
    assert got.type == "" and got.collection == "o" and got.id == "i1"
    assert ids(client.search("o").facet("kind", "shop").fetch()) == ["i1"]
    # end below the timestamp becomes the timestamp
    client.index({}, collection="o", id="i2", timestamp=5000, end=1000)
    got = client.get_document("o", "i2")
    assert got is not None and got.end == 5000
    # msgspec Structs and lists are documents too
    client.index([1, "two"], collection="o", id="i3")
    got = client.get_document("o", "i3")
    assert got is not None and got.document == [1, "two"]
    # several collections in one query
    client.index({"city": "Bern"}, collection="o2", id="j1")
    assert sorted(ids(client.search(["o", "o2"]).match("bern", "city").fetch())) == ["i1", "j1"]
    # an integer segment means that array element; without one, any element
    assert ids(client.search("o").match("y", "tags.1").fetch()) == ["i1"]
    assert ids(client.search("o").match("y", "tags.0").fetch()) == []
    assert ids(client.search("o").match("x", "tags").fetch()) == ["i1"]
    assert ids(client.search("o").match("bern", "c?ty").fetch()) == ["i1"]
    assert ids(client.search("o").match("bern", "{city,town}").fetch()) == ["i1"]


@pytest.mark.parametrize("build, where", [
    (lambda c: c.search("c").query("(a b"), "unbalanced parentheses"),
    (lambda c: c.search("c").query('"a b'), "quote"),
    (lambda c: c.search("c").query("a |"), "|"),
    (lambda c: c.search("c").constraint({"foo": 1}), "unknown constraint"),
    (lambda c: c.search("c").match("x", "a[b"), "unclosed '['"),
    (lambda c: c.search("c").match("x", "a]b"), "']'"),
    (lambda c: c.search("c").match("x", ""), "empty"),
    (lambda c: c.search(""), "collection must be a non-empty"),
    (lambda c: c.search("c").constraint({"match": [1]}), "match"),
])
def test_bad_queries_say_what_and_where(client: Client, build: Any, where: str) -> None:
    with pytest.raises(ProtocolError, match=re.escape(where)):
        build(client).fetch()
    with pytest.raises(ProtocolError, match=re.escape(where)):
        build(client).count()


def test_bad_documents_index_nothing(client: Client) -> None:
    with pytest.raises(ProtocolError, match="documents/0/document: nan at v is not a JSON"):
        client.index({"v": float("nan")}, collection="bad", id="nan")
    with pytest.raises(ProtocolError, match="collection"):
        client.index({"v": 1}, collection="no spaces", id="x")
    with pytest.raises(ProtocolError):
        client.index_many([index_entry({"v": 1}, collection="bad", id="fine"),
                           index_entry({"v": float("inf")}, collection="bad", id="inf")])
    assert client.search("bad").count() == 0
    assert not client.has_document("bad", "fine")


def test_async_client_same_methods_and_builder(search_server: ServerProcess) -> None:
    async def main() -> None:
        async with await AsyncClient.connect(search_server.address, token=TOKEN,
                                             project="async-search") as client:
            assert await client.index(USERS[0], collection="users", id="u1", timestamp=1000,
                                      facets=["status"], sortables=["age"])
            assert await client.index_many([
                index_entry(u, collection="users", id=u.id, timestamp=1000 * (i + 2),
                            facets=["status"], sortables=["age"])
                for i, u in enumerate(USERS[1:])]) == [True] * 3
            assert await client.bulk_update([
                {"type": "index_if_not_exists", **index_entry({}, collection="users",
                                                              id="u1")}]) == [False]
            got = await client.get_document("users", "u1", type=User)
            assert got is not None and got.document == USERS[0]
            assert await client.has_document("users", "u2")
            assert ids(await client.search("users").lookahead("ali sm").exclude("password")
                       .fetch(10)) == ["u1"]
            assert ids(await client.search("users").query('ali* | "bob smith" !admin')
                       .sort("age").fetch()) == ["u1", "u2"]
            assert [d.id async for d in client.search("users").sort("timestamp")
                    .stream(page_size=3)] == ["u1", "u2", "u3", "u4"]
            first = await client.search("users").sort("-age").fetch_first()
            assert first is not None and first.id == "u2"
            assert (await client.search("users").facet_stats())[0]["count"] == 2
            stats = await client.search("users").stats(["age"], group_by=["status"])
            assert len(stats) == 2
            assert (await client.search("users").since(1000).before(5000).histogram(4))[
                "counts"] == [1, 1, 1, 1]
            with pytest.raises(ProtocolError, match="unknown constraint"):
                await client.search("users").constraint({"foo": 1}).fetch()
            assert await client.search("users").match("inactive", "status").delete() == 2
            assert await client.delete_document("users", "u1")
            assert await client.delete_collection("users") == 1

    asyncio.run(main())


class Point(msgspec.Struct):
    x: int
    y: int


def test_struct_documents_and_types(client: Client) -> None:
    client.index(Point(1, 2), collection="pts", id="p", sortables=["x"])
    got = client.get_document("pts", "p", type=Point)
    assert got is not None and got.document == Point(1, 2)
    assert got.type.endswith("Point")
    assert client.search("pts").match(2, "y").fetch(type=Point)[0].document == Point(1, 2)


@dataclasses.dataclass
class Meeting:
    title: str
    when: datetime


@pytest.fixture
def local_time_five_hours_behind_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's local time zone set to UTC-5 (POSIX TZ; no tz database needed)."""
    monkeypatch.setenv("TZ", "FLX+5")
    time.tzset()
    try:
        yield
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.usefixtures("local_time_five_hours_behind_utc")
def test_datetimes_are_instants_naive_ones_local_time(client: Client) -> None:
    # A naive datetime is local time, as datetime.timestamp() reads it, everywhere: the
    # document's timestamp, a sortable given by value, since/before.
    now_aware = datetime.now(UTC).replace(microsecond=0)
    now_naive = now_aware.astimezone().replace(tzinfo=None)  # the same instant, local
    assert now_naive.timestamp() == now_aware.timestamp()
    client.index({"n": 1}, collection="tz", id="naive", timestamp=now_naive,
                 sortables={"when": now_naive})
    client.index({"n": 2}, collection="tz", id="aware-earlier",
                 timestamp=now_aware - timedelta(hours=1),
                 sortables={"when": now_aware - timedelta(hours=1)})
    got = client.get_document("tz", "naive")
    assert got is not None and got.timestamp == int(now_aware.timestamp() * 1000)
    assert ids(client.search("tz").sort("when").fetch()) == ["aware-earlier", "naive"]
    assert ids(client.search("tz").sort("timestamp").fetch()) == ["aware-earlier", "naive"]
    assert ids(client.search("tz").since(now_naive - timedelta(minutes=1)).fetch()) == [
        "naive"]


def test_datetime_fields_sort_as_instants_whatever_their_offset(client: Client) -> None:
    # sortables=["when"]: a path to a datetime field of the document; the client sends
    # datetimes as ISO-8601 UTC, so offsets do not change the order
    plus_five = __import__("datetime").timezone(timedelta(hours=5))
    meetings = {
        "m1": Meeting("first", datetime(2026, 1, 1, 10, 0, tzinfo=UTC)),
        "m2": Meeting("second", datetime(2026, 1, 1, 16, 0, tzinfo=plus_five)),  # 11:00 UTC
        "m3": Meeting("third", datetime(2026, 1, 1, 12, 0, tzinfo=UTC)),
    }
    client.index_many([index_entry(m, collection="meet", id=k, sortables=["when"])
                       for k, m in meetings.items()])
    assert ids(client.search("meet").sort("when").fetch()) == ["m1", "m2", "m3"]
    got = client.get_document("meet", "m2", type=Meeting)
    assert got is not None and got.document.when == meetings["m2"].when


def test_numbers_match_as_numbers(client: Client) -> None:
    # JSON's 1 and 1.0 are one number: match finds either (strict: the raw value exactly)
    client.index({"price": 10}, collection="num", id="int")
    client.index({"price": 10.0}, collection="num", id="float")
    client.index({"price": 10.5}, collection="num", id="half")
    for value in (10, 10.0):
        assert sorted(ids(client.search("num").match(value, "price").fetch())) == [
            "float", "int"]
    assert ids(client.search("num").match(10, "price", strict=True).fetch()) == ["int"]
    assert ids(client.search("num").match(10.0, "price", strict=True).fetch()) == ["float"]
    assert ids(client.search("num").match(10.5, "price").fetch()) == ["half"]
    assert client.search("num").not_(match(10)).count() == 1


def test_stream_page_size_is_checked(client: Client) -> None:
    with pytest.raises(ValueError, match="page_size"):
        list(client.search("x").stream(page_size=0))


def test_query_syntax_as_documented(client: Client) -> None:
    docs = {"d1": "apple banana", "d2": "apple cherry", "d3": "banana cherry",
            "d4": "kaasbroodje", "d5": "apple-pie", "d6": "Äpfel und Birnen"}
    client.index_many([index_entry({"text": t}, collection="q", id=i, timestamp=n)
                       for n, (i, t) in enumerate(docs.items())])

    def q(text: str, **options: Any) -> list[str]:
        return sorted(ids(client.search("q").query(text, **options).fetch()))

    assert q("apple banana") == ["d1"]  # terms ANDed
    assert q("apple & banana") == q("apple AND banana") == ["d1"]
    assert q("apple banana | cherry") == ["d1", "d2"]  # a AND (b OR c)
    assert q("apple OR banana") == ["d1", "d2", "d3", "d5"]
    assert q("!apple") == ["d3", "d4", "d6"]
    assert q("cherry !(apple)") == ["d3"]
    assert q("(apple | banana) cherry") == ["d2", "d3"]
    assert q('"apple banana"') == ["d1"]  # a phrase: one contains
    assert q('"banana apple"') == []
    assert q("k*aas*") == ["d4"]  # contains k* AND contains *aas*
    assert q("*broodje") == ["d4"]
    assert q("kaas") == []  # whole words unless * opens a side
    assert q("pie") == ["d5"]  # `-` separates words
    assert q("apfel") == ["d6"]  # accents and case ignored
    assert q("ban", look_ahead_for_all_terms=True) == ["d1", "d3"]
    assert q("apple(pie)") == ["d5"]  # operator characters separate words
    for bad in ("(apple", "apple)", '"apple', "| apple", "apple |", "apple !"):
        with pytest.raises(ProtocolError, match="bad_request"):
            client.search("q").query(bad).fetch()


def test_since_before_and_globs(client: Client) -> None:
    index_users(client)
    assert ids(client.search("users").since(2000).before(2000).fetch()) == ["u2"]  # equal
    assert ids(client.search("users").since(2000).before(3000).fetch()) == ["u2"]
    assert sorted(ids(client.search("users").exists("address").fetch())) == [
        "u1", "u2", "u3", "u4"]  # at the path or under it
    assert ids(client.search("users").match("bern", "*.city").fetch()) == ["u2"]
    assert ids(client.search("users").match("bern", "**").fetch()) == ["u2"]
    assert ids(client.search("users").match("bern", "addr[a-z]ss.c?ty").fetch()) == ["u2"]
    assert ids(client.search("users").match("bern", "address.[^c]ity").fetch()) == []
    assert sorted(ids(client.search("users").match("active", "{status,name}")
                      .fetch())) == ["u1", "u3"]
