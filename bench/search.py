"""The search suite: fluxcore's document search against PostgreSQL (JSONB with GIN and
trigram indexes), the same generated documents and the same queries, in one run.

Both servers are started by the harness on loopback in fresh directories. Rows: `index`
(documents/s, bulks of 1,000) and the p50/p99 latency (us) of each query, one query at a
time from one client, each repeat with other parameters from the same distribution."""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import Results, Row, progress, scratch_dir
from bench.servers import fluxcore_argv, fluxcore_ready, free_port, running_server

SUBJECT = "fluxcore"
PEER = "postgres"
SEARCH_COLUMNS = (SUBJECT, PEER)
BULK = 1000
TOKEN = "bench-token"
QUERIES = ("match_selective", "contains_prefix", "contains_infix", "between_number",
           "query_three_terms", "facet_stats_all", "sort_page")


@dataclass(frozen=True)
class SearchSizes:
    documents: int
    repeats: int  # timed runs of each query (after 3 untimed)


SEARCH_QUICK = SearchSizes(documents=10_000, repeats=20)
SEARCH_FULL = SearchSizes(documents=1_000_000, repeats=200)

FIRST = ["Anna", "Björn", "Chloé", "Dmitri", "Élodie", "Fatima", "Günther", "Hélène", "Ivan",
         "Joëlle", "Kai", "Léa", "Marta", "Noël", "Oskar", "Pénélope", "Quinn", "René",
         "Søren", "Thérèse", "Uma", "Vera", "Wim", "Xavier", "Yasmin", "Zoë"]
LAST = ["Müller", "García", "Dubois", "Jansen", "Rossi", "Novák", "Øster", "Smith", "Łukasz",
        "Peña", "O'Brien", "van Dijk", "Nguyễn", "Kowalski", "Schäfer", "Lindqvist"]
CITIES = ["Zürich", "Genève", "Amsterdam", "København", "Kraków", "São Paulo", "Malmö",
          "Reykjavík", "Montréal", "Düsseldorf", "Besançon", "Ålesund", "Córdoba", "Bern",
          "Oslo", "Paris", "Lyon", "Berlin", "Madrid", "Lisboa"]
TAGS = [f"tag{i}" for i in range(30)]


def _vocabulary(rng: random.Random, size: int = 5000) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyzéèüöå"
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(letters) for _ in range(rng.randrange(4, 11))))
    return sorted(words)


class Corpus:
    """The generated documents (about 10 fields: nested objects, arrays, accented text)."""

    def __init__(self, count: int, seed: int = 8) -> None:
        rng = random.Random(seed)
        self.words = _vocabulary(rng)
        self.count = count
        self.seed = seed

    def document(self, i: int) -> dict[str, Any]:
        rng = random.Random(self.seed * 1_000_003 + i)
        first, last = rng.choice(FIRST), rng.choice(LAST)
        # Zipf-like words: low ranks are common, high ranks rare.
        description = " ".join(self.words[min(int(rng.paretovariate(0.7)) - 1, 4999)]
                               for _ in range(12))
        return {
            "name": f"{first} {last}",
            "email": f"{first.lower()}.{i}@example.com",
            "age": rng.randrange(100),
            "score": round(rng.random(), 6),
            "active": rng.random() < 0.7,
            "bucket": i % 10,
            "city": rng.choice(CITIES),
            "tags": rng.sample(TAGS, rng.randrange(1, 4)),
            "address": {"street": f"{rng.choice(self.words)} {rng.randrange(1, 300)}",
                        "zip": f"{rng.randrange(1000, 9999)}AB"},
            "orders": [{"sku": f"SKU-{rng.randrange(10_000)}", "qty": rng.randrange(1, 9)}
                       for _ in range(rng.randrange(0, 3))],
            "description": description,
        }


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _latency_rows(name: str, system: str, seconds: list[float], how: str,
                  hits: list[int]) -> list[Row]:
    us = [s * 1e6 for s in seconds]
    extra: dict[str, Any] = {"how": how, "median_hits": statistics.median(hits)}
    return [Row(f"{name}_p50", system, "us", _p(us, 0.5), len(us), extra=extra),
            Row(f"{name}_p99", system, "us", _p(us, 0.99), len(us))]


class Workload:
    """The parameters of each timed query, drawn once so both systems get the same ones."""

    def __init__(self, corpus: Corpus, repeats: int) -> None:
        rng = random.Random(99)
        n = repeats + 3
        common = corpus.words[30:300]  # frequent words, not the most frequent
        self.emails = [corpus.document(rng.randrange(corpus.count))["email"] for _ in range(n)]
        self.prefixes = [w[:5] for w in rng.sample(corpus.words[200:2000], n)]
        self.infixes = [w[1:4] for w in rng.sample(corpus.words[300:3000], n)]
        self.ranges = [(x, x + 0.001) for x in (rng.random() for _ in range(n))]
        self.terms = [rng.sample(common, 3) for _ in range(n)]
        self.buckets = [rng.randrange(10) for _ in range(n)]
        self.n = n


def _timed(run: Callable[[int], int], n: int) -> tuple[list[float], list[int]]:
    seconds, hits = [], []
    for i in range(n):
        start = time.perf_counter()
        found = run(i)
        if i >= 3:
            seconds.append(time.perf_counter() - start)
            hits.append(found)
    return seconds, hits


# -- fluxcore ---------------------------------------------------------------------------------

def run_fluxcore(corpus: Corpus, work: Workload, base: str, results: Results) -> None:
    from fluxcore.client import Client
    from fluxcore.client.search import index_entry

    with scratch_dir(base, "search-fluxcore") as path:
        port = free_port()
        with running_server("fluxcore", fluxcore_argv(port, path, TOKEN), port, path,
                            fluxcore_ready), \
                Client.connect(f"127.0.0.1:{port}", token=TOKEN) as client:
            seconds = 0.0
            for first in range(0, corpus.count, BULK):
                documents = [corpus.document(i)  # generating them is not timed
                             for i in range(first, min(first + BULK, corpus.count))]
                start = time.perf_counter()
                client.index_many([
                    index_entry(document, collection="bench", id=f"d{first + n}",
                                timestamp=1_700_000_000_000 + first + n,
                                facets=["city", "tags"], sortables=["score"])
                    for n, document in enumerate(documents)], timeout=600)
                seconds += time.perf_counter() - start
            results.rows.append(Row("index", SUBJECT, "docs/s", corpus.count / seconds,
                                    corpus.count, note="search.sqlite, WAL, fsync interval",
                                    extra={"how": "index_many, bulks of 1,000, client "
                                           "encoding included, generating the documents "
                                           "not"}))
            progress(f"fluxcore: indexed {corpus.count} in {seconds:.1f} s")
            search = client.search
            queries: dict[str, tuple[Callable[[int], int], str]] = {
                "match_selective": (lambda i: len(search("bench").match(
                    work.emails[i], "email").fetch(20)), "match(email)"),
                "contains_prefix": (lambda i: len(search("bench").contains(
                    work.prefixes[i], "description", postfix_search=True).fetch(20)),
                    "contains(term*, description)"),
                "contains_infix": (lambda i: len(search("bench").contains(
                    work.infixes[i], "description", prefix_search=True,
                    postfix_search=True).fetch(20)), "contains(*term*, description)"),
                "between_number": (lambda i: len(search("bench").between(
                    *work.ranges[i], "score").fetch(20)), "between(score)"),
                "query_three_terms": (lambda i: len(search("bench").query(
                    " ".join(work.terms[i]), "description").fetch(20)),
                    "query('a b c', description)"),
                "facet_stats_all": (lambda i: len(search("bench").facet_stats()),
                                    "facet_stats() of every document"),
                "sort_page": (lambda i: len(search("bench").match(
                    work.buckets[i], "bucket").sort("-score").fetch(20)),
                    "match(bucket) (10 %) sorted by -score, top 20"),
            }
            with results.attempt("round_trip_floor on fluxcore"):
                # What any query costs before the search: one ping on the same connection.
                seconds_list, hits = _timed(lambda i: int(client.ping() >= 0), work.n)
                results.rows.extend(_latency_rows("round_trip_floor", SUBJECT, seconds_list,
                                                  "client.ping()", hits))
            for name in QUERIES:
                run, how = queries[name]
                with results.attempt(f"{name} on fluxcore"):
                    seconds_list, hits = _timed(run, work.n)
                    results.rows.extend(_latency_rows(name, SUBJECT, seconds_list, how, hits))


# -- PostgreSQL ---------------------------------------------------------------------------------

def _pg_bin() -> Path | None:
    for version in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (version / "initdb").exists():
            return version
    return None


def postgres_unavailable() -> str | None:
    if _pg_bin() is None:
        return "no PostgreSQL server binaries (Debian package postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'fluxcore[bench]')"
    return None


def _as_postgres_user() -> list[str]:
    # initdb and postgres refuse to run as root: run them as the postgres user if we are root.
    if os.geteuid() == 0 and shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--"]
    return []


def run_postgres(corpus: Corpus, work: Workload, base: str, results: Results) -> None:
    import psycopg

    bin_dir = _pg_bin()
    assert bin_dir is not None
    prefix = _as_postgres_user()
    with scratch_dir(base, "search-postgres") as path:
        data = path / "pgdata"
        if prefix:
            shutil.chown(path, "postgres")
        subprocess.run([*prefix, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust",
                        "-U", "bench", "--no-sync"], check=True, capture_output=True)
        port = free_port()
        argv = [*prefix, str(bin_dir / "postgres"), "-D", str(data), "-p", str(port),
                "-k", str(path), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=on",
                "-c", "synchronous_commit=on", "-c", "shared_buffers=256MB"]
        # The port opens before the database is up ("the database system is starting up").
        with running_server("postgres", argv, port, path,
                            lambda log: "ready to accept connections" in log), psycopg.connect(
                host="127.0.0.1", port=port, user="bench", dbname="postgres",
                autocommit=True) as db:
            _pg_load(db, corpus, results)
            _pg_queries(db, work, results)


def _pg_load(db: Any, corpus: Corpus, results: Results) -> None:
    db.execute("CREATE EXTENSION pg_trgm")
    db.execute("CREATE TABLE docs (id text PRIMARY KEY, ts bigint, doc jsonb NOT NULL)")
    db.execute("CREATE INDEX docs_gin ON docs USING gin (doc jsonb_path_ops)")
    db.execute("CREATE INDEX docs_ts ON docs (ts)")
    db.execute("CREATE INDEX docs_description ON docs USING gin "
               "(lower(doc->>'description') gin_trgm_ops)")
    db.execute("CREATE INDEX docs_score ON docs (((doc->>'score')::float8))")
    db.execute("CREATE INDEX docs_email ON docs (lower(doc->>'email'))")
    seconds = 0.0
    with db.cursor() as cursor:
        for first in range(0, corpus.count, BULK):
            documents = [corpus.document(i)  # generating them is not timed
                         for i in range(first, min(first + BULK, corpus.count))]
            start = time.perf_counter()
            rows = [(f"d{first + n}", 1_700_000_000_000 + first + n, json.dumps(document))
                    for n, document in enumerate(documents)]
            with db.transaction():
                cursor.executemany("INSERT INTO docs VALUES (%s, %s, %s::jsonb)", rows)
            seconds += time.perf_counter() - start
    db.execute("ANALYZE docs")
    results.rows.append(Row("index", PEER, "docs/s", corpus.count / seconds, corpus.count,
                            note="JSONB + GIN (jsonb_path_ops) + pg_trgm, fsync on",
                            extra={"how": "executemany INSERT (pipelined), one transaction "
                                   "per bulk of 1,000, json.dumps included, generating the "
                                   "documents not"}))
    progress(f"postgres: indexed {corpus.count} in {seconds:.1f} s")


def _pg_queries(db: Any, work: Workload, results: Results) -> None:
    def rows(sql: str, params: tuple[Any, ...]) -> int:
        return len(db.execute(sql, params).fetchall())

    top = " ORDER BY ts DESC LIMIT 20"
    queries: dict[str, tuple[Callable[[int], int], str]] = {
        "match_selective": (lambda i: rows(
            "SELECT id, doc FROM docs WHERE lower(doc->>'email') = lower(%s)" + top,
            (work.emails[i],)), "lower(email) = (btree)"),
        "contains_prefix": (lambda i: rows(
            "SELECT id, doc FROM docs WHERE lower(doc->>'description') ~ %s" + top,
            (r"\m" + work.prefixes[i],)), "description ~ '\\mterm' (trigram)"),
        "contains_infix": (lambda i: rows(
            "SELECT id, doc FROM docs WHERE lower(doc->>'description') LIKE %s" + top,
            (f"%{work.infixes[i]}%",)), "description LIKE '%term%' (trigram)"),
        "between_number": (lambda i: rows(
            "SELECT id, doc FROM docs WHERE (doc->>'score')::float8 >= %s AND "
            "(doc->>'score')::float8 < %s" + top, work.ranges[i]), "score range (btree)"),
        "query_three_terms": (lambda i: rows(
            "SELECT id, doc FROM docs WHERE lower(doc->>'description') ~ %s AND "
            "lower(doc->>'description') ~ %s AND lower(doc->>'description') ~ %s" + top,
            tuple(rf"\m{t}\M" for t in work.terms[i])), "3 word regexes (trigram)"),
        "facet_stats_all": (lambda i: rows(
            "SELECT 'city', doc->>'city', count(*) FROM docs GROUP BY 2 UNION ALL "
            "SELECT 'tags', t, count(*) FROM docs, jsonb_array_elements_text(doc->'tags') t "
            "GROUP BY 2 ORDER BY 3 DESC", ()), "GROUP BY city and tags"),
        "sort_page": (lambda i: rows(
            "SELECT id, doc FROM docs WHERE doc @> %s::jsonb ORDER BY (doc->>'score')::float8 "
            "DESC LIMIT 20", (json.dumps({"bucket": work.buckets[i]}),)),
            "doc @> {bucket} (GIN) ORDER BY score DESC LIMIT 20"),
    }
    for name in QUERIES:
        run, how = queries[name]
        with results.attempt(f"{name} on postgres"):
            seconds, hits = _timed(run, work.n)
            results.rows.extend(_latency_rows(name, PEER, seconds, how, hits))


def run_search(sizes: SearchSizes, base: str | None) -> Results:
    base = base or tempfile.gettempdir()
    progress(f"search suite: scratch directories under {base}, {sizes}")
    results = Results()
    results.context.append(
        f"{os.cpu_count()} CPUs, {platform.platform()}; python {platform.python_version()};"
        f" {sizes.documents} documents; client and servers on the same machine, 127.0.0.1")
    results.context.append(f"load average at start: {_load()}")
    corpus = Corpus(sizes.documents)
    work = Workload(corpus, sizes.repeats)
    with results.attempt("fluxcore"):
        run_fluxcore(corpus, work, base, results)
    reason = postgres_unavailable()
    if reason is not None:
        results.skip("postgres", reason)
    else:
        with results.attempt("postgres"):
            run_postgres(corpus, work, base, results)
    results.context.append(f"load average at end: {_load()}")
    return results


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())
