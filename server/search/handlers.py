"""The search operations of a connection (docs/protocol.md, ops 30-41): requests checked and
turned into store calls. Each handler takes (session, request id, request map) and returns the
answer map, or None when the request asked for no answer (guarantee below STORED)."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from fluxcore._ext._log import segment_of
from fluxcore.protocol import (
    ErrorCode,
    Guarantee,
    MessageType,
    Op,
    ProtocolError,
    check_name,
    encode_metadata,
    log_name,
)

from .constraints import ConstraintError, PathGlob, parse_constraints, path_glob
from .flatten import DocumentError, flatten, path_segment, sortable_text
from .store import (
    MAX_ENTRIES,
    IndexedDocument,
    Publish,
    Query,
    SearchStore,
    Sorting,
    sortable_name,
)

if TYPE_CHECKING:
    from ..project import Project
    from ..session import Session

__all__ = ["SEARCH_HANDLERS", "document_publisher"]

MAX_ID = 1000
MAX_RESOLUTION = 100_000
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()
_MESSAGE_HEADER = struct.Struct("<BBHHHHHIIIqq")  # fc_msg.h msg_header_t
_SOURCE = b"fluxcore-server"
_FORMAT = b"msgpack"


def _bad(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_REQUEST, message)


def _get(req: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any,
         where: str = "") -> Any:
    value = req.get(name, default)
    if value is None and default is None:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in (
            kind if isinstance(kind, tuple) else (kind,))):
        raise _bad(f"{where}{name} has the wrong type ({type(value).__name__})")
    return value


def _collection(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise _bad(f"{where}collection must be a non-empty string, not {value!r}")
    return check_name(f"{where}collection", value)


def _doc_id(value: Any, where: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID:
        raise _bad(f"{where}id must be a string of 1 to {MAX_ID} characters, not {value!r}")
    return value


def _millis(req: dict[str, Any], name: str, where: str) -> int | None:
    value = req.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or abs(value) >= 1 << 62:
        raise _bad(f"{where}{name} must be epoch milliseconds (an int) or nil, not {value!r}")
    return value


def _facets(raw: Any, where: str) -> list[tuple[str, str]]:
    """{name: value or [values]} or [[name, value], ...]; values as text."""
    if raw is None:
        return []
    pairs: list[tuple[Any, Any]] = []
    if isinstance(raw, dict):
        for name, value in raw.items():
            for item in value if isinstance(value, list) else [value]:
                pairs.append((name, item))
    elif isinstance(raw, list):
        for item in raw:
            if not (isinstance(item, list) and len(item) == 2):
                raise _bad(f"{where}facets: each is [name, value]")
            pairs.append((item[0], item[1]))
    else:
        raise _bad(f"{where}facets must be a map or a list of [name, value]")
    out = []
    for name, value in pairs:
        if not isinstance(name, str) or not name:
            raise _bad(f"{where}facets: a facet name is a non-empty string, not {name!r}")
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (int, float)):
            value = str(value)
        if not isinstance(value, str):
            raise _bad(f"{where}facets/{name}: a value is text or a number, not {value!r}")
        out.append((name, value))
    return out


def _sortables(raw: Any, where: str) -> list[tuple[str, str]]:
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise _bad(f"{where}sortables must be a map of name to value")
    out = []
    for name, value in raw.items():
        if not isinstance(name, str) or not name:
            raise _bad(f"{where}sortables: a name is a non-empty string, not {name!r}")
        for item in value if isinstance(value, list) else [value]:
            try:
                out.append((sortable_name(name), sortable_text(item, f"{where}sortables/{name}")))
            except DocumentError as exc:
                raise _bad(str(exc)) from None
    return out


def _indexed(raw: Any, where: str) -> IndexedDocument:
    if not isinstance(raw, dict):
        raise _bad(f"{where[:-1]}: a document to index is a map")
    if "document" not in raw:
        raise _bad(f"{where}document is missing")
    document = raw["document"]
    try:
        entries = flatten(document)
    except DocumentError as exc:
        raise _bad(f"{where}document: {exc}") from None
    if len(entries) > MAX_ENTRIES:
        raise _bad(f"{where}document has {len(entries)} values, over {MAX_ENTRIES}")
    timestamp = _millis(raw, "timestamp", where)
    end = _millis(raw, "end", where)
    if end is None or (timestamp is not None and end < timestamp):
        end = timestamp  # the reference's getEnd(): max(end, timestamp)
    return IndexedDocument(
        collection=_collection(raw.get("collection"), where),
        id=_doc_id(raw.get("id"), where), timestamp=timestamp, end=end,
        type=_get(raw, "data_type", str, "", where), data=_encoder.encode(document),
        entries=entries, facets=_facets(raw.get("facets"), where),
        sortables=_sortables(raw.get("sortables"), where))


def _answer(req: dict[str, Any], value: dict[str, Any]) -> dict[str, Any] | None:
    guarantee = _get(req, "guarantee", int, int(Guarantee.STORED))
    return value if guarantee >= Guarantee.STORED else None


def _store(session: Session) -> SearchStore:
    assert session.project is not None
    return session.project.search


def _on_index(session: Session, request_id: int, req: dict[str, Any]) -> dict[str, Any] | None:
    documents = _get(req, "documents", list, [])
    kind = "index_if_not_exists" if _get(req, "if_not_exists", bool, False) else "index"
    updates = [(kind, _indexed(d, f"documents/{i}/")) for i, d in enumerate(documents)]
    return _answer(req, {"indexed": _store(session).update(updates)})


def _on_bulk(session: Session, request_id: int, req: dict[str, Any]) -> dict[str, Any] | None:
    updates: list[tuple[str, Any]] = []
    for i, raw in enumerate(_get(req, "updates", list, [])):
        where = f"updates/{i}/"
        if not isinstance(raw, dict):
            raise _bad(f"updates/{i}: an update is a map")
        kind = raw.get("type")
        if kind == "delete":
            updates.append((kind, (_collection(raw.get("collection"), where),
                                   _doc_id(raw.get("id"), where))))
        elif kind in ("index", "index_if_not_exists", "indexIfNotExists"):
            updates.append(("index" if kind == "index" else "index_if_not_exists",
                            _indexed(raw, where)))
        else:
            raise _bad(f"{where}type must be index, index_if_not_exists or delete, "
                       f"not {kind!r}")
    return _answer(req, {"updated": _store(session).update(updates)})


def _on_get(session: Session, request_id: int, req: dict[str, Any]) -> dict[str, Any]:
    ids = _get(req, "ids", list, [])
    for i, doc_id in enumerate(ids):
        _doc_id(doc_id, f"ids/{i}: ")
    return {"documents": _store(session).get(_collection(req.get("collection"), ""), ids)}


def _on_has(session: Session, request_id: int, req: dict[str, Any]) -> dict[str, Any]:
    return {"found": _store(session).has(_collection(req.get("collection"), ""),
                                         _doc_id(req.get("id"), ""))}


def _on_delete(session: Session, request_id: int, req: dict[str, Any]) -> dict[str, Any] | None:
    done = _store(session).update(
        [("delete", (_collection(req.get("collection"), ""), _doc_id(req.get("id"), "")))])
    return _answer(req, {"deleted": done[0]})


def _on_delete_query(session: Session, request_id: int,
                     req: dict[str, Any]) -> dict[str, Any] | None:
    return _answer(req, {"deleted": _store(session).delete_query(_query(req))})


def _on_delete_collection(session: Session, request_id: int,
                          req: dict[str, Any]) -> dict[str, Any] | None:
    return _answer(req, {"deleted": _store(session).delete_collection(
        _collection(req.get("collection"), ""))})


def _query(req: dict[str, Any]) -> Query:
    raw = req.get("query")
    if not isinstance(raw, dict):
        raise _bad("query must be a map with a collection")
    collection = raw.get("collection")
    names = collection if isinstance(collection, list) else [collection]
    if not names:
        raise _bad("query/collection must name at least one collection")
    collections = [_collection(name, "query/") for name in names]
    try:
        constraint = parse_constraints(raw.get("constraints"), "query/constraints")
    except ConstraintError as exc:
        raise _bad(str(exc)) from None
    return Query(collections, constraint, _millis(raw, "since", "query/"),
                 _millis(raw, "before", "query/"),
                 bool(_get(raw, "since_exclusive", bool, False, "query/")),
                 bool(_get(raw, "before_inclusive", bool, False, "query/")))


def _globs(req: dict[str, Any], name: str) -> list[PathGlob]:
    raw = _get(req, name, list, [])
    try:
        return [path_glob(p, f"{name}/{i}") for i, p in enumerate(raw)]
    except ConstraintError as exc:
        raise _bad(str(exc)) from None


def _max_size(req: dict[str, Any]) -> int | None:
    value: int | None = _get(req, "max_size", int, None)
    if value is not None and value < 0:
        raise _bad("max_size must not be negative")
    return value


def _on_search(session: Session, request_id: int, req: dict[str, Any]) -> dict[str, Any]:
    query = _query(req)
    sort = _get(req, "sort", list, [])
    for i, key in enumerate(sort):
        if not isinstance(key, str) or key in ("", "-"):
            raise _bad(f"sort/{i}: a sort key is [-]timestamp, [-]end or [-]path, not {key!r}")
    skip = _get(req, "skip", int, 0)
    if skip < 0:
        raise _bad("skip must not be negative")
    last_hit = _get(req, "last_hit", str, None)
    filters = _path_filters(req)
    found = _store(session).search(query, Sorting(sort), max_size=_max_size(req), skip=skip,
                                   last_hit=last_hit)
    if filters is not None:
        for hit in found:
            hit["document"] = filters(_decoder.decode(hit["document"]))
    return {"documents": found}


def _path_filters(req: dict[str, Any]) -> Callable[[Any], Any] | None:
    """Include (`path`) and exclude (`-path`, also everything under it) filters that cut
    the returned documents."""
    raw = _get(req, "path_filters", list, [])
    if not raw:
        return None
    include: list[PathGlob] = []
    exclude: list[PathGlob] = []
    for i, text in enumerate(raw):
        if not isinstance(text, str) or text in ("", "-"):
            raise _bad(f"path_filters/{i}: a path glob, or - and one, not {text!r}")
        try:
            if text.startswith("-"):
                exclude.append(path_glob(text[1:], f"path_filters/{i}"))
            else:
                include.append(path_glob(text, f"path_filters/{i}"))
        except ConstraintError as exc:
            raise _bad(str(exc)) from None

    def hits(globs: list[PathGlob], long: list[str], short: list[str]) -> bool:
        for glob in globs:
            segments = long if glob.long else short
            for n in range(1, len(segments) + 1):  # the path itself or one above it
                if glob.regex.fullmatch("/".join(segments[:n])):
                    return True
        return False

    def cut(value: Any, long: list[str], short: list[str]) -> tuple[bool, Any]:
        if long and hits(exclude, long, short):
            return False, None
        if isinstance(value, dict) and value:
            out = {}
            for key, item in value.items():
                segment = path_segment(key)
                keep, kept = cut(item, [*long, segment], [*short, segment])
                if keep:
                    out[key] = kept
            return bool(out) or (not include and not long), out
        if isinstance(value, list) and value:
            items = []
            for n, item in enumerate(value):
                keep, kept = cut(item, [*long, str(n)], short)
                if keep:
                    items.append(kept)
            return bool(items) or (not include and not long), items
        return (not include) or hits(include, long, short), value

    def apply(document: Any) -> Any:
        keep, kept = cut(document, [], [])
        if keep:
            return kept
        return {} if isinstance(document, dict) else [] if isinstance(document, list) else None

    return apply


def _on_count(session: Session, request_id: int, req: dict[str, Any]) -> dict[str, Any]:
    return {"count": _store(session).count(_query(req))}


def _on_document_stats(session: Session, request_id: int,
                       req: dict[str, Any]) -> dict[str, Any]:
    fields = _globs(req, "fields")
    if not fields:
        raise _bad("fields must name at least one path")
    return {"stats": _store(session).document_stats(_query(req), fields,
                                                    _globs(req, "group_by"))}


def _on_facet_stats(session: Session, request_id: int, req: dict[str, Any]) -> dict[str, Any]:
    return {"stats": _store(session).facet_stats(_query(req))}


def _on_histogram(session: Session, request_id: int, req: dict[str, Any]) -> dict[str, Any]:
    resolution = _get(req, "resolution", int, 100)
    if not 0 < resolution <= MAX_RESOLUTION:
        raise _bad(f"resolution must be 1 to {MAX_RESOLUTION}")
    return _store(session).histogram(_query(req), resolution, _max_size(req))


SEARCH_HANDLERS: dict[int, Callable[[Session, int, dict[str, Any]], dict[str, Any] | None]] = {
    Op.INDEX_DOCUMENTS: _on_index,
    Op.BULK_UPDATE_DOCUMENTS: _on_bulk,
    Op.GET_DOCUMENTS: _on_get,
    Op.HAS_DOCUMENT: _on_has,
    Op.DELETE_DOCUMENT: _on_delete,
    Op.DELETE_DOCUMENTS: _on_delete_query,
    Op.DELETE_COLLECTION: _on_delete_collection,
    Op.SEARCH: _on_search,
    Op.COUNT_DOCUMENTS: _on_count,
    Op.DOCUMENT_STATS: _on_document_stats,
    Op.FACET_STATS: _on_facet_stats,
    Op.SEARCH_HISTOGRAM: _on_histogram,
}


def document_publisher(project: Project) -> Publish:
    """Appends each (re)indexed document to the DOCUMENT log of its collection: message id
    the document id, payload its msgpack, metadata $start and $end."""

    def publish(collection: str, items: list[IndexedDocument]) -> None:
        name = log_name(MessageType.DOCUMENT, collection)
        now = int(time.time() * 1000)
        records = []
        for item in items:
            times = {"$start": item.timestamp, "$end": item.end}
            metadata = encode_metadata(
                {k: str(v) for k, v in times.items() if v is not None}) or b""
            doc_type = item.type.encode()
            doc_id = item.id.encode()
            records.append(_MESSAGE_HEADER.pack(
                1, 0, len(doc_type), len(doc_id), len(_SOURCE), 0, len(_FORMAT), 0,
                len(metadata), len(item.data), now, -1))
            records.append(doc_type + doc_id + _SOURCE + _FORMAT + metadata + item.data)
        sizes = np.fromiter((len(records[2 * i]) + len(records[2 * i + 1])
                             for i in range(len(items))), dtype=np.int64, count=len(items))
        offsets = np.zeros(len(items) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        segments = np.fromiter((segment_of(item.id) for item in items), dtype=np.uint8,
                               count=len(items))
        project.log(name).append_buffer(b"".join(records), offsets, segments=segments)
        project.appended(name)

    return publish



