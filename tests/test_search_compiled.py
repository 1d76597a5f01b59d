"""The compiled flattening and entry rows (fluxcore/_ext/_search.pyx) against the Python code
they replaced (kept below as the oracle, as it was): the same entries, errors, phrases, words
and rows for any document (reference §8)."""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any

import pytest
from fluxcore.server.search import flatten as compiled
from fluxcore.server.search.flatten import DocumentError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fluxcore._ext import _search

# -- the Python implementation before the compiled one (server/search/flatten.py, store.py) --

TEXT, NUMERIC, BOOLEAN, NULL, EMPTY_ARRAY, EMPTY_OBJECT = range(6)
MAX_DEPTH = 100
_TRIMMED = "".join(map(chr, range(33)))
_ACCENTS = re.compile("[\u0300-\u036f]+")
_INTEGER = re.compile(r"-?\d+")
_WORD = re.compile(r"(?:[^\W\d_]|[0-9])+")


def ref_normalize(value: str) -> str:
    if value.isascii():
        return value.strip(_TRIMMED).lower()
    stripped = _ACCENTS.sub("", unicodedata.normalize("NFD", value))
    return stripped.strip(_TRIMMED).lower()


def ref_words(phrase: str) -> list[str]:
    return _WORD.findall(phrase)


def ref_key(name: str) -> str:
    escaped = name.replace("\\", "\\\\").replace("/", "\\/").replace('"', '\\"')
    return f'"{escaped}"' if _INTEGER.fullmatch(name) else escaped


def _number_text(value: int | float, where: str) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DocumentError(f"{value} at {where} is not a JSON number")
        if value.is_integer() and abs(value) < 1e16:
            return repr(value)
    return str(value)


def _walk(value: Any, long: str, short: str, depth: int, out: list[Any]) -> None:
    if isinstance(value, str):
        out.append((TEXT, value, long, short))
    elif value is None:
        out.append((NULL, "null", long, short))
    elif isinstance(value, bool):
        out.append((BOOLEAN, "true" if value else "false", long, short))
    elif isinstance(value, (int, float)):
        out.append((NUMERIC, _number_text(value, long or "the root"), long, short))
    elif depth > MAX_DEPTH:
        raise DocumentError(f"the document nests deeper than {MAX_DEPTH} at {long}")
    elif isinstance(value, dict):
        if not value:
            out.append((EMPTY_OBJECT, "{}", long, short))
        for name, item in value.items():
            if not isinstance(name, str):
                raise DocumentError(f"the key {name!r} at {long or 'the root'} is not a string")
            segment = ref_key(name)
            _walk(item, f"{long}/{segment}" if long else segment,
                  f"{short}/{segment}" if short else segment, depth + 1, out)
    elif isinstance(value, (list, tuple)):
        if not value:
            out.append((EMPTY_ARRAY, "[]", long, short))
        for index, item in enumerate(value):
            _walk(item, f"{long}/{index}" if long else str(index), short, depth + 1, out)
    else:
        raise DocumentError(f"a {type(value).__name__} at {long or 'the root'} is not JSON data")


def ref_flatten(document: Any) -> list[Any]:
    out: list[Any] = []
    _walk(document, "", "", 0, out)
    return out


def ref_entry_rows(base: int, coll: int, entries: list[Any]
                   ) -> tuple[list[Any], list[Any], set[str]]:
    rows, word_rows, vocabulary = [], [], set()
    for n, (entry_type, value, lpath, spath) in enumerate(entries):
        phrase = ref_normalize(value) if entry_type == TEXT else value
        found = set(ref_words(phrase))
        entry = base | n
        # A value equal to its phrase, a long path equal to the short one: stored empty.
        rows.append((entry, coll, entry_type, "" if value == phrase else value, phrase,
                     float(value) if entry_type == NUMERIC else None,
                     "" if lpath == spath else lpath, spath))
        word_rows.extend((word, entry) for word in found)
        vocabulary.update(found)
    return rows, word_rows, vocabulary


# -- generated documents ---------------------------------------------------------------------

# Characters where the rules have edges: path escapes, integer-like names (Unicode digits
# too), accents and other combining marks, Java's trim range, `_`, digits that are not
# decimal (², Ⅻ), other scripts, emoji.
_EDGES = ("/\\\"-_ 09\t\n\x00\x1f\x7f\u00a0éÉèñçÅø\u0301\u0308\u0327\u20dd²½Ⅻ"
          "٣३\u07c0ßİ\u0131ǅﬁ日本語한국ä🙂")
_CHARS = st.one_of(st.sampled_from(_EDGES), st.characters(codec="utf-8"))
_TEXTS = st.one_of(st.text(_CHARS, max_size=12),
                   st.from_regex(r"-?[0-9٣३]{1,3}", fullmatch=True))
_NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1e16, -1e16, 9999999999999998.0, 1.5, 2.0**60]))
_LEAVES = st.one_of(_TEXTS, _NUMBERS, st.booleans(), st.none())
_DOCUMENTS = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.lists(inner, max_size=3).map(tuple),
                            st.dictionaries(_TEXTS, inner, max_size=4)),
    max_leaves=25)


def _outcome(run: Any, document: Any) -> Any:
    try:
        return run(document)
    except DocumentError as exc:
        return ("error", str(exc))


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(_DOCUMENTS)
def test_same_entries_and_rows_as_the_python_code(document: Any) -> None:
    entries = ref_flatten(document)
    assert compiled.flatten(document) == entries
    base, coll = 12345 << 20, 7
    rows, word_rows, vocabulary = ref_entry_rows(base, coll, entries)
    got_rows: list[Any] = []
    got_words: list[Any] = []
    got_vocabulary: set[str] = set()
    # Twice: the second from the compiled cache of analyzed values.
    for _ in range(2):
        got_rows.clear()
        got_words.clear()
        got_vocabulary.clear()
        _search.entry_rows(base, coll, entries, got_rows, got_words, got_vocabulary)
        assert got_rows == rows
        assert [type(v) for row in got_rows for v in row] == [type(v) for row in rows for v in row]
        assert sorted(got_words) == sorted(word_rows)  # a set's order within an entry
        assert got_vocabulary == vocabulary


@settings(max_examples=3000, deadline=None)
@given(st.text(_CHARS, max_size=40))
def test_same_normalization_words_and_segments(text: str) -> None:
    assert compiled.normalize(text) == ref_normalize(text)
    assert compiled.words(text) == ref_words(text)
    assert compiled.words(ref_normalize(text)) == ref_words(ref_normalize(text))
    assert compiled.path_segment(text) == ref_key(text)


class _Opaque:
    pass


def _deep(levels: int, leaf: Any) -> Any:
    for n in range(levels):
        leaf = [leaf] if n % 2 else {"k": leaf}
    return leaf


@pytest.mark.parametrize("document", [
    {"a": float("nan")}, [1, float("inf")], -math.inf, {"x": {1: "a"}}, {"x": [{(1, 2): 0}]},
    {"s": {1, 2}}, [b"bytes"], _Opaque(), {"a": [_Opaque()]},
    _deep(100, 1), _deep(100, []), _deep(101, {}), _deep(102, {"a": 1}), _deep(150, 0),
])
def test_same_errors_as_the_python_code(document: Any) -> None:
    assert _outcome(compiled.flatten, document) == _outcome(ref_flatten, document)


def test_subclasses_are_flattened_as_their_json_type() -> None:
    class Text(str):
        pass

    class Number(int):
        pass

    class Map(dict[str, Any]):
        pass

    document = Map(a=Text("Ünïcode"), b=Number(3), c=[True, None, 1.0])
    assert compiled.flatten(document) == ref_flatten(document)
