"""The search queries and methods of the clients, written once: this file for `AsyncClient`, and
`_search_sync.py`, generated from it by tools/async_to_sync.py, for `Client`. Import them from
`fluxcore.client.search`, which builds the requests they send."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, TypeVar, overload

from fluxcore.protocol import Guarantee, Op, decode_control

from ._wire import Codec
from .search import (
    AsyncCall,
    Document,
    Moment,
    _bulk_request,
    _index_request,
    _Query,
    _stats_request,
    documents_from,
    index_entry,
)

__all__ = ["AsyncSearch", "AsyncSearchMethods"]

T = TypeVar("T")


class AsyncSearch(_Query):
    """A query: add constraints, then fetch, stream, count, ..."""

    def __init__(self, collection: str | list[str], call: AsyncCall) -> None:
        super().__init__(collection, call)

    @overload
    async def fetch(self, max_size: int | None = ..., *,
                    type: None = ...) -> list[Document[Any]]: ...
    @overload
    async def fetch(self, max_size: int | None = ..., *,
                    type: type[T]) -> list[Document[T]]: ...
    async def fetch(self, max_size: int | None = None, *, type: Any = None) -> list[Any]:
        """The matching documents in order; at most max_size (None: all)."""
        _op, body = await self._call(Op.SEARCH, self._search_request(max_size))
        return documents_from(body, type)

    async def fetch_first(self, *, type: Any = None) -> Document[Any] | None:
        found = await self.fetch(1, type=type)
        return found[0] if found else None

    async def stream(self, page_size: int = 1000, *,
                     type: Any = None) -> AsyncIterator[Document[Any]]:
        """Every matching document, fetched page by page after the last hit."""
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size must be a positive int, not {page_size!r}")
        last: str | None = None
        first = True
        while True:
            _op, body = await self._call(Op.SEARCH,
                                         self._search_request(page_size, last, first))
            page = documents_from(body, type)
            for document in page:
                yield document
            if len(page) < page_size:
                return
            last, first = page[-1].id, False

    async def count(self) -> int:
        _op, body = await self._call(Op.COUNT_DOCUMENTS, {"query": self.request()})
        return int(decode_control(body)["count"])

    async def facet_stats(self) -> list[dict[str, Any]]:
        """[{name, value, count}] of the matching documents, most frequent first."""
        _op, body = await self._call(Op.FACET_STATS, {"query": self.request()})
        return list(decode_control(body)["stats"])

    async def stats(self, fields: Iterable[str],
                    group_by: Iterable[str] = ()) -> list[dict[str, Any]]:
        """[{fieldStats: {field: {count, min, max, sum, average}}, group: {path: value}}]."""
        _op, body = await self._call(Op.DOCUMENT_STATS, _stats_request(self, fields, group_by))
        return list(decode_control(body)["stats"])

    async def histogram(self, resolution: int = 100,
                        max_size: int | None = None) -> dict[str, Any]:
        """{since, before, counts}: document timestamps counted in `resolution` buckets."""
        _op, body = await self._call(Op.SEARCH_HISTOGRAM, {
            "query": self.request(), "resolution": resolution, "max_size": max_size})
        return decode_control(body)

    async def delete(self) -> int:
        """Deletes every matching document; returns how many."""
        _op, body = await self._call(Op.DELETE_DOCUMENTS, {"query": self.request()})
        return int(decode_control(body)["deleted"])


class AsyncSearchMethods:
    """The search methods of the client."""

    _call: AsyncCall
    _send: Callable[..., Any]
    _codec: Codec

    async def _control(self, op: Op, value: dict[str, Any], guarantee: Guarantee,
                       timeout: float | None) -> dict[str, Any] | None:
        if guarantee >= Guarantee.STORED:
            _op, body = await self._call(op, value, timeout)
            return decode_control(body)
        await self._send(lambda rid: self._codec.control(op, rid, value), answer=False)
        return None

    async def index(self, document: Any, *, collection: str, id: str,
                    timestamp: Moment | None = None, end: Moment | None = None,
                    facets: Mapping[str, Any] | Iterable[str] | None = None,
                    sortables: Mapping[str, Any] | Iterable[str] | None = None,
                    if_not_exists: bool = False, guarantee: Guarantee = Guarantee.STORED,
                    timeout: float | None = 30.0) -> bool:
        """Indexes (or re-indexes) one document; False if if_not_exists found one."""
        entry = index_entry(document, collection=collection, id=id, timestamp=timestamp,
                            end=end, facets=facets, sortables=sortables)
        answer = await self._control(Op.INDEX_DOCUMENTS, _index_request(
            [entry], if_not_exists, guarantee), guarantee, timeout)
        return True if answer is None else bool(answer["indexed"][0])

    async def index_many(self, entries: Iterable[dict[str, Any]], *,
                         if_not_exists: bool = False, guarantee: Guarantee = Guarantee.STORED,
                         timeout: float | None = 30.0) -> list[bool]:
        """Indexes documents made by `index_entry(...)`, all or none, in one call."""
        answer = await self._control(Op.INDEX_DOCUMENTS, _index_request(
            list(entries), if_not_exists, guarantee), guarantee, timeout)
        return [] if answer is None else list(answer["indexed"])

    async def bulk_update(self, updates: Iterable[Mapping[str, Any]], *,
                          guarantee: Guarantee = Guarantee.STORED,
                          timeout: float | None = 30.0) -> list[bool]:
        """Index, index-if-not-exists and delete updates, in order, all or none."""
        answer = await self._control(Op.BULK_UPDATE_DOCUMENTS,
                                     _bulk_request(updates, guarantee), guarantee, timeout)
        return [] if answer is None else list(answer["updated"])

    async def get_document(self, collection: str, id: str, *, type: Any = None,
                           timeout: float | None = 30.0) -> Document[Any] | None:
        found = await self.get_documents(collection, [id], type=type, timeout=timeout)
        return found[0] if found else None

    async def get_documents(self, collection: str, ids: Iterable[str], *, type: Any = None,
                            timeout: float | None = 30.0) -> list[Document[Any]]:
        """The documents found of these ids, in the order asked."""
        _op, body = await self._call(
            Op.GET_DOCUMENTS, {"collection": collection, "ids": list(ids)}, timeout)
        return documents_from(body, type)

    async def has_document(self, collection: str, id: str,
                           timeout: float | None = 30.0) -> bool:
        _op, body = await self._call(
            Op.HAS_DOCUMENT, {"collection": collection, "id": id}, timeout)
        return bool(decode_control(body)["found"])

    async def delete_document(self, collection: str, id: str, *,
                              guarantee: Guarantee = Guarantee.STORED,
                              timeout: float | None = 30.0) -> bool:
        answer = await self._control(Op.DELETE_DOCUMENT, {
            "collection": collection, "id": id, "guarantee": int(guarantee)}, guarantee,
            timeout)
        return True if answer is None else bool(answer["deleted"])

    async def delete_collection(self, collection: str, timeout: float | None = 30.0) -> int:
        _op, body = await self._call(
            Op.DELETE_COLLECTION, {"collection": collection}, timeout)
        return int(decode_control(body)["deleted"])

    def search(self, collection: str | list[str]) -> AsyncSearch:
        """A query of one collection (or several): add constraints, then fetch, ..."""
        return AsyncSearch(collection, lambda op, value: self._call(op, value))
