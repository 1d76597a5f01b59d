"""Search without a server: flattening, normalization, the query syntax, constraint errors,
and every constraint and option against the SQLite store itself."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fluxcore.server.search.constraints import (
    ConstraintError,
    parse_constraints,
    parse_query_string,
    path_glob,
)
from fluxcore.server.search.flatten import (
    BOOLEAN,
    EMPTY_ARRAY,
    EMPTY_OBJECT,
    NULL,
    NUMERIC,
    TEXT,
    DocumentError,
    flatten,
    normalize,
    sortable_text,
)
from fluxcore.server.search.store import IndexedDocument, Query, SearchStore, Sorting, _Sql

# -- flattening ------------------------------------------------------------------------------


def test_flatten_types_and_paths() -> None:
    doc = {"name": "Ann", "age": 3, "ok": True, "none": None, "list": [], "obj": {},
           "tags": ["x", {"k": 1.5}], "a/b": "slash", 'q"t': "quote", "7": "int-like"}
    assert flatten(doc) == [
        (TEXT, "Ann", "name", "name"),
        (NUMERIC, "3", "age", "age"),
        (BOOLEAN, "true", "ok", "ok"),
        (NULL, "null", "none", "none"),
        (EMPTY_ARRAY, "[]", "list", "list"),
        (EMPTY_OBJECT, "{}", "obj", "obj"),
        (TEXT, "x", "tags/0", "tags"),
        (NUMERIC, "1.5", "tags/1/k", "tags/k"),
        (TEXT, "slash", "a\\/b", "a\\/b"),
        (TEXT, "quote", 'q\\"t', 'q\\"t'),
        (TEXT, "int-like", '"7"', '"7"'),
    ]
    assert flatten("root") == [(TEXT, "root", "", "")]
    assert flatten([[1]]) == [(NUMERIC, "1", "0/0", "")]


@pytest.mark.parametrize("bad, where", [
    ({"a": {"b": b"bytes"}}, "a/b"), ({"a": [float("nan")]}, "a/0"), ({1: "x"}, "root"),
    ({"s": {1, 2}}, "s")])
def test_flatten_refuses_what_is_not_json(bad: Any, where: str) -> None:
    with pytest.raises(DocumentError, match=where):
        flatten(bad)


def test_normalize_and_sortables() -> None:
    assert normalize("  Crème Brûlée\t") == "creme brulee"
    assert normalize("ÅNGSTRÖM") == "angstrom"
    numbers = [-1e30, -5.5, -1, 0, 0.000001, 1, 2, 10, 1e12, 1e30]
    texts = [sortable_text(n, "x") for n in numbers]
    assert texts == sorted(texts) and len({len(t) for t in texts}) == 1
    assert sortable_text("Émile", "x") == "emile"


# -- the query syntax --------------------------------------------------------------------------

def c(term: str, **flags: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"contains": term}
    if flags.get("pre"):
        out["prefixSearch"] = True
    if flags.get("post"):
        out["postfixSearch"] = True
    return out


QUERIES: list[tuple[str, Any]] = [
    ("a", c("a")),
    ("a b", {"all": [c("a"), c("b")]}),
    ("a AND b", {"all": [c("a"), c("b")]}),
    ("a & b", {"all": [c("a"), c("b")]}),
    ("a&b", {"all": [c("a"), c("b")]}),
    ("a | b", {"any": [c("a"), c("b")]}),
    ("a OR b", {"any": [c("a"), c("b")]}),
    ("a|b|c", {"any": [c("a"), c("b"), c("c")]}),
    ("a b | c", {"all": [c("a"), {"any": [c("b"), c("c")]}]}),
    ("a | b c", {"all": [{"any": [c("a"), c("b")]}, c("c")]}),
    ("!a", {"not": c("a")}),
    ("! a", {"not": c("a")}),
    ("a !b", {"all": [c("a"), {"not": c("b")}]}),
    ("!(a b)", {"not": {"all": [c("a"), c("b")]}}),
    ("(a | b) c", {"all": [{"any": [c("a"), c("b")]}, c("c")]}),
    ("(a)", c("a")),
    ("((a))", c("a")),
    ("a (b | c) d", {"all": [c("a"), {"any": [c("b"), c("c")]}, c("d")]}),
    ("a | !b", {"any": [c("a"), {"not": c("b")}]}),
    ("a | (b c)", {"any": [c("a"), {"all": [c("b"), c("c")]}]}),
    ('"a b"', c("a b")),
    ('"a b" c', {"all": [c("a b"), c("c")]}),
    ('"a | b"', c("a | b")),
    ('x "" y', {"all": [c("x"), c(""), c("y")]}),
    ("a*", c("a", post=True)),
    ("*a", c("a", pre=True)),
    ("*a*", c("a", pre=True, post=True)),
    ("k*aas*", {"all": [c("k", post=True), c("aas", pre=True, post=True)]}),
    ("k*aas", {"all": [c("k", post=True), c("aas", pre=True)]}),
    ("*k*aas", {"all": [c("k", pre=True, post=True), c("aas", pre=True)]}),
    ("a**b", {"all": [c("a", post=True), c("b", pre=True)]}),
    ("foo-bar", c("foo-bar")),
    ("e-mail@x.org", c("e-mail@x.org")),
    ("Crème", c("Crème")),
    ("  a   b  ", {"all": [c("a"), c("b")]}),
    ("a AND OR b", {"all": [c("a")]}),  # placeholder, replaced below
    ("a & | b", None),
    ("ORANGE ANDY", {"all": [c("ORANGE"), c("ANDY")]}),
    ("a | b | !c d", {"all": [{"any": [c("a"), c("b"), {"not": c("c")}]}, c("d")]}),
    ("!!a", {"not": {"not": c("a")}}),
    ("(a | b) | c", {"any": [c("a"), c("b"), c("c")]}),
    ("a (b)", {"all": [c("a"), c("b")]}),
]
# "a AND OR b": AND is dropped, OR joins a and b.
QUERIES[35] = ("a AND OR b", {"any": [c("a"), c("b")]})
QUERIES[36] = ("a & | b", {"any": [c("a"), c("b")]})


@pytest.mark.parametrize("text, expected", QUERIES)
def test_query_syntax(text: str, expected: Any) -> None:
    assert parse_query_string(text) == expected


def test_query_syntax_table_is_large_enough() -> None:
    assert len(QUERIES) >= 40


def test_query_look_ahead_and_paths() -> None:
    assert parse_query_string("a b", True, ["name"]) == {"all": [
        {"contains": "a", "postfixSearch": True, "paths": ["name"]},
        {"contains": "b", "postfixSearch": True, "paths": ["name"]}]}


@pytest.mark.parametrize("text, message", [
    ("(a", "unbalanced parentheses: '\\(' at position 0"),
    ("a)", "unbalanced parentheses: '\\)' at position 1"),
    ("(a))", "unbalanced parentheses: '\\)' at position 3"),
    ('"open', "quote at position 0 is not closed"),
    ("| a", "'\\|' at position 0 .* has no term before it"),
    ("a |", "'\\|' at position 2 .* has no term after it"),
    ("a !", "ends where a term is expected"),
    ("a (b", "unbalanced parentheses: .\\(. at position 2"),
])
def test_query_syntax_errors(text: str, message: str) -> None:
    with pytest.raises(ConstraintError, match=message):
        parse_constraints([{"query": text}])


@pytest.mark.parametrize("raw, message", [
    ([{"foo": 1}], "constraints/0: unknown constraint with fields \\['foo'\\]"),
    ([{"all": [{"match": 1}, {"nope": 2}]}], "constraints/0/all/1: unknown constraint"),
    ([{"match": ["x"]}], "constraints/0/match: a string, not list"),
    ([{"contains": "x", "prefixSearch": "yes"}], "constraints/0/prefixSearch: true or false"),
    ([{"min": [1]}], "constraints/0/min: a number, a string or null"),
    ([{"min": 1, "max": "z"}], "both numbers or both strings"),
    ([{"match": "x", "paths": ["a{b"]}], "paths/0: the path glob 'a{b' has an unclosed"),
    ([{"match": "x", "paths": ["a[b"]}], "paths/0: the path glob 'a\\[b' has an unclosed"),
    ([{"match": "x", "paths": [""]}], "paths/0: a path is a non-empty string"),
    ([{"exists": []}], "exists: a path or a list of paths"),
    ([{"not": "x"}], "constraints/0/not: a constraint is a map"),
    ("x", "constraints: a list of constraints"),
])
def test_constraint_errors_say_what_and_where(raw: Any, message: str) -> None:
    with pytest.raises(ConstraintError, match=message):
        parse_constraints(raw)


def test_path_globs() -> None:
    assert path_glob("a.b", "p").globs == ("a/b",)
    assert path_glob("a/{b,c}/d", "p").globs == ("a/b/d", "a/c/d")
    assert path_glob("**/name", "p").globs == ("*/name",)
    assert path_glob("tags/0", "p").long and not path_glob("tags", "p").long


# -- the store -------------------------------------------------------------------------------

class Store:
    """A SearchStore in a temporary directory, with helpers for the tests."""

    def __init__(self, path: Path) -> None:
        self.published: list[tuple[str, list[str]]] = []
        self.store = SearchStore(str(path / "search.sqlite"), durable=False,
                                 publish=lambda c, items: self.published.append(
                                     (c, [i.id for i in items])),
                                 open_log=lambda c: None)

    def index(self, doc_id: str, document: Any, *, collection: str = "c", ts: int | None = 0,
              end: int | None = None, facets: list[tuple[str, str]] | None = None,
              sortables: list[tuple[str, str]] | None = None) -> None:
        self.store.update([("index", IndexedDocument(
            collection, doc_id, ts, end if end is not None else ts, "",
            b"", flatten(document), facets or [], sortables or []))])

    def ids(self, *constraints: Any, collection: str = "c", sort: list[str] | None = None,
            **options: Any) -> list[str]:
        query = Query([collection], parse_constraints(list(constraints)),
                      options.pop("since", None), options.pop("before", None),
                      options.pop("since_exclusive", False), options.pop("before_inclusive",
                                                                         False))
        found = self.store.search(query, Sorting(sort or ["timestamp"]),
                                  max_size=options.pop("max_size", None),
                                  skip=options.pop("skip", 0),
                                  last_hit=options.pop("last_hit", None))
        return [d["id"] for d in found]

    def query(self, *constraints: Any) -> Query:
        return Query(["c"], parse_constraints(list(constraints)))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path)
    yield opened
    opened.store.close()


def test_match_is_whole_value_case_and_accent_insensitive(store: Store) -> None:
    store.index("1", {"name": "Crème Brûlée", "n": 42, "ok": True}, ts=1)
    store.index("2", {"name": "creme", "n": 42.5}, ts=2)
    assert store.ids({"match": "CREME BRULEE"}) == ["1"]
    assert store.ids({"match": "creme"}) == ["2"]
    assert store.ids({"match": "Crème Brûlée", "strict": True}) == ["1"]
    assert store.ids({"match": "creme brulee", "strict": True}) == []
    assert store.ids({"match": 42}) == ["1"]
    assert store.ids({"match": "true"}) == ["1"]
    assert store.ids({"match": "creme", "paths": ["other"]}) == []


def test_contains_word_boundaries_and_wildcards(store: Store) -> None:
    store.index("1", {"t": "The quick-brown fox, jumped"}, ts=1)
    store.index("2", {"t": "foxtrot überquick"}, ts=2)
    store.index("3", {"t": "a3b c_d"}, ts=3)
    assert store.ids({"contains": "fox"}) == ["1"]
    assert store.ids({"contains": "FOX", "postfixSearch": True}) == ["1", "2"]
    assert store.ids({"contains": "quick"}) == ["1"]
    assert store.ids({"contains": "quick", "prefixSearch": True}) == ["1", "2"]
    assert store.ids({"contains": "uic", "prefixSearch": True, "postfixSearch": True}) == [
        "1", "2"]
    assert store.ids({"contains": "quick-brown"}) == ["1"]
    assert store.ids({"contains": "quick brown"}) == []
    assert store.ids({"contains": "ick-bro", "prefixSearch": True,
                      "postfixSearch": True}) == ["1"]
    assert store.ids({"contains": "Über", "postfixSearch": True}) == ["2"]
    assert store.ids({"contains": "3"}) == []  # digits and letters are one word
    assert store.ids({"contains": "c"}) == ["3"]  # but _ separates words
    assert store.ids({"contains": ","}) == []  # "x," has no boundary before the comma
    assert store.ids({"contains": ",", "prefixSearch": True}) == ["1"]  # no word: a scan


def test_lookahead_and_query(store: Store) -> None:
    store.index("1", {"name": "Jan Klaassen", "city": "Amsterdam"}, ts=1)
    store.index("2", {"name": "Katrijn", "city": "Rotterdam"}, ts=2)
    assert store.ids({"lookAhead": "kla ja"}) == ["1"]
    assert store.ids({"lookAhead": "ams", "paths": ["name"]}) == []
    assert store.ids({"query": "k*aas*"}) == ["1"]
    assert store.ids({"query": "jan | katrijn"}) == ["1", "2"]
    assert store.ids({"query": "!jan"}) == ["2"]
    assert store.ids({"query": "*dam", "paths": ["city"]}) == ["1", "2"]
    assert store.ids({"query": '"jan klaassen"'}) == ["1"]


def test_between_exists_all_any_not_facet(store: Store) -> None:
    store.index("1", {"age": 17, "name": "b", "x": None}, ts=1, facets=[("k", "v")])
    store.index("2", {"age": 18, "name": "c", "x": {"y": 1}}, ts=2)
    store.index("3", {"age": 65, "name": "D", "x": [None]}, ts=3, facets=[("k", "w")])
    store.index("4", {"age": "20", "name": "e"}, ts=4)
    assert store.ids({"min": 18, "max": 65}) == ["2"]
    assert store.ids({"min": 18}) == ["2", "3"]
    assert store.ids({"max": 18, "paths": ["age"]}) == ["1"]
    assert store.ids({"min": "c", "max": "e", "paths": ["name"]}) == ["2", "3"]
    assert store.ids({"exists": "x"}) == ["2"]
    assert store.ids({"exists": "x/y"}) == ["2"]
    assert store.ids({"all": [{"min": 0}, {"not": {"match": 17}}]}) == ["2", "3"]
    assert store.ids({"any": [{"match": "b"}, {"match": "e"}]}) == ["1", "4"]
    assert store.ids({"any": []}) == []
    assert store.ids({"all": []}) == ["1", "2", "3", "4"]
    assert store.ids({"facet": {"name": "k", "value": "w"}}) == ["3"]


def test_paths_globs_and_arrays(store: Store) -> None:
    store.index("1", {"a": {"b": "x"}, "list": [{"v": "p"}, {"v": "q"}], "a/b": "y"}, ts=1)
    store.index("2", {"c": {"b": "x"}, "list": [{"v": "q"}]}, ts=2)
    assert store.ids({"match": "x", "paths": ["a.b"]}) == ["1"]
    assert store.ids({"match": "x", "paths": ["*/b"]}) == ["1", "2"]
    assert store.ids({"match": "x", "paths": ["{a,c}/b"]}) == ["1", "2"]
    assert store.ids({"match": "x", "paths": ["?/b"]}) == ["1", "2"]
    assert store.ids({"match": "x", "paths": ["**"]}) == ["1", "2"]
    assert store.ids({"match": "q", "paths": ["list/v"]}) == ["1", "2"]
    assert store.ids({"match": "q", "paths": ["list/0/v"]}) == ["2"]
    assert store.ids({"match": "q", "paths": ["list/1/v"]}) == ["1"]
    assert store.ids({"match": "y", "paths": ["a\\/b"]}) == ["1"]


def test_since_and_before(store: Store) -> None:
    store.index("1", {}, ts=10, end=20)
    store.index("2", {}, ts=20, end=30)
    store.index("3", {}, ts=None, end=None)
    assert store.ids(since=20) == ["1", "2", "3"]
    assert store.ids(since=20, since_exclusive=True) == ["2", "3"]
    assert store.ids(before=20) == ["1", "3"]
    assert store.ids(before=20, before_inclusive=True) == ["1", "2", "3"]
    assert store.ids(since=20, before=20) == ["1", "2", "3"]  # before == since is inclusive


def test_sorting_skip_and_last_hit(store: Store) -> None:
    for i, (age, ts) in enumerate([(30, 5), (10, 7), (20, 6), (None, 8)]):
        store.index(f"d{i}", {}, ts=ts,
                    sortables=[] if age is None else [("age", sortable_text(age, "age"))])
    assert store.ids(sort=["timestamp"]) == ["d0", "d2", "d1", "d3"]
    assert store.ids(sort=["-timestamp"]) == ["d3", "d1", "d2", "d0"]
    assert store.ids(sort=["age"]) == ["d1", "d2", "d0", "d3"]  # missing sorts last
    assert store.ids(sort=["-age"]) == ["d0", "d2", "d1", "d3"]
    assert store.ids(sort=["age"], skip=1, max_size=2) == ["d2", "d0"]
    assert store.ids(sort=["age"], last_hit="d2") == ["d0", "d3"]
    assert store.ids(sort=["-age"], last_hit="d1") == ["d3"]
    assert store.ids(sort=["age"], last_hit="gone") == []
    assert store.ids(sort=["age"], last_hit="d2", skip=1) == ["d0", "d3"]
    assert store.ids(sort=["age"], last_hit="d2", skip=2) == []  # the hit was skipped


def test_reindex_replaces_and_delete(store: Store) -> None:
    store.index("1", {"name": "old"})
    store.index("1", {"name": "new"})
    assert store.ids({"match": "old"}) == []
    assert store.ids({"match": "new"}) == ["1"]
    assert store.store.delete_query(store.query({"match": "new"})) == 1
    assert store.ids() == []
    assert store.published == [("c", ["1"]), ("c", ["1"])]


def test_stats_facet_stats_and_histogram(store: Store) -> None:
    rows = [("a", 1, 10), ("a", 2, 20), ("b", 4, 30), ("b", None, 40), ("c", 8.5, 50)]
    for i, (group, value, ts) in enumerate(rows):
        store.index(str(i), {"g": group, "v": value, "w": [1, 2]}, ts=ts,
                    facets=[("g", group), ("all", "x")])
    stats = store.store.document_stats(store.query(), [path_glob("v", "f")],
                                       [path_glob("g", "g")])
    by_group = {s["group"]["g"]: s["fieldStats"]["v"] for s in stats}
    assert by_group["a"] == {"count": 2, "min": 1, "max": 2, "sum": 3, "average": 1.5}
    assert by_group["b"] == {"count": 1, "min": 4, "max": 4, "sum": 4, "average": 4}
    assert by_group["c"] == {"count": 1, "min": 8.5, "max": 8.5, "sum": 8.5, "average": 8.5}
    (total,) = store.store.document_stats(store.query(), [path_glob("w", "f")], [])
    assert total["fieldStats"]["w"] == {"count": 10, "min": 1, "max": 2, "sum": 15,
                                        "average": 1.5}
    assert store.store.facet_stats(store.query()) == [
        {"name": "all", "value": "x", "count": 5}, {"name": "g", "value": "a", "count": 2},
        {"name": "g", "value": "b", "count": 2}, {"name": "g", "value": "c", "count": 1}]
    assert store.store.facet_stats(store.query({"min": 3})) == [
        {"name": "all", "value": "x", "count": 2}, {"name": "g", "value": "b", "count": 1},
        {"name": "g", "value": "c", "count": 1}]
    query = Query(["c"], parse_constraints([]), since=10, before=60)
    assert store.store.histogram(query, 5, None) == {"since": 10, "before": 60,
                                                    "counts": [1, 1, 1, 1, 1]}
    assert store.store.histogram(query, 2, None)["counts"] == [3, 2]  # steps of 25 ms
    assert store.store.histogram(query, 1000, None)["counts"][:41:10] == [1, 1, 1, 1, 1]
    assert store.store.histogram(query, 5, 2)["counts"] == [0, 0, 0, 1, 1]
    no_since = Query(["c"], parse_constraints([]))
    assert store.store.histogram(no_since, 3, None)["counts"] == [0, 0, 0]


def test_bulk_is_all_or_nothing(store: Store) -> None:
    store.index("keep", {"v": 1})
    good = IndexedDocument("c", "a", 0, 0, "", b"", flatten({"v": 2}), [], [])
    broken = IndexedDocument("c", "b", 0, 0, "", b"", [(NUMERIC, "x", "p", "p")], [], [])
    with pytest.raises(ValueError, match="could not convert"):  # fails inside the transaction
        store.store.update([("index", good), ("delete", ("c", "keep")),
                            ("index", broken)])
    assert store.ids() == ["keep"]
    assert store.published == [("c", ["keep"])]


def test_one_batch_indexes_deletes_and_reindexes_the_same_id(store: Store) -> None:
    def doc(doc_id: str, value: str) -> IndexedDocument:
        return IndexedDocument("c", doc_id, 0, 0, "", b"", flatten({"v": value}), [], [])

    assert store.store.update([("index", doc("a", "one")), ("index", doc("b", "x")),
                               ("delete", ("c", "b")), ("index", doc("a", "two")),
                               ("index", doc("c", "y"))]) == [True, True, True, True, True]
    assert store.ids({"match": "one"}) == [] and store.ids({"match": "x"}) == []
    assert store.ids({"match": "two"}) == ["a"] and store.ids({"match": "y"}) == ["c"]
    entries = store.store._db.execute("SELECT count(*) FROM entries").fetchone()[0]
    assert entries == 2  # nothing left of the replaced and deleted versions


def test_any_starts_from_index_lookups(store: Store) -> None:
    for i in range(5):
        store.index(str(i), {"n": i, "t": f"w{i}"}, ts=i)
    query = store.query({"any": [{"match": 1}, {"contains": "w3"},
                                 {"all": [{"min": 4}, {"any": [{"match": "w4"}]}]}]})
    assert store.ids({"any": [{"match": 1}, {"contains": "w3"},
                              {"all": [{"min": 4}, {"any": [{"match": "w4"}]}]}]}) == [
        "1", "3", "4"]
    sql = store.store  # SQLite unions the lookups of each part (a multi-index OR)
    params = _Sql()
    where = sql._where(query, params)
    plan = " ".join(row[3] for row in sql._db.execute(
        f"EXPLAIN QUERY PLAN SELECT d.rowid FROM documents d WHERE {where}", params.params))
    assert "SCAN d" not in plan and "INTEGER PRIMARY KEY" in plan


def test_facet_stats_of_every_document_follow_reindexing_and_deletes(store: Store) -> None:
    def counted() -> dict[tuple[str, str], int]:
        # the same numbers as counting the facets of the documents matched by a constraint
        every = store.store.facet_stats(store.query({"exists": "v"}))
        plain = store.store.facet_stats(store.query())
        assert plain == every
        return {(s["name"], s["value"]): s["count"] for s in plain}

    for i in range(6):
        store.index(str(i), {"v": i}, facets=[("g", str(i % 2)), ("g", str(i % 2)), ("k", "x")])
    assert counted() == {("g", "0"): 3, ("g", "1"): 3, ("k", "x"): 6}  # a repeat counts once
    store.index("0", {"v": 0}, facets=[("g", "2")])  # re-indexed with other facets
    store.store.update([("delete", ("c", "1"))])
    store.store.delete_query(store.query({"match": 5}))
    assert counted() == {("g", "0"): 2, ("g", "1"): 1, ("g", "2"): 1, ("k", "x"): 3}
    store.index("x", {"v": 9}, collection="other", facets=[("k", "x")])
    store.store.delete_collection("c")
    assert counted() == {}
    assert store.store.facet_stats(Query(["other"], parse_constraints([]))) == [
        {"name": "k", "value": "x", "count": 1}]


def test_plans_for_large_collections_find_the_same_documents(tmp_path: Path) -> None:
    # Tiny thresholds make a few documents take the plans of a large collection: the set of
    # the most selective constraint with the others tested per document, and pages found by
    # walking the sort order. Every store must answer every query the same.
    stores = [SearchStore(str(tmp_path / f"{n}.sqlite"), durable=False,
                          publish=lambda c, items: None, open_log=lambda c: None, **planning)
              for n, planning in enumerate([{}, {"estimate_cap": 1, "walk_budget": 10**6},
                                            {"estimate_cap": 1, "walk_budget": 4}])]
    colors = ["red", "green", "blue"]
    for store in stores:
        store.update([("index", IndexedDocument(
            "c", f"d{i}", i % 7 if i % 5 else None, None, "", b"",
            flatten({"color": colors[i % 3], "n": i, "text": f"the {colors[i % 2]} fox {i}",
                     "tags": [colors[(i + 1) % 3]]}),
            [("k", colors[i % 3])], [("n", sortable_text(i % 4, "n"))] if i % 6 else []))
            for i in range(40)])
    queries: list[list[Any]] = [
        [], [{"match": "red"}], [{"match": "red", "paths": ["color"]}, {"contains": "fox"}],
        [{"match": "blue"}, {"not": {"contains": "green"}}, {"min": 3, "max": 30}],
        [{"facet": {"name": "k", "value": "green"}}, {"contains": "the"},
         {"any": [{"match": 4, "paths": ["n"]}, {"exists": "tags"}]}],
        [{"contains": "red", "paths": ["tags"]}, {"match": "green"}],
        [{"match": "red"}, {"match": "nothing"}],
    ]
    for constraints in queries:
        query = Query(["c"], parse_constraints(constraints))
        for sort in ([], ["timestamp"], ["-n"], ["n"], ["end"]):
            for max_size, skip in ((None, 0), (3, 0), (2, 3)):
                answers = [[d["id"] for d in store.search(
                    query, Sorting(sort), max_size=max_size, skip=skip, last_hit=None)]
                    for store in stores]
                assert answers[0] == answers[1] == answers[2], (constraints, sort, max_size,
                                                                skip)
        assert stores[0].count(query) == stores[1].count(query) == stores[2].count(query)
    for store in stores:
        store.close()


# -- the write path: trigram rows, batched documents, the layout before them ------------------

def _old_layout_store(path: Path) -> None:
    """A search.sqlite as fluxcore wrote it before trigram rows: an FTS5 trigram table of the
    vocabulary, filled by a trigger."""
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE vocabulary (word TEXT PRIMARY KEY, rword TEXT NOT NULL) WITHOUT ROWID;
        CREATE INDEX vocabulary_rword ON vocabulary (rword);
        CREATE VIRTUAL TABLE vocabulary_trigrams USING fts5 (
            word, tokenize = 'trigram', detail = 'none');
        CREATE TRIGGER vocabulary_added AFTER INSERT ON vocabulary BEGIN
            INSERT INTO vocabulary_trigrams (word) VALUES (new.word);
        END;""")
    old.close()


def test_a_store_of_the_fts_layout_gets_trigram_rows_for_its_words(tmp_path: Path) -> None:
    path = tmp_path / "search.sqlite"
    _old_layout_store(path)
    first = Store(tmp_path)
    # Written as the old layout would: the trigger fills the FTS table (re-created here).
    first.store._db.executescript("""
        CREATE VIRTUAL TABLE vocabulary_trigrams USING fts5 (
            word, tokenize = 'trigram', detail = 'none');
        CREATE TRIGGER vocabulary_added AFTER INSERT ON vocabulary BEGIN
            INSERT INTO vocabulary_trigrams (word) VALUES (new.word);
        END;""")
    first.store._db.execute("DELETE FROM word_trigrams")
    first.index("1", {"t": "Abcdef ghij"})
    first.store._db.execute("DELETE FROM word_trigrams")  # only the FTS table has them
    first.store.close()
    again = Store(tmp_path)
    tables = {name for (name,) in again.store._db.execute("SELECT name FROM sqlite_master")}
    assert "vocabulary_trigrams" not in tables and "vocabulary_added" not in tables
    assert again.ids({"query": "*cde*"}) == ["1"] and again.ids({"query": "*hij*"}) == ["1"]
    again.index("2", {"t": "xcdey"})
    assert sorted(again.ids({"query": "*cde*"})) == ["1", "2"]


def test_infix_terms_find_words_new_in_any_update(store: Store) -> None:
    store.index("1", {"t": "abcdef"})
    store.index("2", {"t": "zabcd abcdef"})  # one word known already, one new
    store.store.update([("index", IndexedDocument("c", str(i), 0, 0, "", b"",
                                                  flatten({"t": f"q{i}bcd"}), [], []))
                        for i in range(3, 6)])
    assert sorted(store.ids({"query": "*bcd*"})) == ["1", "2", "3", "4", "5"]
    assert sorted(store.ids({"query": "*abcd*"})) == ["1", "2"]
    assert store.ids({"query": "*cdef*"}) == ["1", "2"]
    assert store.ids({"query": "*bc*"}) == sorted(store.ids({"query": "*bcd*"}))
    rows = store.store._db.execute("SELECT count(*) FROM word_trigrams WHERE trigram = 'abc'"
                                   ).fetchone()[0]
    assert rows == 2  # a row per update that brought new words with the trigram


def test_replaced_and_deleted_documents_are_found_by_nothing(store: Store) -> None:
    lookups: list[Any] = [
        {"match": "alpha beta"}, {"contains": "gamma"}, {"query": "gam*"}, {"query": "*mma"},
        {"query": "*amm*"}, {"min": 4, "max": 6}, {"min": "alpha", "max": "alphb"},
        {"exists": "extra"}, {"exists": "list/1"}, {"match": "alpha beta", "paths": ["t"]},
        {"query": "*amm*", "paths": ["u"]}]
    old = {"t": "Alpha Beta", "u": "gamma", "n": 5, "extra": 1, "list": [0, 1]}
    store.store.update([("index", IndexedDocument("c", doc_id, 0, 0, "", b"", flatten(old),
                                                  [], []))
                        for doc_id in ("replaced", "deleted", "kept")])
    store.store.update([("index", IndexedDocument("c", "replaced", 0, 0, "", b"",
                                                  flatten({"t": "other", "n": 50}), [], [])),
                        ("delete", ("c", "deleted")), ("delete", ("c", "nothing"))])
    assert [store.ids(c) for c in lookups] == [["kept"]] * len(lookups)


def test_numbers_are_ranged_in_numeric_order_across_signs(store: Store) -> None:
    numbers = [-1e300, -5, -0.5, -0.0, 0, 0.25, 1, 2**60, 1e300]
    for i, number in enumerate(numbers):
        store.index(str(i), {"n": number})
    assert sorted(store.ids({"min": -1, "max": 1}), key=int) == ["2", "3", "4", "5"]
    assert sorted(store.ids({"min": 0, "max": 0.25}), key=int) == ["3", "4"]
    assert sorted(store.ids({"min": 1}), key=int) == ["6", "7", "8"]
    assert sorted(store.ids({"max": -5}), key=int) == ["0"]


def test_document_rowids_are_never_used_again(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.index("a", {"v": 1})
    store.index("b", {"v": 2})
    rowid = store.store._db.execute("SELECT max(rowid) FROM documents").fetchone()[0]
    store.store.update([("delete", ("c", "b"))])
    store.store.close()
    again = Store(tmp_path)  # the largest rowid was deleted: the next one is still above it
    again.index("c", {"v": 3})
    assert again.store._db.execute("SELECT rowid FROM documents WHERE id = 'c'"
                                   ).fetchone()[0] == rowid + 1


# -- query plans -----------------------------------------------------------------------------

def _plan(store: SearchStore, sql: str, params: list[Any]) -> list[str]:
    return [row[3] for row in store._db.execute(f"EXPLAIN QUERY PLAN {sql}", params)]


def test_words_at_a_path_look_up_the_rarest_and_test_the_others_per_document(
        store: Store) -> None:
    # alpha in 3 documents, beta in 12, gamma in 24: the set of alpha's documents, each
    # tested for beta and gamma by a seek in the words index, not three sets intersected;
    # the set itself keeps only documents with beta and gamma anywhere before it reads
    # their entries (paths) and documents.
    for i in range(24):
        text = " ".join(w for w, every in (("alpha", 8), ("beta", 2), ("gamma", 1))
                        if i % every == 0)
        store.index(str(i), {"t": text, "u": "alpha beta gamma"}, ts=i)
    query = store.query({"query": "gamma beta alpha", "paths": ["t"]})
    assert store.ids({"query": "gamma beta alpha", "paths": ["t"]}) == ["0", "8", "16"]
    params = _Sql()
    where = store.store._where(query, params)
    plan = _plan(store.store, f"SELECT d.rowid FROM documents d WHERE {where}", params.params)
    assert sum("LIST SUBQUERY" in step for step in plan) == 1, plan
    assert sum("CORRELATED SCALAR SUBQUERY" in step for step in plan) == 4, plan
    assert sum("word=? AND entry>? AND entry<?" in step for step in plan) == 4, plan
    narrowing = plan.index("SEARCH wn USING PRIMARY KEY (word=? AND entry>? AND entry<?)")
    assert narrowing < plan.index("SEARCH e USING INTEGER PRIMARY KEY (rowid=?)"), plan


def test_a_match_at_a_path_is_tested_per_document_by_one_index_seek(store: Store) -> None:
    for i in range(10):
        store.index(str(i), {"bucket": i % 3, "other": i % 3}, ts=i,
                    sortables=[("n", sortable_text(i, "n"))])
    query = store.query({"match": 1, "paths": ["bucket"]})
    params = _Sql()
    test = store.store._where(query, params, probe=True)
    plan = _plan(store.store, f"SELECT d.rowid FROM documents d WHERE {test}", params.params)
    assert any("entries_phrase (coll=? AND phrase=? AND spath=? AND rowid>? AND rowid<?)"
               in step for step in plan), plan
    assert store.ids({"match": 1, "paths": ["bucket"]}, sort=["-n"]) == ["7", "4", "1"]


def test_the_store_reads_its_file_through_a_mapping(store: Store) -> None:
    assert store.store._db.execute("PRAGMA mmap_size").fetchone()[0] > 0


def test_the_wal_goes_into_the_file_from_a_thread_that_close_stops(tmp_path: Path) -> None:
    def checkpointers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "fluxcore-checkpoint"}

    others = checkpointers()
    store = Store(tmp_path)
    store.index("1", {"v": 1})  # a commit far below any WAL size that checkpoints it
    started = checkpointers() - others
    assert len(started) == 1
    # The database file alone (immutable: no WAL read, nothing cached) has it soon.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        file_only = sqlite3.connect(f"file:{tmp_path / 'search.sqlite'}?immutable=1", uri=True)
        try:
            if file_only.execute("SELECT count(*) FROM documents").fetchone()[0] == 1:
                break
        except sqlite3.DatabaseError:
            pass  # the file is still without its tables
        finally:
            file_only.close()
        time.sleep(0.05)
    else:
        raise AssertionError("the WAL was not checkpointed")
    store.store.close()
    assert not any(t.is_alive() for t in started)


@pytest.mark.parametrize(("durable", "level"), [(True, 2), (False, 1)])
def test_commits_are_synced_only_under_the_always_policy(tmp_path: Path, durable: bool,
                                                         level: int) -> None:
    # FULL (2) syncs each commit: it survives a power loss. NORMAL (1): a commit survives a
    # kill -9 of the server (the WAL is written before the answer), not a power loss; the
    # checkpoints sync (the file stays whole). The checkpointer connects the same way.
    store = SearchStore(str(tmp_path / "search.sqlite"), durable=durable,
                        publish=lambda c, items: None, open_log=lambda c: None)
    store.update([("index", IndexedDocument("c", "1", 0, 0, "", b"", flatten({"v": 1}), [],
                                            []))])
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == level
    store.close()


def test_entries_written_before_empty_values_and_long_paths_read_the_same(
        store: Store) -> None:
    # Since 2026-12-01 a value equal to its phrase and a long path equal to the short one
    # are stored empty; rows written before have them in full, and read the same.
    store.index("1", {"n": 42, "s": "plain", "t": "Mixed Case", "l": [{"k": "x"}, 7]},
                facets=[("f", "a")])
    queries: list[Any] = [{"match": "plain", "strict": True}, {"match": 42, "strict": True},
                          {"match": "Mixed Case", "strict": True}, {"exists": "l/0/k"},
                          {"match": 7, "paths": ["l/1"]}, {"match": "x", "paths": ["l.0.*"]}]
    stats = store.store.document_stats(store.query(), [path_glob("n", "f")],
                                       [path_glob("s", "g")])
    empty = store.store._db.execute(
        "SELECT count(*) FROM entries WHERE value = '' OR lpath = ''").fetchone()[0]
    assert empty == 5  # values of n, s, l/0/k and l/1; long paths of n, s and t
    new = [store.ids(q) for q in queries]
    store.store._db.execute(
        "UPDATE entries SET value = iif(value = '', phrase, value),"
        " lpath = iif(lpath = '', spath, lpath)")
    assert [store.ids(q) for q in queries] == new == [["1"]] * len(queries)
    assert store.store.document_stats(store.query(), [path_glob("n", "f")],
                                      [path_glob("s", "g")]) == stats
    assert stats[0]["group"] == {"s": "plain"}
