"""Property test: every query the store answers equals a brute-force evaluation of the same
constraint tree over the same random documents (written here without the store's SQL)."""

from __future__ import annotations

import fnmatch
import re
from typing import Any

from fluxcore.server.search.constraints import parse_constraints
from fluxcore.server.search.flatten import NULL, NUMERIC, TEXT, flatten, normalize, sortable_text
from fluxcore.server.search.store import IndexedDocument, Query, SearchStore, Sorting
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

WORDS = ["Ann", "anna", "Bérénice", "berenice", "café", "CAFÉ", "x1", "1x", "42", "zoë", "o'neil",
         "foo-bar", "Foo", "bar"]
SEPARATORS = [" ", "-", ", ", "/", "_", "."]
KEYS = ["a", "b", "c", "7"]

text = st.lists(st.sampled_from(WORDS), min_size=1, max_size=3).flatmap(
    lambda ws: st.lists(st.sampled_from(SEPARATORS), min_size=len(ws) - 1,
                        max_size=len(ws) - 1).map(
        lambda seps: "".join(w + s for w, s in zip(ws, [*seps, ""], strict=True))))
scalar = st.one_of(text, st.integers(-5, 50), st.sampled_from([1.5, -0.5, 10.0]),
                   st.booleans(), st.none())
document = st.recursive(scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)),
    max_leaves=8).filter(lambda d: isinstance(d, dict))

PATHS = ["a", "b", "c", "a/b", "a/0", "b/1/a", "*", "a/*", "**/a", "{a,b}", "?", '"7"']
paths = st.lists(st.sampled_from(PATHS), max_size=2)
TERMS = ["ann", "anna", "berenice", "cafe", "x1", "1", "42", "zoe", "neil", "foo", "bar",
         "foo-bar", "an", "ice", "o'neil", "a", "x", "e"]


def leaf() -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.builds(lambda v, p: {"match": v, "paths": p}, st.sampled_from(
            [*WORDS, "42", "true", "null", "1.5"]),
                  paths),
        st.builds(lambda v, p: {"match": v, "paths": p, "strict": True},
                  st.sampled_from(WORDS), paths),
        st.builds(lambda t, p, pre, post: {"contains": t, "paths": p, "prefixSearch": pre,
                                           "postfixSearch": post},
                  st.sampled_from(TERMS), paths, st.booleans(), st.booleans()),
        st.builds(lambda lo, hi, p: {"min": lo, "max": hi, "paths": p},
                  st.one_of(st.none(), st.integers(-5, 50)),
                  st.one_of(st.none(), st.integers(-5, 50)), paths).filter(
            lambda c: c["min"] is not None or c["max"] is not None),
        st.builds(lambda p: {"exists": p}, st.lists(st.sampled_from(PATHS), min_size=1,
                                                    max_size=2)),
        st.builds(lambda v: {"facet": {"name": "f", "value": v}}, st.sampled_from("xyz")),
    )


constraint = st.recursive(leaf(), lambda inner: st.one_of(
    st.builds(lambda cs: {"all": cs}, st.lists(inner, max_size=3)),
    st.builds(lambda cs: {"any": cs}, st.lists(inner, max_size=3)),
    st.builds(lambda c: {"not": c}, inner)), max_leaves=5)


# -- the brute force ---------------------------------------------------------------------------

def is_word_char(char: str) -> bool:
    return char.isalpha() or char in "0123456789"


def contains(phrase: str, term: str, prefix: bool, postfix: bool) -> bool:
    start = phrase.find(term)
    while start >= 0:
        end = start + len(term)
        left = prefix or start == 0 or not is_word_char(phrase[start - 1])
        right = postfix or end == len(phrase) or not is_word_char(phrase[end])
        if left and right:
            return True
        start = phrase.find(term, start + 1)
    return False


def path_matches(lpath: str, spath: str, patterns: list[str]) -> bool:
    if not patterns:
        return True
    for pattern in patterns:
        pattern = pattern.replace(".", "/")
        braces = re.fullmatch(r"(.*)\{([^{}]*)\}(.*)", pattern)  # one group, anywhere
        options = ([braces[1] + o + braces[3] for o in braces[2].split(",")] if braces
                   else [pattern])
        for option in options:
            long = any(re.fullmatch(r"-?\d+", s) for s in option.split("/"))
            if fnmatch.fnmatchcase(lpath if long else spath, option):
                return True
    return False


def evaluate(c: dict[str, Any], entries: list[tuple[int, str, str, str]],
             facets: set[tuple[str, str]]) -> bool:
    if "all" in c:
        return all(evaluate(x, entries, facets) for x in c["all"])
    if "any" in c:
        return any(evaluate(x, entries, facets) for x in c["any"])
    if "not" in c:
        return not evaluate(c["not"], entries, facets)
    if "facet" in c:
        return (c["facet"]["name"], c["facet"]["value"]) in facets
    if "exists" in c:
        for kind, _value, lpath, spath in entries:
            if kind == NULL:
                continue
            for p in c["exists"]:
                if path_matches(lpath, spath, [p]) or path_matches(lpath, spath, [p + "/*"]):
                    return True
        return False
    for kind, value, lpath, spath in entries:
        if not path_matches(lpath, spath, c.get("paths", [])):
            continue
        phrase = normalize(value) if kind == TEXT else value
        if "match" in c:
            hit = value == c["match"] if c.get("strict") else phrase == normalize(c["match"])
        elif "contains" in c:
            hit = contains(phrase, normalize(c["contains"]), c["prefixSearch"],
                           c["postfixSearch"])
        else:
            hit = kind == NUMERIC and (c["min"] is None or float(value) >= c["min"]) and (
                c["max"] is None or float(value) < c["max"])
        if hit:
            return True
    return False


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(document, st.sets(st.sampled_from("xyz")), st.integers(0, 9)),
                min_size=1, max_size=12),
       st.lists(constraint, max_size=3), st.one_of(st.none(), st.integers(0, 9)),
       st.one_of(st.none(), st.integers(0, 9)), st.booleans())
def test_store_equals_brute_force(docs: list[tuple[Any, set[str], int]],
                                  constraints: list[dict[str, Any]], since: int | None,
                                  before: int | None, walks: bool) -> None:
    # walks: plans for large collections (set of the most selective constraint, the others
    # tested per document; pages found by walking the sort order) at this small size.
    planning = {"estimate_cap": 1, "walk_budget": 10**6} if walks else {}
    store = SearchStore(":memory:", durable=False, publish=lambda c, items: None,
                        open_log=lambda c: None, **planning)
    try:
        store.update([("index", IndexedDocument("c", str(i), ts, ts, "", b"", flatten(doc),
                                                [("f", v) for v in sorted(f)], []))
                      for i, (doc, f, ts) in enumerate(docs)])
        query = Query(["c"], parse_constraints(constraints), since, before)
        found = store.search(query, Sorting(["timestamp"]), max_size=None, skip=0,
                             last_hit=None)
        expected = []
        for i, (doc, f, ts) in enumerate(docs):
            if since is not None and ts < since:
                continue
            if before is not None and ts >= before and before != since:
                continue
            if before is not None and ts > before:
                continue
            if all(evaluate(c, flatten(doc), {("f", v) for v in f}) for c in constraints):
                expected.append((ts, i))
        assert [d["id"] for d in found] == [str(i) for _, i in sorted(expected)]
        assert store.count(query) == len(expected)
        newest = store.search(query, Sorting([]), max_size=3, skip=1, last_hit=None)
        assert [d["id"] for d in newest] == [str(i) for _, i in sorted(expected)[::-1][1:4]]
    finally:
        store.close()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(KEYS), text, min_size=1, max_size=2),
                min_size=1, max_size=8),
       st.sampled_from(TERMS), st.booleans(), st.booleans(), paths)
def test_contains_equals_brute_force(docs: list[dict[str, str]], term: str, prefix: bool,
                                     postfix: bool, on: list[str]) -> None:
    store = SearchStore(":memory:", durable=False, publish=lambda c, items: None,
                        open_log=lambda c: None)
    try:
        store.update([("index", IndexedDocument("c", str(i), 0, 0, "", b"", flatten(doc), [],
                                                []))
                      for i, doc in enumerate(docs)])
        c = {"contains": term, "prefixSearch": prefix, "postfixSearch": postfix, "paths": on}
        found = store.search(Query(["c"], parse_constraints([c])), Sorting(["timestamp"]),
                             max_size=None, skip=0, last_hit=None)
        expected = [str(i) for i, doc in enumerate(docs) if evaluate(c, flatten(doc), set())]
        assert [d["id"] for d in found] == expected
    finally:
        store.close()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.lists(st.integers(0, 5), max_size=3)),
                min_size=1, max_size=15),
       st.booleans(), st.integers(0, 4), st.integers(1, 6), st.one_of(st.none(), st.integers(0, 3)),
       st.booleans())
def test_a_page_by_one_sortable_equals_the_full_sort(
        docs: list[tuple[int, list[int]]], desc: bool, skip: int, size: int,
        group: int | None, walks: bool) -> None:
    planning = {"estimate_cap": 1, "walk_budget": 10**6} if walks else {}
    store = SearchStore(":memory:", durable=False, publish=lambda c, items: None,
                        open_log=lambda c: None, **planning)
    try:
        store.update([("index", IndexedDocument(
            "c", str(i), 0, 0, "", b"", flatten({"g": g}), [],
            [("v", sortable_text(v, "v")) for v in values]))
            for i, (g, values) in enumerate(docs)])
        constraints = [] if group is None else [{"match": group, "paths": ["g"]}]
        query = Query(["c"], parse_constraints(constraints))
        key = ["-v" if desc else "v"]
        everything = store.search(query, Sorting(key), max_size=None, skip=0, last_hit=None)
        page = store.search(query, Sorting(key), max_size=size, skip=skip, last_hit=None)
        assert [d["id"] for d in page] == [d["id"] for d in everything][skip:skip + size]
    finally:
        store.close()
