"""The constraint language (reference §8, docs/protocol.md): constraint JSON checked and turned
into a tree of nodes, the query-string syntax parsed into constraint JSON, and path globs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .flatten import normalize

__all__ = [
    "All",
    "Any_",
    "Between",
    "ConstraintError",
    "Contains",
    "Exists",
    "Facet",
    "Match",
    "Node",
    "Not",
    "PathGlob",
    "parse_constraint",
    "parse_constraints",
    "parse_query_string",
]

MAX_NODES = 10_000


class ConstraintError(ValueError):
    """A constraint that is not one: says what and where (a JSON-pointer-like location)."""


@dataclass(frozen=True)
class PathGlob:
    """A query path: matched against long paths if it has an integer segment, else short ones.
    `globs` are SQLite GLOB patterns (braces expanded), `regex` the same as a Python regex."""

    text: str
    long: bool
    globs: tuple[str, ...]
    regex: re.Pattern[str]


@dataclass(frozen=True)
class Match:
    value: str
    paths: tuple[PathGlob, ...] = ()
    strict: bool = False


@dataclass(frozen=True)
class Contains:
    term: str  # normalized
    paths: tuple[PathGlob, ...] = ()
    prefix: bool = False  # prefixSearch: no word boundary on the left
    postfix: bool = False  # postfixSearch: no word boundary on the right


@dataclass(frozen=True)
class Between:
    min: float | str | None
    max: float | str | None
    paths: tuple[PathGlob, ...] = ()


@dataclass(frozen=True)
class Exists:
    paths: tuple[PathGlob, ...]


@dataclass(frozen=True)
class Facet:
    name: str
    value: str


@dataclass(frozen=True)
class All:
    items: tuple[Node, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Any_:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    item: Node


Node = Match | Contains | Between | Exists | Facet | All | Any_ | Not

_INTEGER = re.compile(r"-?\d+")
_GLOB_CHARS = re.compile(r"[*?\[\]{}]")


def _expand_braces(pattern: str, where: str) -> list[str]:
    start = pattern.find("{")
    if start < 0:
        if "}" in pattern:
            raise ConstraintError(f"{where}: the path glob {pattern!r} has a '}}' without '{{'")
        return [pattern]
    depth = 0
    for end in range(start, len(pattern)):
        if pattern[end] == "{":
            depth += 1
        elif pattern[end] == "}":
            depth -= 1
            if depth == 0:
                break
    else:
        raise ConstraintError(f"{where}: the path glob {pattern!r} has an unclosed '{{'")
    options: list[str] = []
    depth, last = 0, start + 1
    for i in range(start + 1, end):
        if pattern[i] == "{":
            depth += 1
        elif pattern[i] == "}":
            depth -= 1
        elif pattern[i] == "," and depth == 0:
            options.append(pattern[last:i])
            last = i + 1
    options.append(pattern[last:end])
    head, tail = pattern[:start], pattern[end + 1 :]
    out: list[str] = []
    for option in options:
        out.extend(_expand_braces(head + option + tail, where))
    if len(out) > 64:
        raise ConstraintError(f"{where}: the path glob {pattern!r} expands to over 64 paths")
    return out


def _glob_regex(glob: str, where: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(glob):
        char = glob[i]
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[":
            close = glob.find("]", i + 2)
            if close < 0:
                raise ConstraintError(f"{where}: the path glob {glob!r} has an unclosed '['")
            body = glob[i + 1 : close]
            if body.startswith("^"):
                body = "\\" + body
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = close
        elif char == "]":
            raise ConstraintError(f"{where}: the path glob {glob!r} has a ']' without '['")
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


def path_glob(text: Any, where: str) -> PathGlob:
    """A query path: `.` means `/`; `*`/`**` any characters, `?` one, `{a,b}` either,
    `[..]` a class."""
    if not isinstance(text, str) or not text:
        raise ConstraintError(f"{where}: a path is a non-empty string, not {text!r}")
    path = re.sub(r"(?<!\\)\.", "/", text)
    globs = _expand_braces(path, where)
    regexes = [_glob_regex(glob, where) for glob in globs]
    long = any(_INTEGER.fullmatch(s) for g in globs for s in g.split("/"))
    sqlite_globs = tuple(re.sub(r"\*+", "*", g) for g in globs)
    return PathGlob(text, long, sqlite_globs, re.compile("|".join(f"(?:{r})" for r in regexes)))


def is_literal(glob: str) -> bool:
    return not _GLOB_CHARS.search(glob)


def _paths(raw: dict[str, Any], where: str) -> tuple[PathGlob, ...]:
    paths = raw.get("paths", raw.get("path"))
    if paths is None:
        return ()
    if isinstance(paths, str):
        paths = [paths]
    if not isinstance(paths, list):
        raise ConstraintError(f"{where}/paths: a list of path strings, not {paths!r}")
    return tuple(path_glob(p, f"{where}/paths/{i}") for i, p in enumerate(paths))


def _text(value: Any, name: str, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if isinstance(value, float) else str(value)
    if not isinstance(value, str):
        raise ConstraintError(f"{where}/{name}: a string, not {type(value).__name__}")
    return value


def _number_twin(value: Any) -> str | None:
    """The other text of an integral number: JSON's 1 and 1.0 are one number, which a
    document holds as the text `1` or `1.0` (its NUMERIC entry); None for other values."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    if abs(value) >= 2**53:
        return None
    return str(int(value)) if isinstance(value, float) else repr(float(value))


def _flag(raw: dict[str, Any], name: str, where: str) -> bool:
    value = raw.get(name, False)
    if not isinstance(value, bool):
        raise ConstraintError(f"{where}/{name}: true or false, not {value!r}")
    return value


def _bound(raw: dict[str, Any], name: str, where: str) -> float | str | None:
    value = raw.get(name)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    raise ConstraintError(f"{where}/{name}: a number, a string or null, not {value!r}")


_KNOWN = ("match", "contains", "lookAhead", "query", "min", "max", "exists", "all", "any",
          "not", "facet")


class _Counter:
    def __init__(self) -> None:
        self.nodes = 0

    def tick(self, where: str) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise ConstraintError(f"{where}: more than {MAX_NODES} constraints in one query")


def parse_constraint(raw: Any, where: str = "constraints/0",
                     counter: _Counter | None = None) -> Node:
    """One constraint JSON as a node; its type deduced from its fields (reference §8)."""
    counter = counter or _Counter()
    counter.tick(where)
    if not isinstance(raw, dict):
        raise ConstraintError(f"{where}: a constraint is a map, not {type(raw).__name__}")
    if "match" in raw:
        match = Match(_text(raw["match"], "match", where), _paths(raw, where),
                      _flag(raw, "strict", where))
        twin = _number_twin(raw["match"])
        if twin is None or match.strict:
            return match
        return Any_((match, Match(twin, match.paths)))
    if "contains" in raw:
        return Contains(normalize(_text(raw["contains"], "contains", where)), _paths(raw, where),
                        _flag(raw, "prefixSearch", where), _flag(raw, "postfixSearch", where))
    if "lookAhead" in raw:
        paths = _paths(raw, where)
        terms = normalize(_text(raw["lookAhead"], "lookAhead", where)).split()
        return All(tuple(Contains(t, paths, False, True) for t in terms))
    if "query" in raw:
        text = _text(raw["query"], "query", where)
        tree = parse_query_string(text, _flag(raw, "lookAheadForAllTerms", where),
                                  raw.get("paths"), where)
        return parse_constraint(tree, where, counter)
    if "min" in raw or "max" in raw:
        low, high = _bound(raw, "min", where), _bound(raw, "max", where)
        if low is None and high is None:
            raise ConstraintError(f"{where}: between needs a min or a max")
        if isinstance(low, str) is not isinstance(high, str) and None not in (low, high):
            raise ConstraintError(f"{where}: min and max are both numbers or both strings")
        return Between(low, high, _paths(raw, where))
    if "exists" in raw:
        targets = raw["exists"]
        if isinstance(targets, str):
            targets = [targets]
        if not isinstance(targets, list) or not targets:
            raise ConstraintError(f"{where}/exists: a path or a list of paths")
        return Exists(tuple(path_glob(p, f"{where}/exists/{i}")
                            for i, p in enumerate(targets)))
    if "all" in raw or "any" in raw:
        name = "all" if "all" in raw else "any"
        items = raw[name]
        if not isinstance(items, list):
            raise ConstraintError(f"{where}/{name}: a list of constraints")
        nodes = tuple(parse_constraint(c, f"{where}/{name}/{i}", counter)
                      for i, c in enumerate(items))
        return All(nodes) if name == "all" else Any_(nodes)
    if "not" in raw:
        return Not(parse_constraint(raw["not"], f"{where}/not", counter))
    if "facet" in raw:
        facet = raw["facet"]
        if not (isinstance(facet, dict) and isinstance(facet.get("name"), str)
                and isinstance(facet.get("value"), (str, int, float))):
            raise ConstraintError(f"{where}/facet: {{name: string, value: string}}")
        return Facet(facet["name"], _text(facet["value"], "facet/value", where))
    raise ConstraintError(f"{where}: unknown constraint with fields {sorted(raw)}; a constraint "
                          f"has one of {', '.join(_KNOWN)}")


def parse_constraints(raw: Any, where: str = "constraints") -> All:
    """The constraints of a query (ANDed)."""
    if raw is None:
        return All(())
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        raise ConstraintError(f"{where}: a list of constraints, not {type(raw).__name__}")
    counter = _Counter()
    return All(tuple(parse_constraint(c, f"{where}/{i}", counter) for i, c in enumerate(raw)))


# -- the query-string syntax ---------------------------------------------------------------

_OPERATORS = "&|()!"
_SPACE = re.compile(r"\s+")


def _tokens(text: str, where: str) -> list[tuple[str, str, int]]:
    """(kind, text, position): kind is 'op', 'phrase' or 'word'."""
    out: list[tuple[str, str, int]] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char.isspace():
            i += 1
        elif char in _OPERATORS:
            out.append(("op", char, i))
            i += 1
        elif char == '"':
            close = text.find('"', i + 1)
            if close < 0:
                raise ConstraintError(f"{where}/query: the quote at position {i} is not closed")
            out.append(("phrase", text[i + 1 : close], i))
            i = close + 1
        else:
            start = i
            while i < len(text) and not text[i].isspace() and text[i] not in _OPERATORS + '"':
                i += 1
            word = text[start:i]
            if word == "OR":
                out.append(("op", "|", start))
            elif word != "AND":
                out.append(("word", word, start))
    return out


def _word_constraints(word: str, look_ahead: bool,
                      paths: Any) -> list[dict[str, Any]]:
    """A word: a leading `*` is prefixSearch, a trailing one postfixSearch, an inner one
    splits it into parts that must all be there."""
    parts = word.split("*")
    out: list[dict[str, Any]] = []
    for i, part in enumerate(parts):
        if not part:
            continue
        constraint: dict[str, Any] = {"contains": part}
        if i > 0:
            constraint["prefixSearch"] = True
        if i < len(parts) - 1 or look_ahead:
            constraint["postfixSearch"] = True
        if paths is not None:
            constraint["paths"] = paths
        out.append(constraint)
    return out


def parse_query_string(text: str, look_ahead_for_all_terms: bool = False, paths: Any = None,
                       where: str = "constraints/0") -> dict[str, Any]:
    """The query syntax as constraint JSON: terms are ANDed, `|` (or OR) joins the last
    constraint with the next part, `!` negates the next part, parentheses group, AND is
    dropped, a quoted phrase is contained with word boundaries."""
    tokens = _tokens(text, where)
    position = 0

    def part() -> list[dict[str, Any]]:
        nonlocal position
        if position >= len(tokens):
            raise ConstraintError(f"{where}/query: {text!r} ends where a term is expected")
        kind, value, at = tokens[position]
        position += 1
        if kind == "phrase":
            constraint: dict[str, Any] = {"contains": value}
            if paths is not None:
                constraint["paths"] = paths
            return [constraint]
        if kind == "word":
            return _word_constraints(value, look_ahead_for_all_terms, paths)
        if value == "!":
            return [{"not": _one(part())}]
        if value == "(":
            inner = sequence(closing=True, opened_at=at)
            return [_one(inner)]
        if value == ")":
            raise ConstraintError(f"{where}/query: unbalanced parentheses: ')' at position "
                                  f"{at} of {text!r} comes where a term is expected")
        raise ConstraintError(f"{where}/query: {value!r} at position {at} of {text!r} comes "
                              "where a term is expected")

    def sequence(closing: bool, opened_at: int = -1) -> list[dict[str, Any]]:
        nonlocal position
        items: list[dict[str, Any]] = []
        while position < len(tokens):
            kind, value, at = tokens[position]
            if kind == "op" and value == ")":
                if not closing:
                    raise ConstraintError(f"{where}/query: unbalanced parentheses: ')' at "
                                          f"position {at} of {text!r} closes nothing")
                position += 1
                return items
            if kind == "op" and value == "&":
                position += 1
                continue
            if kind == "op" and value == "|":
                if not items:
                    raise ConstraintError(f"{where}/query: '|' at position {at} of {text!r} "
                                          "has no term before it")
                position += 1
                if position >= len(tokens) or tokens[position][:2] == ("op", ")"):
                    raise ConstraintError(f"{where}/query: '|' at position {at} of {text!r} "
                                          "has no term after it")
                right = _one(part())
                left = items.pop()
                options = [*left["any"]] if set(left) == {"any"} else [left]
                items.append({"any": [*options, right]})
                continue
            items.extend(part())
        if closing:
            raise ConstraintError(f"{where}/query: unbalanced parentheses: '(' at position "
                                  f"{opened_at} of {text!r} is not closed")
        return items

    return _one(sequence(closing=False))


def _one(items: list[dict[str, Any]]) -> dict[str, Any]:
    return items[0] if len(items) == 1 else {"all": items}
