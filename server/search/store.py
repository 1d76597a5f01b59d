"""The search store of a project: documents and their entries in SQLite (search.sqlite in the
project's directory, WAL), and the constraint tree compiled into SQL over B-tree indexes.

Layout: a document row per (collection, id); one entry row per (value, path) whose rowid is
`document rowid << 20 | n`, so a document's entries are one rowid range (its value is stored
empty when it equals its phrase, its long path when it equals the short one); (word, entry) for
the words of every entry (`word` and `word*` are lookups in it); the vocabulary of distinct
words, also reversed (`*word` is a range of it), and per update a row per trigram of the
words new to the vocabulary, listing them as a JSON array (`*word*` is a lookup of one of
its trigrams, never a scan of the documents); facets and sortables."""

from __future__ import annotations

import functools
import logging
import re
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import msgspec

from fluxcore._ext._search import entry_rows
from fluxcore.errors import LogError
from fluxcore.protocol import ProtocolError

from ..store import Checkpointer, connect, transaction
from .constraints import (
    All,
    Any_,
    Between,
    Contains,
    Exists,
    Facet,
    Match,
    Node,
    Not,
    PathGlob,
    is_literal,
)
from .flatten import NULL, normalize, words

__all__ = ["SEARCH_FILE", "IndexedDocument", "Query", "SearchStore", "Sorting"]

SEARCH_FILE = "search.sqlite"
ENTRY_BITS = 20
MAX_ENTRIES = 1 << ENTRY_BITS  # entries of one document
# A query planned by how many documents its constraints find counts up to this many.
ESTIMATE_CAP = 5000
# Rows a walk in sort order tests before it gives up and sorts the matches instead.
WALK_BUDGET = 4096
MMAP_BYTES = 1 << 40
WAL_BACKSTOP_PAGES = 50_000
_MANY = 1 << 62  # an estimate: at least as many as asked
_FEW = 200  # documents few enough to test one by one against any constraint
logger = logging.getLogger("fluxcore.server")
_TOP = "\U0010ffff"  # above every character: `x >= t AND x < t + _TOP` is "starts with t"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    rowid INTEGER PRIMARY KEY AUTOINCREMENT, coll INTEGER NOT NULL, id TEXT NOT NULL,
    ts INTEGER,
    te INTEGER, type TEXT NOT NULL, data BLOB NOT NULL, UNIQUE (coll, id));
CREATE INDEX IF NOT EXISTS documents_ts ON documents (coll, ts);
CREATE TABLE IF NOT EXISTS entries (
    rowid INTEGER PRIMARY KEY, coll INTEGER NOT NULL, type INTEGER NOT NULL,
    value TEXT NOT NULL, phrase TEXT NOT NULL, number REAL, lpath TEXT NOT NULL,
    spath TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS entries_phrase ON entries (coll, phrase, spath);
CREATE INDEX IF NOT EXISTS entries_number ON entries (coll, number, spath)
    WHERE number IS NOT NULL;
CREATE INDEX IF NOT EXISTS entries_path ON entries (coll, spath);
CREATE TABLE IF NOT EXISTS words (
    word TEXT NOT NULL, entry INTEGER NOT NULL, PRIMARY KEY (word, entry)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS vocabulary (
    word TEXT PRIMARY KEY, rword TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS vocabulary_rword ON vocabulary (rword);
CREATE TABLE IF NOT EXISTS word_trigrams (
    rowid INTEGER PRIMARY KEY, trigram TEXT NOT NULL, words TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS word_trigrams_trigram ON word_trigrams (trigram);
CREATE TABLE IF NOT EXISTS facets (
    doc INTEGER NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, coll INTEGER NOT NULL,
    PRIMARY KEY (doc, name, value)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS facets_value ON facets (coll, name, value);
CREATE TABLE IF NOT EXISTS sortables (
    doc INTEGER NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (doc, name, value)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sortables_value ON sortables (name, value, doc);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS facet_counts (
    coll INTEGER NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (coll, name, value)) WITHOUT ROWID;
"""

_LETTER = r"[^\W\d_]"
_LEFT = rf"(?<!{_LETTER})(?<![0-9])"
_RIGHT = rf"(?!{_LETTER})(?![0-9])"


def contains_regex(term: str, prefix: bool, postfix: bool) -> str:
    """The reference's contains: the term, with a word boundary on the left unless prefix
    search and on the right unless postfix search."""
    return ("" if prefix else _LEFT) + re.escape(term) + ("" if postfix else _RIGHT)


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _find(phrase: str, pattern: str) -> bool:
    return _compiled(pattern).search(phrase) is not None


@dataclass
class IndexedDocument:
    """A document ready to index: checked and flattened (nothing can fail after this)."""

    collection: str
    id: str
    timestamp: int | None
    end: int | None
    type: str
    data: bytes  # msgpack of the document
    entries: list[tuple[int, str, str, str]]
    facets: list[tuple[str, str]]
    sortables: list[tuple[str, str]]


@dataclass
class Query:
    collections: list[str]
    constraint: All
    since: int | None = None
    before: int | None = None
    since_exclusive: bool = False
    before_inclusive: bool = False


@dataclass
class Sorting:
    keys: list[str]  # timestamp, -timestamp, end, -end, [-]sortable path


Publish = Callable[[str, list[IndexedDocument]], None]
# Opens (creates) a collection's DOCUMENT log, or raises if the project may not have it.
OpenLog = Callable[[str], None]


class _Sql:
    """A WHERE expression and its parameters."""

    def __init__(self) -> None:
        self.params: list[Any] = []

    def add(self, *values: Any) -> None:
        self.params.extend(values)


class SearchStore:
    def __init__(self, path: str, *, durable: bool, publish: Publish, open_log: OpenLog,
                 estimate_cap: int = ESTIMATE_CAP, walk_budget: int = WALK_BUDGET) -> None:
        self._estimate_cap = estimate_cap
        self._walk_budget = walk_budget
        self._db = connect(path, durable=durable)
        # A bigger page cache: index inserts land all over the B-trees. Checkpoints are the
        # checkpointer's, in a thread of its own (started by the first update); a commit
        # checkpoints only past a WAL of WAL_BACKSTOP_PAGES.
        self._db.execute("PRAGMA cache_size=-65536")
        # Queries read the file through a mapping (SQLite caps the size it maps): a page
        # outside the cache costs no read() and no copy. SQLite writes with write() all
        # the same.
        self._db.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
        self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_BACKSTOP_PAGES}")
        self._path = path
        self._durable = durable
        self._checkpointer: Checkpointer | None = None
        counted = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'facet_counts'").fetchone() is not None
        fts = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'vocabulary_trigrams'").fetchone()
        self._db.executescript(_SCHEMA)
        if fts is not None:  # a store from before the trigram rows: build them
            self._migrate_trigrams()
        if not counted:  # a store from before the counts: count what it has
            with transaction(self._db):
                self._db.execute("INSERT INTO facet_counts SELECT coll, name, value, count(*)"
                                 " FROM facets GROUP BY coll, name, value")
        self._db.create_function("fc_find", 2, _find, deterministic=True)
        self._publish = publish
        self._open_log = open_log
        # The DOCUMENT logs have every document up to this rowid (rowids are never reused:
        # AUTOINCREMENT). It is stored lazily (next transaction, retry(), close()): after a
        # crash the documents since the stored value are published again (at least once).
        row = self._db.execute("SELECT value FROM meta WHERE key = 'published_upto'").fetchone()
        self._published_upto = self._stored_upto = 0 if row is None else int(row[0])
        # Documents committed that their log did not take yet. Until the first retry() looks,
        # a crash may have left some.
        self.backlog = True
        self._top = self._max_rowid()  # the largest document rowid ever given out
        self._collections: dict[str, int] = dict(
            self._db.execute("SELECT name, id FROM collections").fetchall())
        self._names = {v: k for k, v in self._collections.items()}

    def _max_rowid(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'documents'"
                               ).fetchone()
        return 0 if row is None else int(row[0])

    def _migrate_trigrams(self) -> None:
        """Replaces the FTS5 trigram table of the vocabulary (the layout before 2026-12-01)
        with trigram rows, in one transaction."""
        db = self._db
        with transaction(db):
            db.execute("DROP TRIGGER IF EXISTS vocabulary_added")
            db.execute("DROP TABLE vocabulary_trigrams")
            db.execute("DELETE FROM word_trigrams")
            cursor = db.execute("SELECT word FROM vocabulary ORDER BY word")
            while batch := cursor.fetchmany(50_000):
                self._write_trigrams([word for (word,) in batch])

    def close(self) -> None:
        if not self.backlog:
            self._store_upto()
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        self._db.close()

    # -- writing -------------------------------------------------------------------------

    def _collection_id(self, name: str) -> int:
        found = self._collections.get(name)
        if found is None:
            cursor = self._db.execute("INSERT INTO collections (name) VALUES (?)", (name,))
            found = self._collections[name] = int(cursor.lastrowid or 0)
            self._names[found] = name
        return found

    def update(self, updates: Sequence[tuple[str, IndexedDocument | tuple[str, str]]]
               ) -> list[bool]:
        """Applies ("index" | "index_if_not_exists", document) and ("delete", (collection,
        id)) in order, in one transaction; says for each whether it changed anything. Every
        indexed document then goes to its collection's DOCUMENT log."""
        done: list[bool] = []
        indexed: list[IndexedDocument] = []
        documents: list[tuple[Any, ...]] = []
        entries: list[tuple[Any, ...]] = []
        word_rows: list[tuple[str, int]] = []
        vocabulary: set[str] = set()
        facets: list[tuple[int, str, str, int]] = []
        facet_counts: dict[tuple[int, str, str], int] = {}
        sortables: set[tuple[int, str, str]] = set()
        db = self._db

        def flush() -> None:
            # Before a delete, so that it sees every row this batch wrote before it.
            db.executemany("INSERT INTO documents (rowid, coll, id, ts, te, type, data)"
                           " VALUES (?, ?, ?, ?, ?, ?, ?)", documents)
            db.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?)", entries)
            # Neighbours in the B-tree: fewer pages touched. Rows come in ascending entry
            # order, so a stable sort by word alone is the (word, entry) order, and faster.
            word_rows.sort(key=_word_of)
            db.executemany("INSERT INTO words VALUES (?, ?)", word_rows)
            self._add_words(vocabulary)
            db.executemany("INSERT INTO facets VALUES (?, ?, ?, ?)", facets)
            self._count_facets(facet_counts, 1)
            db.executemany("INSERT INTO sortables VALUES (?, ?, ?)", sortables)
            for rows in (documents, entries, word_rows, vocabulary, facets, sortables,
                         facet_counts):
                rows.clear()

        # Every new collection's DOCUMENT log first: a document is not stored if its log
        # cannot be (max_logs, descriptors).
        for collection in dict.fromkeys(item.collection for kind, item in updates
                                        if isinstance(item, IndexedDocument)):
            self._open_log(collection)
        try:
            with transaction(db):
                if self._stored_upto != self._published_upto:
                    self._write_upto()
                live = self._live_rowids(updates)
                # Rowids given here (above any ever used, as AUTOINCREMENT would) so that
                # documents go in with executemany like the other rows.
                next_doc = max(self._top, self._max_rowid()) + 1
                for kind, item in updates:
                    if kind == "delete":
                        assert isinstance(item, tuple)
                        found_doc = live.pop(item, None)
                        if found_doc is not None:
                            flush()
                            self._delete_rows([found_doc])
                        done.append(found_doc is not None)
                        continue
                    assert isinstance(item, IndexedDocument)
                    doc_key = (item.collection, item.id)
                    found_doc = live.get(doc_key)
                    if found_doc is not None:
                        if kind == "index_if_not_exists":
                            done.append(False)
                            continue
                        flush()
                        self._delete_rows([found_doc])
                    coll = self._collection_id(item.collection)
                    doc = live[doc_key] = next_doc
                    next_doc += 1
                    documents.append((doc, coll, item.id, item.timestamp, item.end, item.type,
                                      item.data))
                    entry_rows(doc << ENTRY_BITS, coll, item.entries, entries, word_rows,
                               vocabulary)
                    for name, value in dict.fromkeys(item.facets):
                        facets.append((doc, name, value, coll))
                        key = (coll, name, value)
                        facet_counts[key] = facet_counts.get(key, 0) + 1
                    sortables.update((doc, name, value) for name, value in item.sortables)
                    indexed.append(item)
                    done.append(True)
                flush()
                self._top = max(self._top, next_doc - 1)
        except BaseException:
            # The rolled back transaction may have added collections: forget them.
            self._collections = dict(db.execute("SELECT name, id FROM collections").fetchall())
            self._names = {v: k for k, v in self._collections.items()}
            raise
        self._checkpoint_soon()
        if self.backlog:  # earlier documents still wait for their logs: these go after them
            self._publish_backlog()
        elif indexed:
            top = self._top
            try:
                self._publish_all(indexed)
            except (OSError, LogError, ProtocolError) as exc:
                # Stored all the same: they go to the logs once these take them again.
                logger.error("publishing %d documents failed, kept for later: %s",
                             len(indexed), exc)
                self.backlog = True
            else:
                self._published_upto = max(self._published_upto, top)
        return done

    def _checkpoint_soon(self) -> None:
        """After a write: the checkpointer runs (a store in memory has no WAL). If it cannot
        start (no descriptor, no thread), commits checkpoint past the backstop meanwhile and
        the next write tries again: the write itself is done."""
        if self._checkpointer is None and self._path != ":memory:":
            try:
                self._checkpointer = Checkpointer(self._path, durable=self._durable)
            except (sqlite3.Error, OSError, RuntimeError) as exc:
                logger.warning("the search store's checkpointer did not start (commits"
                               " checkpoint past %d pages meanwhile): %s", WAL_BACKSTOP_PAGES,
                               exc)

    def _publish_all(self, indexed: list[IndexedDocument]) -> None:
        by_collection: dict[str, list[IndexedDocument]] = {}
        for item in indexed:
            by_collection.setdefault(item.collection, []).append(item)
        for collection, items in by_collection.items():
            self._publish(collection, items)

    def _write_upto(self) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('published_upto', ?)",
                         (self._published_upto,))
        self._stored_upto = self._published_upto

    def _store_upto(self) -> None:
        if self._stored_upto != self._published_upto:
            with transaction(self._db):
                self._write_upto()

    def retry(self) -> None:
        """Publishes the backlog if there is one, else stores how far the logs have every
        document (the server calls this every 100 ms)."""
        if self.backlog:
            self._publish_backlog()
        else:
            self._store_upto()

    def _publish_backlog(self) -> None:
        try:
            self.publish_pending()
        except (OSError, LogError, ProtocolError) as exc:
            logger.error("publishing stored documents failed, kept for later: %s", exc)

    def publish_pending(self) -> None:
        """Publishes the documents committed but maybe not published (after a crash, or
        while a log could not take them), in the order they were indexed."""
        while True:  # a page at a time: the backlog may be a large bulk
            pending: list[IndexedDocument] = []
            top = self._published_upto
            for rowid, collection, doc_id, ts, te, doc_type, data in self._db.execute(
                    "SELECT d.rowid, c.name, d.id, d.ts, d.te, d.type, d.data FROM documents d"
                    " JOIN collections c ON c.id = d.coll WHERE d.rowid > ? ORDER BY d.rowid"
                    " LIMIT 1000", (self._published_upto,)):
                top = rowid
                pending.append(IndexedDocument(collection, doc_id, ts, te, doc_type,
                                               bytes(data), [], [], []))
            if not pending:
                break
            self._publish_all(pending)
            self._published_upto = top
        self._store_upto()
        self.backlog = False

    def _count_facets(self, counts: dict[tuple[int, str, str], int], sign: int) -> None:
        """Adds (sign 1) or takes away (-1) documents from the counts of facet values."""
        if not counts:
            return
        self._db.executemany(
            "INSERT INTO facet_counts VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
            " n = n + excluded.n", [(*key, sign * n) for key, n in counts.items()])
        if sign < 0:
            self._db.execute("DELETE FROM facet_counts WHERE n <= 0")

    def _live_rowids(self, updates: Sequence[tuple[str, IndexedDocument | tuple[str, str]]]
                     ) -> dict[tuple[str, str], int]:
        """The rowid of each (collection, id) of the updates that is stored."""
        by_collection: dict[int, set[str]] = defaultdict(set)
        for _, item in updates:
            name, doc_id = ((item.collection, item.id) if isinstance(item, IndexedDocument)
                            else item)
            coll = self._collections.get(name)
            if coll is not None:
                by_collection[coll].add(doc_id)
        live: dict[tuple[str, str], int] = {}
        for coll, ids in by_collection.items():
            ordered = sorted(ids)
            for first in range(0, len(ordered), 500):
                chunk = ordered[first : first + 500]
                live.update(((self._names[coll], doc_id), rowid) for doc_id, rowid in
                            self._db.execute(
                                "SELECT id, rowid FROM documents WHERE coll = ? AND id IN"
                                f" ({','.join('?' * len(chunk))})", (coll, *chunk)))
        return live

    def _add_words(self, found: set[str]) -> None:
        """The words new to the vocabulary go in it, with their trigram rows."""
        if not found:
            return
        ordered = sorted(found)
        known: set[str] = set()
        for first in range(0, len(ordered), 500):
            chunk = ordered[first : first + 500]
            known.update(row[0] for row in self._db.execute(
                f"SELECT word FROM vocabulary WHERE word IN ({','.join('?' * len(chunk))})",
                chunk))
        new = [word for word in ordered if word not in known]
        self._db.executemany("INSERT INTO vocabulary VALUES (?, ?)",
                             [(word, word[::-1]) for word in new])
        self._write_trigrams(new)

    def _write_trigrams(self, new: list[str]) -> None:
        """A row per trigram of the words, listing them (a JSON array)."""
        trigrams: dict[str, list[str]] = defaultdict(list)
        for word in new:
            for trigram in {word[i : i + 3] for i in range(len(word) - 2)}:
                trigrams[trigram].append(word)
        self._db.executemany(
            "INSERT INTO word_trigrams (trigram, words) VALUES (?, ?)",
            sorted((trigram, _json_encode(listed).decode())
                   for trigram, listed in trigrams.items()))

    def _delete_rows(self, docs: Sequence[int]) -> None:
        db = self._db
        ranges = [(d << ENTRY_BITS, (d << ENTRY_BITS) | (MAX_ENTRIES - 1)) for d in docs]
        # The words of the entries, found again from their phrases (words has no entry index).
        word_rows: list[tuple[str, int]] = []
        for low, high in ranges:
            for entry, phrase in db.execute(
                    "SELECT rowid, phrase FROM entries WHERE rowid BETWEEN ? AND ?",
                    (low, high)):
                word_rows.extend((word, entry) for word in set(words(phrase)))
        db.executemany("DELETE FROM words WHERE word = ? AND entry = ?", word_rows)
        db.executemany("DELETE FROM entries WHERE rowid BETWEEN ? AND ?", ranges)
        removed: dict[tuple[int, str, str], int] = {}
        for first in range(0, len(docs), 500):
            chunk = docs[first : first + 500]
            for key in db.execute(
                    "SELECT coll, name, value FROM facets WHERE doc IN"
                    f" ({','.join('?' * len(chunk))})", chunk):
                removed[key] = removed.get(key, 0) + 1
        self._count_facets(removed, -1)
        rows = [(d,) for d in docs]
        db.executemany("DELETE FROM facets WHERE doc = ?", rows)
        db.executemany("DELETE FROM sortables WHERE doc = ?", rows)
        db.executemany("DELETE FROM documents WHERE rowid = ?", rows)

    def delete_query(self, query: Query) -> int:
        """Deletes every document the query matches; returns how many."""
        with transaction(self._db):
            found = self._matching_rowids(query)
            self._delete_rows(found)
        self._checkpoint_soon()
        return len(found)

    def delete_collection(self, name: str) -> int:
        coll = self._collections.get(name)
        if coll is None:
            return 0
        with transaction(self._db):
            docs = [r[0] for r in self._db.execute(
                "SELECT rowid FROM documents WHERE coll = ?", (coll,))]
            self._delete_rows(docs)
        self._checkpoint_soon()
        return len(docs)

    # -- reading -------------------------------------------------------------------------

    def get(self, collection: str, ids: Sequence[str]) -> list[dict[str, Any]]:
        coll = self._collections.get(collection)
        if coll is None or not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = self._db.execute(
            f"SELECT id, ts, te, type, data FROM documents WHERE coll = ? AND id IN ({marks})",
            (coll, *ids)).fetchall()
        by_id = {row[0]: row for row in rows}
        return [_document(collection, by_id[i]) for i in dict.fromkeys(ids) if i in by_id]

    def has(self, collection: str, doc_id: str) -> bool:
        coll = self._collections.get(collection)
        return coll is not None and self._db.execute(
            "SELECT 1 FROM documents WHERE coll = ? AND id = ?", (coll, doc_id)
        ).fetchone() is not None

    def _where(self, query: Query, sql: _Sql, *, probe: bool = False) -> str | None:
        """The WHERE clause over `documents d` for a query; None if it cannot match. Probe:
        every constraint a test of one document (for a walk in sort order), not a set."""
        colls = [self._collections[c] for c in query.collections if c in self._collections]
        if not colls:
            return None
        clauses = [f"d.coll IN ({','.join(map(str, colls))})"]
        if query.since is not None:
            clauses.append(f"(d.te IS NULL OR d.te {'>' if query.since_exclusive else '>='} ?)")
            sql.add(query.since)
        if query.before is not None:
            inclusive = query.before_inclusive or query.before == query.since
            clauses.append(f"(d.ts IS NULL OR d.ts {'<=' if inclusive else '<'} ?)")
            sql.add(query.before)
        if query.constraint.items:
            # `+`: start from the documents the constraints find, not from every document of
            # the collection in timestamp order.
            clauses[0] = "+" + clauses[0]
            if probe:
                clauses.append(_compile(query.constraint, colls, sql, probe=True))
            else:
                clauses.append(self._conjunction(_conjuncts(query.constraint), colls, sql))
        return " AND ".join(clauses)

    def _conjunction(self, items: list[Node], colls: list[int], sql: _Sql) -> str:
        """Constraints that must all hold: the set of the most selective one, tested
        document by document against the others that a test serves well, instead of the
        intersection of every set."""
        if not items:
            return "1"
        probed: set[int] = set()
        driver = -1
        if len(items) > 1:
            cap = self._estimate_cap
            estimates = [self._estimate(n, colls, cap) for n in items]
            known = [(n, i) for i, n in enumerate(estimates) if n is not None]
            if known:
                least, driver = min(known)
                # A test per document of the driver's set that is one index seek costs
                # about what a row of the constraint's own set does: test whenever that
                # set is not smaller. A test that reads the document's entries costs
                # more: only against a much larger set, or an unknown one while the
                # driver's is small.
                probed = {i for i, (node, n) in enumerate(zip(items, estimates, strict=True))
                          if i != driver and _probes_well(node) and (
                              (_seeks(node) and (n is None or n >= least)) or
                              (n is not None and n >= 8 * least) or
                              (n is None and least <= _FEW))}
        parts = []
        for i, node in enumerate(items):
            part = _compile(node, colls, sql, probe=i in probed)
            if i == driver:
                part = _narrowed(part, [items[j] for j in sorted(probed)], sql)
            parts.append(part)
        return "(" + " AND ".join(parts) + ")"

    def _estimate(self, node: Node, colls: list[int], limit: int) -> int | None:
        """About how many documents (entries) a constraint finds, counted up to `limit`;
        None if there is no cheap way to tell."""
        in_colls = f"({','.join(map(str, colls))})"
        if isinstance(node, Facet):
            row = self._db.execute(
                f"SELECT sum(n) FROM facet_counts WHERE coll IN {in_colls} AND name = ? AND"
                " value = ?", (node.name, node.value)).fetchone()
            return int(row[0] or 0)
        if isinstance(node, Match) and not node.strict:
            inner = (f"SELECT 1 FROM entries e WHERE e.coll IN {in_colls} AND e.phrase = ?"
                     f" LIMIT {int(limit)}")
            param = normalize(node.value)
        elif (isinstance(node, Contains) and not node.prefix and not node.postfix
              and words(node.term) == [node.term]):
            inner = f"SELECT 1 FROM words WHERE word = ? LIMIT {int(limit)}"
            param = node.term
        else:
            return None
        return int(self._db.execute(f"SELECT count(*) FROM ({inner})", (param,)).fetchone()[0])

    def _broad_estimate(self, wanted: int) -> int:
        """How many matches make a walk of _walk_budget documents in sort order likely
        (twice over) to find `wanted` of them in the largest collection there may be."""
        return max(1, -(-2 * wanted * self._top // self._walk_budget))

    def _smallest(self, query: Query, many: int) -> int | None:
        """The fewest documents a constraint of the query finds, counted up to `many`
        (_MANY if none finds fewer; None: no constraint can tell cheaply and some may be
        selective)."""
        colls = [self._collections[c] for c in query.collections if c in self._collections]
        smallest: int | None = _MANY
        for item in _conjuncts(query.constraint):
            estimate = self._estimate(item, colls, many)
            if estimate is None:
                if smallest == _MANY:
                    smallest = None
            elif estimate < many and (smallest is None or estimate < smallest):
                smallest = estimate
        return smallest

    def _walk(self, walk_sql: str, params: list[Any], wanted: int) -> list[int] | None:
        """The first `wanted` distinct matching documents among the first
        self._walk_budget rows of a walk of (doc, matches) rows, or None if there are
        fewer (then sort the matches). Rows that do not match never leave SQLite."""
        found: dict[int, None] = {}
        cursor = self._db.execute(
            f"SELECT walked.doc FROM ({walk_sql} LIMIT {int(self._walk_budget)}) walked"
            " WHERE walked.matches", params)
        try:
            while len(found) < wanted:
                batch = cursor.fetchmany(wanted)
                if not batch:
                    return None
                for (rowid,) in batch:
                    found.setdefault(rowid)
                    if len(found) >= wanted:
                        break
        finally:
            cursor.close()
        return list(found)

    def _page(self, page: list[int]) -> list[dict[str, Any]]:
        if not page:
            return []
        rows = {row[0]: row[1:] for row in self._db.execute(
            "SELECT d.rowid, c.name, d.id, d.ts, d.te, d.type, d.data FROM documents d JOIN"
            f" collections c ON c.id = d.coll WHERE d.rowid IN ({','.join('?' * len(page))})",
            page)}
        return [_document(rows[r][0], rows[r][1:]) for r in page]

    def _walked_page(self, query: Query, key: str, max_size: int,
                     skip: int) -> list[dict[str, Any]] | None:
        """A page sorted by one key, found by walking the key's index in order and testing
        each document, when the query matches many documents; None otherwise."""
        desc = key.startswith("-")
        name = key[1:] if desc else key
        colls = [self._collections[c] for c in query.collections if c in self._collections]
        if not colls or name == "end" or (name == "timestamp" and len(colls) > 1):
            return None
        sql = _Sql()
        test = self._where(query, sql, probe=True)
        if test is None:
            return None
        order = "DESC" if desc else "ASC"
        if name == "timestamp":
            # Documents without a timestamp sort last: the walk leaves them out and gives up
            # when it runs out (the general sort then has them).
            walk = (f"SELECT d.rowid AS doc, {test} AS matches FROM documents d WHERE"
                    f" d.coll = {colls[0]} AND"
                    f" d.ts IS NOT NULL ORDER BY d.ts {order}, d.rowid {order}")
            params = sql.params
        else:
            walk = (f"SELECT s.doc AS doc, {test} AS matches FROM sortables s CROSS JOIN"
                    f" documents d ON"
                    f" d.rowid = s.doc WHERE s.name = ? ORDER BY s.value {order},"
                    f" s.doc {order}")
            params = [*sql.params, sortable_name(name)]
        found = self._walk(walk, params, skip + max_size)
        if found is None:
            return None
        return self._page(found[skip:])

    def _matching_rowids(self, query: Query) -> list[int]:
        sql = _Sql()
        where = self._where(query, sql)
        if where is None:
            return []
        return [r[0] for r in self._db.execute(
            f"SELECT d.rowid FROM documents d WHERE {where}", sql.params)]

    def count(self, query: Query) -> int:
        sql = _Sql()
        where = self._where(query, sql)
        if where is None:
            return 0
        return int(self._db.execute(f"SELECT count(*) FROM documents d WHERE {where}",
                                    sql.params).fetchone()[0])

    def search(self, query: Query, sorting: Sorting, *, max_size: int | None, skip: int,
               last_hit: str | None) -> list[dict[str, Any]]:
        sql = _Sql()
        where = self._where(query, sql)
        if where is None:
            return []
        keys = _sort_keys(sorting.keys)
        order = ", ".join(f"{expr} {'DESC' if desc else 'ASC'}" for expr, desc, _ in keys)
        key_params = [p for _, _, params in keys for p in params]
        if last_hit is not None:
            colls = [self._collections[c] for c in query.collections if c in self._collections]
            key_exprs = ", ".join(expr for expr, _, _ in keys)
            row = self._db.execute(
                f"SELECT {key_exprs} FROM documents d WHERE d.coll IN "
                f"({','.join(map(str, colls))}) AND d.id = ? LIMIT 1",
                (*key_params, last_hit)).fetchone()
            if row is None:
                return []  # as the reference: nothing comes after a hit that is not there
            if skip:
                before, params = _after(keys, row, reverse=True)
                position = self._db.execute(
                    f"SELECT count(*) FROM documents d WHERE {where} AND {before}",
                    (*sql.params, *params)).fetchone()[0]
                if position < skip:
                    return []  # the hit was skipped: the reference finds nothing after it
                skip = 0
            after, params = _after(keys, row)
            where = f"{where} AND {after}"
            sql.add(*params)
        elif max_size is not None and len(sorting.keys or ["-timestamp"]) == 1:
            key = (sorting.keys or ["-timestamp"])[0]
            smallest = self._smallest(query, self._broad_estimate(skip + max_size))
            if smallest == _MANY:
                walked = self._walked_page(query, key, max_size, skip)
                if walked is not None:
                    return walked
            if key.lstrip("-") not in ("timestamp", "end") and (
                    smallest is None or smallest == _MANY):
                # Many or maybe many matches: the sortable's index walked, matches as a set.
                return self._top_by_sortable(where, sql.params, key, max_size, skip)
        limit = -1 if max_size is None else max_size
        rows = self._db.execute(
            f"SELECT c.name, d.id, d.ts, d.te, d.type, d.data FROM documents d"
            f" JOIN collections c ON c.id = d.coll WHERE {where} ORDER BY {order}"
            f" LIMIT ? OFFSET ?", (*sql.params, *key_params, limit, skip)).fetchall()
        return [_document(row[0], row[1:]) for row in rows]

    def _top_by_sortable(self, where: str, params: list[Any], key: str, max_size: int,
                         skip: int) -> list[dict[str, Any]]:
        """A page sorted by one sortable: a walk of the sortable's index in order that stops
        at the page's last document, instead of sorting every match. Walking down, a
        document's first value is its largest; walking up, its smallest: the sort key."""
        desc = key.startswith("-")
        name = sortable_name(key[1:] if desc else key)
        order = "DESC" if desc else "ASC"
        wanted = skip + max_size
        found: dict[int, None] = {}
        cursor = self._db.execute(
            f"SELECT d.rowid FROM sortables s CROSS JOIN documents d ON d.rowid = s.doc"
            f" WHERE s.name = ? AND {where} ORDER BY s.value {order}, s.doc {order}",
            (name, *params))
        while len(found) < wanted:
            batch = cursor.fetchmany(256)
            if not batch:
                break
            for (rowid,) in batch:
                found.setdefault(rowid)
                if len(found) >= wanted:
                    break
        cursor.close()
        if len(found) < wanted:  # then the documents without a value, as the general sort
            for (rowid,) in self._db.execute(
                    f"SELECT d.rowid FROM documents d WHERE {where} AND NOT EXISTS (SELECT 1"
                    f" FROM sortables s WHERE s.doc = d.rowid AND s.name = ?) ORDER BY"
                    f" d.rowid {order} LIMIT ?", (*params, name, wanted - len(found))):
                found.setdefault(rowid)
        return self._page(list(found)[skip:wanted])

    # -- statistics ----------------------------------------------------------------------

    def facet_stats(self, query: Query) -> list[dict[str, Any]]:
        sql = _Sql()
        where = self._where(query, sql)
        if where is None:
            return []
        plain = not query.constraint.items and query.since is None and query.before is None
        if plain:  # every document of the collections: the counts kept as they change
            colls = [self._collections[c] for c in query.collections if c in self._collections]
            rows = self._db.execute(
                "SELECT name, value, n FROM facet_counts WHERE coll IN "
                f"({','.join(map(str, colls))})").fetchall()
        else:
            rows = self._db.execute(
                "SELECT name, value, count(*) FROM facets WHERE doc IN (SELECT d.rowid FROM "
                f"documents d WHERE {where}) GROUP BY name, value", sql.params).fetchall()
        totals: dict[tuple[str, str], int] = {}
        for name, value, n in rows:
            totals[(name, value)] = totals.get((name, value), 0) + n
        ordered = sorted(totals.items(), key=lambda item: (-item[1], item[0]))
        return [{"name": name, "value": value, "count": n} for (name, value), n in ordered]

    def document_stats(self, query: Query, fields: list[PathGlob],
                       group_by: list[PathGlob]) -> list[dict[str, Any]]:
        """Per group (the first value at each group-by path): count, min, max, sum and
        average of the numbers at each field."""
        sql = _Sql()
        where = self._where(query, sql)
        if where is None:
            return []
        group_exprs = []
        group_params: list[Any] = []
        for glob in group_by:
            cond, params = _path_sql(glob, "g")
            group_exprs.append(
                f"(SELECT {_value('g')} FROM entries g WHERE g.rowid BETWEEN d.rowid << 20 AND "
                f"(d.rowid << 20) | {MAX_ENTRIES - 1} AND g.type != {NULL} AND {cond}"
                " ORDER BY g.rowid LIMIT 1)")
            group_params.extend(params)
        groups: dict[tuple[Any, ...], dict[str, Any]] = {}
        for glob in fields:
            cond, params = _path_sql(glob, "e")
            select_groups = "".join(f"{expr}, " for expr in group_exprs)
            rows = self._db.execute(
                f"SELECT {select_groups} count(e.number), min(e.number), max(e.number),"
                f" sum(e.number) FROM documents d JOIN entries e ON e.rowid BETWEEN"
                f" d.rowid << 20 AND (d.rowid << 20) | {MAX_ENTRIES - 1}"
                f" WHERE {where} AND e.number IS NOT NULL AND {cond}"
                + (f" GROUP BY {', '.join(str(i + 1) for i in range(len(group_exprs)))}"
                   if group_exprs else " HAVING count(e.number) > 0"),
                (*group_params, *sql.params, *params)).fetchall()
            for row in rows:
                group = tuple(row[: len(group_exprs)])
                count, low, high, total = row[len(group_exprs):]
                stats = groups.setdefault(group, {})
                stats[glob.text] = {"count": count, "min": _num(low), "max": _num(high),
                                    "sum": _num(total),
                                    "average": _num(float(f"{total / count:.10g}"))}
        out = []
        for group, stats in groups.items():
            for glob in fields:
                stats.setdefault(glob.text, {"count": 0, "min": None, "max": None, "sum": 0,
                                             "average": None})
            out.append({"fieldStats": stats,
                        "group": {g.text: v for g, v in zip(group_by, group, strict=True)}})
        return out

    def histogram(self, query: Query, resolution: int,
                  max_size: int | None) -> dict[str, Any]:
        since = query.since
        before = query.before if query.before is not None else int(time.time() * 1000)
        counts = [0] * resolution
        if since is None:
            return {"since": None, "before": before, "counts": counts}
        sql = _Sql()
        where = self._where(query, sql)
        if where is not None:
            step = max(1, (before - since) // resolution)  # the reference has min: a bug
            inner = f"SELECT d.ts FROM documents d WHERE {where} AND d.ts IS NOT NULL"
            if max_size is not None:
                inner += f" ORDER BY d.ts DESC LIMIT {int(max_size)}"
            for bucket, n in self._db.execute(
                    f"SELECT (ts - ?) / ?, count(*) FROM ({inner}) GROUP BY 1",
                    (since, step, *sql.params)):
                counts[min(max(int(bucket), 0), resolution - 1)] += n
        return {"since": since, "before": before, "counts": counts}


_word_of = itemgetter(0)
_json_encode = msgspec.json.Encoder().encode


def _num(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _document(collection: str, row: Sequence[Any]) -> dict[str, Any]:
    doc_id, ts, te, doc_type, data = row
    return {"collection": collection, "id": doc_id, "timestamp": ts, "end": te,
            "data_type": doc_type, "document": msgspec.Raw(data)}


# -- sorting -----------------------------------------------------------------------------

def _sort_keys(keys: list[str]) -> list[tuple[str, bool, list[Any]]]:
    """(SQL expression, descending, parameters) per key; a missing value sorts last (its
    IS NULL key first), and the rowid breaks ties."""
    out: list[tuple[str, bool, list[Any]]] = []
    for key in keys or ["-timestamp"]:
        desc = key.startswith("-")
        name = key[1:] if desc else key
        params: list[Any]
        if name == "timestamp":
            expr, params = "d.ts", []
        elif name == "end":
            expr, params = "d.te", []
        else:
            aggregate = "max" if desc else "min"
            expr = (f"(SELECT {aggregate}(s.value) FROM sortables s WHERE s.doc = d.rowid"
                    " AND s.name = ?)")
            params = [sortable_name(name)]
        out.append((f"({expr} IS NULL)", False, params))
        out.append((expr, desc, params))
    out.append(("d.rowid", out[1][1], []))
    return out


def sortable_name(path: str) -> str:
    return path.replace(".", "/")


def _after(keys: list[tuple[str, bool, list[Any]]], row: Sequence[Any],
           reverse: bool = False) -> tuple[str, list[Any]]:
    """Rows that come after `row` (before it if reverse) in the order of `keys`."""
    options: list[str] = []
    params: list[Any] = []
    for i, (expr, desc, key_params) in enumerate(keys):
        if row[i] is None:
            continue  # nothing is past a missing value on this key itself
        parts = []
        for j, (expr_j, _, params_j) in enumerate(keys[:i]):
            parts.append(f"{expr_j} IS ?")
            params.extend((*params_j, row[j]))
        parts.append(f"{expr} {'<' if desc != reverse else '>'} ?")
        params.extend((*key_params, row[i]))
        options.append("(" + " AND ".join(parts) + ")")
    return "(" + (" OR ".join(options) or "0") + ")", params


# -- compiling constraints ---------------------------------------------------------------

def _value(alias: str) -> str:
    """An entry's raw value (stored empty when it equals the phrase)."""
    return f"iif({alias}.value = '', {alias}.phrase, {alias}.value)"


def _long_path(alias: str) -> str:
    """An entry's long path (stored empty when it equals the short one)."""
    return f"iif({alias}.lpath = '', {alias}.spath, {alias}.lpath)"


def _path_sql(glob: PathGlob, alias: str) -> tuple[str, list[Any]]:
    # `+`: never drive a lookup by the path index; a value index is nearly always more
    # selective (SQLite has no statistics to know that).
    column = _long_path(alias) if glob.long else f"+{alias}.spath"
    parts, params = [], []
    for pattern in glob.globs:
        if is_literal(pattern):
            parts.append(f"{column} = ?")
        else:
            parts.append(f"{column} GLOB ?")
        params.append(pattern)
    return "(" + " OR ".join(parts) + ")", params


def _paths_sql(paths: tuple[PathGlob, ...], alias: str, sql: _Sql) -> str:
    parts = []
    for glob in paths:
        cond, params = _path_sql(glob, alias)
        parts.append(cond)
        sql.add(*params)
    return "(" + " OR ".join(parts) + ")"


_OWN_ENTRIES = f"BETWEEN d.rowid << {ENTRY_BITS} AND (d.rowid << {ENTRY_BITS}) | {MAX_ENTRIES - 1}"


def _entries_in(cond: str, paths: tuple[PathGlob, ...], colls: list[int], sql: _Sql,
                probe: bool) -> str:
    """Documents with an entry that meets `cond` at one of `paths`: the set of them from a
    value index, or (probe) a test of the document's own entries (a rowid range)."""
    path = f" AND {_paths_sql(paths, 'e', sql)}" if paths else ""
    if probe:
        return f"EXISTS (SELECT 1 FROM entries e WHERE e.rowid {_OWN_ENTRIES} AND {cond}{path})"
    return (f"d.rowid IN (SELECT e.rowid >> {ENTRY_BITS} FROM entries e WHERE e.coll IN "
            f"({','.join(map(str, colls))}) AND {cond}{path})")


def _compile(node: Node, colls: list[int], sql: _Sql, probe: bool = False) -> str:
    if isinstance(node, All):
        if not node.items:
            return "1"
        return "(" + " AND ".join(_compile(n, colls, sql, probe) for n in node.items) + ")"
    if isinstance(node, Any_):
        if not node.items:
            return "0"
        return "(" + " OR ".join(_compile(n, colls, sql, probe) for n in node.items) + ")"
    if isinstance(node, Not):
        return f"NOT {_compile(node.item, colls, sql, probe)}"
    if isinstance(node, Facet):
        sql.add(node.name, node.value)
        if probe:
            return ("EXISTS (SELECT 1 FROM facets f WHERE f.doc = d.rowid AND f.name = ? AND"
                    " f.value = ?)")
        return (f"d.rowid IN (SELECT f.doc FROM facets f WHERE f.coll IN "
                f"({','.join(map(str, colls))}) AND f.name = ? AND f.value = ?)")
    if isinstance(node, Match):
        if node.strict:
            sql.add(normalize(node.value), node.value, node.value)
            cond = f"e.phrase IN (?, ?) AND {_value('e')} = ?"
        else:
            sql.add(normalize(node.value))
            cond = "e.phrase = ?"
        paths = _literal_short_paths(node.paths)
        if probe and paths:
            # One seek in the phrase index (coll, phrase, spath, rowid): the document's
            # entries with the phrase at those paths, not a read of all of its entries.
            sql.add(*paths)
            return (f"EXISTS (SELECT 1 FROM entries e WHERE e.coll IN"
                    f" ({','.join(map(str, colls))}) AND {cond} AND e.spath IN"
                    f" ({','.join('?' * len(paths))}) AND e.rowid {_OWN_ENTRIES})")
        return _entries_in(cond, node.paths, colls, sql, probe)
    if isinstance(node, Between):
        return _between(node, colls, sql, probe)
    if isinstance(node, Exists):
        parts = []
        for glob in node.paths:
            column = _long_path("e") if glob.long else "e.spath"
            for pattern in glob.globs:
                if is_literal(pattern):
                    parts.append(f"{column} = ? OR {column} GLOB ?")
                    sql.add(pattern, _glob_escape(pattern) + "/*")
                else:
                    parts.append(f"{column} GLOB ? OR {column} GLOB ?")
                    sql.add(pattern, pattern + "/*")
        return _entries_in(f"e.type != {NULL} AND ({' OR '.join(parts)})", (), colls, sql,
                           probe)
    assert isinstance(node, Contains)
    return _contains(node, colls, sql, probe)


def _conjuncts(node: All) -> list[Node]:
    """The constraints of an All, with the items of nested Alls brought up."""
    out: list[Node] = []
    for item in node.items:
        if isinstance(item, All):
            out.extend(_conjuncts(item))
        else:
            out.append(item)
    return out


def _probes_well(node: Node) -> bool:
    """Whether testing one document for the constraint is cheap (SQL on its own entries,
    no Python per entry)."""
    if isinstance(node, (All, Any_)):
        return all(_probes_well(n) for n in node.items)
    if isinstance(node, Not):
        return _probes_well(node.item)
    if isinstance(node, Contains):
        return not node.prefix and not node.postfix and words(node.term) == [node.term]
    return True


def _narrowed(driver: str, probed: list[Node], sql: _Sql) -> str:
    """The driver's set (`d.rowid IN (SELECT <document> FROM ...)`) without the documents
    that lack a word a probed contains needs (anywhere: the probe checks its paths), so
    that documents, entries and the probes are read only for documents with every word."""
    needed = [node.term for node in probed if isinstance(node, Contains) and _probes_well(node)]
    head = "d.rowid IN (SELECT "
    if not needed or not driver.startswith(head) or not driver.endswith(")"):
        return driver
    doc = driver[len(head) : driver.index(" FROM ")]
    tests = []
    for term in needed:
        tests.append(f"EXISTS (SELECT 1 FROM words wn WHERE wn.word = ? AND wn.entry BETWEEN"
                     f" ({doc}) << {ENTRY_BITS} AND (({doc}) << {ENTRY_BITS}) |"
                     f" {MAX_ENTRIES - 1})")
        sql.add(term)
    return f"{driver[:-1]} AND {' AND '.join(tests)})"


def _seeks(node: Node) -> bool:
    """Whether testing one document for the constraint is an index seek or a few, not a
    read of the document's entries."""
    if isinstance(node, (All, Any_)):
        return all(_seeks(n) for n in node.items)
    if isinstance(node, Not):
        return _seeks(node.item)
    if isinstance(node, Contains):
        return _probes_well(node)
    if isinstance(node, Match):
        return _literal_short_paths(node.paths) is not None
    return isinstance(node, Facet)


def _literal_short_paths(paths: tuple[PathGlob, ...]) -> list[str] | None:
    """The short paths of globs that are all plain short paths, else None."""
    if not paths or any(glob.long for glob in paths):
        return None
    found = [pattern for glob in paths for pattern in glob.globs]
    return found if all(is_literal(pattern) for pattern in found) else None


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _between(node: Between, colls: list[int], sql: _Sql, probe: bool) -> str:
    numeric = isinstance(node.min, (int, float)) or isinstance(node.max, (int, float))
    column = "e.number" if numeric else "e.phrase"
    parts = []
    for bound, op in ((node.min, ">="), (node.max, "<")):
        if bound is not None:
            parts.append(f"{column} {op} ?")
            sql.add(float(bound) if numeric else normalize(str(bound)))
    return _entries_in(" AND ".join(parts), node.paths, colls, sql, probe)


def _contains(node: Contains, colls: list[int], sql: _Sql, probe: bool) -> str:
    term = node.term
    found = words(term)
    pattern = contains_regex(term, node.prefix, node.postfix)
    exact = len(found) == 1 and found[0] == term
    if probe and exact and not node.prefix and not node.postfix:
        sql.add(term)  # the word's index entry for one of the document's entries
        if not node.paths:
            return (f"EXISTS (SELECT 1 FROM words w WHERE w.word = ? AND w.entry"
                    f" {_OWN_ENTRIES})")
        return (f"EXISTS (SELECT 1 FROM words w JOIN entries e ON e.rowid = w.entry WHERE"
                f" w.word = ? AND w.entry {_OWN_ENTRIES} AND"
                f" {_paths_sql(node.paths, 'e', sql)})")
    if probe or not found:  # the document's entries; no word to look up: a scan
        sql.add(pattern)
        return _entries_in("fc_find(e.phrase, ?)", node.paths, colls, sql, probe)
    # Look up the longest word; whether it may be cut on the left (right) of a word in the
    # text depends on whether it starts (ends) the term and the term may be cut there.
    best = max(range(len(found)), key=lambda i: len(found[i]))
    word = found[best]
    open_left = node.prefix and best == 0 and term.startswith(word)
    open_right = node.postfix and best == len(found) - 1 and term.endswith(word)
    if open_left and open_right and len(word) >= 3:
        # The words with the word's first trigram, and then the word in them.
        cond = ("w.word IN (SELECT tj.value FROM word_trigrams t, json_each(t.words) tj"
                " WHERE t.trigram = ? AND instr(tj.value, ?) > 0)")
        sql.add(word[:3], word)
    elif open_left and open_right:
        cond = "w.word IN (SELECT v.word FROM vocabulary v WHERE instr(v.word, ?) > 0)"
        sql.add(word)
    elif open_left:
        cond = ("w.word IN (SELECT v.word FROM vocabulary v WHERE v.rword >= ? AND"
                " v.rword < ?)")
        sql.add(word[::-1], word[::-1] + _TOP)
    elif open_right:
        cond = "w.word >= ? AND w.word < ?"
        sql.add(word, word + _TOP)
    else:
        cond = "w.word = ?"
        sql.add(word)
    if exact and not node.paths:
        return f"d.rowid IN (SELECT w.entry >> {ENTRY_BITS} FROM words w WHERE {cond})"
    extra = ""
    if not exact:
        extra = " AND fc_find(e.phrase, ?)"
        sql.add(pattern)
    if node.paths:
        extra += f" AND {_paths_sql(node.paths, 'e', sql)}"
    return (f"d.rowid IN (SELECT w.entry >> {ENTRY_BITS} FROM words w JOIN entries e ON"
            f" e.rowid = w.entry WHERE {cond} AND +e.coll IN ({','.join(map(str, colls))})"
            f"{extra})")
