"""Search from the clients (docs/protocol.md, "Search"): documents to index, a fluent query
builder, and the answers decoded. Requests are built here once; `Client` and `AsyncClient`
only send them (`SearchMethods` and `AsyncSearchMethods`, written once in _search_aio.py)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import msgspec

from fluxcore.protocol import Guarantee, decode_control

__all__ = [
    "AsyncSearch",
    "AsyncSearchMethods",
    "Document",
    "Search",
    "SearchMethods",
    "all_of",
    "any_of",
    "between",
    "contains",
    "exists",
    "facet",
    "lookahead",
    "match",
    "not_",
    "query",
]

T = TypeVar("T")
Constraint = dict[str, Any]
Moment = datetime | int  # a datetime, or epoch milliseconds
Reply = tuple[int, bytes]
# The client's `_call(op, value, timeout=...)`: how queries and search methods send requests.
AsyncCall = Callable[..., Awaitable[Reply]]
Call = Callable[..., Reply]


def _ms(moment: Moment | None) -> int | None:
    if moment is None:
        return None
    if isinstance(moment, datetime):
        return round(moment.timestamp() * 1000)
    if isinstance(moment, int) and not isinstance(moment, bool):
        return moment
    raise TypeError(f"a time is a datetime or epoch milliseconds, not {type(moment).__name__}")


def _paths(paths: tuple[str, ...]) -> dict[str, Any]:
    return {"paths": list(paths)} if paths else {}


# -- constraints (JSON, as docs/protocol.md describes them) ----------------------------------

def match(value: Any, *paths: str, strict: bool = False) -> Constraint:
    """The whole value equals `value` (case and accents ignored unless strict)."""
    return {"match": value, **_paths(paths), **({"strict": True} if strict else {})}


def contains(term: str, *paths: str, prefix_search: bool = False,
             postfix_search: bool = False) -> Constraint:
    """`term` appears on word boundaries; prefix_search drops the left boundary (`*term`),
    postfix_search the right one (`term*`)."""
    out: Constraint = {"contains": term, **_paths(paths)}
    if prefix_search:
        out["prefixSearch"] = True
    if postfix_search:
        out["postfixSearch"] = True
    return out


def lookahead(text: str, *paths: str) -> Constraint:
    """Search as you type: every word of `text` starts a word of the document."""
    return {"lookAhead": text, **_paths(paths)}


def query(text: str, *paths: str, look_ahead_for_all_terms: bool = False) -> Constraint:
    """The query syntax: terms ANDed, `|`/OR, `!`, parentheses, "phrases", `*` wildcards."""
    out: Constraint = {"query": text, **_paths(paths)}
    if look_ahead_for_all_terms:
        out["lookAheadForAllTerms"] = True
    return out


def between(minimum: Any, maximum: Any, *paths: str) -> Constraint:
    """minimum <= value < maximum (numbers as numbers); None leaves that side open."""
    return {"min": minimum, "max": maximum, **_paths(paths)}


def exists(*paths: str) -> Constraint:
    """A value other than null at one of the paths (or under it)."""
    return {"exists": list(paths)}


def facet(name: str, value: Any) -> Constraint:
    return {"facet": {"name": name, "value": value}}


def all_of(*constraints: Constraint) -> Constraint:
    return {"all": list(constraints)}


def any_of(*constraints: Constraint) -> Constraint:
    return {"any": list(constraints)}


def not_(constraint: Constraint) -> Constraint:
    return {"not": constraint}


# -- documents -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Document(Generic[T]):
    """A document as stored: its collection, id, times (epoch ms) and content."""

    collection: str
    id: str
    timestamp: int | None
    end: int | None
    type: str
    document: T


def _to_builtins(value: Any) -> Any:
    try:
        return msgspec.to_builtins(value, str_keys=True)
    except TypeError as exc:
        raise TypeError(f"the document is not JSON-able data: {exc}") from None


def _at(document: Any, path: str) -> list[Any]:
    """The values at a path of a JSON-able document (arrays are walked through)."""
    values = [document]
    for segment in path.replace(".", "/").split("/"):
        found: list[Any] = []
        for value in values:
            while isinstance(value, list):
                found.extend(v.get(segment) for v in value if isinstance(v, dict)
                             and segment in v)
                value = None
            if isinstance(value, dict) and segment in value:
                found.append(value[segment])
        values = []
        for value in found:
            values.extend(value if isinstance(value, list) else [value])
    return values


def _sortable(value: Any) -> Any:
    """Times as ISO-8601 UTC with milliseconds, which orders as the times do. A naive
    datetime is local time, as everywhere in the client (datetime.timestamp())."""
    if isinstance(value, list):
        return [_sortable(v) for v in value]
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
    return value


def _named(spec: Mapping[str, Any] | Iterable[str] | None, document: Any) -> dict[str, Any]:
    """Facets or sortables: a map of name to value(s), or paths whose values in the document
    are used."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        return {name: value if isinstance(value, datetime) else _to_builtins(value)
                for name, value in spec.items()}
    if isinstance(spec, str):
        spec = [spec]
    return {path: _at(document, path) for path in spec}


def index_entry(document: Any, *, collection: str, id: str, timestamp: Moment | None = None,
                end: Moment | None = None, facets: Mapping[str, Any] | Iterable[str] | None
                = None, sortables: Mapping[str, Any] | Iterable[str] | None = None,
                type: str | None = None) -> dict[str, Any]:
    """One document of an INDEX_DOCUMENTS request. `timestamp` defaults to now."""
    data = _to_builtins(document)
    ms = _ms(timestamp) if timestamp is not None else int(time.time() * 1000)
    # Sortables found by path keep the document's datetimes as datetimes: as JSON text
    # each would keep its own UTC offset, and such texts do not sort as the times do.
    timed = data if sortables is None or isinstance(sortables, Mapping) else \
        msgspec.to_builtins(document, str_keys=True, builtin_types=(datetime,))
    sortable = {name: _sortable(value) for name, value in _named(sortables, timed).items()}
    return {"collection": collection, "id": id, "timestamp": ms, "end": _ms(end),
            "document": data, "facets": _named(facets, data), "sortables": sortable,
            "data_type": type if type is not None else (
                "" if isinstance(document, (dict, list, str, int, float, bool)) or document
                is None else f"{document.__class__.__module__}.{document.__class__.__qualname__}")}


def documents_from(body: bytes, as_type: type[Any] | None) -> list[Document[Any]]:
    out = []
    for raw in decode_control(body)["documents"]:
        content = raw["document"]
        if as_type is not None:
            content = msgspec.convert(content, as_type, strict=False)
        out.append(Document(raw["collection"], raw["id"], raw["timestamp"], raw["end"],
                            raw.get("data_type", ""), content))
    return out


# -- the query builder -----------------------------------------------------------------------

class _Query:
    """What Search and AsyncSearch share: the query and its options as request maps."""

    def __init__(self, collection: str | list[str], call: Any) -> None:
        self._call = call
        self._collection = collection
        self._constraints: list[Constraint] = []
        self._since: int | None = None
        self._before: int | None = None
        self._since_exclusive = False
        self._before_inclusive = False
        self._sort: list[str] = []
        self._skip = 0
        self._filters: list[str] = []

    def constraint(self, *constraints: Constraint) -> Any:
        """Adds constraints as JSON maps (docs/protocol.md)."""
        self._constraints.extend(constraints)
        return self

    def match(self, value: Any, *paths: str, strict: bool = False) -> Any:
        return self.constraint(match(value, *paths, strict=strict))

    def contains(self, term: str, *paths: str, prefix_search: bool = False,
                 postfix_search: bool = False) -> Any:
        return self.constraint(contains(term, *paths, prefix_search=prefix_search,
                                        postfix_search=postfix_search))

    def lookahead(self, text: str, *paths: str) -> Any:
        return self.constraint(lookahead(text, *paths))

    def query(self, text: str, *paths: str, look_ahead_for_all_terms: bool = False) -> Any:
        return self.constraint(query(text, *paths,
                                     look_ahead_for_all_terms=look_ahead_for_all_terms))

    def between(self, minimum: Any, maximum: Any, *paths: str) -> Any:
        return self.constraint(between(minimum, maximum, *paths))

    def at_least(self, minimum: Any, *paths: str) -> Any:
        return self.constraint(between(minimum, None, *paths))

    def below(self, maximum: Any, *paths: str) -> Any:
        return self.constraint(between(None, maximum, *paths))

    def exists(self, *paths: str) -> Any:
        return self.constraint(exists(*paths))

    def facet(self, name: str, value: Any) -> Any:
        return self.constraint(facet(name, value))

    def any_of(self, *constraints: Constraint) -> Any:
        return self.constraint(any_of(*constraints))

    def not_(self, constraint: Constraint) -> Any:
        return self.constraint(not_(constraint))

    def since(self, moment: Moment, *, exclusive: bool = False) -> Any:
        """Only documents whose end is at or after `moment` (after, if exclusive)."""
        self._since, self._since_exclusive = _ms(moment), exclusive
        return self

    def before(self, moment: Moment, *, inclusive: bool = False) -> Any:
        """Only documents whose timestamp is before `moment` (or at it, if inclusive)."""
        self._before, self._before_inclusive = _ms(moment), inclusive
        return self

    def in_last(self, period: timedelta) -> Any:
        return self.since(int((time.time() - period.total_seconds()) * 1000))

    def sort(self, *keys: str) -> Any:
        """Keys: timestamp, end or a sortable's name; `-` first for descending."""
        self._sort.extend(keys)
        return self

    def skip(self, count: int) -> Any:
        self._skip = count
        return self

    def include(self, *paths: str) -> Any:
        """Return only these paths of each document."""
        self._filters.extend(paths)
        return self

    def exclude(self, *paths: str) -> Any:
        """Return each document without these paths (and what is under them)."""
        self._filters.extend(f"-{p}" for p in paths)
        return self

    def request(self) -> dict[str, Any]:
        """The query map of the requests (docs/protocol.md)."""
        out: dict[str, Any] = {"collection": self._collection,
                               "constraints": list(self._constraints)}
        if self._since is not None:
            out["since"] = self._since
            out["since_exclusive"] = self._since_exclusive
        if self._before is not None:
            out["before"] = self._before
            out["before_inclusive"] = self._before_inclusive
        return out

    def _search_request(self, max_size: int | None, last_hit: str | None = None,
                        skip: bool = True) -> dict[str, Any]:
        return {"query": self.request(), "sort": self._sort, "max_size": max_size,
                "skip": self._skip if skip else 0, "last_hit": last_hit,
                "path_filters": self._filters}


def _stats_request(q: _Query, fields: Iterable[str], group_by: Iterable[str]) -> dict[str, Any]:
    return {"query": q.request(), "fields": list(fields), "group_by": list(group_by)}


# -- the client methods ----------------------------------------------------------------------

def _index_request(documents: list[dict[str, Any]], if_not_exists: bool,
                   guarantee: Guarantee) -> dict[str, Any]:
    return {"documents": documents, "if_not_exists": if_not_exists,
            "guarantee": int(guarantee)}


def _bulk_request(updates: Iterable[Mapping[str, Any]], guarantee: Guarantee) -> dict[str, Any]:
    """Updates: {"type": "index" | "index_if_not_exists", **index_entry(...)} or
    {"type": "delete", "collection": ..., "id": ...}."""
    return {"updates": [dict(u) for u in updates], "guarantee": int(guarantee)}


# The clients' search methods (and Search, AsyncSearch) are written once, in _search_aio.py, and
# generated for the blocking client; those modules import the helpers above, so they come last.
from ._search_aio import AsyncSearch, AsyncSearchMethods  # noqa: E402
from ._search_sync import Search, SearchMethods  # noqa: E402
