"""Turn result rows into the printed table, the ratios and the JSON file."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from bench.common import Results, Row

SUBJECT = "fluxcore"
MACHINE = "machine"
COLUMNS = (SUBJECT, "sqlite", "lmdb")
ORDER = (
    "append_single",
    "append_batch",
    "read_batch",
    "read_iterate",
    "route_batch",
    "memcpy",
    "page_fault",
    "disk_write",
    "rss_outside_maps",
)
SERVICE_ORDER = (
    "publish",
    "consume_batch",
    "consume_per_message",
    "consume_per_message_typed",
    "request_rate",
    "request_p50",
    "request_p99",
    "request_rate_async",
    "request_p50_async",
    "request_p99_async",
    "request_rate_2proc",
    "request_p50_2proc",
    "request_p99_2proc",
    "request_rate_async_2proc",
    "request_p50_async_2proc",
    "request_p99_async_2proc",
    "request_rate_unix",
    "request_p50_unix",
    "request_p99_unix",
)


def format_value(row: Row) -> str:
    if row.unit == "docs/s":
        return f"{row.value / 1e3:.1f}k docs/s"
    if row.unit == "msg/s" and row.value < 1e6:
        return f"{row.value / 1e3:.1f}k msg/s"
    if row.unit == "msg/s":
        return f"{row.value / 1e6:.2f}M msg/s"
    return f"{row.value:.2f} {row.unit}"


def _names(rows: Iterable[Row]) -> list[str]:
    seen = {row.name for row in rows}
    order = ORDER + SERVICE_ORDER
    return [name for name in order if name in seen] + sorted(seen - set(order))


# (extra key, machine row, which fluxcore rows): the limits each row is read against.
MACHINE_LIMITS = (
    ("ratio_to_memcpy", "memcpy", ORDER),
    ("ratio_to_disk", "disk_write", ("append_single", "append_batch")),
)


def add_machine_ratios(results: Results) -> None:
    """Give fluxcore throughput rows their fraction of the machine's limits."""
    for key, limit_name, names in MACHINE_LIMITS:
        limit = results.get(limit_name, MACHINE)
        if limit is None:
            continue
        for row in results.rows:
            if row.system == SUBJECT and row.unit == "msg/s" and row.name in names:
                row.extra[key] = row.value / limit.value


def _ratio_to_best_peer(rows: list[Row]) -> str:
    subject = next((row for row in rows if row.system == SUBJECT), None)
    peers = [row for row in rows if row.system not in (SUBJECT, MACHINE)]
    if subject is None or not peers:
        return ""
    if subject.unit == "us":  # a latency: the best peer is the lowest
        best = min(peers, key=lambda row: row.value)
        return f"{subject.value / best.value:.2f}x {best.system} (<1: lower)"
    if subject.unit not in ("msg/s", "docs/s"):
        return ""
    best = max(peers, key=lambda row: row.value)
    return f"{subject.value / best.value:.2f}x {best.system}"


def table(results: Results, columns: tuple[str, ...] = COLUMNS) -> str:
    lines: list[list[str]] = [["name", *columns, "ratio vs best peer", "note"]]
    setup_notes = set(_setup_notes(results).values())  # printed once, under "setup:"
    for name in _names(results.rows):
        rows = [row for row in results.rows if row.name == name]
        by_system = {row.system: row for row in rows}
        cells = [format_value(by_system[s]) if s in by_system else "-" for s in columns]
        others = [f"{row.system} {format_value(row)}" for row in rows if row.system not in columns]
        notes = [
            row.note
            for row in rows
            if row.system == SUBJECT and row.unit != "msg/s" and row.note not in setup_notes
        ]
        lines.append([name, *cells, _ratio_to_best_peer(rows), "; ".join(others + notes)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = [
        " | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        for line in lines
    ]
    out.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in out)


def _setup_notes(results: Results) -> dict[str, str]:
    seen: dict[str, str] = {}
    for row in results.rows:
        if row.unit == "msg/s" and row.note:
            seen.setdefault(row.system, row.note)
    return seen


def setups(results: Results) -> str:
    """Each system's durability and layout, once (rows of one system share it)."""
    seen = _setup_notes(results)
    return "\n".join(f"  {system}: {note}" for system, note in seen.items())


def ratios(results: Results) -> str:
    lines: list[str] = []
    batch = results.get("append_batch", SUBJECT)
    for peer in ("sqlite", "lmdb"):
        other = results.get("append_batch", peer)
        if batch is not None and other is not None:
            lines.append(
                f"  fluxcore append_batch / {peer} append_batch = {batch.value / other.value:.2f}x"
            )
    for key, limit_name, _names in MACHINE_LIMITS:
        for row in results.rows:
            if key in row.extra:
                lines.append(f"  fluxcore {row.name} / {limit_name} = {row.extra[key]:.3f}")
    return "\n".join(lines)


def methods(results: Results) -> str:
    """What each row times on each system, where the row says (extra "how")."""
    return "\n".join(
        f"  {row.system} {row.name}: {row.extra['how']}"
        for row in results.rows
        if "how" in row.extra
    )


def render(results: Results, columns: tuple[str, ...] = COLUMNS) -> str:
    parts = [table(results, columns), "", "setup:", setups(results)]
    if how := methods(results):
        parts += ["", "how:", how]
    parts += ["", "ratios:", ratios(results)]
    if results.context:
        parts += ["", "context:", *(f"  {line}" for line in results.context)]
    if results.skipped:
        parts += ["", "skipped:", *(f"  {line}" for line in results.skipped)]
    return "\n".join(parts)


def write_json(results: Results, path: Path) -> None:
    rows = [row.to_json() for row in results.rows]
    path.write_text(json.dumps(rows, indent=1) + "\n")
